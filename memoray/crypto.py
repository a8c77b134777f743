"""Encryption at rest: an AES-256-GCM envelope around each record's bytes.

Sealed blob: MAGIC (2 bytes) | key id (4) | nonce (12, fresh from os.urandom) | ciphertext+tag (16).
MAGIC starts with 0xc1, a byte msgpack never emits, so a sealed blob can't be mistaken for a
plaintext (msgpack) record and a store may hold both while it migrates. The GCM associated data is
the header plus the caller's aad (the record id: see record_aad), so a blob moved to another record
or a rewritten header fails authentication instead of decrypting.

Keys: MEMORAY_ENCRYPTION_KEY (base64 of 32 bytes) or MEMORAY_ENCRYPTION_KEY_FILE (one key per
line, `#` comments). Several keys (comma- or newline-separated) form a keyring for rotation: the
first seals, every one opens what it sealed. A key id is the first 4 bytes of a SHA-256 of the key,
which names the key without revealing it. Random 96-bit nonces stay safe for 2^32 seals per key
(NIST SP 800-38D); rotate well before that.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import logging
import os
import stat
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from memoray.errors import ErrorCode, MemorayError, invalid

log = logging.getLogger(__name__)

MAGIC = b"\xc1\x01"  # 0xc1: never used by msgpack; 0x01: envelope version
KEY_LEN = 32
KEY_ID_LEN = 4
NONCE_LEN = 12
TAG_LEN = 16
HEADER_LEN = len(MAGIC) + KEY_ID_LEN + NONCE_LEN
MARKER_AAD = b"memoray/store-marker"
MARKER_PLAINTEXT = b"memoray encrypted store v1"
NO_KEY_MESSAGE = "store is encrypted; set MEMORAY_ENCRYPTION_KEY"


def key_id(key: bytes) -> bytes:
    return hashlib.sha256(b"memoray-key-id\x00" + key).digest()[:KEY_ID_LEN]


def generate_key() -> str:
    """A fresh key in the form MEMORAY_ENCRYPTION_KEY expects."""
    return base64.b64encode(os.urandom(KEY_LEN)).decode()


def decode_key(text: str, source: str = "MEMORAY_ENCRYPTION_KEY") -> bytes:
    """Standard or urlsafe base64, padding optional. Errors never echo the key."""
    s = text.strip().replace("-", "+").replace("_", "/")
    s += "=" * (-len(s) % 4)
    try:
        key = base64.b64decode(s, validate=True)
    except (binascii.Error, ValueError):
        raise invalid(f"{source}: not valid base64 (expected base64 of 32 random bytes)") from None
    if len(key) != KEY_LEN:
        raise invalid(f"{source}: decodes to {len(key)} bytes; AES-256 needs exactly 32")
    return key


def record_aad(record_id: str) -> bytes:
    """The associated data that binds a record's blob to its id."""
    return b"memoray/record/" + record_id.encode("utf-8")


class Keyring:
    """The current key (seals) and older keys (open only), indexed by key id."""

    def __init__(self, current: bytes, older: Sequence[bytes] = ()):
        keys: dict[bytes, AESGCM] = {}
        for k in (current, *older):
            if len(k) != KEY_LEN:
                raise invalid(f"encryption key must be {KEY_LEN} bytes, got {len(k)}")
            kid = key_id(k)
            if kid in keys:
                continue  # the same key listed twice (distinct keys colliding: ~2^-32)
            keys[kid] = AESGCM(k)
        self.current_id = key_id(current)
        self._keys = keys

    @classmethod
    def parse(cls, text: str, source: str = "MEMORAY_ENCRYPTION_KEY") -> Keyring:
        items: list[str] = []
        for line in text.splitlines():
            line = line.split("#", 1)[0]
            items.extend(p for p in line.replace(",", " ").split() if p)
        if not items:
            raise invalid(f"{source}: no key found")
        keys = [decode_key(p, source) for p in items]
        return cls(keys[0], keys[1:])

    @property
    def current(self) -> AESGCM:
        return self._keys[self.current_id]

    @property
    def ids(self) -> list[bytes]:
        return list(self._keys)

    def get(self, kid: bytes) -> AESGCM | None:
        return self._keys.get(kid)

    def __repr__(self) -> str:  # never the keys themselves
        return f"Keyring(current={self.current_id.hex()}, keys={len(self._keys)})"


def key_text_from_settings(settings: Any) -> tuple[str, str] | None:
    """(key text, its source) from settings.encryption_key or settings.encryption_key_file; None
    when neither is set (no encryption). Both set is an error: which one seals would be a guess.
    The text is what crosses Ray to the shards (a Keyring holds AESGCM objects, which do not
    pickle); it is read here once and validated by parsing."""
    text = getattr(settings, "encryption_key", None)
    path = getattr(settings, "encryption_key_file", None)
    if text and path:
        raise invalid("set MEMORAY_ENCRYPTION_KEY or MEMORAY_ENCRYPTION_KEY_FILE, not both")
    if text:
        source = "MEMORAY_ENCRYPTION_KEY"
    elif path:
        p = Path(path).expanduser()
        try:
            mode = p.stat().st_mode
            text = p.read_text()
        except OSError as e:
            raise invalid(f"MEMORAY_ENCRYPTION_KEY_FILE: cannot read {p}: {e.strerror}") from None
        if mode & (stat.S_IRWXG | stat.S_IRWXO):
            log.warning("encryption key file %s is readable by group or others; chmod 600 it", p)
        source = f"key file {p}"
    else:
        return None
    Keyring.parse(text, source)  # a malformed key fails here, not inside a shard
    return text, source


def key_from_settings(settings: Any) -> Keyring | None:
    """The keyring from settings (see key_text_from_settings)."""
    found = key_text_from_settings(settings)
    return Keyring.parse(*found) if found else None


def is_sealed(blob: bytes) -> bool:
    return len(blob) >= HEADER_LEN + TAG_LEN and blob[: len(MAGIC)] == MAGIC


def _wrong_key(kid: bytes) -> MemorayError:
    return MemorayError(
        ErrorCode.UNAVAILABLE,
        f"the store is encrypted with another key (key id {kid.hex()} is not in the keyring): "
        "set the MEMORAY_ENCRYPTION_KEY it was written with, keeping old keys after the new one",
    )


class Cipher:
    def __init__(self, keyring: Keyring):
        self.keyring = keyring

    def seal(self, plaintext: bytes, aad: bytes) -> bytes:
        header = MAGIC + self.keyring.current_id + os.urandom(NONCE_LEN)
        return header + self.keyring.current.encrypt(header[-NONCE_LEN:], plaintext, header + aad)

    def open(self, blob: bytes, aad: bytes) -> bytes:
        """The plaintext, or MemorayError(UNAVAILABLE): never garbage."""
        if not is_sealed(blob):
            raise MemorayError(ErrorCode.UNAVAILABLE, "record is not an encrypted envelope")
        header = blob[:HEADER_LEN]
        kid = header[len(MAGIC): len(MAGIC) + KEY_ID_LEN]
        aead = self.keyring.get(kid)
        if aead is None:
            raise _wrong_key(kid)
        try:
            return aead.decrypt(header[-NONCE_LEN:], blob[HEADER_LEN:], header + aad)
        except InvalidTag:
            raise MemorayError(
                ErrorCode.UNAVAILABLE,
                "record failed authentication: the store is encrypted with another key, or the "
                "data was altered or moved between records",
            ) from None

    def rotation_needed(self, blob: bytes) -> bool:
        """Sealed with a key other than the current one (a rotation job should reseal it)."""
        kid = blob[len(MAGIC): len(MAGIC) + KEY_ID_LEN]
        return is_sealed(blob) and kid != self.keyring.current_id

    def reseal(self, blob: bytes, aad: bytes) -> bytes:
        """Re-encrypt under the current key; plaintext records get encrypted."""
        return self.seal(self.open(blob, aad) if is_sealed(blob) else blob, aad)


def rotation_needed(blob: bytes, keyring: Keyring) -> bool:
    return Cipher(keyring).rotation_needed(blob)


def unseal(blob: bytes, aad: bytes, cipher: Cipher | None) -> bytes:
    """Read path for a store that may mix plaintext and sealed records (a plaintext store that
    started encrypting): plaintext passes through; sealed needs the key."""
    if not is_sealed(blob):
        return blob
    if cipher is None:
        raise MemorayError(ErrorCode.UNAVAILABLE, NO_KEY_MESSAGE)
    return cipher.open(blob, aad)


class KeyringSealer:
    """The shard storage's sealer (seal/open with the record id as aad). Seals with the current
    key; opens sealed blobs with any key in the ring; passes plaintext through, so records written
    before encryption was turned on stay readable. Without a keyring it seals nothing and refuses
    sealed blobs with NO_KEY_MESSAGE instead of handing ciphertext to msgpack.

    Pass-through means encryption protects confidentiality at rest, not integrity against someone
    who can write the store's files: they could plant a plaintext record."""

    def __init__(self, keyring: Keyring | None):
        self.cipher = None if keyring is None else Cipher(keyring)

    def seal(self, plaintext: bytes, aad: bytes) -> bytes:
        return plaintext if self.cipher is None else self.cipher.seal(plaintext, aad)

    def open(self, blob: bytes, aad: bytes) -> bytes:
        return unseal(blob, aad, self.cipher)

    def rotation_needed(self, blob: bytes) -> bool:
        """True for blobs a rotation job should rewrite: older key, or still plaintext."""
        if self.cipher is None:
            return False
        return not is_sealed(blob) or self.cipher.rotation_needed(blob)


def keyring_sealer(key: str | Keyring | None) -> KeyringSealer:
    """A sealer from key text (what MEMORAY_ENCRYPTION_KEY or a key file holds: it crosses Ray
    as text, since AESGCM objects don't pickle), a Keyring, or None."""
    if key is None or isinstance(key, Keyring):
        return KeyringSealer(key)
    return KeyringSealer(Keyring.parse(key))


def store_marker(keyring: Keyring) -> bytes:
    """A small sealed constant kept in the store's metadata: proof the store is encrypted, and a
    check at open time that the configured key is the right one."""
    return Cipher(keyring).seal(MARKER_PLAINTEXT, MARKER_AAD)


def check_marker(marker: bytes | None, keyring: Keyring | None) -> bytes | None:
    """Decide at open time whether the store may be opened with this keyring.

    - no marker, no key: a plaintext store; returns None.
    - no marker, a key: a plaintext store starting to encrypt. Allowed: new writes are sealed, old
      records stay readable as plaintext until resealed. Returns a new marker that the caller must
      persist (before its first sealed write) so the store never again opens without the key.
    - marker, no key: raises UNAVAILABLE "store is encrypted; set MEMORAY_ENCRYPTION_KEY".
    - marker, a key: the marker must open with some key in the ring, else UNAVAILABLE (another
      key). Returns None. A marker sealed by an older key keeps that key required until a rotation
      job has resealed every record and then rewrites the marker with store_marker().
    """
    if marker is None:
        return None if keyring is None else store_marker(keyring)
    if keyring is None:
        raise MemorayError(ErrorCode.UNAVAILABLE, NO_KEY_MESSAGE)
    if not is_sealed(marker) or Cipher(keyring).open(marker, MARKER_AAD) != MARKER_PLAINTEXT:
        raise MemorayError(ErrorCode.UNAVAILABLE, "the store's encryption marker is corrupt")
    return None

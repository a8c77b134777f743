"""The AES-256-GCM record envelope, keyrings, rotation and the store marker."""

from __future__ import annotations

import base64
import os
import random

import msgpack
import pytest

from memoray.crypto import (
    HEADER_LEN,
    MAGIC,
    NO_KEY_MESSAGE,
    TAG_LEN,
    Cipher,
    Keyring,
    check_marker,
    decode_key,
    generate_key,
    is_sealed,
    key_from_settings,
    key_id,
    keyring_sealer,
    record_aad,
    rotation_needed,
    store_marker,
    unseal,
)
from memoray.errors import ErrorCode, MemorayError
from memoray.settings import Settings

K1, K2, K3 = (os.urandom(32) for _ in range(3))


def test_seal_layout_and_roundtrip():
    c = Cipher(Keyring(K1))
    aad = record_aad("01HZX")
    blob = c.seal(b"hello", aad)
    assert blob[:2] == MAGIC and blob[2:6] == key_id(K1)
    assert len(blob) == HEADER_LEN + 5 + TAG_LEN
    assert is_sealed(blob)
    assert c.open(blob, aad) == b"hello"
    assert c.seal(b"", aad) != c.seal(b"", aad)  # fresh nonce every time
    assert c.open(c.seal(b"", aad), aad) == b""
    nonces = {c.seal(b"x", aad)[6:18] for _ in range(200)}
    assert len(nonces) == 200


def test_aad_binds_blob_to_record():
    c = Cipher(Keyring(K1))
    blob = c.seal(b"secret", record_aad("A"))
    with pytest.raises(MemorayError) as e:
        c.open(blob, record_aad("B"))  # swapped into another record
    assert e.value.code is ErrorCode.UNAVAILABLE


@pytest.mark.parametrize("pos", [0, 1, 2, 5, 6, 17, 18, -1])
def test_tampering_is_detected(pos):
    c = Cipher(Keyring(K1, [K2]))
    blob = bytearray(c.seal(b"payload bytes", b"id"))
    blob[pos] ^= 0x01
    with pytest.raises(MemorayError) as e:
        c.open(bytes(blob), b"id")
    assert e.value.code is ErrorCode.UNAVAILABLE


def test_wrong_key_says_so():
    blob = Cipher(Keyring(K1)).seal(b"x", b"id")
    with pytest.raises(MemorayError) as e:
        Cipher(Keyring(K2)).open(blob, b"id")
    assert e.value.code is ErrorCode.UNAVAILABLE
    assert "another key" in e.value.message and key_id(K1).hex() in e.value.message


def test_plain_msgpack_is_never_mistaken_for_sealed():
    rng = random.Random(1)
    for _ in range(500):
        rec = {"id": str(rng.random()), "content": "x" * rng.randrange(100), "n": rng.random()}
        assert not is_sealed(msgpack.packb(rec))
    for obj in [None, True, 1, -1, 1.5, "s", b"b", [1], {}]:
        assert not is_sealed(msgpack.packb(obj))
    assert not is_sealed(MAGIC + b"short")


def test_rotation_with_keyring():
    old = Cipher(Keyring(K1))
    blob = old.seal(b"v1", b"id")
    rotated = Cipher(Keyring(K2, [K1]))
    assert rotated.open(blob, b"id") == b"v1"
    assert rotated.rotation_needed(blob) and rotation_needed(blob, rotated.keyring)
    new_blob = rotated.reseal(blob, b"id")
    assert not rotated.rotation_needed(new_blob)
    assert new_blob[2:6] == key_id(K2)
    assert rotated.open(new_blob, b"id") == b"v1"
    assert not rotated.rotation_needed(b"\x81\xa1a\x01")  # plaintext: nothing to rotate
    assert rotated.open(rotated.reseal(b"plain", b"id"), b"id") == b"plain"
    with pytest.raises(MemorayError):
        Cipher(Keyring(K2)).open(blob, b"id")  # old key dropped too early


def test_unseal_mixed_store():
    c = Cipher(Keyring(K1))
    assert unseal(b"\x81\xa1a\x01", b"id", None) == b"\x81\xa1a\x01"
    assert unseal(b"\x81\xa1a\x01", b"id", c) == b"\x81\xa1a\x01"
    blob = c.seal(b"s", b"id")
    assert unseal(blob, b"id", c) == b"s"
    with pytest.raises(MemorayError) as e:
        unseal(blob, b"id", None)
    assert e.value.message == NO_KEY_MESSAGE


def test_decode_key_forms_and_errors():
    raw = bytes(range(32))
    assert decode_key(base64.b64encode(raw).decode()) == raw
    assert decode_key(base64.urlsafe_b64encode(raw).decode().rstrip("=")) == raw
    assert len(decode_key(generate_key())) == 32
    secret_ish = base64.b64encode(b"k" * 16).decode()
    for bad in ["not base64!!", secret_ish, ""]:
        with pytest.raises(MemorayError) as e:
            decode_key(bad)
        assert e.value.code is ErrorCode.INVALID_INPUT
        assert not bad or bad not in e.value.message  # never echo key material


def test_key_from_settings(tmp_path):
    assert key_from_settings(Settings()) is None
    k1, k2 = (base64.b64encode(k).decode() for k in (K1, K2))
    ring = key_from_settings(Settings(encryption_key=k1))
    assert ring.current_id == key_id(K1) and K1.hex() not in repr(ring)
    ring = key_from_settings(Settings(encryption_key=f"{k2},{k1}"))
    assert ring.current_id == key_id(K2) and set(ring.ids) == {key_id(K1), key_id(K2)}
    f = tmp_path / "key"
    f.write_text(f"# current\n{k2}\n# previous\n{k1}\n")
    f.chmod(0o600)
    ring = key_from_settings(Settings(encryption_key_file=f))
    assert ring.current_id == key_id(K2) and len(ring.ids) == 2
    with pytest.raises(MemorayError) as e:
        key_from_settings(Settings(encryption_key=k1, encryption_key_file=f))
    assert e.value.code is ErrorCode.INVALID_INPUT
    with pytest.raises(MemorayError):
        key_from_settings(Settings(encryption_key_file=tmp_path / "missing"))
    with pytest.raises(MemorayError):
        key_from_settings(Settings(encryption_key="# nothing"))


def test_key_from_env(monkeypatch):
    monkeypatch.setenv("MEMORAY_ENCRYPTION_KEY", base64.b64encode(K3).decode())
    assert key_from_settings(Settings()).current_id == key_id(K3)


def test_store_marker_cases():
    ring = Keyring(K1)
    assert check_marker(None, None) is None  # plaintext store stays plaintext
    new = check_marker(None, ring)  # plaintext store starts encrypting: persist this
    assert new is not None and is_sealed(new)
    assert check_marker(new, ring) is None
    with pytest.raises(MemorayError) as e:
        check_marker(new, None)
    assert e.value.code is ErrorCode.UNAVAILABLE and e.value.message == NO_KEY_MESSAGE
    with pytest.raises(MemorayError) as e:
        check_marker(new, Keyring(K2))
    assert "another key" in e.value.message
    assert check_marker(store_marker(ring), Keyring(K2, [K1])) is None  # mid-rotation
    with pytest.raises(MemorayError) as e:
        check_marker(b"garbage", ring)
    assert "corrupt" in e.value.message
    wrong_content = Cipher(ring).seal(b"other", b"memoray/store-marker")
    with pytest.raises(MemorayError):
        check_marker(wrong_content, ring)


def test_keyring_sealer_for_shard_storage():
    k1, k2 = (base64.b64encode(k).decode() for k in (K1, K2))
    plain_record = msgpack.packb({"id": "A", "content": "old"})
    sealer = keyring_sealer(f"# current\n{k2}\n{k1}\n")  # key-file text, as the launcher sends
    blob = sealer.seal(plain_record, b"A")
    assert is_sealed(blob) and sealer.open(blob, b"A") == plain_record
    assert sealer.open(plain_record, b"A") == plain_record  # written before encryption
    assert sealer.rotation_needed(plain_record)
    assert sealer.rotation_needed(keyring_sealer(k1).seal(b"x", b"A"))
    assert not sealer.rotation_needed(blob)
    with pytest.raises(MemorayError):
        sealer.open(blob, b"B")
    none = keyring_sealer(None)
    assert none.seal(b"p", b"A") == b"p" and none.open(b"p", b"A") == b"p"
    assert not none.rotation_needed(b"p")
    with pytest.raises(MemorayError) as e:
        none.open(blob, b"A")
    assert e.value.message == NO_KEY_MESSAGE
    assert keyring_sealer(Keyring(K1)).open(keyring_sealer(k1).seal(b"z", b"i"), b"i") == b"z"

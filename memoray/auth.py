"""Bearer tokens, principals and their scopes.

Tokens are `mr_` + 32 random bytes (urlsafe base64). Only their SHA-256 is stored. A slow KDF
(bcrypt, scrypt, argon2) exists to make guessing *low-entropy* passwords from a stolen hash
expensive; a token carries 256 bits from a CSPRNG, so brute-forcing a preimage is infeasible at any
hash speed. A fast, unsalted hash is therefore as safe here and keeps verification in microseconds
on every request, with an O(1) lookup by digest.

tokens.json: {"version": 1, "tokens": [{"id", "hash", "principal", "workspaces", "scopes",
"created", "revoked", "agent"?}]}, written atomically (temp file, fsync, rename,
fsync dir), mode 0600. Once it has held a token, every request needs `Authorization: Bearer
<token>`, even after every token is revoked: the store stays closed until an operator opens it
again explicitly (`memoray token open`), so revoking the last token never switches auth off.
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import fcntl
import hashlib
import hmac
import ipaddress
import json
import os
import secrets
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from memoray.errors import ErrorCode, MemorayError, invalid
from memoray.fsutil import fsync_dir

TOKEN_PREFIX = "mr_"
SCOPES = frozenset({"read", "write", "admin", "metrics"})  # metrics: scrape /metrics only
ALL_WORKSPACES = "*"
FILE_VERSION = 1
RELOAD_INTERVAL_S = 1.0


@dataclass(frozen=True, slots=True)
class Principal:
    """Who is calling and what they may touch. Frozen and plain so it pickles across Ray."""

    name: str
    workspaces: frozenset[str]
    scopes: frozenset[str]
    token_id: str | None = None
    agent: str | None = None  # the agent identity bound to the token (tokens on), else None

    def can(self, scope: str) -> bool:
        return scope in self.scopes or ("admin" in self.scopes and scope in SCOPES)

    def allows_workspace(self, workspace: str) -> bool:
        return ALL_WORKSPACES in self.workspaces or workspace in self.workspaces

    def visible_workspaces(self) -> frozenset[str] | None:
        """The workspaces a query without workspaceId must be restricted to; None means all."""
        return None if ALL_WORKSPACES in self.workspaces else self.workspaces

    def require(self, scope: str, workspace: str | None = None) -> None:
        """Raise FORBIDDEN unless allowed. The message never names the workspace: the id may come
        from a stored record of another workspace (get-memory by id), and echoing it would leak."""
        if not self.can(scope):
            raise MemorayError(ErrorCode.FORBIDDEN, f"this token does not have the '{scope}' scope")
        if workspace is not None and not self.allows_workspace(workspace):
            raise MemorayError(ErrorCode.FORBIDDEN, "the workspace is outside this token's scope")


LOCAL_PRINCIPAL = Principal("local", frozenset({ALL_WORKSPACES}), SCOPES)


def hash_token(token: str) -> str:
    return hashlib.sha256(token.encode("utf-8")).hexdigest()


def new_token() -> str:
    return TOKEN_PREFIX + base64.urlsafe_b64encode(secrets.token_bytes(32)).rstrip(b"=").decode()


def _utc_now_iso() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds").replace("+00:00", "Z")


def parse_workspaces(value: str | Iterable[str]) -> list[str]:
    items = value.split(",") if isinstance(value, str) else list(value)
    out = sorted({w.strip() for w in items if w.strip()})
    if not out:
        raise invalid("workspaces: give at least one workspace id, or *")
    if ALL_WORKSPACES in out and len(out) > 1:
        raise invalid("workspaces: * already means every workspace; give it alone")
    return out


def parse_scopes(value: str | Iterable[str]) -> list[str]:
    items = value.split(",") if isinstance(value, str) else list(value)
    out = sorted({s.strip().lower() for s in items if s.strip()})
    if not out:
        raise invalid("scopes: give at least one of read, write, admin, metrics")
    unknown = [s for s in out if s not in SCOPES]
    if unknown:
        raise invalid(f"scopes: unknown scope(s) {', '.join(unknown)}; "
                      "use read, write, admin, metrics")
    return out


def atomic_write(path: Path, data: bytes, mode: int = 0o600) -> None:
    """Readers see the old file or the new one, never a torn one, and the new one survives a
    crash once this returns."""
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        os.fchmod(fd, mode)
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    fsync_dir(path.parent)


class TokenStore:
    """tokens.json, cached in memory and reloaded when the file changes.

    A server checks the file (one stat) at most once per `reload_interval` seconds, so created and
    revoked tokens take effect within that time without a restart. An unreadable or malformed file
    fails closed (UNAVAILABLE on every request) rather than silently disabling auth.
    """

    def __init__(self, path: str | Path, *, reload_interval: float = RELOAD_INTERVAL_S,
                 clock: Callable[[], float] = time.monotonic):
        self.path = Path(path).expanduser()
        self._reload_interval = reload_interval
        self._clock = clock
        self._lock = threading.RLock()
        self._entries: list[dict[str, Any]] = []
        self._by_hash: dict[str, dict[str, Any]] = {}
        self._stamp: tuple[int, int, int] | None = None
        self._checked_at: float | None = None
        self._error: MemorayError | None = None

    # -- reading -------------------------------------------------------------------------------

    def _stat(self) -> tuple[int, int, int] | None:
        try:
            st = os.stat(self.path)
        except FileNotFoundError:
            return None
        # Atomic replace changes the inode, so even a same-mtime rewrite is noticed.
        return (st.st_ino, st.st_mtime_ns, st.st_size)

    def _read_file(self) -> list[dict[str, Any]]:
        return self._read_doc()["tokens"]

    def _read_doc(self) -> dict[str, Any]:
        try:
            raw = self.path.read_bytes()
        except FileNotFoundError:
            return {"version": FILE_VERSION, "tokens": []}
        try:
            doc = json.loads(raw)
            tokens = doc["tokens"]
            if doc.get("version") != FILE_VERSION or not isinstance(tokens, list):
                raise ValueError("unsupported layout")
            for t in tokens:
                if not (isinstance(t, dict) and isinstance(t.get("hash"), str)
                        and isinstance(t.get("id"), str)):
                    raise TypeError("bad token entry")
        except (ValueError, KeyError, TypeError) as e:
            # No path in the message: it reaches remote callers.
            raise MemorayError(ErrorCode.UNAVAILABLE,
                               f"the server's tokens file is malformed ({e})") from None
        return doc

    def _refresh(self, force: bool = False) -> None:
        with self._lock:
            now = self._clock()
            if (not force and self._checked_at is not None
                    and now - self._checked_at < self._reload_interval):
                if self._error is not None:
                    raise self._error
                return
            self._checked_at = now
            stamp = self._stat()
            if stamp == self._stamp and self._error is None and not force:
                return
            try:
                doc = self._read_doc()
            except MemorayError as e:
                self._error = e
                self._stamp = stamp
                raise
            entries = doc["tokens"]
            self._error = None
            self._stamp = stamp
            self._entries = entries
            self._by_hash = {t["hash"]: t for t in entries}

    @property
    def enabled(self) -> bool:
        """Auth is on while the file holds a token entry, live or revoked: revoking the last
        token leaves the store closed until an operator opens it (`open_store`)."""
        self._refresh()
        return bool(self._entries)

    def verify(self, token: str) -> Principal | None:
        """The principal for a live token, or None. The dict lookup is keyed by a SHA-256 digest,
        which an attacker cannot steer without preimages; compare_digest confirms the match in
        constant time anyway."""
        if not isinstance(token, str) or not token.startswith(TOKEN_PREFIX):
            return None
        self._refresh()
        digest = hash_token(token)
        entry = self._by_hash.get(digest)
        if entry is None or not hmac.compare_digest(entry["hash"], digest) or entry.get("revoked"):
            return None
        return Principal(
            name=str(entry.get("principal", "")),
            workspaces=frozenset(entry.get("workspaces") or ()),
            scopes=frozenset(entry.get("scopes") or ()),
            token_id=entry["id"],
            agent=str(entry.get("agent") or entry.get("principal", "")),
        )

    def list(self) -> list[dict[str, Any]]:
        """Token metadata without hashes."""
        self._refresh(force=True)
        return [{k: v for k, v in t.items() if k != "hash"} for t in self._entries]

    # -- writing -------------------------------------------------------------------------------

    @contextlib.contextmanager
    def _locked_file(self) -> Iterator[list[dict[str, Any]]]:
        """Read-modify-write under an exclusive flock so concurrent CLI runs don't lose updates."""
        self.path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        lock_path = self.path.with_name(self.path.name + ".lock")
        with self._lock, open(lock_path, "a") as lock_file:
            fcntl.flock(lock_file, fcntl.LOCK_EX)
            try:
                doc = self._read_doc()
                entries = doc["tokens"]
                yield entries
                doc = {"version": FILE_VERSION, "tokens": entries}
                atomic_write(self.path, (json.dumps(doc, indent=2) + "\n").encode())
            finally:
                fcntl.flock(lock_file, fcntl.LOCK_UN)
        self._refresh(force=True)

    def create(self, principal: str, workspaces: str | Iterable[str],
               scopes: str | Iterable[str] = ("read", "write"), agent: str | None = None) -> str:
        """Store a new token's hash and return the token: the only time it is ever visible."""
        name = principal.strip()
        if not name:
            raise invalid("principal: must not be empty")
        ws, sc = parse_workspaces(workspaces), parse_scopes(scopes)
        token = new_token()
        with self._locked_file() as entries:
            ids = {t["id"] for t in entries}
            token_id = secrets.token_hex(5)
            while token_id in ids:
                token_id = secrets.token_hex(5)
            entry = {"id": token_id, "hash": hash_token(token), "principal": name,
                     "workspaces": ws, "scopes": sc, "created": _utc_now_iso(), "revoked": False}
            if agent is not None and agent.strip():
                entry["agent"] = agent.strip()
            entries.append(entry)
        return token

    def open_store(self) -> None:
        """Switch authentication off for good (local, single-user mode): only when no live token
        is left, and only by this explicit call. Every token entry is removed; creating a token
        closes the store again."""
        with self._locked_file() as entries:
            live = [t["id"] for t in entries if not t.get("revoked")]
            if live:
                raise invalid(f"revoke the live tokens first ({', '.join(live)})")
            entries.clear()

    def revoke(self, token_or_id: str) -> bool:
        """Revoke by token or by id. True when a live token was revoked by this call."""
        key = token_or_id.strip()
        field, value = ("hash", hash_token(key)) if key.startswith(TOKEN_PREFIX) else ("id", key)
        changed = False
        with self._locked_file() as entries:
            for t in entries:
                if hmac.compare_digest(str(t.get(field, "")), value) and not t.get("revoked"):
                    t["revoked"] = True
                    changed = True
        return changed


def authenticate(store: TokenStore | None, authorization_header: str | None) -> Principal:
    """The caller's principal. Without live tokens the server is open (local single-user mode);
    with them, unknown and revoked tokens get the same message so revocation isn't probeable."""
    if store is None or not store.enabled:
        return LOCAL_PRINCIPAL
    if authorization_header is None or not authorization_header.strip():
        raise MemorayError(ErrorCode.UNAUTHORIZED,
                           "missing bearer token: send 'Authorization: Bearer <token>'")
    parts = authorization_header.strip().split()
    if len(parts) != 2 or parts[0].lower() != "bearer":
        raise MemorayError(ErrorCode.UNAUTHORIZED,
                           "malformed Authorization header: expected 'Bearer <token>'")
    principal = store.verify(parts[1])
    if principal is None:
        raise MemorayError(ErrorCode.UNAUTHORIZED, "invalid or revoked token")
    return principal


def is_loopback(host: str) -> bool:
    """Literal loopback addresses and localhost names only; no DNS (none at run time), so any other
    hostname counts as non-loopback."""
    h = host.strip().strip("[]").lower()
    if h == "localhost" or h.endswith(".localhost"):
        return True
    try:
        return ipaddress.ip_address(h).is_loopback
    except ValueError:
        return False


def check_bind(host: str, store_enabled: bool, insecure: bool) -> None:
    """Refuse to expose an unauthenticated server beyond this machine.

    Raises MemorayError(UNAVAILABLE) (the project's one exception type, so the launcher prints its
    message and exits non-zero like any other start-up failure)."""
    if store_enabled or insecure or is_loopback(host):
        return
    raise MemorayError(
        ErrorCode.UNAVAILABLE,
        f"refusing to listen on {host} without authentication: anyone who can reach it could read "
        "and write every memory. Create a token (memoray token create --principal NAME "
        "--workspaces '*' --scopes read,write), bind 127.0.0.1, or pass --insecure.",
    )


# -- CLI -----------------------------------------------------------------------------------------

def tokens_path(data_dir: Path | None) -> Path:
    """--data-dir DIR -> DIR/tokens.json; otherwise Settings: MEMORAY_TOKENS_FILE, else
    $MEMORAY_DATA_DIR/tokens.json, else ~/.memoray/tokens.json."""
    if data_dir is not None:
        return Path(data_dir).expanduser().resolve() / "tokens.json"
    from memoray.settings import Settings

    return Settings().resolved_tokens_file()


def _print_table(rows: list[list[str]], headers: list[str]) -> None:
    widths = [max(len(str(x)) for x in col) for col in zip(headers, *rows)]
    for row in [headers, *rows]:
        print("  ".join(str(x).ljust(w) for x, w in zip(row, widths)).rstrip())


def main_token(args: argparse.Namespace) -> int:
    store = TokenStore(tokens_path(getattr(args, "data_dir", None)))
    try:
        if args.token_cmd == "create":
            token = store.create(args.principal, args.workspaces, args.scopes,
                                 agent=getattr(args, "agent", None))
            p = store.verify(token)
            if p is None:  # only if another process rewrote the file in between
                raise MemorayError(ErrorCode.UNAVAILABLE, "the new token was not found on re-read")
            print(f"created token {p.token_id} for principal {p.name}")
            print(f"  workspaces: {','.join(sorted(p.workspaces))}")
            print(f"  scopes:     {','.join(sorted(p.scopes))}")
            print(f"  agent:      {p.agent}")
            print(f"  stored in:  {store.path}")
            print("Keep it secret; it is shown only once:")
            print(token)
            return 0
        if args.token_cmd == "revoke":
            if store.revoke(args.token_or_id):
                print("revoked")
                return 0
            print("no live token matches", file=sys.stderr)
            return 1
        if args.token_cmd == "open":
            store.open_store()
            print(f"authentication is off: {store.path} holds no token (local, single-user "
                  "mode; a non-loopback bind then needs --insecure)")
            return 0
        if args.token_cmd == "list":
            rows = [[t["id"], t.get("principal", ""), ",".join(t.get("workspaces", [])),
                     ",".join(t.get("scopes", [])), t.get("created", ""),
                     "revoked" if t.get("revoked") else "active"] for t in store.list()]
            if not rows:
                print(f"no tokens in {store.path} (auth is off)")
                return 0
            _print_table(rows, ["ID", "PRINCIPAL", "WORKSPACES", "SCOPES", "CREATED", "STATUS"])
            return 0
    except MemorayError as e:
        print(f"error: {e.message}", file=sys.stderr)
        return 2
    print(f"unknown token command {args.token_cmd!r}", file=sys.stderr)
    return 2

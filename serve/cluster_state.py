"""Cluster-wide state as seen by one Serve replica, wherever it runs: the token store and the
audit log live with the store's controller on the head (actors/controller.py), never on this
node's disk.

Tokens: a background task pulls the token list every REFRESH_S (only a version when nothing
changed). A replica that has not heard from the controller for STALE_AFTER_S refuses every
request with UNAVAILABLE (fails closed); a created or revoked token reaches every replica within
REFRESH_S + one call (documented as 2 s).
"""

from __future__ import annotations

import asyncio
import hmac
import logging
import time
from typing import Any

from memoray.auth import TOKEN_PREFIX, Principal, hash_token
from memoray.errors import ErrorCode, MemorayError

log = logging.getLogger(__name__)

REFRESH_S = 1.0
STALE_AFTER_S = 5.0


class ClusterTokenStore:
    """The TokenStore interface (enabled, verify, list) over the controller's token store."""

    def __init__(self, controller: Any, *, refresh_s: float = REFRESH_S,
                 stale_after_s: float = STALE_AFTER_S):
        self.controller = controller
        self.refresh_s = refresh_s
        self.stale_after_s = stale_after_s
        self.version: str | None = None
        self._entries: list[dict] = []
        self._by_hash: dict[str, dict] = {}
        self._fresh_at: float | None = None
        self._task: asyncio.Task | None = None

    async def refresh(self) -> None:
        res = await asyncio.wait_for(
            asyncio.wrap_future(self.controller.tokens.remote(self.version).future()),
            self.stale_after_s)
        if res is not None:
            self.version, entries = res
            self._entries = entries
            self._by_hash = {t["hash"]: t for t in entries}
        self._fresh_at = time.monotonic()

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._loop())

    async def _loop(self) -> None:
        while True:
            try:
                await self.refresh()
            except Exception as exc:  # counted as stale once STALE_AFTER_S passes
                log.warning("token store unreachable: %r", exc)
            await asyncio.sleep(self.refresh_s)

    def _check(self) -> None:
        if self._fresh_at is None or time.monotonic() - self._fresh_at > self.stale_after_s:
            raise MemorayError(ErrorCode.UNAVAILABLE,
                               "the cluster's token store is unreachable; refusing requests")

    @property
    def enabled(self) -> bool:
        self._check()
        return any(not t.get("revoked") for t in self._entries)

    def verify(self, token: str) -> Principal | None:
        self._check()
        if not isinstance(token, str) or not token.startswith(TOKEN_PREFIX):
            return None
        digest = hash_token(token)
        entry = self._by_hash.get(digest)
        if entry is None or not hmac.compare_digest(entry["hash"], digest) or entry.get("revoked"):
            return None
        return Principal(name=str(entry.get("principal", "")),
                         workspaces=frozenset(entry.get("workspaces") or ()),
                         scopes=frozenset(entry.get("scopes") or ()), token_id=entry["id"])

    def list(self) -> list[dict]:
        self._check()
        return [{k: v for k, v in t.items() if k != "hash"} for t in self._entries]


class ClusterAuditLog:
    """The server's audit-log interface (entry, append, append_many, read; as GroupCommit) over
    the controller: entries are built and redacted here, then appended on the head, durably,
    before append returns (so, as on one machine, nothing is acknowledged unaudited)."""

    def __init__(self, controller: Any, redact=None):
        from memoray.audit import AuditLog

        self.controller = controller
        # Only its entry() is used (validation, timestamp, redaction): it never writes here.
        self._builder = AuditLog("/nonexistent/memoray-audit-builder", redact=redact)

    def entry(self, principal: str, action: str, **fields: Any) -> dict:
        return self._builder.entry(principal, action, **fields)

    async def append(self, principal: str, action: str, **fields: Any) -> dict:
        return (await self.append_many([self.entry(principal, action, **fields)]))[0]

    async def append_many(self, entries: list[dict]) -> list[dict]:
        if not entries:
            return []
        try:
            return await self.controller.audit_append.remote(entries)
        except Exception as exc:
            raise MemorayError(ErrorCode.UNAVAILABLE,
                               "the cluster's audit log is unreachable") from exc

    def read(self, limit: int = 50, principal: str | None = None, action: str | None = None,
             since: Any = None) -> list[dict]:
        import ray

        return ray.get(self.controller.audit_read.remote(limit, principal, action, since),
                       timeout=10)

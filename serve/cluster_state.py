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
import logging
import time
from typing import Any

from memoray.auth import TokenStore
from memoray.errors import ErrorCode, MemorayError

log = logging.getLogger(__name__)

REFRESH_S = 1.0
STALE_AFTER_S = 5.0


class ClusterTokenStore(TokenStore):
    """TokenStore's own checks (enabled, verify, list: the same rules as on one machine) over the
    token list the controller serves, instead of a file on this node's disk. Tokens are created
    and revoked with `memoray token ... --data-dir DIR` on the head, never through a replica."""

    def __init__(self, controller: Any, *, refresh_s: float = REFRESH_S,
                 stale_after_s: float = STALE_AFTER_S):
        super().__init__("/nonexistent/memoray-cluster-tokens.json")  # never read or written
        self.controller = controller
        self.refresh_s = refresh_s
        self.stale_after_s = stale_after_s
        self.version: str | None = None
        self._fresh_at: float | None = None
        self._task: asyncio.Task | None = None

    async def refresh(self) -> None:
        res = await asyncio.wait_for(
            asyncio.wrap_future(self.controller.tokens.remote(self.version).future()),
            self.stale_after_s)
        if res is not None:
            version, entries = res
            with self._lock:
                self._entries = entries
                self._by_hash = {t["hash"]: t for t in entries}
                self.version = version
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

    def _refresh(self, force: bool = False) -> None:
        """What TokenStore calls before every check: here, refuse when the list is stale."""
        if self._fresh_at is None or time.monotonic() - self._fresh_at > self.stale_after_s:
            raise MemorayError(ErrorCode.UNAVAILABLE,
                               "the cluster's token store is unreachable; refusing requests")

    def _locked_file(self):
        raise MemorayError(ErrorCode.INVALID_INPUT,
                           "tokens are managed on the head: memoray token ... --data-dir DIR")


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

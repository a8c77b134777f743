"""Everything one replica holds: the service, its backend handles, the auth token store, the
rate-limit lease client, the audit log and the redactor. Built once, inside the replica."""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from actors.backend import Backend
from actors.planner import QueryPlanner
from memoray.settings import Settings
from serve.observability import Metrics
from serve.service import Caller, MemoryService

log = logging.getLogger(__name__)

NAMESPACE = "memoray"


def shard_name(i: int) -> str:
    return f"memoray-shard-{i}"


def embedder_name(i: int) -> str:
    return f"memoray-embedder-{i}"


PLANNER_NAME = "memoray-planner"
LIMITER_NAME = "memoray-rate-limiter"
EXPIRY_NAME = "memoray-expiry"


class Runtime:
    def __init__(self, settings: Settings, backend: Backend, *, metrics: Metrics | None = None,
                 planner_handle: Any = None, limiter: Any = None, expiry: Any = None):
        from memoray.audit import AuditLog
        from memoray.auth import TokenStore
        from memoray.redaction import Redactor

        self.settings = settings
        self.metrics = metrics or Metrics()
        self.tokens = TokenStore(settings.resolved_tokens_file())
        self.redactor = Redactor(pii=settings.redact_pii)
        self.audit = AuditLog(settings.resolved_data_dir() / "audit" / "audit.log",
                              redact=lambda s: self.redactor.redact(s).text)
        self.limiter = limiter
        self.planner = QueryPlanner()
        self.planner_handle = planner_handle
        self.service = MemoryService(settings, backend, planner=self.planner,
                                     redactor=self.redactor, audit=self.audit, limiter=limiter,
                                     metrics=self.metrics, expiry=expiry)
        self._planner_task: asyncio.Task | None = None
        self._feedback: list[tuple[int, int | None, str]] = []

    # -- planner statistics ------------------------------------------------------------------
    def start_background(self) -> None:
        if self.planner_handle is not None and self._planner_task is None:
            self._planner_task = asyncio.get_running_loop().create_task(self._sync_planner())

    async def _sync_planner(self) -> None:
        """Keep the local planner's statistics fresh from the planner actor (no hop per query)."""
        while True:
            try:
                snap = await self.planner_handle.snapshot.remote(self.planner.version)
                if snap is not None:
                    stats, version = snap
                    self.planner.set_all_stats(stats, version)
                obs = self.planner.observations[-200:]
                if obs:
                    await self.planner_handle.record.remote(
                        [(int(e), int(a), "replica") for e, a in obs])
                    self.planner.observations.clear()
            except Exception as exc:  # the planner restarting: keep the last stats
                log.debug("planner sync failed: %s", exc)
            await asyncio.sleep(2.0)

    async def refresh_planner_now(self) -> None:
        if self.planner_handle is None:
            return
        await self.planner_handle.refresh.remote()
        snap = await self.planner_handle.snapshot.remote(-1)
        if snap is not None:
            self.planner.set_all_stats(*snap)

    # -- rate limits ------------------------------------------------------------------------
    async def check_rate(self, caller: Caller, tool: str, workspace: str | None,
                         headers: Any, cost: int = 1, session: str | None = None) -> None:
        """Charge the call to its budgets. A workspace the caller may not use is never charged
        (the request is refused later, and must not spend that tenant's quota); the session is
        the capture's sessionId, else the x-memoray-session header."""
        from memoray.ratelimit import exempt, request_keys

        if (self.limiter is None or not self.settings.rate_limit_enabled
                or exempt(self.settings, caller.principal)):
            return

        if workspace is not None and not caller.principal.allows_workspace(workspace):
            workspace = None
        if session is None:
            try:
                session = headers.get("x-memoray-session") or headers.get("mcp-session-id")
            except Exception:  # headers of an unknown transport: no session key
                session = None
        keys, units = request_keys(tool, workspace=workspace, session=session,
                                   principal=caller.principal.name, items=cost)
        decision = await self.limiter.acquire(keys, units)
        if not decision.allowed:
            self.metrics.rate_limited.labels(kind=decision.kind or "request").inc()
            self.service._audit(caller, tool, workspace=workspace, outcome="denied",
                                code="RATE_LIMIT_EXCEEDED")
            raise decision.error()

    # -- build-context ----------------------------------------------------------------------
    async def context(self, caller: Caller, *, query: str | None, limit: int,
                      filters: dict | None, budget: int, workspace_id: str | None,
                      branch: str | None, session_id: str | None) -> dict:
        from memoray.context import SAFETY_MARGIN, build_context

        if not 1 <= limit <= 100:
            from memoray.errors import invalid

            raise invalid("limit: must be between 1 and 100")
        base = dict(filters or {})
        if workspace_id:
            base = {"$and": [base, {"workspaceId": workspace_id}]} if base else {
                "workspaceId": workspace_id}
        text_query = query or " ".join(x for x in ("recent decisions changes problems", branch)
                                       if x)
        records, _ = await self.service.search(caller, text_query, limit, base or None,
                                               action="build-context", recency_weight=0.3)
        if branch:  # recent changes on this branch, even when the query did not surface them
            recent_filter = {"$and": [base, {"gitBranch": branch}]} if base else {
                "gitBranch": branch}
            more, _ = await self.service.search(
                caller, f"changes on {branch}", min(limit, 20), recent_filter,
                action="build-context", recency_weight=0.8)
            seen = {r["id"] for r in records}
            records += [r for r in more if r["id"] not in seen]
        block = build_context(records, budget=budget, query=query,
                              workspace_id=workspace_id or "all workspaces", branch=branch,
                              margin=SAFETY_MARGIN)
        return {"context": block.text, "tokens": block.tokens, "included": len(block.included),
                "omitted": len(block.omitted), "includedIds": block.included,
                "sections": block.sections}


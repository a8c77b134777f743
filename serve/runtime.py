"""Everything one replica holds: the service, its backend clients, the auth token store, the
rate-limit lease client, the audit log (group-committed) and the redactor. Built once, inside the
replica."""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from memoray.actors.backend import Backend
from memoray.actors.planner import QueryPlanner
from memoray.serve.observability import Metrics
from memoray.serve.service import MemoryService
from memoray.settings import Settings

log = logging.getLogger(__name__)
HEALTH_EVERY_S = 10.0


class Runtime:
    def __init__(self, settings: Settings, backend: Backend, *, metrics: Metrics | None = None,
                 planner_client: Any = None, limiter: Any = None, expiry: Any = None,
                 tokens: Any = None, audit: Any = None, webhooks: Any = None):
        """`tokens`, `audit`: cluster mode passes the cluster-wide token store and audit log
        (serve/cluster_state.py) instead of files on this node's disk."""
        from memoray.audit import AuditLog, GroupCommit
        from memoray.auth import TokenStore
        from memoray.redaction import Redactor

        self.settings = settings
        self.metrics = metrics or Metrics()
        self.tokens = tokens if tokens is not None else TokenStore(
            settings.resolved_tokens_file())
        self.redactor = Redactor(pii=settings.redact_pii)
        self.audit = audit if audit is not None else GroupCommit(
            AuditLog(settings.resolved_data_dir() / "audit" / "audit.log",
                     redact=lambda s: self.redactor.redact(s).text))
        self.limiter = limiter
        self.planner = QueryPlanner()
        self.planner_client = planner_client
        self.service = MemoryService(settings, backend, planner=self.planner,
                                     redactor=self.redactor, audit=self.audit, limiter=limiter,
                                     metrics=self.metrics, expiry=expiry, webhooks=webhooks)
        self._planner_task: asyncio.Task | None = None
        self._health_task: asyncio.Task | None = None

    # -- planner statistics ------------------------------------------------------------------
    def start_background(self) -> None:
        if self.planner_client is not None and self._planner_task is None:
            self._planner_task = asyncio.get_running_loop().create_task(self._sync_planner())
        if self._health_task is None:
            self._health_task = asyncio.get_running_loop().create_task(self._health_gauges())

    async def _health_gauges(self) -> None:
        """Keep memoray_component_up and memoray_memories current for Prometheus, whether or
        not anyone calls /healthz (the alert on a component down relies on them)."""
        while True:
            try:
                await self.service.health(detailed=False)
            except Exception as exc:
                log.debug("health refresh failed: %s", exc)
            await asyncio.sleep(HEALTH_EVERY_S)

    async def _sync_planner(self) -> None:
        """Keep the local planner's statistics fresh from the planner actor (no hop per query)."""
        while True:
            try:
                snap = await self.planner_client.snapshot(self.planner.version)
                if snap is not None:
                    stats, version = snap
                    self.planner.set_all_stats(stats, version)
                obs = self.planner.observations[-200:]
                if obs:
                    await self.planner_client.record(
                        [(int(e), int(a), "replica") for e, a in obs])
                    self.planner.observations.clear()
            except Exception as exc:  # the planner restarting: keep the last stats
                log.debug("planner sync failed: %s", exc)
            await asyncio.sleep(2.0)

    async def refresh_planner_now(self) -> None:
        if self.planner_client is None:
            return
        await self.planner_client.refresh()
        snap = await self.planner_client.snapshot(-1)
        if snap is not None:
            self.planner.set_all_stats(*snap)

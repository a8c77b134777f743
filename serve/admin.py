"""Operating a store: expire-memories, audit-log, rotate-encryption, memory-stats and
health-check. Each path reads top to bottom: validate, authorize, rate-limit, work, audit."""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from typing import Any

from memoray import filters as flt
from memoray import gcpause
from memoray.errors import ErrorCode, MemorayError, invalid
from memoray.serve.request import Caller, UseCase


class Admin(UseCase):
    # -- expiry -----------------------------------------------------------------------------
    async def expire(self, caller: Caller, dry_run: bool, workspace_id: str | None) -> dict:
        """Run TTL expiry and retention now. Admins may run it for everything; others only for
        workspaces they hold (a workspaceId is then required unless they hold all)."""
        if self.expiry is None:
            raise MemorayError(ErrorCode.UNAVAILABLE, "the expiry worker is not running")
        await self.authorize(caller, "write", "expire", workspace_id)
        allowed = caller.principal.visible_workspaces()
        if workspace_id:
            scope: list[str] | None = [workspace_id]
        elif allowed is None:
            scope = None
        else:
            scope = sorted(allowed)
        await self.rate_limit(caller, workspace_id)
        report = await self.expiry.run(dry_run, set(scope) if scope else None)
        await self.audited(caller, "expire", workspace=workspace_id,
                    detail=f"dryRun={dry_run} expired={report['expired']}")
        return report

    # -- admin ------------------------------------------------------------------------------
    async def audit_log(self, caller: Caller, limit: int, principal: str | None,
                        action: str | None) -> dict:
        if not 1 <= limit <= 1000:
            raise invalid("limit: must be between 1 and 1000")
        await self.authorize(caller, "admin", "audit-log")
        await self.rate_limit(caller, None)
        entries = self.audit.read(limit=limit, principal=principal, action=action) if (
            self.audit is not None) else []
        return {"entries": entries, "count": len(entries)}

    async def rotate_encryption(self, caller: Caller) -> dict:
        """Re-encrypt every record under the current key, online, shard by shard."""
        await self.authorize(caller, "admin", "rotate-encryption")
        await self.rate_limit(caller, None)
        resealed = await self.backend.shards.each(lambda c: c.reseal())
        await self.audited(caller, "rotate-encryption", detail=f"resealed={sum(resealed)}")
        return {"resealed": sum(resealed), "perShard": resealed}

    async def stats(self, caller: Caller, workspace_id: str | None = None) -> dict:
        await self.authorize(caller, "read", "stats", workspace_id)
        await self.rate_limit(caller, workspace_id)
        shards = await self.backend.shards.each(lambda c: c.stats())
        allowed = caller.principal.visible_workspaces()
        per_ws: Counter = Counter()
        per_type: Counter = Counter()
        per_tier: Counter = Counter()
        # Per-workspace breakdowns come from each shard's postings (counts only: no contents).
        for s in shards:
            fields = s["postings"].get("fields", {})
            for ws, c in fields.get("workspace_id", {}).items():
                if (allowed is None or ws in allowed) and (workspace_id in (None, ws)):
                    per_ws[ws] += c
            if allowed is None and workspace_id is None:
                for et, c in fields.get("event_type", {}).items():
                    per_type[et] += c
                for tier, c in fields.get("tier", {}).items():
                    per_tier[tier] += c
        restricted = allowed is not None or workspace_id is not None
        if restricted:  # exact per-type counts for the visible workspaces only
            node = flt.in_("workspace_id", sorted(per_ws)) if per_ws else None
            if node is not None:
                parts = await self.backend.shards.each(lambda c: c.select(node))
                rows = [r for part in parts for r in part]
                per_type = Counter(r["event_type"] for r in rows)
                per_tier = Counter(r["tier"] for r in rows)
        out = {
            "total": sum(per_ws.values()),
            "workspaces": dict(per_ws),
            "eventTypes": dict(per_type),
            "tiers": dict(per_tier),
        }
        if not restricted:
            out["shards"] = [{"shard": s["shard"], "records": s["records"],
                              "indexed": s["indexed"], "deletedInGraph": s["deleted_in_graph"],
                              "graphPending": s.get("graph_pending", 0),
                              "heap": s.get("heap", {}), "gc": s.get("gc", {}),
                              "seq": s["seq"], "snapshotSeq": s["snapshot_seq"],
                              "diskBytes": s["disk_bytes"], "indexBytes": s["index_bytes"],
                              "lexical": s["lexical"], "recovery": s["recovery"],
                              "stages": s.get("stages", {})}
                             for s in shards]
            out["storageBytes"] = sum(s["disk_bytes"] for s in shards)
            out["indexBytes"] = sum(s["index_bytes"] for s in shards)
            if self.expiry is not None:
                try:
                    out["expiry"] = await self.expiry.status()
                except Exception as exc:  # stats must not fail because the worker restarts
                    out["expiry"] = {"error": type(exc).__name__}
            out["planner"] = self.planner.accuracy()
        return out

    async def health(self, detailed: bool = False) -> dict:
        """Every component's status. In detail, each shard also lists its replicas: node, role
        (primary or replica), in-sync, and replication lag in log entries. Sets the
        memoray_component_up and memoray_memories gauges as a side effect."""
        components: dict[str, Any] = {}
        overall = "ok"
        replicas = await self._replicas() if detailed else {}

        async def probe(name: str, coro: Any, shard: int | None = None) -> None:
            nonlocal overall
            try:
                res = await asyncio.wait_for(coro, 5.0)
                components[name] = res if detailed else {"status": res.get("status", "ok")}
                if shard is not None and "records" in res:
                    self.metrics.memories.labels(shard=shard).set(res["records"])
                if shard is not None and detailed:
                    components[name]["replicas"] = replicas.get(shard, [])
            except Exception as exc:  # a dead or restarting component degrades health
                components[name] = {"status": "unavailable", "error": type(exc).__name__}
                overall = "degraded"

        await asyncio.gather(
            *[probe(f"shard-{i}", self.backend.shards[i].health(), shard=i)
              for i in range(len(self.backend.shards))],
            probe("embedder", self._embedder_health()),
            *([probe("webhooks", self.webhooks.health())] if self.webhooks is not None else []),
        )
        for name, comp in components.items():  # degraded still answers (its own alert)
            self.metrics.up.labels(component=name).set(
                1 if comp.get("status") in ("ok", "degraded") else 0)
        out = {"status": overall, "uptimeSeconds": round(time.time() - self.started, 1),
               "components": components}
        if detailed:  # this replica's own process (shards and workers report theirs above)
            out["replica"] = {"gc": gcpause.WATCH.stats()}
        return out

    async def _replicas(self) -> dict[int, list[dict]]:
        """Each shard's replicas. A replicated store asks its controller (actors/controller.py:
        placement, roles and the lag it measures); a single-machine shard is its own primary."""
        shards = self.backend.shards
        controller = getattr(shards[0], "controller", None) if len(shards) else None
        if controller is None:
            return {i: [{"node": "local", "role": "primary", "inSync": True, "lag": 0}]
                    for i in range(len(shards))}
        try:
            ref = controller().replicas.remote()
            rows = await asyncio.wait_for(asyncio.wrap_future(ref.future()), 5.0)
        except Exception:  # the controller restarting: shards still report their own health
            return {}
        return {int(k): v for k, v in rows.items()}

    async def _embedder_health(self) -> dict:
        workers = await self.backend.embedders.health()
        status = "ok" if all(w.get("status") == "ok" for w in workers) else "degraded"
        out = {"status": status, "workers": workers}
        if self.backend.queries is not None:  # this replica's own query model
            out["queries"] = self.backend.queries.stats()
        return out

    async def health_check(self, caller: Caller, detailed: bool = False) -> dict:
        """health-check: details (each component's own report) for admins only."""
        await self.rate_limit(caller, None)
        return await self.health(detailed=detailed and caller.principal.can("admin"))

    async def ping(self, caller: Caller) -> dict:
        """Liveness through the whole stack (auth, rate limit); touches no data."""
        await self.rate_limit(caller, None)
        return {"ok": True}

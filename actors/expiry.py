"""ExpiryWorker: TTL expiry and retention policies, on a schedule or on demand.

Expiry is real deletion (LMDB, vector index, lexical index, postings). Retention policies act on
memories older than N days: delete them, archive them (JSON lines, fsync'ed before anything is
deleted, which the operator reads back with any JSON tool), or anonymize them (personal data
redacted, session and agent dropped, the lesson kept). Every run leaves a report.
"""

from __future__ import annotations

import asyncio
import json
import os
import time
from collections import Counter, deque
from pathlib import Path
from typing import Any

from memoray import filters as flt
from memoray.actors.client import ActorClient
from memoray.actors.shard_client import ShardSet
from memoray.settings import RetentionPolicy
from memoray.timeutil import to_iso

BATCH = 500


def policy_filter(policy: RetentionPolicy, now: float) -> Any:
    parts: list[Any] = [flt.Range("timestamp", None, False, now - policy.after_days * 86400, False)]
    if policy.event_types:
        parts.append(flt.in_("event_type", policy.event_types))
    if policy.tiers:
        parts.append(flt.in_("tier", policy.tiers))
    if policy.workspaces:
        parts.append(flt.in_("workspace_id", policy.workspaces))
    if policy.action == "anonymize":  # once is enough
        parts.append(flt.not_(flt.Eq("metadata.anonymized", True)))
    return flt.and_(parts)


def _wire(record: dict) -> dict:
    out = dict(record)
    for key in ("timestamp", "created_at", "updated_at", "expires_at"):
        if out.get(key):
            out[key] = to_iso(out[key])
    return out


class ExpiryWorker:
    def __init__(self, shards: ShardSet, *, policies: list[RetentionPolicy] | None = None,
                 archive_dir: Path | None = None, redactor: Any = None, keep_reports: int = 20,
                 interval_s: float | None = None):
        """`interval_s`: run a pass on that schedule once `start()` is called (the actor)."""
        self.shards = shards
        self.interval_s = interval_s
        self._task: asyncio.Task | None = None
        self.policies = policies or []
        self.archive_dir = Path(archive_dir) if archive_dir else None
        self.redactor = redactor
        self.reports: deque[dict] = deque(maxlen=keep_reports)
        self.totals: Counter = Counter()
        self._lock = asyncio.Lock()

    async def run(self, *, dry_run: bool = False, now: float | None = None,
                  workspaces: set[str] | None = None) -> dict:
        """One pass. `workspaces` limits it to those (a caller's scope); None means all."""
        async with self._lock:
            return await self._run(dry_run, now or time.time(), workspaces)

    async def _run(self, dry_run: bool, now: float, workspaces: set[str] | None) -> dict:
        t0 = time.perf_counter()
        by_type: Counter = Counter()
        errors: list[str] = []
        expired_total = 0
        self.shards.refresh()  # a reshard may have added or removed shards
        for shard in range(len(self.shards)):
            try:
                rows = await self.shards[shard].expired(now)
                rows = [r for r in rows if workspaces is None or r["workspace_id"] in workspaces]
                for r in rows:
                    by_type[r["event_type"]] += 1
                expired_total += len(rows)
                if not dry_run:
                    for i in range(0, len(rows), BATCH):
                        await self.shards[shard].purge([r["id"] for r in rows[i:i + BATCH]])
            except Exception as exc:  # one bad shard must not stop the others
                errors.append(f"shard {shard}: {type(exc).__name__}: {exc}")
        policy_reports = []
        for policy in self.policies:
            policy_reports.append(await self._apply(policy, now, dry_run, workspaces, errors))
        seconds = time.perf_counter() - t0
        acted = expired_total + sum(p["matched"] for p in policy_reports)
        report = {
            "dryRun": dry_run,
            "startedAt": to_iso(now),
            "seconds": round(seconds, 4),
            "expired": expired_total,
            "byEventType": dict(by_type),
            "policies": policy_reports,
            "itemsPerSecond": round(acted / seconds, 1) if seconds > 0 else None,
            "errors": errors,
        }
        if not dry_run:
            self.totals["expired"] += expired_total
            self.totals["runs"] += 1
            for p in policy_reports:
                self.totals[p["action"]] += p["applied"]
        self.reports.append(report)
        return report

    async def _apply(self, policy: RetentionPolicy, now: float, dry_run: bool,
                     workspaces: set[str] | None, errors: list[str]) -> dict:
        node = policy_filter(policy, now)
        if workspaces is not None:
            node = flt.and_([node, flt.in_("workspace_id", sorted(workspaces))])
        matched = applied = 0
        for shard in range(len(self.shards)):
            try:
                rows = await self.shards[shard].select(node)
                matched += len(rows)
                if dry_run or not rows:
                    continue
                for i in range(0, len(rows), BATCH):
                    ids = [r["id"] for r in rows[i:i + BATCH]]
                    applied += await self._act(policy, shard, ids)
            except Exception as exc:
                errors.append(f"policy {policy.action} shard {shard}: {type(exc).__name__}: {exc}")
        return {"action": policy.action, "afterDays": policy.after_days, "matched": matched,
                "applied": applied}

    async def _act(self, policy: RetentionPolicy, shard: int, ids: list[str]) -> int:
        if policy.action == "delete":
            return len(await self.shards[shard].purge(ids))
        records = [r for r in await self.shards[shard].get(ids) if r is not None]
        if policy.action == "archive":
            self._archive(records)  # durable before the delete
            return len(await self.shards[shard].purge([r["id"] for r in records]))
        for r in records:  # anonymize
            r["content"] = self._scrub(r["content"])
            meta = dict(r.get("metadata") or {})
            if self.redactor is not None:
                meta, _ = self.redactor.redact_value(meta)
            meta["anonymized"] = True
            r.update(metadata=meta, session_id=None, agent_id=None, updated_at=time.time())
            await self.shards[shard].update_record(r)
        return len(records)

    def _scrub(self, text: str) -> str:
        if self.redactor is None:
            return text
        return self.redactor.redact(text).text

    def _archive(self, records: list[dict]) -> None:
        if self.archive_dir is None:
            raise RuntimeError("archive policy configured without an archive directory")
        self.archive_dir.mkdir(parents=True, exist_ok=True)
        path = self.archive_dir / f"archive-{time.strftime('%Y-%m-%d', time.gmtime())}.jsonl"
        data = "".join(json.dumps(_wire(r), ensure_ascii=False) + "\n" for r in records)
        with open(path, "a", encoding="utf-8") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())

    # -- the schedule (the actor) --------------------------------------------------------------
    async def start(self) -> bool:
        """Run a pass every interval_s from now on (idempotent)."""
        if self._task is None and self.interval_s:
            self._task = asyncio.get_running_loop().create_task(self._loop())
        return True

    async def _loop(self) -> None:
        while True:
            await asyncio.sleep(self.interval_s or 60.0)
            try:
                await self.run()
            except Exception:  # noqa: BLE001 - a failed pass is in its report; keep the schedule
                pass

    async def health(self) -> dict:
        await self.start()
        return {"status": "ok", "runs": self.totals.get("runs", 0)}

    def status(self) -> dict:
        return {"reports": list(self.reports)[-5:], "totals": dict(self.totals),
                "policies": [p.model_dump(by_alias=True) for p in self.policies]}


def read_archive(path: Path) -> list[dict]:
    """What an archive file holds, one memory per line (for operators and tests)."""
    with open(path, encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


ACTOR_OPTIONS = {"max_restarts": -1, "max_task_retries": 0, "num_cpus": 0}


def expiry_actor_class(**options: Any) -> Any:
    import ray

    return ray.remote(**{**ACTOR_OPTIONS, **options})(ExpiryWorker)


class ExpiryClient(ActorClient[ExpiryWorker]):
    async def run(self, dry_run: bool = False, workspaces: set[str] | None = None,
                  now: float | None = None) -> dict:
        return await self._call(ExpiryWorker.run, dry_run=dry_run, workspaces=workspaces,
                                now=now)

    async def status(self) -> dict:
        return await self._call(ExpiryWorker.status)

    async def health(self) -> dict:
        return await self._call(ExpiryWorker.health)

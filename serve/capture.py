"""Capture: storing memories (capture-memory, capture-memories) and storing with merge
(upsert-memory). Each path reads top to bottom: validate, authorize, rate-limit, work, audit."""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from typing import Any

import numpy as np

from actors.shard_search import Hit, SearchRequest
from memoray import filters as flt
from memoray.errors import invalid
from memoray.ids import new_id
from memoray.models import CaptureItem
from memoray.prepare import (
    CHUNK_THRESHOLD_CHARS,
    Prepared,
    content_hash,
    prepare_item,
    redact_text,
    redact_value,
)
from memoray.timeutil import now as utc_now
from memoray.timeutil import parse_iso
from serve.observability import span
from serve.request import Caller, UseCase

# Batches with more content than this are redacted and chunked in a worker thread, so the
# event loop keeps serving other requests; smaller ones are cheaper inline than a thread hop.
OFF_LOOP_CHARS = 16_384


def _one_workspace(items: list[CaptureItem]) -> str | None:
    workspaces = {it.workspace_id for it in items}
    return next(iter(workspaces)) if len(workspaces) == 1 else None


class Capture(UseCase):
    def __init__(self, *args: Any, **kwargs: Any):
        super().__init__(*args, **kwargs)
        self._upsert_locks: dict[str, asyncio.Lock] = {}

    async def capture(self, items: list[CaptureItem], caller: Caller, *,
                      action: str = "capture", vectors: np.ndarray | None = None,
                      charged: bool = False) -> list[dict]:
        """Store items; returns per item its ids (one, or a document's chunks), whether it was
        an idempotent replay, and the redactions applied. `vectors`: the embeddings of the
        items' (unchunked) contents when the caller has them (upsert)."""
        # validate: the items are pydantic models already (the tool layer parsed them)
        if not items:
            raise invalid("items: must hold at least one item")
        # authorize
        for item in items:
            await self.authorize(caller, "write", action, item.workspace_id)
        # rate-limit
        if not charged:
            await self.rate_limit(caller, _one_workspace(items), cost=len(items),
                                  session=items[0].session_id)
        # work: redact and chunk, embed, commit on each record's shard
        now = utc_now()
        with span("memoray.prepare", items=len(items)):
            prepared = await self._prepare(items, now)
        records = [r for p in prepared for r in p.records]
        if vectors is None or len(vectors) != len(records):
            with span("memoray.embed", texts=len(records)):
                vectors = await self.embed([r["content"] for r in records])
        by_shard: dict[int, list[int]] = {}
        for i, rec in enumerate(records):
            by_shard.setdefault(self.backend.shards.index_of(rec["id"]), []).append(i)
        with span("memoray.commit", shards=len(by_shard)):
            outs = await asyncio.gather(*[
                self.backend.shards[s].put([records[i] for i in idx], vectors[idx])
                for s, idx in by_shard.items()])
        stored: dict[int, tuple[str, bool]] = {}
        for (_shard, idx), out in zip(by_shard.items(), outs):
            for i, res in zip(idx, out):
                stored[i] = res
        results, pos = [], 0
        for p in prepared:
            ids, created = [], False
            for _ in p.records:
                mid, was_created = stored[pos]
                ids.append(mid)
                created = created or was_created
                pos += 1
            results.append({"ids": ids, "chunks": len(ids) if len(ids) > 1 else 0,
                            "deduplicated": not created,
                            "parentId": p.records[0]["parent_id"] if len(ids) > 1 else None,
                            "redactions": dict(p.redactions)})
        for item, res in zip(items, results):
            self.metrics.captures.labels(event_type=item.event_type).inc()
            for kind, n in res["redactions"].items():
                self.metrics.redactions.labels(kind=kind).inc(n)
        # audit: one entry per item, one fsync for the batch
        await self.audited_many(caller, action, [(item.workspace_id, res["ids"])
                                                 for item, res in zip(items, results)])
        return results

    async def _prepare(self, items: list[CaptureItem], now: float) -> list[Prepared]:
        def run() -> list[Prepared]:
            return [prepare_item(item, now, shards=len(self.backend.shards),
                                 redactor=self.redactor,
                                 ttl_overrides=self.settings.ttl_overrides) for item in items]

        if sum(len(it.content) for it in items) > OFF_LOOP_CHARS:
            return await asyncio.to_thread(run)
        return run()

    # -- upsert with merge ------------------------------------------------------------------
    async def upsert(self, items: list[CaptureItem], caller: Caller,
                     threshold: float = 0.85) -> dict:
        """Exact duplicates (same content hash in the same scope) are left unchanged;
        near-duplicates (cosine >= threshold in the same scope) merge into the existing memory,
        the newer wording winning; everything else is created. Items are applied in order, so a
        batch deduplicates against itself. Scope: workspace, branch, and the agent for private
        memories. Upserts of one workspace are serialized within a replica."""
        # validate
        if not items:
            raise invalid("items: must hold at least one item")
        if not 0.0 < threshold <= 1.0:
            raise invalid("similarityThreshold: must be in (0, 1]")
        # authorize
        for item in items:
            await self.authorize(caller, "write", "upsert", item.workspace_id)
        # rate-limit
        await self.rate_limit(caller, _one_workspace(items), cost=len(items),
                              session=items[0].session_id)
        # work (each item audits its own outcome as it is applied)
        small = [i for i, it in enumerate(items) if len(it.content) <= CHUNK_THRESHOLD_CHARS]
        texts = {i: redact_text(self.redactor, items[i].content)[0] for i in small}
        vectors = await self.embed([texts[i] for i in small]) if small else None
        vec_of = {i: vectors[j] for j, i in enumerate(small)}
        report: list[dict] = []
        counts: Counter = Counter()
        for n, item in enumerate(items):
            lock = self._upsert_locks.setdefault(item.workspace_id, asyncio.Lock())
            async with lock:
                res = await self._upsert_one(item, caller, threshold, texts.get(n),
                                             vec_of.get(n))
            counts[res["action"]] += 1
            report.append(res)
        return {"totalInput": len(items), "created": counts["created"],
                "merged": counts["merged"], "unchanged": counts["unchanged"], "items": report}

    def _scope_filter(self, item: CaptureItem) -> dict:
        parts: list[dict] = [{"workspaceId": item.workspace_id},
                             {"gitBranch": item.git_branch}, {"parentId": None}]
        if item.visibility == "private":
            parts += [{"visibility": "private"}, {"agentId": item.agent_id}]
        else:
            parts.append({"visibility": {"$ne": "private"}})
        return {"$and": parts}

    async def _upsert_one(self, item: CaptureItem, caller: Caller, threshold: float,
                          content: str | None, vector: np.ndarray | None) -> dict:
        if content is None or vector is None:  # documents are stored, never merged
            res = (await self.capture([item], caller, action="upsert", charged=True))[0]
            return {"action": "created", "id": res["ids"][0], "ids": res["ids"]}
        digest = content_hash(content)
        node = await self.scoped_filter(caller, flt.parse_filter(self._scope_filter(item)),
                                        "upsert")
        req = SearchRequest(vector=vector, query="", k=1, filter=node, strategy="exact",
                            mode="vector", tier_weighting=False, now=time.time())
        parts = await self.backend.shards.each(lambda c: c.search(req))
        hits = sorted((h for p in parts for h in p["hits"]), key=lambda h: -h.vector_score)
        if hits and hits[0].record.get("content_hash") == digest:
            return {"action": "unchanged", "id": hits[0].record["id"], "similarity": 1.0}
        if hits and hits[0].vector_score >= threshold:
            return await self._merge(hits[0], item, content, vector, caller)
        res = (await self.capture([item], caller, action="upsert", vectors=vector[None, :],
                                  charged=True))[0]
        return {"action": "created", "id": res["ids"][0],
                "similarity": round(hits[0].vector_score, 4) if hits else None}

    async def _merge(self, hit: Hit, item: CaptureItem, content: str, vector: np.ndarray,
                     caller: Caller) -> dict:
        old = hit.record
        shard = self.backend.shards.for_id(old["id"])
        full = (await shard.get([old["id"]]))[0] or old
        meta, _ = redact_value(self.redactor, item.metadata)
        merged_meta: dict[str, Any] = {**(full.get("metadata") or {}), **meta}
        input_id = new_id()
        now = utc_now()
        record = {**full, "content": content, "content_hash": content_hash(content),
                  "metadata": merged_meta, "updated_at": now,
                  "timestamp": parse_iso(item.timestamp) if item.timestamp else now,
                  "merge_count": int(full.get("merge_count") or 1) + 1,
                  "merged_ids": [*(full.get("merged_ids") or []), input_id],
                  "previous_content": full.get("content"),
                  "session_id": item.session_id or full.get("session_id"),
                  "git_commit": item.git_commit or full.get("git_commit")}
        await shard.put([record], vector[None, :])
        await self.audited(caller, "upsert-merge", workspace=item.workspace_id, ids=[old["id"]])
        return {"action": "merged", "id": old["id"], "mergedInputId": input_id,
                "similarity": round(hit.vector_score, 4), "mergeCount": record["merge_count"]}

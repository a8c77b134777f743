"""Capture: storing memories (capture-memory, capture-memories) and storing with merge
(upsert-memory). Each path reads top to bottom: validate, authorize, rate-limit, work, audit."""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from typing import Any

import numpy as np

from memoray import filters as flt
from memoray import lifecycle
from memoray.errors import ErrorCode, MemorayError, invalid
from memoray.ids import new_id
from memoray.lifecycle import KNOWN_EVENT_TYPES
from memoray.models import CaptureItem
from memoray.prepare import (
    CHUNK_THRESHOLD_CHARS,
    Prepared,
    content_hash,
    prepare_item,
    redact_text,
    redact_value,
)
from memoray.records import Record
from memoray.serve.observability import span
from memoray.serve.request import Caller, StageClock, UseCase
from memoray.timeutil import now as utc_now
from memoray.timeutil import parse_iso

# Batches with more content than this are redacted and chunked in a worker thread, so the
# event loop keeps serving other requests; smaller ones are cheaper inline than a thread hop.
OFF_LOOP_CHARS = 16_384
# Records per pipeline group of a capture batch: group g+1 embeds while group g commits.
# 50 rather than 32: fewer, larger model calls (112 -> 122 memories/s at 10,000 MiniLM,
# benchmarks/results/core_10k_parts.json against core_10k_g50.json).
PIPELINE_RECORDS = 50


def _groups(prepared: list[Prepared], size: int) -> list[list[int]]:
    """Record indexes cut into groups of about `size`, never inside an item (a document's
    chunks stay in one group, so they commit in one transaction on their shard)."""
    groups: list[list[int]] = [[]]
    pos = 0
    for p in prepared:
        if len(groups[-1]) >= size:
            groups.append([])
        groups[-1].extend(range(pos, pos + len(p.records)))
        pos += len(p.records)
    return [g for g in groups if g]


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
        an idempotent replay, and the redactions applied, or its `error` when its shard failed
        (items on other shards are stored: not atomic across shards; a retry with the same
        idempotency keys stores nothing twice). When every item failed, raises that error.
        `vectors`: the embeddings of the items' (unchunked) contents when the caller has them
        (upsert)."""
        clock = self.clock("capture")
        # validate: the items are pydantic models already (the tool layer parsed them)
        if not items:
            raise invalid("items: must hold at least one item")
        clock.lap("validation")
        # authorize
        items = await self.authorize_items(caller, items, action)
        clock.lap("auth")
        # rate-limit
        if not charged:
            await self.rate_limit(caller, _one_workspace(items), cost=len(items),
                                  session=items[0].session_id)
            clock.lap("rate_limit")
        # work: redact and chunk, embed, commit on each record's shard
        now = utc_now()
        with span("memoray.prepare", items=len(items)):
            prepared = await self._prepare(items, now)
        records = [r for p in prepared for r in p.records]
        clock.lap("prepare")
        stored, failed = await self._embed_and_commit(prepared, records, vectors, clock)
        if failed and not stored:
            raise next(iter(failed.values()))
        clock.skip()
        results, pos = [], 0
        for p in prepared:
            ids, created = [], False
            error = next((failed[pos + k] for k in range(len(p.records)) if pos + k in failed),
                         None)
            if error is not None:
                pos += len(p.records)
                err = error if isinstance(error, MemorayError) else MemorayError(
                    ErrorCode.UNAVAILABLE, f"storage error: {type(error).__name__}")
                results.append({"ids": [], "chunks": 0, "deduplicated": False, "parentId": None,
                                "redactions": dict(p.redactions), "error": err.to_dict()})
                continue
            for _ in p.records:
                mid, was_created = stored[pos]
                ids.append(mid)
                created = created or was_created
                pos += 1
            parent = p.records[0]["parent_id"] if len(ids) > 1 else None
            if parent is not None and not created:  # a retried document: the stored one
                parent, ids = await self._stored_document(ids[0])
            results.append({"ids": ids, "chunks": len(ids) if len(ids) > 1 else 0,
                            "deduplicated": not created, "parentId": parent,
                            "redactions": dict(p.redactions)})
        for item, res in zip(items, results):
            self.metrics.captures.labels(event_type=item.event_type if item.event_type in
                                         KNOWN_EVENT_TYPES else "other").inc()
            for kind, n in res["redactions"].items():
                self.metrics.redactions.labels(kind=kind).inc(n)
        clock.lap("serialization")
        # audit: one entry per stored item, one fsync for the batch
        await self.audited_many(caller, action, [(item.workspace_id, res["ids"])
                                                 for item, res in zip(items, results)
                                                 if "error" not in res])
        clock.lap("audit")
        return results

    async def _embed_and_commit(self, prepared: list[Prepared], records: list[Record],
                                vectors: np.ndarray | None, clock: StageClock
                                ) -> tuple[dict[int, tuple[str, bool]], dict[int, BaseException]]:
        """Embed the records and commit them, pipelined: the batch is cut into groups at item
        boundaries, and group g+1 is embedded while group g commits (one transaction per shard
        per group), so the embedder never waits for an fsync. Returns (id, created) per stored
        record index, and the error per failed one: a failed shard or embedding fails only its
        own items (an item, a document's chunks included, is stored whole or not at all)."""
        stored: dict[int, tuple[str, bool]] = {}
        failed: dict[int, BaseException] = {}
        given = vectors is not None and len(vectors) == len(records)
        groups = [list(range(len(records)))] if given else _groups(prepared, PIPELINE_RECORDS)
        waited = {"embed": 0.0, "commit": 0.0}

        async def embed(group: list[int]) -> np.ndarray:
            if given:
                return vectors[group]
            with span("memoray.embed", texts=len(group)):
                return await self.embed([records[i]["content"] for i in group])

        async def commit(group: list[int], vecs: np.ndarray) -> None:
            # each record to its home's shard (re-routed during a reshard), one transaction per
            # shard; per record its (id, created) or the exception its shard raised
            with span("memoray.commit", records=len(group)):
                outs = await self.backend.shards.put_routed([records[i] for i in group], vecs)
            for i, out in zip(group, outs):
                if isinstance(out, BaseException):
                    failed[i] = out
                else:
                    stored[i] = out

        async def timed(kind: str, aw: Any) -> Any:
            t = time.perf_counter()
            try:
                return await aw
            finally:
                waited[kind] += time.perf_counter() - t

        next_vecs = asyncio.ensure_future(embed(groups[0]))
        committing: asyncio.Future | None = None
        try:
            for g, group in enumerate(groups):
                try:
                    vecs = await timed("embed", next_vecs)
                except MemorayError as exc:
                    vecs = exc
                except Exception as exc:
                    vecs = MemorayError(ErrorCode.EMBEDDING_FAILED, f"embedding failed: {exc}")
                if g + 1 < len(groups):
                    next_vecs = asyncio.ensure_future(embed(groups[g + 1]))
                if committing is not None:
                    await timed("commit", committing)
                    committing = None
                if isinstance(vecs, BaseException):
                    failed.update((i, vecs) for i in group)
                else:
                    committing = asyncio.ensure_future(commit(group, vecs))
            if committing is not None:
                await timed("commit", committing)
        finally:
            for fut in (next_vecs, committing):
                if fut is not None and not fut.done():
                    fut.cancel()
        # Time the request spent waiting on each (the rest of the other's time was hidden).
        clock.observe("embed", waited["embed"])
        clock.observe("commit", waited["commit"])
        clock.skip()
        return stored, failed

    async def _stored_document(self, first_chunk_id: str) -> tuple[str | None, list[str]]:
        """The parent id and chunk ids of the document a retry's first chunk resolved to."""
        shards = self.backend.shards
        rec = await shards.get_one(first_chunk_id)
        if rec is None or not rec.get("parent_id"):
            return None, [first_chunk_id]
        return rec["parent_id"], [r["id"] for r in await shards.document(rec["parent_id"])]

    async def _prepare(self, items: list[CaptureItem], now: float) -> list[Prepared]:
        routing = self.backend.shards.routing  # read on the loop: a reshard may change it

        def run() -> list[Prepared]:
            return [prepare_item(item, now, shards=routing,
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
        items = await self.authorize_items(caller, items, "upsert")
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
        now = time.time()
        parts = await self.backend.shards.each(lambda c: c.best_match(vector, node, 8, now))
        matches = sorted((m for m in parts if m is not None), key=lambda m: -m[1])
        best = matches[0] if matches else None
        if best is not None and best[0].get("content_hash") == digest:
            return {"action": "unchanged", "id": best[0]["id"], "similarity": 1.0}
        if best is not None and best[1] >= threshold:
            return await self._merge(best[0], best[1], item, content, vector, caller)
        return await self._create(item, caller, vector, best[1] if best else None)

    async def _merge(self, old: Record, similarity: float, item: CaptureItem, content: str,
                     vector: np.ndarray, caller: Caller) -> dict:
        shards = self.backend.shards
        full = await shards.get_one(old["id"])
        if full is None:  # deleted since the search: a delete wins, the item is stored anew
            return await self._create(item, caller, vector, similarity)
        meta, _ = redact_value(self.redactor, item.metadata)
        merged_meta: dict[str, Any] = {**(full.get("metadata") or {}), **meta}
        input_id = new_id()
        now = utc_now()
        tier = item.tier or lifecycle.default_tier(item.event_type)
        ttl = item.ttl_seconds if item.ttl_seconds is not None else lifecycle.default_ttl(
            item.event_type, tier, self.settings.ttl_overrides)
        retention = lifecycle.merged_retention(full, item.event_type, tier,
                                               (now + ttl) if ttl else None)
        record = {**full, "content": content, "content_hash": content_hash(content),
                  "metadata": merged_meta, "updated_at": now,
                  "timestamp": parse_iso(item.timestamp) if item.timestamp else now,
                  "merge_count": int(full.get("merge_count") or 1) + 1,
                  "merged_ids": [*(full.get("merged_ids") or []), input_id],
                  "previous_content": full.get("content"),
                  "session_id": item.session_id or full.get("session_id"),
                  "git_commit": item.git_commit or full.get("git_commit"), **retention}
        if not await shards.merge(record, vector):  # deleted in between: the delete wins
            return await self._create(item, caller, vector, similarity)
        await self.audited(caller, "upsert-merge", workspace=item.workspace_id, ids=[old["id"]])
        return {"action": "merged", "id": old["id"], "mergedInputId": input_id,
                "similarity": round(similarity, 4), "mergeCount": record["merge_count"]}

    async def _create(self, item: CaptureItem, caller: Caller, vector: np.ndarray,
                      similarity: float | None) -> dict:
        """Store an upserted item as new. Without a caller key it gets one derived from its
        scope and content, so two replicas creating the same fact at the same instant store it
        once (the key's shard decides, in one transaction)."""
        if not item.idempotency_key:
            scope = "\x1f".join(str(x) for x in (
                "upsert", item.git_branch, item.visibility or "shared",
                item.agent_id if item.visibility == "private" else "",
                content_hash(redact_text(self.redactor, item.content)[0])))
            item = item.model_copy(update={"idempotency_key": scope})
        res = (await self.capture([item], caller, action="upsert", vectors=vector[None, :],
                                  charged=True))[0]
        return {"action": "unchanged" if res["deduplicated"] else "created",
                "id": res["ids"][0],
                "similarity": round(similarity, 4) if similarity is not None else None}

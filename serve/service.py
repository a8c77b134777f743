"""MemoryService: what one Serve replica does for each tool, independent of MCP and of Ray.

Every method takes the caller's Principal, validates and authorizes before anything is stored,
and talks to shards and embedders only through a Backend, so unit tests run it in-process.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from actors.planner import QueryPlanner
from actors.shard import SearchRequest
from memoray import filters as flt
from memoray import lifecycle
from memoray.auth import Principal
from memoray.errors import ErrorCode, MemorayError, invalid, not_found
from memoray.ids import is_valid_id, new_id, new_id_on_shard, shard_for
from memoray.models import MAX_LIMIT, CaptureItem, RetrievedMemory
from memoray.settings import Settings
from memoray.timeutil import now as utc_now, parse_iso, to_iso
from serve.backend import Backend
from serve.observability import Metrics, span

log = logging.getLogger(__name__)

CHUNK_THRESHOLD_CHARS = 8000
CHUNK_MAX_CHARS = 4000
CHUNK_OVERLAP = 200


def content_hash(text: str) -> str:
    return hashlib.sha256(" ".join(text.split()).encode()).hexdigest()


@dataclass
class Caller:
    principal: Principal
    request_id: str = ""
    agent_id: str | None = None


@dataclass
class Prepared:
    """One capture item turned into the records to store (one, or several chunks)."""

    records: list[dict]
    redactions: Counter = field(default_factory=Counter)


class MemoryService:
    def __init__(self, settings: Settings, backend: Backend, *, planner: QueryPlanner | None = None,
                 redactor: Any = None, audit: Any = None, limiter: Any = None,
                 metrics: Metrics | None = None):
        self.settings = settings
        self.backend = backend
        self.planner = planner or QueryPlanner()
        self.redactor = redactor
        self.audit = audit
        self.limiter = limiter
        self.metrics = metrics or Metrics()
        self.started = time.time()

    # -- authorization helpers --------------------------------------------------------------
    def _audit(self, caller: Caller, action: str, *, workspace: str | None = None,
               ids: list[str] | None = None, outcome: str = "ok", code: str | None = None,
               detail: str | None = None) -> None:
        if self.audit is None:
            return
        self.audit.append(principal=caller.principal.name, action=action, workspace=workspace,
                          ids=ids or [], outcome=outcome, code=code, detail=detail,
                          request_id=caller.request_id)

    def _require(self, caller: Caller, scope: str, action: str, workspace: str | None = None):
        try:
            caller.principal.require(scope, workspace)
        except MemorayError as exc:
            self._audit(caller, action, outcome="denied", code=exc.code.value, detail=exc.message)
            raise

    def _scoped_filter(self, caller: Caller, node: Any, action: str) -> Any:
        """Restrict a filter to what the caller may see: its workspaces, and private memories
        only of its own agent."""
        principal = caller.principal
        named = flt.referenced_workspaces(node)
        if named is not None:
            for ws in named:
                self._require(caller, "read", action, ws)
        allowed = principal.visible_workspaces()
        if allowed is not None:
            node = flt._and([node, flt._in("workspace_id", sorted(allowed))])
        visible = [flt._not(flt.Eq("visibility", "private"))]
        if caller.agent_id:
            visible.append(flt.Eq("agent_id", caller.agent_id))
        return flt._and([node, flt._or(visible)])

    def _can_see(self, caller: Caller, record: dict) -> bool:
        if not caller.principal.allows_workspace(record["workspace_id"]):
            return False
        if record.get("visibility") == "private" and record.get("agent_id") != caller.agent_id:
            return False
        return True

    # -- capture ----------------------------------------------------------------------------
    def _redact(self, text: str) -> tuple[str, Counter]:
        if self.redactor is None:
            return text, Counter()
        res = self.redactor.redact(text)
        return res.text, Counter(res.counts)

    def _redact_meta(self, meta: dict) -> tuple[dict, Counter]:
        if self.redactor is None or not meta:
            return meta, Counter()
        value, counts = self.redactor.redact_value(meta)
        return value, Counter(counts)

    def _prepare(self, item: CaptureItem, now: float) -> Prepared:
        from memoray.chunking import split_document

        n = self.backend.shards
        content, red = self._redact(item.content)
        metadata, mred = self._redact_meta(item.metadata)
        red.update(mred)
        ts = parse_iso(item.timestamp, "timestamp") if item.timestamp else now
        tier = item.tier or lifecycle.default_tier(item.event_type)
        ttl = item.ttl_seconds if item.ttl_seconds is not None else lifecycle.default_ttl(
            item.event_type, tier)
        visibility = item.visibility or "shared"
        if visibility == "private" and not item.agent_id:
            raise invalid("visibility: a private memory needs an agentId")
        base = {
            "event_type": item.event_type, "metadata": metadata, "workspace_id": item.workspace_id,
            "session_id": item.session_id, "agent_id": item.agent_id,
            "git_branch": item.git_branch, "git_commit": item.git_commit, "tier": tier,
            "visibility": visibility, "timestamp": ts, "created_at": now, "updated_at": now,
            "expires_at": (now + ttl) if ttl else None, "parent_id": None, "chunk_index": None,
            "chunk_count": None, "merge_count": 1, "merged_ids": [],
            "idempotency_key": item.idempotency_key,
        }
        key_shard = (shard_for(f"{item.workspace_id}\x00{item.idempotency_key}", n)
                     if item.idempotency_key else None)
        if len(content) <= CHUNK_THRESHOLD_CHARS:
            rid = new_id_on_shard(key_shard, n) if key_shard is not None else new_id()
            rec = {"id": rid, "content": content, "content_hash": content_hash(content), **base}
            return Prepared([rec], red)
        # A document: chunks share one shard (the parent's), so get-document is one call.
        parent = new_id_on_shard(key_shard, n) if key_shard is not None else new_id()
        home = shard_for(parent, n)
        chunks = split_document(content, max_chars=CHUNK_MAX_CHARS, overlap=CHUNK_OVERLAP)
        records = []
        for c in chunks:
            rec = {**base, "id": new_id_on_shard(home, n), "content": c.content,
                   "content_hash": content_hash(c.content), "parent_id": parent,
                   "chunk_index": c.index, "chunk_count": len(chunks),
                   "chunk_overlap": c.overlap_prefix,
                   "idempotency_key": (f"{item.idempotency_key}#{c.index}"
                                       if item.idempotency_key else None)}
            records.append(rec)
        return Prepared(records, red)

    async def capture(self, items: list[CaptureItem], caller: Caller, *,
                      action: str = "capture") -> list[dict]:
        for item in items:
            self._require(caller, "write", action, item.workspace_id)
        now = utc_now()
        with span("memoray.prepare", items=len(items)):
            prepared = [self._prepare(item, now) for item in items]
        records = [r for p in prepared for r in p.records]
        with span("memoray.embed", texts=len(records)):
            vectors = await self._embed([r["content"] for r in records])
        by_shard: dict[int, list[int]] = {}
        for i, rec in enumerate(records):
            by_shard.setdefault(shard_for(rec["id"], self.backend.shards), []).append(i)
        with span("memoray.commit", shards=len(by_shard)):
            outs = await asyncio.gather(*[
                self.backend.shard(s, "put", [records[i] for i in idx], vectors[idx])
                for s, idx in by_shard.items()])
        stored: dict[int, tuple[str, bool]] = {}
        for (s, idx), out in zip(by_shard.items(), outs):
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
            self._audit(caller, action, workspace=item.workspace_id, ids=res["ids"])
        return results

    async def _embed(self, texts: list[str], query: bool = False) -> np.ndarray:
        try:
            return await self.backend.embed(texts, query)
        except MemorayError:
            raise
        except Exception as exc:
            raise MemorayError(ErrorCode.EMBEDDING_FAILED, f"embedding failed: {exc}") from exc

    # -- retrieve ---------------------------------------------------------------------------
    async def search(self, caller: Caller, query: str, limit: int, filters: dict | None, *,
                     mode: str = "hybrid", recency_weight: float = 0.0,
                     strategy: str | None = None, include_content: bool = True,
                     action: str = "retrieve") -> tuple[list[dict], dict]:
        self._require(caller, "read", action)
        if not 1 <= limit <= MAX_LIMIT:
            raise invalid(f"limit: must be between 1 and {MAX_LIMIT}")
        node = self._scoped_filter(caller, flt.parse_filter(filters), action)
        t0 = time.perf_counter()
        plan = self.planner.plan(node, limit)
        chosen = strategy or plan.strategy
        vector = None
        if mode != "lexical":
            with span("memoray.embed_query"):
                vector = (await self._embed([query], query=True))[0]
        req = SearchRequest(vector=vector, query=query, k=limit, filter=node, strategy=chosen,
                            oversample=plan.oversample, mode=mode,
                            alpha=self.settings.hybrid_alpha, now=time.time(),
                            recency_weight=recency_weight, include_content=include_content)
        with span("memoray.fanout", shards=self.backend.shards, strategy=chosen):
            try:
                parts = await asyncio.wait_for(self.backend.all_shards("search", req),
                                               self.settings.query_timeout_s)
            except asyncio.TimeoutError:
                raise MemorayError(ErrorCode.QUERY_TIMEOUT,
                                   f"query exceeded {self.settings.query_timeout_s}s") from None
        hits = sorted((h for p in parts for h in p["hits"]), key=lambda h: -h.score)[:limit]
        actual = [p["candidates"] for p in parts]
        if all(a is not None for a in actual):
            self.planner.record(plan.estimated_candidates, sum(actual), chosen)
        else:
            self.planner.record(plan.estimated_candidates, None, chosen)
        elapsed = time.perf_counter() - t0
        self.metrics.query_latency.labels(strategy=chosen).observe(elapsed)
        out = []
        for h in hits:
            rec = dict(h.record)
            rec["score"] = round(min(1.0, max(0.0, h.score)), 6)
            out.append(rec)
        info = {"plan": plan.to_dict(), "strategy": chosen, "seconds": elapsed,
                "shards": [{k: v for k, v in p.items() if k != "hits"} for p in parts]}
        return out, info

    async def retrieve(self, caller: Caller, query: str, limit: int = 10,
                       filters: dict | None = None, **kw: Any) -> list[RetrievedMemory]:
        records, _ = await self.search(caller, query, limit, filters, **kw)
        return [to_retrieved(r) for r in records]

    # -- single records ---------------------------------------------------------------------
    async def _get_record(self, caller: Caller, memory_id: str, action: str) -> dict:
        if not is_valid_id(memory_id):
            raise invalid("id: not a memory id (26 Crockford base32 characters)")
        shard = shard_for(memory_id, self.backend.shards)
        rec = (await self.backend.shard(shard, "get", [memory_id]))[0]
        if rec is None or not self._can_see(caller, rec):
            if rec is not None:  # exists in a workspace the caller can't see: same answer
                self._audit(caller, action, ids=[memory_id], outcome="denied", code="NOT_FOUND")
            raise not_found(f"memory {memory_id} not found")
        return rec

    async def get(self, caller: Caller, memory_id: str) -> RetrievedMemory:
        self._require(caller, "read", "get")
        rec = await self._get_record(caller, memory_id, "get")
        return to_retrieved({**rec, "score": 1.0})

    async def delete(self, caller: Caller, memory_id: str) -> dict:
        self._require(caller, "write", "delete")
        rec = await self._get_record(caller, memory_id, "delete")
        self._require(caller, "write", "delete", rec["workspace_id"])
        ids = [memory_id]
        shard = shard_for(memory_id, self.backend.shards)
        if rec.get("parent_id"):  # deleting a chunk deletes its whole document
            doc = await self.backend.shard(shard, "document", rec["parent_id"])
            ids = [r["id"] for r in doc]
        gone = await self.backend.shard(shard, "delete", ids)
        self._audit(caller, "delete", workspace=rec["workspace_id"], ids=gone)
        self.metrics.deletes.inc(len(gone))
        return {"id": memory_id, "deleted": memory_id in gone,
                "chunksDeleted": len(gone) if len(gone) > 1 else 0}

    async def get_document(self, caller: Caller, memory_id: str) -> dict:
        """Reassemble a chunked document from its parent id or any chunk id."""
        from memoray.chunking import reassemble

        self._require(caller, "read", "get-document")
        if not is_valid_id(memory_id):
            raise invalid("id: not a memory id (26 Crockford base32 characters)")
        shard = shard_for(memory_id, self.backend.shards)
        parent = memory_id
        doc = await self.backend.shard(shard, "document", parent)
        if not doc:
            rec = await self._get_record(caller, memory_id, "get-document")
            if not rec.get("parent_id"):
                return {"parentId": None, "content": rec["content"], "chunks": 1,
                        "expectedChunks": 1, "complete": True, "missing": [],
                        "workspaceId": rec["workspace_id"]}
            parent = rec["parent_id"]
            doc = await self.backend.shard(shard, "document", parent)
        doc = [r for r in doc if self._can_see(caller, r)]
        if not doc:
            raise not_found(f"document {memory_id} not found")
        expected = int(doc[0].get("chunk_count") or len(doc))
        present = {int(r["chunk_index"]) for r in doc}
        missing = sorted(set(range(expected)) - present)
        text = reassemble([(int(r["chunk_index"]), r["content"], int(r.get("chunk_overlap") or 0))
                           for r in doc])
        return {"parentId": parent, "content": text, "chunks": len(doc),
                "expectedChunks": expected, "complete": not missing, "missing": missing,
                "workspaceId": doc[0]["workspace_id"]}

    # -- introspection ----------------------------------------------------------------------
    async def explain(self, caller: Caller, query: str, limit: int, filters: dict | None) -> dict:
        self._require(caller, "read", "explain")
        if not 1 <= limit <= MAX_LIMIT:
            raise invalid(f"limit: must be between 1 and {MAX_LIMIT}")
        node = self._scoped_filter(caller, flt.parse_filter(filters), "explain")
        plan = self.planner.plan(node, limit)
        return {"query": query, "limit": limit, "filter": flt.to_wire(node),
                "shape": flt.shape(node), "plan": plan.to_dict(),
                "accuracy": self.planner.accuracy()}

    async def stats(self, caller: Caller, workspace_id: str | None = None) -> dict:
        self._require(caller, "read", "stats", workspace_id)
        shards = await self.backend.all_shards("stats")
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
            node = flt._in("workspace_id", sorted(per_ws)) if per_ws else None
            if node is not None:
                rows = [r for s in await self.backend.all_shards("select", node) for r in s]
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
                              "seq": s["seq"], "snapshotSeq": s["snapshot_seq"],
                              "diskBytes": s["disk_bytes"], "indexBytes": s["index_bytes"],
                              "lexical": s["lexical"], "recovery": s["recovery"]}
                             for s in shards]
            out["storageBytes"] = sum(s["disk_bytes"] for s in shards)
            out["indexBytes"] = sum(s["index_bytes"] for s in shards)
        return out

    async def health(self, detailed: bool = False) -> dict:
        components: dict[str, Any] = {}
        overall = "ok"

        async def probe(name: str, coro: Any) -> None:
            nonlocal overall
            try:
                res = await asyncio.wait_for(coro, 5.0)
                components[name] = res if detailed else {"status": res.get("status", "ok")}
            except Exception as exc:  # a dead or restarting component degrades health
                components[name] = {"status": "unavailable", "error": type(exc).__name__}
                overall = "degraded"

        await asyncio.gather(
            *[probe(f"shard-{i}", self.backend.shard(i, "health"))
              for i in range(self.backend.shards)],
            probe("embedder", self._embedder_health()),
        )
        return {"status": overall, "uptimeSeconds": round(time.time() - self.started, 1),
                "components": components}

    async def _embedder_health(self) -> dict:
        workers = await self.backend.embedder_health()
        status = "ok" if all(w.get("status") == "ok" for w in workers) else "degraded"
        return {"status": status, "workers": workers}


def to_retrieved(rec: dict) -> RetrievedMemory:
    return RetrievedMemory(
        id=rec["id"], content=rec.get("content", ""), score=float(rec.get("score", 0.0)),
        metadata=rec.get("metadata") or {}, timestamp=to_iso(rec["timestamp"]),
        event_type=rec["event_type"], session_id=rec.get("session_id"),
        workspace_id=rec["workspace_id"], git_branch=rec.get("git_branch"),
        agent_id=rec.get("agent_id"), tier=rec.get("tier"), parent_id=rec.get("parent_id"),
        chunk_index=rec.get("chunk_index"), chunk_count=rec.get("chunk_count"),
    )

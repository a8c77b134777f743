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

from actors.backend import Backend
from actors.planner import QueryPlanner
from actors.shard import SearchRequest
from memoray import filters as flt
from memoray import lifecycle
from memoray.auth import Principal
from memoray.errors import ErrorCode, MemorayError, invalid, not_found
from memoray.ids import is_valid_id, new_id, new_id_on_shard, shard_for
from memoray.models import MAX_LIMIT, CaptureItem, RetrievedMemory
from memoray.settings import Settings
from memoray.timeutil import now as utc_now
from memoray.timeutil import parse_iso, to_iso
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
                 metrics: Metrics | None = None, expiry: Any = None):
        self.settings = settings
        self.backend = backend
        self.planner = planner or QueryPlanner()
        self.redactor = redactor
        self.audit = audit
        self.limiter = limiter
        self.metrics = metrics or Metrics()
        self.expiry = expiry  # ExpiryWorker, or an actor handle with the same methods
        self.started = time.time()
        self._upsert_locks: dict[str, asyncio.Lock] = {}

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
            item.event_type, tier, self.settings.ttl_overrides)
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
                      action: str = "capture", vectors: np.ndarray | None = None) -> list[dict]:
        """`vectors`, when given, are the embeddings of the items' (unchunked) contents."""
        for item in items:
            self._require(caller, "write", action, item.workspace_id)
        now = utc_now()
        with span("memoray.prepare", items=len(items)):
            prepared = [self._prepare(item, now) for item in items]
        records = [r for p in prepared for r in p.records]
        if vectors is None or len(vectors) != len(records):
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
            self._audit(caller, action, workspace=item.workspace_id, ids=res["ids"])
        return results

    # -- upsert with merge ------------------------------------------------------------------
    async def upsert(self, items: list[CaptureItem], caller: Caller,
                     threshold: float = 0.85) -> dict:
        """Exact duplicates (same content hash in the same scope) are left unchanged;
        near-duplicates (cosine >= threshold in the same scope) merge into the existing memory,
        the newer wording winning; everything else is created. Items are applied in order, so a
        batch deduplicates against itself. Scope: workspace, branch, and the agent for private
        memories. Upserts of one workspace are serialized within a replica."""
        if not 0.0 < threshold <= 1.0:
            raise invalid("similarityThreshold: must be in (0, 1]")
        for item in items:
            self._require(caller, "write", "upsert", item.workspace_id)
        report: list[dict] = []
        counts = Counter()
        small = [i for i, it in enumerate(items) if len(it.content) <= CHUNK_THRESHOLD_CHARS]
        texts = {i: self._redact(items[i].content)[0] for i in small}
        vectors = await self._embed([texts[i] for i in small]) if small else None
        vec_of = {i: vectors[j] for j, i in enumerate(small)}
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
            res = (await self.capture([item], caller, action="upsert"))[0]
            return {"action": "created", "id": res["ids"][0], "ids": res["ids"]}
        digest = content_hash(content)
        node = self._scoped_filter(caller, flt.parse_filter(self._scope_filter(item)), "upsert")
        req = SearchRequest(vector=vector, query="", k=1, filter=node, strategy="exact",
                            mode="vector", tier_weighting=False, now=time.time())
        parts = await self.backend.all_shards("search", req)
        hits = sorted((h for p in parts for h in p["hits"]), key=lambda h: -h.vector_score)
        if hits and hits[0].record.get("content_hash") == digest:
            return {"action": "unchanged", "id": hits[0].record["id"], "similarity": 1.0}
        if hits and hits[0].vector_score >= threshold:
            return await self._merge(hits[0], item, content, vector, caller)
        res = (await self.capture([item], caller, action="upsert", vectors=vector[None, :]))[0]
        return {"action": "created", "id": res["ids"][0],
                "similarity": round(hits[0].vector_score, 4) if hits else None}

    async def _merge(self, hit: Any, item: CaptureItem, content: str, vector: np.ndarray,
                     caller: Caller) -> dict:
        old = hit.record
        shard = shard_for(old["id"], self.backend.shards)
        full = (await self.backend.shard(shard, "get", [old["id"]]))[0] or old
        meta, _ = self._redact_meta(item.metadata)
        merged_meta = {**(full.get("metadata") or {}), **meta}
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
        await self.backend.shard(shard, "put", [record], vector[None, :])
        self._audit(caller, "upsert-merge", workspace=item.workspace_id, ids=[old["id"]])
        return {"action": "merged", "id": old["id"], "mergedInputId": input_id,
                "similarity": round(hit.vector_score, 4), "mergeCount": record["merge_count"]}

    # -- sharing ----------------------------------------------------------------------------
    async def share(self, caller: Caller, memory_id: str, visibility: str) -> dict:
        """Only the owning agent (or an admin) changes who sees a private memory."""
        self._require(caller, "write", "share")
        if visibility not in ("private", "shared"):
            raise invalid("visibility: must be 'private' or 'shared'")
        rec = await self._get_record(caller, memory_id, "share")
        self._require(caller, "write", "share", rec["workspace_id"])
        owner = rec.get("agent_id")
        if owner and owner != caller.agent_id and not caller.principal.can("admin"):
            self._audit(caller, "share", ids=[memory_id], outcome="denied", code="FORBIDDEN")
            raise MemorayError(ErrorCode.FORBIDDEN,
                               "only the agent that owns a memory may share it")
        if visibility == "private" and not owner:
            raise invalid("visibility: a memory without an agentId cannot be private")
        shard = shard_for(memory_id, self.backend.shards)
        rec = {**rec, "visibility": visibility, "updated_at": utc_now()}
        await self.backend.shard(shard, "update_record", rec)
        self._audit(caller, "share", workspace=rec["workspace_id"], ids=[memory_id],
                    detail=visibility)
        return {"id": memory_id, "visibility": visibility}

    # -- expiry -----------------------------------------------------------------------------
    async def expire(self, caller: Caller, dry_run: bool, workspace_id: str | None) -> dict:
        """Run TTL expiry and retention now. Admins may run it for everything; others only for
        workspaces they hold (a workspaceId is then required unless they hold all)."""
        if self.expiry is None:
            raise MemorayError(ErrorCode.UNAVAILABLE, "the expiry worker is not running")
        self._require(caller, "write", "expire", workspace_id)
        allowed = caller.principal.visible_workspaces()
        if workspace_id:
            scope: list[str] | None = [workspace_id]
        elif allowed is None:
            scope = None
        else:
            scope = sorted(allowed)
        report = await self._call_expiry("run", dry_run, scope)
        self._audit(caller, "expire", workspace=workspace_id,
                    detail=f"dryRun={dry_run} expired={report['expired']}")
        return report

    async def expiry_status(self, caller: Caller) -> dict:
        self._require(caller, "admin", "expiry-status")
        if self.expiry is None:
            raise MemorayError(ErrorCode.UNAVAILABLE, "the expiry worker is not running")
        return await self._call_expiry("status")

    async def _call_expiry(self, method: str, *args: Any) -> Any:
        fn = getattr(self.expiry, method)
        if hasattr(fn, "remote"):
            return await fn.remote(*args)
        if method == "run":
            return await fn(dry_run=args[0], workspaces=set(args[1]) if args[1] else None)
        return fn()

    # -- admin ------------------------------------------------------------------------------
    async def audit_log(self, caller: Caller, limit: int, principal: str | None,
                        action: str | None) -> dict:
        self._require(caller, "admin", "audit-log")
        if not 1 <= limit <= 1000:
            raise invalid("limit: must be between 1 and 1000")
        entries = self.audit.read(limit=limit, principal=principal, action=action) if (
            self.audit is not None) else []
        return {"entries": entries, "count": len(entries)}

    async def rotate_encryption(self, caller: Caller) -> dict:
        """Re-encrypt every record under the current key, online, shard by shard."""
        self._require(caller, "admin", "rotate-encryption")
        resealed = await self.backend.all_shards("reseal")
        self._audit(caller, "rotate-encryption", detail=f"resealed={sum(resealed)}")
        return {"resealed": sum(resealed), "perShard": resealed}

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
            except TimeoutError:
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
        visible = [r for r in doc if self._can_see(caller, r)]
        if not visible:  # another workspace's document answers like a missing id
            self._audit(caller, "get-document", ids=[memory_id], outcome="denied",
                        code="NOT_FOUND")
            raise not_found(f"memory {memory_id} not found")
        doc = visible
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
            if self.expiry is not None:
                try:
                    out["expiry"] = await self._call_expiry("status")
                except Exception as exc:  # stats must not fail because the worker restarts
                    out["expiry"] = {"error": type(exc).__name__}
            out["planner"] = self.planner.accuracy()
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

"""Retrieve: finding memories (retrieve-memories), packing them into a context block
(build-context), and showing the plan (explain-query). Each path reads top to bottom: validate,
authorize, rate-limit, work. Reads are not audited (refusals are, in authorize)."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import numpy as np

from memoray import filters as flt
from memoray.actors.shard_search import SearchRequest
from memoray.errors import ErrorCode, MemorayError, invalid
from memoray.models import MAX_LIMIT, MAX_QUERY_CHARS, RetrievedMemory, check_text
from memoray.records import Record
from memoray.serve.observability import span
from memoray.serve.request import Caller, StageClock, UseCase
from memoray.temporal import Anchor, anchored_span, query_anchor, query_time_span
from memoray.timeutil import to_iso

# What an index (build-context style "index") always looks for, besides the query's best hits.
LASTING_TYPES = ("decision", "convention", "preference", "lesson", "error")


def check_query(query: str, allow_empty: bool = False) -> None:
    if not allow_empty and not query.strip():
        raise invalid("query: must not be empty")
    if len(query) > MAX_QUERY_CHARS:
        raise invalid(f"query: longer than {MAX_QUERY_CHARS} characters")
    try:
        check_text(query)
    except ValueError as exc:
        raise invalid(f"query: {exc}") from None


def check_limit(limit: int) -> None:
    if not 1 <= limit <= MAX_LIMIT:
        raise invalid(f"limit: must be between 1 and {MAX_LIMIT}")


def one_workspace(node: Any) -> str | None:
    """The one workspace a filter confines to (the rate-limit bucket), None if not one."""
    named = flt.referenced_workspaces(node)
    return next(iter(named)) if named is not None and len(named) == 1 else None


class Retrieve(UseCase):
    async def search(self, caller: Caller, query: str, limit: int, filters: dict | None, *,
                     mode: str = "hybrid", recency_weight: float = 0.0,
                     strategy: str | None = None, include_content: bool = True,
                     action: str = "retrieve", clock: StageClock | None = None
                     ) -> tuple[list[Record], dict]:
        """Records (with 0-1 scores) and what the planner and shards did."""
        clock = clock or self.clock("retrieve")
        # validate (the filter is parsed once, here)
        check_limit(limit)
        node = flt.parse_filter(filters)
        clock.lap("validation")
        # authorize
        await self.authorize(caller, "read", action)
        scoped = await self.scoped_filter(caller, node, action)
        clock.lap("auth")
        # rate-limit
        await self.rate_limit(caller, one_workspace(node))
        clock.lap("rate_limit")
        # work
        return await self.run_search(query, limit, scoped, mode=mode,
                                     recency_weight=recency_weight, strategy=strategy,
                                     include_content=include_content, clock=clock)

    async def retrieve(self, caller: Caller, query: str, limit: int = 10,
                       filters: dict | None = None, **kw: Any) -> list[RetrievedMemory]:
        clock = self.clock("retrieve")
        check_query(query)
        records, _ = await self.search(caller, query, limit, filters, clock=clock, **kw)
        out = [to_retrieved(r) for r in records]
        clock.lap("serialization")
        return out

    async def run_search(self, query: str, limit: int, node: Any, *, mode: str = "hybrid",
                         recency_weight: float = 0.0, strategy: str | None = None,
                         include_content: bool = True, clock: StageClock | None = None
                         ) -> tuple[list[Record], dict]:
        """Plan, embed the query, fan out to every shard, merge. `node` is already scoped."""
        clock = clock or self.clock("retrieve")
        t0 = time.perf_counter()
        plan = self.planner.plan(node, limit)
        chosen = strategy or plan.strategy
        clock.lap("plan")
        vector = None
        if mode != "lexical":
            with span("memoray.embed_query"):
                vector = (await self.embed([query], query=True))[0]
            clock.lap("embed_query")
        now = time.time()
        when = None
        if self.settings.temporal_weight > 0 and query:
            when = query_time_span(query, now)
            if when is None and (anchor := query_anchor(query)) is not None:
                when = await self._anchor_span(anchor, node, chosen, plan.oversample, now)
        req = SearchRequest(vector=vector, query=query, k=limit, filter=node, strategy=chosen,
                            oversample=plan.oversample, mode=mode,
                            alpha=self.settings.hybrid_alpha, now=now, time_span=when,
                            recency_weight=recency_weight, include_content=include_content,
                            **feature_fields(self.settings))
        with span("memoray.fanout", shards=len(self.backend.shards), strategy=chosen):
            try:
                parts = await asyncio.wait_for(self.backend.shards.each(lambda c: c.search(req)),
                                               self.settings.query_timeout_s)
            except TimeoutError:
                raise MemorayError(ErrorCode.QUERY_TIMEOUT,
                                   f"query exceeded {self.settings.query_timeout_s}s") from None
        clock.lap("fanout")
        for p in parts:  # measured inside each shard, returned with its hits
            clock.observe("shard_search", p["seconds"])
            for stage, seconds in (p.get("stages") or {}).items():
                clock.observe(f"shard_{stage}", seconds)
        hits = [h for p in parts for h in p["hits"]]
        if len(parts) > 1:  # a record being moved by a reshard is briefly on two shards
            best: dict[str, Any] = {}
            for h in hits:
                if h.record["id"] not in best or h.score > best[h.record["id"]].score:
                    best[h.record["id"]] = h
            hits = list(best.values())
        if self.settings.session_weight > 0:
            session_aggregate(hits, self.settings.session_weight)
        hits = sorted(hits, key=lambda h: -h.score)[:limit]
        actual = [p["candidates"] for p in parts]
        total = sum(actual) if all(a is not None for a in actual) else None  # type: ignore[arg-type]
        self.planner.record(plan.estimated_candidates, total, chosen)
        elapsed = time.perf_counter() - t0
        self.metrics.query_latency.labels(strategy=chosen).observe(elapsed)
        out: list[Record] = []
        for h in hits:
            rec = dict(h.record)
            rec["score"] = round(min(1.0, max(0.0, h.score)), 6)
            out.append(rec)  # type: ignore[arg-type]
        info = {"plan": plan.to_dict(), "strategy": chosen, "seconds": elapsed,
                "shards": [{k: v for k, v in p.items() if k != "hits"} for p in parts]}
        clock.lap("merge")
        return out, info

    async def _anchor_span(self, anchor: Anchor, node: Any, strategy: str, oversample: float,
                           now: float) -> tuple[float, float] | None:
        """"before the migration": look the event up (its best lexical match in the caller's
        scope: no embedding, one fan-out) and take its time; None when nothing matches."""
        req = SearchRequest(vector=None, query=anchor.text, k=1, filter=node, strategy=strategy,
                            oversample=oversample, mode="lexical", now=now,
                            include_content=False)
        parts = await asyncio.wait_for(self.backend.shards.each(lambda c: c.search(req)),
                                       self.settings.query_timeout_s)
        hits = [h for p in parts for h in p["hits"]]
        if not hits:
            return None
        best = max(hits, key=lambda h: h.score)
        return anchored_span(anchor, float(best.record["timestamp"]))

    async def build_context(self, caller: Caller, *, query: str | None, limit: int,
                            filters: dict | None, budget: int, workspace_id: str | None,
                            branch: str | None, session_id: str | None,
                            style: str = "full") -> dict:
        """A markdown block of the memories that matter here, packed to fit `budget` tokens:
        the query's best hits, plus this branch's recent changes. style "index": one line per
        memory, its id first (see memoray.context)."""
        from memoray.context import SAFETY_MARGIN, build_context

        # validate
        if query is not None:
            check_query(query, allow_empty=True)
        check_limit(limit)
        if not 1 <= budget <= 100_000:
            raise invalid("tokenBudget: must be between 1 and 100000")
        base = dict(filters or {})
        if workspace_id:
            base = {"$and": [base, {"workspaceId": workspace_id}]} if base else {
                "workspaceId": workspace_id}
        node = flt.parse_filter(base or None)
        recent = flt.parse_filter({"$and": [base, {"gitBranch": branch}]} if base else {
            "gitBranch": branch}) if branch else None
        # authorize
        await self.authorize(caller, "read", "build-context")
        scoped = await self.scoped_filter(caller, node, "build-context")
        scoped_recent = (await self.scoped_filter(caller, recent, "build-context")
                         if recent is not None else None)
        lasting = None
        if style == "index":  # an index lists what lasts, newest first, whatever the query
            kinds = {"$or": [{"eventType": {"$in": list(LASTING_TYPES)}},
                             {"tier": {"$in": ["preference", "pattern"]}}]}
            lasting = await self.scoped_filter(
                caller, flt.parse_filter({"$and": [base, kinds]} if base else kinds),
                "build-context")
        # rate-limit
        await self.rate_limit(caller, one_workspace(node))
        # work
        text_query = query or " ".join(x for x in ("recent decisions changes problems", branch)
                                       if x)
        # The searches are independent: run at once, their query embeddings share one model
        # call (the micro-batcher) and their fan-outs overlap. Merged in the same order.
        searches = [self.run_search(text_query, limit, scoped, recency_weight=0.3)]
        if scoped_recent is not None:  # this branch's recent changes, even if the query missed
            searches.append(self.run_search(f"changes on {branch}", min(limit, 20),
                                            scoped_recent, recency_weight=0.8))
        if lasting is not None:
            searches.append(self.run_search(text_query, min(limit, 40), lasting,
                                            recency_weight=0.8))
        found = await asyncio.gather(*searches)
        records = list(found[0][0])
        for more, _ in found[1:]:
            seen = {r["id"] for r in records}
            records += [r for r in more if r["id"] not in seen]
        block = build_context(records, budget=budget, query=query,
                              workspace_id=workspace_id or "all workspaces", branch=branch,
                              margin=SAFETY_MARGIN, style=style)
        return {"context": block.text, "tokens": block.tokens, "included": len(block.included),
                "omitted": len(block.omitted), "includedIds": block.included,
                "sections": block.sections}

    async def explain(self, caller: Caller, query: str, limit: int,
                      filters: dict | None) -> dict:
        # validate
        check_limit(limit)
        node = flt.parse_filter(filters)
        # authorize
        await self.authorize(caller, "read", "explain")
        scoped = await self.scoped_filter(caller, node, "explain")
        # rate-limit
        await self.rate_limit(caller, one_workspace(node))
        # work
        out = {"query": query, "limit": limit, "filter": flt.to_wire(scoped),
               "shape": flt.shape(scoped)}
        if caller.principal.visible_workspaces() is not None:
            # Estimates come from every workspace's statistics (counts per branch, session,
            # agent): a caller limited to some workspaces must not read them.
            return {**out, "plan": None, "withheld": "plans and estimates are computed over "
                    "every workspace's statistics; only a token for all workspaces sees them"}
        plan = self.planner.plan(scoped, limit)
        return {**out, "plan": plan.to_dict(), "accuracy": self.planner.accuracy()}


def feature_fields(settings: Any) -> dict[str, Any]:
    """The retrieval-feature settings every shard needs for one request."""
    return {"fusion": settings.retrieval_fusion, "rrf_k": settings.rrf_k,
            "neighbor_weight": settings.neighbor_weight,
            "neighbor_turns": settings.neighbor_turns,
            "neighbor_window_s": settings.neighbor_window_s,
            "temporal_weight": settings.temporal_weight,
            "temporal_scale_s": settings.temporal_scale_days * 86400.0,
            "prf_docs": settings.prf_docs, "prf_terms": settings.prf_terms,
            "prf_weight": settings.prf_weight, "vector_prf": settings.vector_prf,
            "vector_prf_docs": settings.vector_prf_docs,
            "pool": settings.session_pool if settings.session_weight > 0 else 0}


def session_aggregate(hits: list, weight: float) -> None:
    """Session-level aggregation over every shard's hits (a session's records are spread over
    shards): each hit also scores by the best hit of its session, so the turns of the session
    that answers the question rise together. In place; records without a session keep their
    score. One pass in numpy over the merged pool."""
    if not hits:
        return
    scores = np.asarray([h.score for h in hits], dtype=np.float64)
    sids = [h.record.get("session_id") for h in hits]
    codes, inverse = np.unique(np.asarray([s or "" for s in sids], dtype=object),
                               return_inverse=True)
    best = np.full(len(codes), -np.inf)
    np.maximum.at(best, inverse, scores)
    has = np.asarray([bool(s) for s in sids])
    boosted = np.where(has & (scores >= 0), (scores + weight * best[inverse]) / (1.0 + weight),
                       scores)
    for h, s in zip(hits, boosted.tolist()):
        h.score = s


def to_retrieved(rec: Record) -> RetrievedMemory:
    return RetrievedMemory(
        id=rec["id"], content=rec.get("content", ""), score=float(rec.get("score", 0.0)),
        metadata=rec.get("metadata") or {}, timestamp=to_iso(rec["timestamp"]),
        event_type=rec["event_type"], session_id=rec.get("session_id"),
        workspace_id=rec["workspace_id"], git_branch=rec.get("git_branch"),
        agent_id=rec.get("agent_id"), tier=rec.get("tier"), parent_id=rec.get("parent_id"),
        chunk_index=rec.get("chunk_index"), chunk_count=rec.get("chunk_count"),
    )

"""Retrieve: finding memories (retrieve-memories), packing them into a context block
(build-context), and showing the plan (explain-query). Each path reads top to bottom: validate,
authorize, rate-limit, work. Reads are not audited (refusals are, in authorize)."""

from __future__ import annotations

import asyncio
import bisect
import time
from dataclasses import dataclass
from typing import Any

from memoray import filters as flt
from memoray.actors.shard_search import SearchRequest, SearchResult, pack
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


@dataclass
class _PlannedSearch:
    """One search, planned and embedded: what every shard gets, and what merging needs."""

    req: SearchRequest
    plan: Any
    chosen: str
    limit: int
    clock: StageClock
    t0: float


class Retrieve(UseCase):
    async def search(self, caller: Caller, query: str, limit: int, filters: dict | None, *,
                     mode: str = "hybrid", recency_weight: float = 0.0,
                     strategy: str | None = None, include_content: bool = True,
                     context_turns: int = 0, context_budget: int | None = None,
                     action: str = "retrieve", clock: StageClock | None = None
                     ) -> tuple[list[Record], dict]:
        """Records (with 0-1 scores) and what the planner and shards did. context_turns > 0:
        each record also carries the records around it in its session (`context`, see
        attach_context), within the same scope."""
        clock = clock or self.clock("retrieve")
        # validate (the filter is parsed once, here)
        check_limit(limit)
        check_context(context_turns, context_budget)
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
        records, info = await self.run_search(query, limit, scoped, mode=mode,
                                               recency_weight=recency_weight,
                                               strategy=strategy,
                                               include_content=include_content, clock=clock)
        if context_turns > 0 and records:
            info["context_tokens"] = await self.attach_context(records, scoped, context_turns,
                                                               context_budget)
            clock.lap("context")
        return records, info

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
        prepared = await self._plan_search(query, limit, node, mode=mode,
                                           recency_weight=recency_weight, strategy=strategy,
                                           include_content=include_content, clock=clock)
        parts = await self._send_searches([prepared])
        return self._merge_search(prepared, parts[0])

    async def _plan_search(self, query: str, limit: int, node: Any, *, mode: str = "hybrid",
                           recency_weight: float = 0.0, strategy: str | None = None,
                           include_content: bool = True, clock: StageClock | None = None
                           ) -> _PlannedSearch:
        """Plan and embed one search: the request every shard gets."""
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
        return _PlannedSearch(req, plan, chosen, limit, clock, t0)

    async def _send_searches(self, prepared: list[_PlannedSearch]) -> list[list[SearchResult]]:
        """Every search on every shard; per search, its shards' results in shard order.
        Several searches go in one call per shard (`search_many`): one round trip each."""
        reqs = [p.req for p in prepared]
        with span("memoray.fanout", shards=len(self.backend.shards),
                  strategy=",".join(p.chosen for p in prepared)):
            sent = time.time()
            blob = pack(reqs)  # once for every shard
            try:
                per_shard = await asyncio.wait_for(
                    self.backend.shards.each(lambda c: c.search_many(blob)),
                    self.settings.query_timeout_s)
            except TimeoutError:
                raise MemorayError(ErrorCode.QUERY_TIMEOUT,
                                   f"query exceeded {self.settings.query_timeout_s}s") from None
        back = time.time()
        for p in prepared:
            p.clock.lap("fanout")
        for shard in per_shard:  # where each shard's share of the wait went (Ray's transport)
            wall = shard[0].get("wall") if shard else None
            if wall is not None:
                prepared[0].clock.observe("fanout_send", max(0.0, wall[0] - sent))
                prepared[0].clock.observe("fanout_reply", max(0.0, back - wall[1]))
        return [[shard[i] for shard in per_shard] for i in range(len(reqs))]

    def _merge_search(self, p: _PlannedSearch, parts: list[SearchResult]
                      ) -> tuple[list[Record], dict]:
        """One search's shard results: best copy per id, sessions, top `limit`, 0-1 scores."""
        clock, plan, chosen, limit = p.clock, p.plan, p.chosen, p.limit
        for part in parts:  # measured inside each shard, returned with its hits
            clock.observe("shard_search", part["seconds"])
            for stage, seconds in (part.get("stages") or {}).items():
                clock.observe(f"shard_{stage}", seconds)
        hits = [h for part in parts for h in part["hits"]]
        if len(parts) > 1:  # a record being moved by a reshard is briefly on two shards
            best: dict[str, Any] = {}
            for h in hits:
                if h.record["id"] not in best or h.score > best[h.record["id"]].score:
                    best[h.record["id"]] = h
            hits = list(best.values())
        cfg = self.settings
        sessions = session_aggregate(hits, cfg.session_weight, cfg.session_aggregate,
                                     cfg.session_depth, cfg.session_damping, cfg.rrf_k)
        hits = sorted(hits, key=lambda h: -h.score)[:limit]
        actual = [part["candidates"] for part in parts]
        total = sum(actual) if all(a is not None for a in actual) else None  # type: ignore[arg-type]
        self.planner.record(plan.estimated_candidates, total, chosen)
        elapsed = time.perf_counter() - p.t0
        self.metrics.query_latency.labels(strategy=chosen).observe(elapsed)
        out: list[Record] = []
        for h in hits:
            rec = dict(h.record)
            rec["score"] = round(min(1.0, max(0.0, h.score)), 6)
            out.append(rec)  # type: ignore[arg-type]
        info = {"plan": plan.to_dict(), "strategy": chosen, "seconds": elapsed,
                "sessions": [{"sessionId": sid, "score": round(sc, 6)}
                             for sid, sc in list(sessions.items())[:limit]],
                "shards": [{k: v for k, v in part.items() if k not in ("hits", "wall")}
                           for part in parts]}
        clock.lap("merge")
        return out, info

    async def attach_context(self, records: list[Record], node: Any, turns: int,
                             budget: int | None = None) -> int:
        """Neighbouring-turn context: each record gets `context`, the records up to `turns`
        either side of it in its session (same session id, ordered by (timestamp, id): capture
        order), that the scoped filter `node` lets the caller see and that have not expired.
        Each context turn carries its token count (memoray.tokens); with `budget`, turns are
        added nearest first, round-robin over the records in rank order, while they fit (the
        records themselves are not counted). A record without a session gets an empty
        context. Returns the context's tokens in all.

        Two fan-outs: every shard's slim rows of the hits' sessions (no content), then the
        chosen neighbours' contents by id. The first reads whole sessions' rows: a session of
        many thousand records costs that many rows."""
        from memoray.tokens import count_many

        for r in records:
            r["context"] = []  # type: ignore[typeddict-unknown-key]
            r["context_tokens"] = 0  # type: ignore[typeddict-unknown-key]
        sids = sorted({r["session_id"] for r in records if r.get("session_id")})
        if not sids:
            return 0
        where = flt.and_([node, flt.in_("session_id", list(sids))])
        parts = await asyncio.wait_for(self.backend.shards.each(lambda c: c.select(where)),
                                       self.settings.query_timeout_s)
        now = time.time()
        order: dict[str, list[tuple[float, str]]] = {}
        seen: set[str] = set()
        for row in (row for part in parts for row in part):
            if row["id"] in seen or (row.get("expires_at") or float("inf")) <= now:
                continue  # a record being resharded is briefly on two shards
            seen.add(row["id"])
            order.setdefault(row["session_id"], []).append(
                (float(row.get("timestamp") or 0.0), row["id"]))
        for keys in order.values():
            keys.sort()
        # (record index, offset, neighbour id): nearest first, records in rank order
        wanted: list[tuple[int, int, str]] = []
        for dist in range(1, turns + 1):
            for i, r in enumerate(records):
                keys = order.get(r.get("session_id") or "")
                at = _bisect(keys, (float(r.get("timestamp") or 0.0), r["id"])) if keys else None
                if at is None:
                    continue
                for off in (-dist, dist):
                    if 0 <= at + off < len(keys):
                        wanted.append((i, off, keys[at + off][1]))
        ids = list(dict.fromkeys(w[2] for w in wanted))
        fetched = await self.backend.shards.get_many(ids) if ids else []
        by_id = {i: f[1] for i, f in zip(ids, fetched) if f is not None}
        tokens = dict(zip(by_id, count_many([by_id[i].get("content", "") for i in by_id])))
        spent = 0
        attached: dict[int, list[tuple[int, Record]]] = {}
        for i, off, nid in wanted:
            rec = by_id.get(nid)
            if rec is None:
                continue
            if budget is not None and spent + tokens[nid] > budget:
                continue  # a shorter turn further out may still fit
            spent += tokens[nid]
            attached.setdefault(i, []).append((off, rec))
        for i, items in attached.items():
            items.sort(key=lambda x: x[0])
            context = [{"id": rec["id"], "content": rec.get("content", ""), "offset": off,
                        "timestamp": to_iso(rec["timestamp"]), "event_type": rec["event_type"],
                        "metadata": rec.get("metadata") or {}, "tokens": tokens[rec["id"]]}
                       for off, rec in items]
            records[i]["context"] = context  # type: ignore[typeddict-unknown-key]
            records[i]["context_tokens"] = sum(  # type: ignore[typeddict-unknown-key]
                t["tokens"] for t in context)
        return spent

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
        # The searches are independent: prepared at once (their query embeddings share one
        # model call, the micro-batcher), sent in one call per shard, merged in this order.
        searches = [self._plan_search(text_query, limit, scoped, recency_weight=0.3)]
        if scoped_recent is not None:  # this branch's recent changes, even if the query missed
            searches.append(self._plan_search(f"changes on {branch}", min(limit, 20),
                                              scoped_recent, recency_weight=0.8))
        if lasting is not None:
            searches.append(self._plan_search(text_query, min(limit, 40), lasting,
                                              recency_weight=0.8))
        prepared = await asyncio.gather(*searches)
        found = [self._merge_search(p, parts)
                 for p, parts in zip(prepared, await self._send_searches(list(prepared)))]
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


MAX_CONTEXT_TURNS = 10


def check_context(turns: int, budget: int | None) -> None:
    if not 0 <= turns <= MAX_CONTEXT_TURNS:
        raise invalid(f"contextTurns: must be between 0 and {MAX_CONTEXT_TURNS}")
    if budget is not None and not 0 <= budget <= 100_000:
        raise invalid("contextTokenBudget: must be between 0 and 100000")


def _bisect(keys: list[tuple[float, str]], own: tuple[float, str]) -> int | None:
    at = bisect.bisect_left(keys, own)
    return at if at < len(keys) and keys[at] == own else None


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


SESSION_METHODS = ("max", "damped", "rrf")


def session_scores(hits: list, method: str = "max", depth: int = 3, damping: float = 0.5,
                   rrf_k: float = 60.0) -> dict[str, float]:
    """Each session's score from its hits in the merged pool (records sharing a session id:
    a conversation's session, a coding session's prompts, commits and errors):

    - max: its best hit's score;
    - damped: its best `depth` hit scores weighted 1, d, d^2, ... and divided by the sum of
      those weights (a session with one strong hit scores below one with several: missing
      hits count 0);
    - rrf: sum over its best `depth` hits of 1 / (rrf_k + rank in the pool), divided by what
      the pool's first `depth` ranks would sum to (so 0-1).

    Expired hits (score < 0) count for nothing. Sessions sorted best first (ties: id)."""
    if method not in SESSION_METHODS:
        raise ValueError(f"session aggregation: unknown method {method!r}")
    ranked = sorted((h for h in hits if h.score >= 0), key=lambda h: -h.score)
    per: dict[str, list[tuple[int, float]]] = {}
    for rank, h in enumerate(ranked, start=1):
        sid = h.record.get("session_id")
        if sid:
            per.setdefault(sid, []).append((rank, h.score))
    depth = max(1, depth)
    weights = [damping ** i for i in range(depth)]
    norm = sum(weights)
    rrf_norm = sum(1.0 / (rrf_k + r) for r in range(1, depth + 1))
    out: dict[str, float] = {}
    for sid, items in per.items():
        top = items[:depth]  # already best first
        if method == "max":
            out[sid] = top[0][1]
        elif method == "damped":
            out[sid] = sum(w * s for w, (_, s) in zip(weights, top)) / norm
        else:
            out[sid] = sum(1.0 / (rrf_k + r) for r, _ in top) / rrf_norm
    return dict(sorted(out.items(), key=lambda kv: (-kv[1], kv[0])))


def session_aggregate(hits: list, weight: float, method: str = "max", depth: int = 3,
                      damping: float = 0.5, rrf_k: float = 60.0) -> dict[str, float]:
    """Session-level aggregation over every shard's hits (a session's records are spread over
    shards): each hit also scores by its session's score (session_scores), so the turns of
    the session that answers the question rise together. In place; records without a session
    keep their score. Returns the session ranking (session id -> score, best first)."""
    sessions = session_scores(hits, method, depth, damping, rrf_k)
    if weight > 0:
        for h in hits:
            sid = h.record.get("session_id")
            if sid and h.score >= 0:
                h.score = (h.score + weight * sessions[sid]) / (1.0 + weight)
    return sessions


def to_retrieved(rec: Record) -> RetrievedMemory:
    return RetrievedMemory(
        id=rec["id"], content=rec.get("content", ""), score=float(rec.get("score", 0.0)),
        metadata=rec.get("metadata") or {}, timestamp=to_iso(rec["timestamp"]),
        event_type=rec["event_type"], session_id=rec.get("session_id"),
        workspace_id=rec["workspace_id"], git_branch=rec.get("git_branch"),
        agent_id=rec.get("agent_id"), tier=rec.get("tier"), parent_id=rec.get("parent_id"),
        chunk_index=rec.get("chunk_index"), chunk_count=rec.get("chunk_count"),
        context=rec.get("context"), context_tokens=rec.get("context_tokens"),
    )

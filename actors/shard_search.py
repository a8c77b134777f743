"""How one shard answers a retrieve: the planner's strategy, then hybrid scoring.

Strategies (chosen by actors/planner.py): `exact` scores the filter's candidates from the
postings; `ann` asks HNSW for an oversampled pool and post-filters it; `ann_adaptive` widens k'
until k survive the filter, falling back to exact. Each pool member is BM25-scored once: the
lexical top list carries its scores, and only vector-only candidates are scored afterwards.
"""

from __future__ import annotations

import math
import pickle
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Any, NotRequired, TypedDict

import numpy as np
import numpy.ma  # noqa: F401  (loaded at start: see the note below the imports)

from memoray import filters as flt
from memoray.actors.vector_index import VectorIndex
from memoray.lexical import LexicalIndex
from memoray.lexical import normalize as lexical_normalize
from memoray.lifecycle import TIER_WEIGHT
from memoray.postings import Postings
from memoray.records import Record
from memoray.temporal import proximity as temporal_proximity

# numpy.ma: np.unique imports it on its first call, and a shard's first search after a start
# paid that import (17 ms in a process of its own, about 56 ms in each shard actor of a server just
# started on the 2-core machine, whose first retrieve took 114 ms); importing it here pays it at
# start.

EXACT = "exact"
ANN = "ann"
ANN_ADAPTIVE = "ann_adaptive"
STRATEGIES = (EXACT, ANN, ANN_ADAPTIVE)
MAX_OVERSAMPLE_K = 4096


@dataclass
class SearchRequest:
    """What the replica sends every shard for one retrieve (picklable, no Ray types)."""

    vector: np.ndarray | None
    query: str
    k: int
    filter: Any = field(default_factory=flt.All)
    strategy: str = EXACT
    oversample: float = 3.0
    mode: str = "hybrid"  # hybrid | vector | lexical
    alpha: float = 0.5  # weight of the vector score in hybrid mode
    ef: int | None = None
    now: float | None = None
    recency_weight: float = 0.0
    half_life_days: float = 30.0
    include_content: bool = True
    tier_weighting: bool = True
    # Retrieval features (memoray.settings holds their defaults; see docs in _score/_neighbours).
    fusion: str = "score"  # score: alpha*cos + (1-alpha)*tanh(bm25) | rrf: reciprocal rank
    rrf_k: float = 60.0
    neighbor_weight: float = 0.0  # share of the best same-session neighbour's score added
    neighbor_turns: int = 1  # how many records either side in the session count as neighbours
    neighbor_window_s: float = 3600.0  # ...and only within this many seconds of the record
    pool: int = 0  # return up to max(k, pool) hits (the replica re-ranks them), 0: k
    time_span: tuple[float, float] | None = None  # what a date in the query names (temporal)
    temporal_weight: float = 0.0  # share of the score that date proximity may take away
    temporal_scale_s: float = 14 * 86400.0  # proximity halves every ~0.7 of this outside
    prf_docs: int = 0  # lexical pseudo-relevance feedback: terms from the top BM25 docs, 0: off
    prf_terms: int = 10  # ...how many expansion terms
    prf_weight: float = 0.5  # ...their share of the lexical score
    vector_prf: float = 0.0  # Rocchio: the query vector moves towards the top hits' centroid
    vector_prf_docs: int = 3  # ...of this many first-pass hits


@dataclass
class Hit:
    score: float
    vector_score: float
    lexical_score: float
    record: Record


class SearchResult(TypedDict):
    shard: int
    hits: list[Hit]
    strategy: str
    candidates: int | None  # filter candidates enumerated (exact), None when not enumerated
    pool: int
    seconds: float
    stages: dict[str, float]  # seconds per stage: filter, vector, lexical, neighbours, score, fetch
    # time.time() when the shard's actor method began and ended (ShardCore.search): the replica
    # splits its fanout wait into sending, this shard's work and the reply with it.
    wall: NotRequired[tuple[float, float]]


def pack(value: Any) -> bytes:
    """A search's request list or result list as one blob for the actor call.

    Ray's own serializer packs a result by msgpack with strict types, so every `Hit` (a
    dataclass) and tuple in it goes to pickle on its own, and the replica's request was
    serialized once per shard. One pickle of the whole list each way, the request once for
    every shard of a fan-out: a 30-hit result 49 µs against Ray's 105, a request 20 against 55
    (a scratch timing) - about 0.2 ms a retrieve, too little to show end to end. Both ends are
    memoray's own processes (the trust Ray's pickling of arguments has)."""
    return pickle.dumps(value, protocol=pickle.HIGHEST_PROTOCOL)


def unpack(blob: bytes) -> Any:
    return pickle.loads(blob)


class _Stages:
    """Seconds per stage of one shard search, summed over the stage's (interleaved) parts."""

    __slots__ = ("seconds", "_t")

    def __init__(self) -> None:
        self.seconds: dict[str, float] = {}
        self._t = time.perf_counter()

    def lap(self, stage: str) -> None:
        now = time.perf_counter()
        self.seconds[stage] = self.seconds.get(stage, 0.0) + (now - self._t)
        self._t = now


class _Lexical:
    """BM25 scores of one query, each label scored at most once; lookups are array operations
    (no Python loop per candidate)."""

    def __init__(self, index: LexicalIndex, query: str):
        self.index = index
        self.query = query
        self.labels = np.empty(0, np.int64)  # sorted
        self.scores = np.empty(0, np.float64)

    def _keep(self, labels: np.ndarray, scores: np.ndarray) -> None:
        all_labels = np.concatenate([self.labels, labels.astype(np.int64)])
        all_scores = np.concatenate([self.scores, scores.astype(np.float64)])
        all_labels, first = np.unique(all_labels, return_index=True)
        self.labels, self.scores = all_labels, all_scores[first]

    def top(self, k: int, candidates: np.ndarray | None = None) -> np.ndarray:
        labels, scores = self.index.search(self.query, k, candidates=candidates)
        self._keep(labels, scores)
        return labels

    def _lookup(self, pool: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        pos = np.searchsorted(self.labels, pool)
        safe = np.minimum(pos, max(len(self.labels) - 1, 0))
        found = (pos < len(self.labels)) & (self.labels[safe] == pool) if len(self.labels) \
            else np.zeros(len(pool), bool)
        return found, safe

    def of(self, pool: np.ndarray) -> np.ndarray:
        found, _ = self._lookup(pool)
        missing = pool[~found]
        if len(missing):
            labels, scores = self.index.search(self.query, len(missing), candidates=missing)
            self._keep(labels, scores)
            # labels a BM25 pass scored 0 are not returned: remember them as 0
            rest = np.setdiff1d(missing, labels)
            self._keep(rest, np.zeros(len(rest)))
        found, safe = self._lookup(pool)
        return np.where(found, self.scores[safe], 0.0).astype(np.float32)


class Memo:
    """Rows and records one call has decoded already, by label: the searches of one
    `search_many` (build-context's three) share much of their pools, and each decoded them
    again. A write landing between those searches may leave a later one a row as it was when
    the call first read it: the view a search run a moment earlier would have had."""

    __slots__ = ("records", "rows")

    def __init__(self) -> None:
        self.rows: dict[int, dict] = {}
        self.records: dict[int, Record | None] = {}


class ShardSearch:
    """The read path over one shard's in-memory indexes (owned by ShardCore)."""

    def __init__(self, shard_id: int, index: VectorIndex, lexical: LexicalIndex,
                 postings: Postings, fetch: Any):
        self.shard_id = shard_id
        self.index = index
        self.lexical = lexical
        self.postings = postings
        self.fetch = fetch  # labels -> full records (content) from LMDB

    def run(self, req: SearchRequest, memo: Memo | None = None) -> SearchResult:
        """One search; `memo` shares decoded rows and records with the call's other searches."""
        t0 = time.perf_counter()
        memo = memo if memo is not None else Memo()
        node = req.filter if req.filter is not None else flt.All()
        k = max(1, req.k)
        pool_k = min(max(k * 4, 20), MAX_OVERSAMPLE_K)
        used = req.strategy
        cand: np.ndarray | None = None
        vec_labels = lex_labels = np.empty(0, np.int64)
        known: tuple[np.ndarray, np.ndarray] | None = None  # (labels, float32 sims) scored
        want_vec = req.mode != "lexical" and req.vector is not None
        want_lex = req.mode != "vector" and bool(req.query)
        lex = _Lexical(self.lexical, req.query)
        st = _Stages()

        if req.strategy != EXACT and not isinstance(node, flt.All):
            factor = req.oversample if req.strategy == ANN else req.oversample * 2
            kprime = min(int(math.ceil(pool_k * factor)), MAX_OVERSAMPLE_K)
            # One BM25 pass at the widest k' the loop can reach; widening re-filters it.
            ll_all = lex.top(MAX_OVERSAMPLE_K) if want_lex else np.empty(0, np.int64)
            st.lap("lexical")
            while True:
                vl = self.index.ann(req.vector, kprime, ef=req.ef)[0] if want_vec else (
                    np.empty(0, np.int64))
                ll = ll_all[:kprime]
                st.lap("vector")
                vec_labels = self._post_filter(node, vl)[:pool_k]
                lex_labels = self._post_filter(node, ll)[:pool_k]
                st.lap("filter")
                enough = (len(vec_labels) >= k or len(vl) < kprime) and (
                    len(lex_labels) >= k or len(ll) < kprime)
                if enough:
                    break
                if req.strategy == ANN or kprime >= MAX_OVERSAMPLE_K:
                    used = EXACT + "_fallback"
                    break
                kprime = min(kprime * 4, MAX_OVERSAMPLE_K)
        elif req.strategy != EXACT:
            vec_labels = self.index.ann(req.vector, pool_k, ef=req.ef)[0] if want_vec else (
                vec_labels)
            st.lap("vector")
            lex_labels = lex.top(pool_k) if want_lex else lex_labels
            st.lap("lexical")

        if used.startswith(EXACT):
            cand = None if isinstance(node, flt.All) else flt.evaluate(node, self.postings)
            st.lap("filter")
            if want_vec:
                known = vec_labels, _ = self.index.exact(req.vector, cand, pool_k)
                st.lap("vector")
            if want_lex:
                lex_labels = lex.top(pool_k, candidates=cand)
                st.lap("lexical")

        exp = None
        if req.prf_docs > 0 and want_lex and len(lex_labels):
            terms = self._expansion_terms(req, lex_labels, memo)
            if terms:
                exp = _Lexical(self.lexical, terms)
                if cand is not None or isinstance(node, flt.All):
                    exp_labels = exp.top(pool_k, candidates=cand)
                else:  # ANN strategies under a filter: post-filter a wider list
                    exp_labels = self._post_filter(node, exp.top(
                        min(pool_k * 4, MAX_OVERSAMPLE_K)))[:pool_k]
                lex_labels = np.union1d(lex_labels, exp_labels)
            st.lap("lexical")  # pseudo-relevance feedback is lexical work
        pool = np.union1d(vec_labels, lex_labels).astype(np.int64)
        nb = None
        if req.neighbor_weight > 0 and len(pool):
            pool, nb, rows = self._neighbours(req, pool, node, cand, memo)
            st.lap("neighbours")
        else:
            rows = None
        hits = self._score(req, pool, max(k, req.pool), lex if want_lex else None, nb, rows,
                           exp, st, known, memo)
        return {"shard": self.shard_id, "hits": hits, "strategy": used,
                "candidates": None if cand is None else int(len(cand)), "pool": int(len(pool)),
                "seconds": time.perf_counter() - t0, "stages": st.seconds}

    def _rows(self, labels: Any, memo: Memo) -> list[dict]:
        """The slim rows of `labels` (postings), each decoded once per call."""
        rows, out = memo.rows, []
        for lb in labels.tolist() if isinstance(labels, np.ndarray) else labels:
            row = rows.get(lb)
            if row is None:
                row = rows[lb] = self.postings.row(lb)
            out.append(row)
        return out

    def _fetch(self, labels: list[int], memo: Memo) -> list[Record | None]:
        """Full records (LMDB) of `labels`, each read once per call."""
        missing = [lb for lb in labels if lb not in memo.records]
        if missing:
            memo.records.update(zip(missing, self.fetch(missing)))
        return [memo.records[lb] for lb in labels]

    def _similarity(self, vector: np.ndarray, pool: np.ndarray,
                    known: tuple[np.ndarray, np.ndarray] | None) -> np.ndarray:
        """Float32 similarity of each pool member: from `known` where the scan has it, read
        (LMDB) and computed for the rest (lexical-only candidates, neighbours)."""
        have, sims = _known_sims(pool, known)
        if not have.all():
            sims[~have] = self.index.similarity(vector, pool[~have])
        return sims

    def _expansion_terms(self, req: SearchRequest, ranked: np.ndarray,
                         memo: Memo | None = None) -> list[str]:
        """Pseudo-relevance feedback (RM3-style, no model): the terms that weigh most in the
        top `prf_docs` BM25 hits (term frequency share in each document, times idf), the
        query's own terms and terms of a single document left out. A question and the turn
        that answers it rarely share their words; the question's best lexical matches often
        share the answer's topic words ("adoption" -> "agency", "kids")."""
        records = self._fetch([int(x) for x in ranked[: req.prf_docs]], memo or Memo())
        analyzer, index = self.lexical.analyzer, self.lexical
        own = set(index.terms(req.query))
        weights: Counter[str] = Counter()
        for rec in records:
            tokens = analyzer.tokenize((rec or {}).get("content", ""))
            for term, tf in Counter(tokens).items():
                if term not in own:
                    weights[term] += tf / len(tokens)
        scored = sorted((-w * index.idf(df), term) for term, w in weights.items()
                        if (df := index.df(term)) >= 2)
        return [term for _, term in scored[: max(0, req.prf_terms)]]

    def _post_filter(self, node: Any, labels: np.ndarray) -> np.ndarray:
        """`labels` (in their ranked order) that match the filter. A filter on indexed fields is
        answered from the postings' label arrays (cached per value, O(n) when a write cleared
        them) with one vectorised membership test; only a filter on other fields (metadata)
        reads each candidate's row."""
        if isinstance(node, flt.All):
            return labels
        if flt.is_indexable(node):
            allowed = flt.evaluate(node, self.postings)  # sorted unique
            if not len(allowed) or not len(labels):
                return np.empty(0, np.int64)
            labels = np.asarray(labels, dtype=np.int64)
            idx = np.minimum(np.searchsorted(allowed, labels), len(allowed) - 1)
            return labels[allowed[idx] == labels]
        keep = [lb for lb in labels.tolist()
                if lb in self.postings and flt.matches(node, self.postings.row(lb))]
        return np.asarray(keep, dtype=np.int64)

    def _neighbours(self, req: SearchRequest, pool: np.ndarray, node: Any,
                    cand: np.ndarray | None, memo: Memo
                    ) -> tuple[np.ndarray, np.ndarray, list[dict]]:
        """Neighbouring-record expansion: the pool grows by each member's `neighbor_turns`
        nearest records either side in its session (session_id, capture order, within
        `neighbor_window_s`), so a short reply ("Yes, last Friday!") is found through the
        turn it answers, and a commit through the prompt that asked for it.

        Returns the grown pool (sorted), an (n, 2w) matrix of each member's neighbours as
        positions in it (-1: none), and the members' rows. The pool's sessions are laid end to
        end as one sorted key array (session code, label), so finding every neighbour is one
        searchsorted; the only Python loop gathers each distinct session's (cached) labels.
        Neighbours are this shard's records (ids route records to shards by hash, so with S
        shards a record's nearest same-session neighbours here lie ~S capture positions
        apart)."""
        w = max(1, int(req.neighbor_turns))
        offsets = np.concatenate([-np.arange(1, w + 1), np.arange(1, w + 1)])
        rows = self._rows(pool, memo)
        sids = [r.get("session_id") for r in rows]
        names = sorted({sid for sid in sids if sid})
        if not names:
            return pool, np.full((len(pool), len(offsets)), -1, np.int64), rows
        code_of = {sid: i for i, sid in enumerate(names)}
        sessions = [self.postings.labels_eq("session_id", sid) for sid in names]
        shift = np.int64(1) << np.int64(40)  # labels are row numbers, far below 2**40
        keys = np.concatenate([np.int64(c) * shift + sess for c, sess in enumerate(sessions)])

        def around(labels: np.ndarray, codes: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
            """Labels of the neighbours at each offset (n, 2w) and whether they exist."""
            at = np.searchsorted(keys, codes * shift + labels)[:, None] + offsets
            ok = (at >= 0) & (at < len(keys)) & (codes >= 0)[:, None]
            found = keys[np.clip(at, 0, len(keys) - 1)]
            ok &= (found // shift) == codes[:, None]
            return found % shift, ok

        codes = np.asarray([code_of.get(sid, -1) if sid else -1 for sid in sids], np.int64)
        labs, ok = around(pool, codes)
        new = np.setdiff1d(labs[ok], pool)
        if len(new) and not isinstance(node, flt.All):
            new = np.intersect1d(new, cand) if cand is not None else self._post_filter(node, new)
        if len(new):
            pool = np.concatenate([pool, new])
            order = np.argsort(pool, kind="stable")
            pool = pool[order]
            new_rows = self._rows(new, memo)
            rows = rows + new_rows
            rows = [rows[i] for i in order.tolist()]
            new_codes = np.asarray([code_of.get(r.get("session_id"), -1) for r in new_rows],
                                   np.int64)
            codes = np.concatenate([codes, new_codes])[order]
            labs, ok = around(pool, codes)
        ts = np.asarray([r.get("timestamp") or 0.0 for r in rows], dtype=np.float64)
        at = np.minimum(np.searchsorted(pool, labs), len(pool) - 1)
        ok &= pool[at] == labs
        ok &= np.abs(ts[at] - ts[:, None]) <= req.neighbor_window_s
        return pool, np.where(ok, at, -1), rows

    def _score(self, req: SearchRequest, pool: np.ndarray, k: int,
               lex: _Lexical | None, nb: np.ndarray | None = None,
               rows: list[dict] | None = None, exp: _Lexical | None = None,
               st: _Stages | None = None,
               known: tuple[np.ndarray, np.ndarray] | None = None,
               memo: Memo | None = None) -> list[Hit]:
        """`known`: (labels, sims) the exact scan already scored in float32, not read again."""
        if len(pool) == 0:
            return []
        st = st or _Stages()
        memo = memo if memo is not None else Memo()
        want_vec = req.vector is not None and req.mode != "lexical"
        if want_vec:
            vec = np.clip(self._similarity(req.vector, pool, known), 0.0, 1.0)
        else:
            vec = np.zeros(len(pool), np.float32)
        st.lap("score")
        if lex is not None:
            lexs = lexical_normalize(lex.of(pool), self.lexical.query_scale(req.query)).astype(
                np.float32)
            if exp is not None:  # the expansion terms take `prf_weight` of the lexical score
                more = lexical_normalize(exp.of(pool), self.lexical.query_scale(exp.query))
                lexs = ((lexs + req.prf_weight * more) / (1.0 + req.prf_weight)).astype(
                    np.float32)
            st.lap("lexical")
        else:
            lexs = np.zeros(len(pool), np.float32)
        score = _fuse(req, vec, lexs)
        if want_vec and req.vector_prf > 0 and req.vector_prf_docs > 0:
            # Rocchio feedback: move the query towards the first pass's best hits, re-score
            top = np.argsort(-score, kind="stable")[: req.vector_prf_docs]
            moved = req.vector + req.vector_prf * self.index.vectors(pool[top]).mean(axis=0)
            moved = (moved / max(float(np.linalg.norm(moved)), 1e-9)).astype(np.float32)
            vec = np.clip(self.index.similarity(moved, pool), 0.0, 1.0)
            score = _fuse(req, vec, lexs)
        now = req.now or time.time()
        if rows is None:
            rows = self._rows(pool, memo)
        expired = np.array([(r.get("expires_at") or math.inf) <= now for r in rows])
        if nb is not None:
            # each record also scores by its best neighbour (what it answers or is answered
            # by); an expired neighbour lends nothing
            lend = np.where(expired, 0.0, score)
            best = np.where(nb >= 0, lend[np.maximum(nb, 0)], 0.0).max(axis=1)
            score = (score + req.neighbor_weight * best) / (1.0 + req.neighbor_weight)
        if req.time_span is not None and req.temporal_weight > 0:
            ts = np.array([r.get("timestamp") or 0.0 for r in rows], dtype=np.float64)
            prox = temporal_proximity(ts, req.time_span, req.temporal_scale_s)
            score = score * (1.0 - req.temporal_weight + req.temporal_weight * prox)
        if req.recency_weight > 0:
            ages = np.array([max(0.0, now - (r.get("timestamp") or now)) for r in rows])
            decay = np.power(0.5, ages / (req.half_life_days * 86400.0))
            score = score * (1.0 - req.recency_weight + req.recency_weight * decay)
        if req.tier_weighting:
            score = score * np.array([TIER_WEIGHT.get(r.get("tier"), 0.9) for r in rows])
        score = np.where(expired, -1.0, score)
        order = np.argsort(-score, kind="stable")[: k]
        order = order[score[order] >= 0]
        top = pool[order]
        st.lap("score")
        records = (self._fetch(top.tolist(), memo) if req.include_content
                   else [rows[i] for i in order])
        hits = [Hit(float(score[i]), float(vec[i]), float(lexs[i]), rec)
                for i, rec in zip(order, records) if rec is not None]
        st.lap("fetch")
        return hits


def _known_sims(pool: np.ndarray, known: tuple[np.ndarray, np.ndarray] | None
                ) -> tuple[np.ndarray, np.ndarray]:
    """Which of `pool` have a score in `known`, and those scores (0 elsewhere)."""
    sims = np.zeros(len(pool), np.float32)
    if known is None or not len(known[0]):
        return np.zeros(len(pool), bool), sims
    order = np.argsort(known[0])
    labels, scores = known[0][order], known[1][order]
    at = np.minimum(np.searchsorted(labels, pool), len(labels) - 1)
    have = labels[at] == pool
    sims[have] = scores[at[have]]
    return have, sims


def _fuse(req: SearchRequest, vec: np.ndarray, lexs: np.ndarray) -> np.ndarray:
    if req.mode == "vector":
        return vec
    if req.mode == "lexical":
        return lexs
    if req.fusion == "rrf":
        return _rrf(vec, lexs, req.rrf_k)
    return req.alpha * vec + (1.0 - req.alpha) * lexs


def _rrf(vec: np.ndarray, lexs: np.ndarray, k: float) -> np.ndarray:
    """Reciprocal-rank fusion over the pool, scaled so rank 1 in both lists scores 1.0; a
    record without a lexical match gets no lexical term."""
    n = len(vec)
    rank_v = np.empty(n)
    rank_v[np.argsort(-vec, kind="stable")] = np.arange(1, n + 1)
    rank_l = np.empty(n)
    rank_l[np.argsort(-lexs, kind="stable")] = np.arange(1, n + 1)
    fused = 1.0 / (k + rank_v) + np.where(lexs > 0, 1.0 / (k + rank_l), 0.0)
    return (fused * (k + 1.0) / 2.0).astype(np.float32)

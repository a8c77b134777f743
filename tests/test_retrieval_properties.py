"""Property tests of retrieval under filters, on real ShardCores (no Ray):

- every hit any strategy returns, in any mode, satisfies its filter (`filters.matches`), and the
  postings evaluate a filter to exactly the records `matches` accepts;
- the exact strategy returns exactly the brute-force top-k (numpy over the same vectors,
  mode="vector");
- the ANN strategies (ann, ann_adaptive) reach recall@10 >= 0.95 against that brute force on the
  same filter, averaged over many random (filter, query) pairs; single queries may miss (ANN
  post-filters, and falls back to exact only when too few candidates survive).

Data: 800 records over 2 shards with small value domains, so random filters land anywhere
from empty to everything. Vectors are positive-orthant unit vectors, so every cosine is > 0 and
the shard's clip to [0, 1] never creates ties. Deterministic: fixed seeds, derandomized
hypothesis (tests/conftest.py's profile), no example database.
"""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from memoray import filters as flt
from memoray.actors.shard import ShardCore
from memoray.actors.shard_search import ANN, ANN_ADAPTIVE, EXACT, SearchRequest
from memoray.ids import new_id, shard_for
from memoray.timeutil import to_iso

N_RECORDS = 800
N_SHARDS = 2
DIM = 48
N_QUERIES = 64
T0 = 1_700_000_000.0
DAY = 86400.0

WORKSPACES = ("w0", "w1", "w2", "w3")
WS_WEIGHTS = (0.6, 0.25, 0.1, 0.05)
EVENT_TYPES = ("note", "decision", "review", "code_change")
TIERS = ("session", "project", "pattern", "preference")
SESSIONS = ("s0", "s1", "s2", None)
BRANCHES = ("main", "dev", None)
TAGS = ("a", "b", "c", None)  # None: the key is absent from metadata
WORDS = ("apple", "banana", "cherry", "delta", "echo", "foxtrot", "golf", "hotel", "india",
         "juliet", "kilo", "lima", "mango", "nectar", "oscar", "papa", "quartz", "romeo",
         "sierra", "tango")

# Only pass tier_weighting where the shard has it: the brute force below scores pure cosine.
_PURE = ({"tier_weighting": False}
         if "tier_weighting" in getattr(SearchRequest, "__dataclass_fields__", {}) else {})

SETTINGS = {"deadline": None,
            "suppress_health_check": [HealthCheck.too_slow, HealthCheck.function_scoped_fixture]}


class Store:
    def __init__(self, root):
        rng = np.random.default_rng(20240531)
        self.records: list[dict] = []
        vecs = np.abs(rng.standard_normal((N_RECORDS, DIM))).astype(np.float32)
        self.vectors = vecs / np.linalg.norm(vecs, axis=1, keepdims=True)
        q = np.abs(rng.standard_normal((N_QUERIES, DIM))).astype(np.float32)
        self.queries = q / np.linalg.norm(q, axis=1, keepdims=True)
        for i in range(N_RECORDS):
            meta: dict = {"sev": int(rng.integers(0, 4)), "flag": bool(rng.integers(0, 2))}
            tag = TAGS[int(rng.integers(0, len(TAGS)))]
            if tag is not None:
                meta["tag"] = tag
            self.records.append({
                "id": new_id(), "content": " ".join(rng.choice(WORDS, 5)),
                "event_type": EVENT_TYPES[int(rng.integers(0, len(EVENT_TYPES)))],
                "metadata": meta,
                "workspace_id": str(rng.choice(WORKSPACES, p=WS_WEIGHTS)),
                "session_id": SESSIONS[int(rng.integers(0, len(SESSIONS)))],
                "agent_id": None,
                "git_branch": BRANCHES[int(rng.integers(0, len(BRANCHES)))],
                "git_commit": None, "tier": TIERS[int(rng.integers(0, len(TIERS)))],
                "visibility": "shared",
                "timestamp": T0 + float(rng.integers(0, 100)) * DAY,
                "created_at": T0, "updated_at": T0, "expires_at": None, "parent_id": None,
                "chunk_index": None, "chunk_count": None, "merge_count": 1, "merged_ids": [],
                "idempotency_key": None, "content_hash": f"h{i}",
            })
        self.row_of = {r["id"]: i for i, r in enumerate(self.records)}
        self.cores = [ShardCore(s, root / f"shard-{s}", DIM, map_size=64 << 20, durable=False)
                      for s in range(N_SHARDS)]
        per: dict[int, list[int]] = {}
        for i, r in enumerate(self.records):
            per.setdefault(shard_for(r["id"], N_SHARDS), []).append(i)
        for s, rows in per.items():
            self.cores[s].put([self.records[i] for i in rows], self.vectors[rows])

    def search(self, node, q: int, k: int, strategy: str, mode: str = "vector") -> list:
        words = " ".join(WORDS[(q * 7 + j) % len(WORDS)] for j in range(2))
        req = SearchRequest(vector=self.queries[q], query=words if mode != "vector" else "",
                            k=k, filter=node, strategy=strategy, mode=mode, now=T0, **_PURE)
        hits = [h for core in self.cores for h in core.search(req)["hits"]]
        hits.sort(key=lambda h: -h.score)
        return hits[:k]

    def brute_force(self, node, q: int, k: int) -> tuple[list[str], np.ndarray]:
        """Top-k ids by cosine among the records that match, and all their scores sorted."""
        rows = np.array([i for i, r in enumerate(self.records) if flt.matches(node, r)],
                        dtype=np.int64)
        if not len(rows):
            return [], np.empty(0, np.float32)
        sims = self.vectors[rows] @ self.queries[q]
        order = np.argsort(-sims, kind="stable")
        return [self.records[rows[j]]["id"] for j in order[:k]], sims[order]


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    s = Store(tmp_path_factory.mktemp("retrieval-props"))
    yield s
    for core in s.cores:
        core.storage.close()


# -- random filters over the small value domains -----------------------------------------------

def _iso(day: int) -> str:
    return to_iso(T0 + day * DAY)


_days = st.integers(min_value=-5, max_value=105)


def _string_field(name: str, values: tuple) -> st.SearchStrategy[dict]:
    present = [v for v in values if v is not None]
    value = st.sampled_from(values)
    some = st.lists(st.sampled_from(values), min_size=1, max_size=3)
    return st.one_of(
        value.map(lambda v: {name: v}),
        value.map(lambda v: {name: {"$ne": v}}),
        some.map(lambda vs: {name: {"$in": vs}}),
        some.map(lambda vs: {name: {"$nin": vs}}),
        st.booleans().map(lambda b: {name: {"$exists": b}}),
        st.sampled_from(present).map(lambda v: {name: {"$gte": v}}),
    )


_leaf = st.one_of(
    _string_field("workspaceId", WORKSPACES),
    _string_field("eventType", EVENT_TYPES),
    _string_field("tier", TIERS),
    _string_field("sessionId", SESSIONS),
    _string_field("gitBranch", BRANCHES),
    _days.map(lambda d: {"startTime": _iso(d)}),
    _days.map(lambda d: {"endTime": _iso(d)}),
    st.tuples(_days, _days).map(
        lambda ab: {"timestamp": {"$gte": _iso(min(ab)), "$lt": _iso(max(ab) + 1)}}),
    st.integers(0, 3).map(lambda n: {"metadata.sev": {"$gt": n}}),
    st.integers(0, 3).map(lambda n: {"metadata.sev": n}),
    st.sampled_from(TAGS).map(lambda t: {"metadata.tag": t}),
    st.lists(st.sampled_from(TAGS[:3]), min_size=1, max_size=2).map(
        lambda ts: {"metadata.tag": {"$in": ts}}),
    st.booleans().map(lambda b: {"metadata.tag": {"$exists": b}}),
    st.booleans().map(lambda b: {"metadata.flag": b}),
)

wire_filters = st.recursive(
    _leaf,
    lambda inner: st.one_of(
        st.lists(inner, min_size=1, max_size=3).map(lambda cs: {"$and": cs}),
        st.lists(inner, min_size=1, max_size=3).map(lambda cs: {"$or": cs}),
        inner.map(lambda c: {"$not": c}),
    ),
    max_leaves=5,
)

queries = st.integers(min_value=0, max_value=N_QUERIES - 1)
STRATEGIES = (EXACT, ANN, ANN_ADAPTIVE)


# -- properties --------------------------------------------------------------------------------

@settings(max_examples=120, **SETTINGS)
@given(wire=wire_filters, q=queries, k=st.integers(min_value=1, max_value=25),
       mode=st.sampled_from(("vector", "lexical", "hybrid")))
def test_every_hit_satisfies_its_filter(store, wire, q, k, mode):
    node = flt.parse_filter(wire)
    # the postings and the row predicate agree on what the filter selects
    for core in store.cores:
        got = set(core.labels_matching(node).tolist())
        want = {lb for lb in core.postings.all_labels().tolist()
                if flt.matches(node, core.postings.row(lb))}
        assert got == want, wire
    for strategy in STRATEGIES:
        hits = store.search(node, q, k, strategy, mode)
        assert len(hits) <= k
        ids = [h.record["id"] for h in hits]
        assert len(ids) == len(set(ids))
        for h in hits:
            assert flt.matches(node, h.record), (wire, strategy, mode, h.record)
            assert flt.matches(node, store.records[store.row_of[h.record["id"]]])
            assert 0.0 <= h.score <= 1.0


@settings(max_examples=150, **SETTINGS)
@given(wire=wire_filters, q=queries, k=st.integers(min_value=1, max_value=30))
def test_exact_strategy_is_brute_force(store, wire, q, k):
    node = flt.parse_filter(wire)
    want, sims = store.brute_force(node, q, k)
    hits = store.search(node, q, k, EXACT)
    got = [h.record["id"] for h in hits]
    assert len(got) == len(want), wire
    if got != want:
        # Only a float tie may reorder: scores must match brute force position by position.
        np.testing.assert_allclose([h.score for h in hits], sims[: len(got)], rtol=0, atol=1e-6)
    for h in hits:  # and the scores are the cosines themselves
        i = store.row_of[h.record["id"]]
        assert abs(h.score - float(store.vectors[i] @ store.queries[q])) <= 1e-5


def test_ann_strategies_recall_at_10(store):
    recalls: dict[str, list[float]] = {ANN: [], ANN_ADAPTIVE: []}
    seen = {"pairs": 0, "empty": 0}

    @settings(max_examples=200, **SETTINGS)
    @given(wire=wire_filters, q=queries)
    def check(wire, q):
        node = flt.parse_filter(wire)
        want, _ = store.brute_force(node, q, 10)
        seen["pairs"] += 1
        if not want:
            seen["empty"] += 1
            for strategy in recalls:
                assert store.search(node, q, 10, strategy) == []
            return
        for strategy, values in recalls.items():
            hits = store.search(node, q, 10, strategy)
            assert all(flt.matches(node, h.record) for h in hits)
            got = {h.record["id"] for h in hits}
            values.append(len(got & set(want)) / len(want))

    check()
    assert seen["pairs"] - seen["empty"] >= 100, seen  # the mean rests on many queries
    for strategy, rs in recalls.items():
        assert float(np.mean(rs)) >= 0.95, (strategy, float(np.mean(rs)), len(rs))

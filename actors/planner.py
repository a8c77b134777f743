"""QueryPlanner: picks a search strategy per query from shard statistics.

Strategies (executed by the shards, see actors/shard.py):
- exact: candidates from the postings, brute-force scored. Cost grows with the candidates.
- ann: one HNSW search with a modest oversample, then post-filter. Right for broad filters.
- ann_adaptive: HNSW with k' = k / selectivity, widening until k survive the filter, falling
  back to exact. In between: a filter too broad to enumerate cheaply, too narrow for plain ann.

The plain class runs in two places: the QueryPlanner actor (which aggregates statistics from the
shards, keeps the accuracy record and answers explain-query), and a local copy inside each Serve
replica that refreshes its statistics from the actor every few seconds, so planning a query costs
no actor round trip.
"""

from __future__ import annotations

import json
import math
import time
from collections import OrderedDict
from dataclasses import asdict, dataclass, field
from typing import Any

from memoray import filters as flt

# Cost model, in microseconds, measured on a 2-core x86 machine by benchmarks/bench_planner.py.
COST_EXACT_PER_CANDIDATE = 0.35   # one 384-d dot product plus its share of the set algebra
COST_EXACT_FIXED = 150.0          # postings lookups, lexical scoring of the candidates
COST_ANN_FIXED = 400.0            # one HNSW descent at ef=64 plus the lexical top-k
COST_ANN_PER_RESULT = 3.0         # post-filtering one returned label in Python
ANN_MIN_SELECTIVITY = 0.3         # below this, one oversampled ANN pass risks recall
ADAPTIVE_MIN_SELECTIVITY = 0.01   # below this, k/selectivity outgrows the graph search


@dataclass
class Plan:
    strategy: str
    selectivity: float
    estimated_candidates: int
    estimated_cost_us: float
    costs_us: dict[str, float]
    oversample: float
    reason: str
    shape: str
    cached: bool = False
    per_shard: list[int] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


class QueryPlanner:
    def __init__(self, cache_size: int = 1024):
        self.shard_stats: dict[int, dict] = {}
        self.version = 0
        self.cache: OrderedDict[str, Plan] = OrderedDict()
        self.cache_size = cache_size
        self.cache_hits = 0
        self.cache_misses = 0
        self.observations: list[tuple[float, float]] = []  # (estimated, actual) candidates
        self.strategy_counts: dict[str, int] = {}

    # -- statistics -------------------------------------------------------------------------
    def update_stats(self, shard_id: int, stats: dict) -> None:
        self.shard_stats[shard_id] = stats
        self.version += 1
        self.cache.clear()

    def set_all_stats(self, all_stats: dict[int, dict], version: int) -> None:
        if version != self.version:
            self.shard_stats = dict(all_stats)
            self.version = version
            self.cache.clear()

    def snapshot(self) -> tuple[dict[int, dict], int]:
        return self.shard_stats, self.version

    @property
    def total(self) -> int:
        return sum(int(s.get("total", 0)) for s in self.shard_stats.values())

    # -- planning ---------------------------------------------------------------------------
    def plan(self, node: Any, k: int) -> Plan:
        key = json.dumps([flt.to_wire(node), k], sort_keys=True, default=str)
        hit = self.cache.get(key)
        if hit is not None:
            self.cache_hits += 1
            self.cache.move_to_end(key)
            return Plan(**{**asdict(hit), "cached": True})
        self.cache_misses += 1
        plan = self._plan(node, k)
        self.cache[key] = plan
        if len(self.cache) > self.cache_size:
            self.cache.popitem(last=False)
        return plan

    def _plan(self, node: Any, k: int) -> Plan:
        per_shard: list[int] = []
        sels: list[float] = []
        for sid in sorted(self.shard_stats):
            st = self.shard_stats[sid]
            n = int(st.get("total", 0))
            s = 1.0 if isinstance(node, flt.All) else flt.estimate(node, st)
            sels.append(s * n)
            per_shard.append(int(round(s * n)))
        total = max(self.total, 1)
        est = sum(per_shard)
        selectivity = min(1.0, sum(sels) / total) if self.total else 1.0
        shards = max(len(self.shard_stats), 1)
        pool = max(4 * k, 20)
        # Shards run in parallel: the slowest shard (the largest share) sets the latency.
        biggest = max(per_shard) if per_shard else 0
        exact = COST_EXACT_FIXED + COST_EXACT_PER_CANDIDATE * biggest
        over = 3.0
        ann_k = pool * over
        ann = COST_ANN_FIXED + COST_ANN_PER_RESULT * ann_k
        adaptive_k = min(pool / max(selectivity, 1e-6), 4096)
        adaptive = COST_ANN_FIXED * (1 + math.log2(max(adaptive_k / 64, 1))) + (
            COST_ANN_PER_RESULT * adaptive_k)
        costs = {"exact": exact, "ann": ann, "ann_adaptive": adaptive}
        allowed = {"exact"}
        if selectivity >= ANN_MIN_SELECTIVITY:
            allowed.add("ann")
        if selectivity >= ADAPTIVE_MIN_SELECTIVITY:
            allowed.add("ann_adaptive")
        choice = min(allowed, key=lambda s: costs[s])
        reason = (f"selectivity {selectivity:.4f} over {self.total} records in {shards} shards; "
                  f"{choice} is the cheapest strategy that keeps recall")
        return Plan(strategy=choice, selectivity=selectivity, estimated_candidates=est,
                    estimated_cost_us=round(costs[choice], 1),
                    costs_us={s: round(c, 1) for s, c in costs.items()}, oversample=over,
                    reason=reason, shape=flt.shape(node), per_shard=per_shard)

    # -- feedback ---------------------------------------------------------------------------
    def record(self, estimated: int, actual: int | None, strategy: str) -> None:
        self.strategy_counts[strategy] = self.strategy_counts.get(strategy, 0) + 1
        if actual is not None:
            self.observations.append((float(estimated), float(actual)))
            if len(self.observations) > 10000:
                self.observations = self.observations[-5000:]

    def accuracy(self) -> dict[str, Any]:
        """q-error (max(est/actual, actual/est)) of the candidate estimates, the standard
        measure for cardinality estimation."""
        q = sorted(max((e + 1) / (a + 1), (a + 1) / (e + 1)) for e, a in self.observations)
        if not q:
            return {"observations": 0, "strategies": self.strategy_counts}
        return {
            "observations": len(q),
            "q_error_p50": round(q[len(q) // 2], 3),
            "q_error_p95": round(q[min(len(q) - 1, int(len(q) * 0.95))], 3),
            "q_error_max": round(q[-1], 3),
            "strategies": self.strategy_counts,
            "cache_hits": self.cache_hits,
            "cache_misses": self.cache_misses,
        }


def actor_class():
    import asyncio

    import ray

    @ray.remote(max_restarts=-1, max_task_retries=3, num_cpus=0)
    class QueryPlannerActor:
        """Pulls statistics from every shard each `interval_s` (through the shard's own task
        queue, so reading them never races a write) and serves them to replicas by version."""

        def __init__(self, shard_names: list[str], namespace: str, interval_s: float = 1.0):
            self.planner = QueryPlanner()
            self.shard_names = shard_names
            self.namespace = namespace
            self.interval_s = interval_s
            self.updated = 0.0
            self.seqs: dict[int, int] = {}
            self.task = None

        async def _refresh_loop(self):
            while True:
                try:
                    await self.refresh()
                except Exception:  # a restarting shard: try again next tick
                    pass
                await asyncio.sleep(self.interval_s)

        def _ensure_loop(self):
            if self.task is None:
                self.task = asyncio.get_running_loop().create_task(self._refresh_loop())

        async def refresh(self) -> int:
            handles = [ray.get_actor(n, namespace=self.namespace) for n in self.shard_names]
            results = await asyncio.gather(
                *[h.planner_stats.remote(self.seqs.get(i, -1)) for i, h in enumerate(handles)])
            for i, res in enumerate(results):
                if res is not None:
                    self.seqs[i] = res["seq"]
                    self.planner.update_stats(i, res["stats"])
            self.updated = time.time()
            return self.planner.version

        async def snapshot(self, known_version: int = -1):
            self._ensure_loop()
            if known_version == self.planner.version:
                return None
            return self.planner.snapshot()

        async def plan(self, node, k: int) -> dict:
            self._ensure_loop()
            return self.planner.plan(node, k).to_dict()

        async def record(self, observations: list) -> None:
            for est, actual, strategy in observations:
                self.planner.record(est, actual, strategy)

        async def accuracy(self) -> dict:
            return self.planner.accuracy()

        async def health(self) -> dict:
            self._ensure_loop()
            return {"status": "ok", "version": self.planner.version,
                    "shards": len(self.planner.shard_stats),
                    "stats_age_s": round(time.time() - self.updated, 1) if self.updated else None}

    return QueryPlannerActor

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

import math
import time
from collections import OrderedDict
from dataclasses import asdict, dataclass, field, replace
from typing import Any

from memoray import filters as flt
from memoray.actors.client import ActorClient

# Cost model, in microseconds, calibrated on a 2-core x86 machine with
# benchmarks/bench_planner.py (100k memories, 4 shards, hybrid mode).
COST_EXACT_FIXED = 233.0          # postings lookups, lexical scoring of the candidates
COST_EXACT_PER_CANDIDATE = 0.27   # one 384-d dot product plus its share of the set algebra
COST_SCAN_PER_ROW = 0.36          # a non-indexed leaf (metadata.*) read in Python, per row
COST_ANN_FIXED = 895.0            # one HNSW descent plus the lexical top-k'
COST_ANN_PER_RESULT = 4.1         # post-filtering one returned label
OVERSAMPLE = 3.0                  # the shard's first ANN pass asks for pool x this
MAX_KPRIME = 4096                 # the shard's widening stops here, then falls back to exact


def p_short(lam: float, k: int) -> float:
    """P(X < k) for X ~ Poisson(lam): the chance a post-filtered pass keeps fewer than k (then
    the shard widens or falls back to exact)."""
    if lam <= 0:
        return 1.0
    term = total = math.exp(-lam)
    for i in range(1, k):
        term *= lam / i
        total += term
        if term < 1e-12 and i > lam:
            break
    return min(1.0, total)


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
        # repr, not the node: Eq(f, 1), Eq(f, 1.0) and Eq(f, True) are equal dataclasses.
        key = (repr(node), k)
        hit = self.cache.get(key)
        if hit is not None:
            self.cache_hits += 1
            self.cache.move_to_end(key)
            return replace(hit, cached=True)
        self.cache_misses += 1
        plan = self._plan(node, k)
        self.cache[key] = plan
        if len(self.cache) > self.cache_size:
            self.cache.popitem(last=False)
        return plan

    def _plan(self, node: Any, k: int) -> Plan:
        """Cost each strategy the way the shard runs it and pick the cheapest.

        Recall is not a guard: post-filtering an exact top-k' that keeps >= k survivors is the
        exact filtered top-k, and with fewer the shard widens or falls back to exact; so each ANN
        strategy is charged the exact cost times the chance it comes up short. A filter with
        non-indexed leaves has a guessed selectivity: it is costed at the guess and at a tenth
        of it, and the worse figure counts.
        """
        per_shard: list[int] = []
        totals: list[int] = []
        for sid in sorted(self.shard_stats):
            st = self.shard_stats[sid]
            n = int(st.get("total", 0))
            s = 1.0 if isinstance(node, flt.All) else flt.estimate(node, st)
            per_shard.append(int(round(s * n)))
            totals.append(n)
        total = sum(totals)
        selectivity = min(1.0, sum(per_shard) / total) if total else 1.0
        rows_max = max(totals) if totals else 0
        biggest = max(per_shard) if per_shard else 0  # shards run in parallel: the largest
        pool = max(4 * k, 20)
        indexable = flt.is_indexable(node)
        exact = COST_EXACT_FIXED + COST_EXACT_PER_CANDIDATE * (
            rows_max if isinstance(node, flt.All) else biggest)
        if not indexable:
            exact += COST_SCAN_PER_ROW * rows_max

        def ann_pass(kp: float) -> float:
            return COST_ANN_FIXED + COST_ANN_PER_RESULT * kp

        def costs(sel: float) -> dict[str, float]:
            if isinstance(node, flt.All):
                one = ann_pass(pool)
                return {"exact": exact, "ann": one, "ann_adaptive": one}
            kp = min(math.ceil(pool * OVERSAMPLE), MAX_KPRIME)
            ann = ann_pass(kp) + p_short(sel * kp, k) * exact
            kp = min(math.ceil(pool * OVERSAMPLE * 2), MAX_KPRIME)
            reach, adaptive = 1.0, 0.0
            while True:
                adaptive += reach * ann_pass(kp)
                reach *= p_short(sel * kp, k)
                if kp >= MAX_KPRIME:
                    adaptive += reach * exact
                    break
                kp = min(kp * 4, MAX_KPRIME)
            return {"exact": exact, "ann": ann, "ann_adaptive": adaptive}

        est = costs(selectivity)
        if not indexable:
            low = costs(selectivity / 10)
            est = {s: max(v, low[s]) for s, v in est.items()}
        choice = min(("ann", "ann_adaptive", "exact"), key=lambda s: est[s])  # ties: ann
        reason = (f"selectivity {selectivity:.4f} over {total} records in "
                  f"{max(len(totals), 1)} shards; {choice} is the cheapest expected cost"
                  + ("" if indexable else " (non-indexed fields: costed pessimistically)"))
        return Plan(strategy=choice, selectivity=selectivity, estimated_candidates=sum(per_shard),
                    estimated_cost_us=round(est[choice], 1),
                    costs_us={s: round(c, 1) for s, c in est.items()}, oversample=OVERSAMPLE,
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


ACTOR_OPTIONS = {"max_restarts": -1, "max_task_retries": 3, "num_cpus": 0}


class PlannerService:
    """The planner actor's plain class: pulls statistics from every shard each `interval_s`
    (through the shard's own task queue, so reading them never races a write) and serves them to
    replicas by version; replicas plan locally with a QueryPlanner copy (no hop per query)."""

    def __init__(self, shards: Any, interval_s: float = 1.0):
        self.planner = QueryPlanner()
        self.shards = shards  # actors.shard_client.ShardSet
        self.interval_s = interval_s
        self.updated = 0.0
        self.seqs: dict[int, int] = {}
        self._task: Any = None

    async def _refresh_loop(self) -> None:
        import asyncio

        while True:
            try:
                await self.refresh()
            except Exception:  # noqa: BLE001 - a restarting shard: try again next tick
                pass
            await asyncio.sleep(self.interval_s)

    def _ensure_loop(self) -> None:
        import asyncio

        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._refresh_loop())

    async def refresh(self) -> int:
        import asyncio

        if self.shards.refresh():  # a reshard added or removed shards: forget removed ones
            for gone in [i for i in self.planner.shard_stats if i >= len(self.shards)]:
                del self.planner.shard_stats[gone]
                self.seqs.pop(gone, None)
                self.planner.version += 1
                self.planner.cache.clear()
        results = await asyncio.gather(*[c.planner_stats(self.seqs.get(i, -1))
                                         for i, c in enumerate(self.shards.clients)])
        for i, res in enumerate(results):
            if res is not None:
                self.seqs[i] = res["seq"]
                self.planner.update_stats(i, res["stats"])
        self.updated = time.time()
        return self.planner.version

    async def snapshot(self, known_version: int = -1) -> tuple[dict[int, dict], int] | None:
        self._ensure_loop()
        if known_version == self.planner.version:
            return None
        return self.planner.snapshot()

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


def planner_actor_class(**options: Any) -> Any:
    import ray

    return ray.remote(**{**ACTOR_OPTIONS, **options})(PlannerService)


class PlannerClient(ActorClient[PlannerService]):
    async def refresh(self) -> int:
        return await self._call(PlannerService.refresh)

    async def snapshot(self, known_version: int = -1) -> tuple[dict[int, dict], int] | None:
        return await self._call(PlannerService.snapshot, known_version)

    async def record(self, observations: list) -> None:
        return await self._call(PlannerService.record, observations)

    async def health(self) -> dict:
        return await self._call(PlannerService.health)

"""Query planner benchmark: latency and recall of each search strategy across filter selectivity.

    python -m benchmarks.bench_planner [--n 100000] [--shards 4] [--queries 50]
                                       [--modes vector,hybrid] [--repeat 2]

Data: `--n` memories spread over `--shards` in-process ShardCores (durable=False, no Ray) by
the service's own routing (shard_for of the id). Vectors are synthetic but shaped like sentence
embeddings: 384-d unit vectors from a 32-d latent mixture of 256 topics (a low intrinsic
dimension, as real embeddings have; uniform random 384-d vectors are an unrealistically hard
case for HNSW: `--vectors random` runs it). Each memory's content is 12 words, 8 from its topic's
vocabulary, so lexical and vector scores agree the way they do on real text.

Fields are drawn independently so filters span 0.01% to 100%: workspaces of 10, 100, 1k, 5k,
20k records and the rest; eventType decision 2% / code_change 8% / review 20% / tool_event 70%;
tier preference 1% / pattern 9% / project 30% / session 60%; timestamps uniform over one year;
metadata.severity high 5% / medium 25% / low 70% (not an indexed field: the planner guesses).

For each filter, the same `--queries` query vectors (new points from the same distribution,
plus 3 topic words for the lexical side) run with each fixed strategy (exact, ann,
ann_adaptive) and with the planner's choice, k=10. Ground truth is the exact strategy: it
scores every candidate the filter admits (the postings give them), so recall@10 of a strategy =
|its top 10 & exact's top 10| / |exact's top 10|. Latency is measured per shard with
perf_counter: "seq" is the sum over shards (the in-process LocalBackend calls them one after
another), "par" is the slowest shard (what a Ray fan-out to shard actors on separate cores would
wait for, before RPC overhead). The planner's figures include its own plan() time.

Also measured: plan() itself, cached (the same filter again) and uncached (cache cleared), and
the planner's candidate estimates against the true counts (q-error). From the measured
latencies the per-candidate and fixed costs of each strategy are fitted; the planner is then
re-run with those constants (monkeypatched, not edited) to show what they would choose.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks.common import (
    Progress,
    fmt_table,
    latency_summary,
    log,
    mean,
    percentile,
    save_json,
)

DIM = 384
LATENT = 32
TOPICS = 256
WORDS_PER_TOPIC = 30
GLOBAL_WORDS = 2000
K = 10
DAY = 86400.0
T0 = 1_735_689_600.0  # 2025-01-01T00:00:00Z: "now" for the synthetic timestamps
STRATEGY_NAMES = ("exact", "ann", "ann_adaptive")
SHORT = {"exact": "E", "ann": "A", "ann_adaptive": "AA"}
RECALL_OK = 0.95
WARMUP = 3

WORKSPACES = [("ws-10", 10), ("ws-100", 100), ("ws-1k", 1000), ("ws-5k", 5000),
              ("ws-20k", 20000)]  # the rest go to ws-rest
EVENT_TYPES = (("decision", 0.02), ("code_change", 0.08), ("review", 0.20),
               ("tool_event", 0.70))
TIERS = (("preference", 0.01), ("pattern", 0.09), ("project", 0.30), ("session", 0.60))
SEVERITY = (("high", 0.05), ("medium", 0.25), ("low", 0.70))


def filters() -> list[tuple[str, dict | None]]:
    def iso(days: float) -> str:
        return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(T0 - days * DAY))

    return [
        ("workspaceId=ws-10", {"workspaceId": "ws-10"}),
        ("workspaceId=ws-100", {"workspaceId": "ws-100"}),
        ("startTime=-1d", {"startTime": iso(1)}),
        ("workspaceId=ws-1k", {"workspaceId": "ws-1k"}),
        ("eventType=decision", {"eventType": "decision"}),
        ("$or(decision,preference)", {"$or": [{"eventType": "decision"},
                                              {"tier": "preference"}]}),
        ("workspaceId=ws-5k", {"workspaceId": "ws-5k"}),
        ("metadata.severity=high", {"metadata.severity": "high"}),
        ("ws-20k & startTime=-90d", {"workspaceId": "ws-20k", "startTime": iso(90)}),
        ("startTime=-30d", {"startTime": iso(30)}),
        ("startTime=-55d", {"startTime": iso(55)}),
        ("workspaceId=ws-20k", {"workspaceId": "ws-20k"}),
        ("tier=project", {"tier": "project"}),
        ("startTime=-180d", {"startTime": iso(180)}),
        ("workspaceId=ws-rest", {"workspaceId": "ws-rest"}),
        ("tier!=preference", {"tier": {"$ne": "preference"}}),
        ("(none)", None),
    ]


# -- data -------------------------------------------------------------------------------------

class Corpus:
    """Synthetic memories: fields, contents and unit vectors, reproducible from a seed."""

    def __init__(self, n: int, seed: int, vectors: str):
        rng = np.random.default_rng(seed)
        self.rng = rng
        self.n = n
        self.kind = vectors
        self.A = rng.standard_normal((DIM, LATENT)).astype(np.float32) / math.sqrt(LATENT)
        self.centers = rng.standard_normal((TOPICS, LATENT)).astype(np.float32)
        self.topic = rng.integers(0, TOPICS, n)
        self.vectors = self._vectors(self.topic)
        perm = rng.permutation(n)
        ws = np.full(n, "ws-rest", dtype=object)
        start = 0
        for name, size in WORKSPACES:
            ws[perm[start: start + size]] = name
            start += size
        self.workspace = ws
        self.event_type = self._draw(EVENT_TYPES, n)
        self.tier = self._draw(TIERS, n)
        self.severity = self._draw(SEVERITY, n)
        self.timestamp = T0 - rng.uniform(0, 365 * DAY, n)
        self.global_words = [f"w{i}" for i in range(GLOBAL_WORDS)]

    def _draw(self, table: tuple[tuple[str, float], ...], n: int) -> np.ndarray:
        names = np.array([t[0] for t in table], dtype=object)
        p = np.array([t[1] for t in table])
        return names[self.rng.choice(len(table), n, p=p / p.sum())]

    def _vectors(self, topics: np.ndarray) -> np.ndarray:
        m = len(topics)
        if self.kind == "random":
            v = self.rng.standard_normal((m, DIM)).astype(np.float32)
        else:
            z = self.centers[topics] + 0.7 * self.rng.standard_normal((m, LATENT)).astype(
                np.float32)
            v = z @ self.A.T + 0.05 * self.rng.standard_normal((m, DIM)).astype(np.float32)
        return (v / np.linalg.norm(v, axis=1, keepdims=True)).astype(np.float32)

    def topic_words(self, topic: int, count: int) -> list[str]:
        return [f"t{topic}x{j}" for j in self.rng.integers(0, WORDS_PER_TOPIC, count)]

    def content(self, i: int) -> str:
        words = self.topic_words(int(self.topic[i]), 8) + [
            self.global_words[j] for j in self.rng.integers(0, GLOBAL_WORDS, 4)]
        return " ".join(words)

    def record(self, i: int) -> dict:
        from memoray.ids import new_id

        return {"id": new_id(), "content": self.content(i), "event_type": str(self.event_type[i]),
                "metadata": {"severity": str(self.severity[i])},
                "workspace_id": str(self.workspace[i]), "session_id": None, "agent_id": None,
                "git_branch": None, "git_commit": None, "tier": str(self.tier[i]),
                "visibility": "shared", "timestamp": float(self.timestamp[i]),
                "created_at": T0, "updated_at": T0, "expires_at": None, "parent_id": None,
                "chunk_index": None, "chunk_count": None, "merge_count": 1, "merged_ids": [],
                "idempotency_key": None, "content_hash": f"h{i}"}

    def queries(self, m: int) -> list[tuple[np.ndarray, str]]:
        topics = self.rng.integers(0, TOPICS, m)
        vecs = self._vectors(topics)
        return [(vecs[j], " ".join(self.topic_words(int(topics[j]), 3))) for j in range(m)]


def build(root: Path, corpus: Corpus, shards: int) -> list:
    from memoray.actors.shard import ShardCore
    from memoray.ids import shard_for

    cores = [ShardCore(i, root / f"shard-{i}", DIM, map_size=4 << 30, durable=False,
                       snapshot_every=10**9) for i in range(shards)]
    prog = Progress(f"load {corpus.n} memories", corpus.n, "rec")
    batch = 2000
    for start in range(0, corpus.n, batch):
        idx = range(start, min(start + batch, corpus.n))
        per: dict[int, tuple[list, list]] = defaultdict(lambda: ([], []))
        for i in idx:
            rec = corpus.record(i)
            s = shard_for(rec["id"], shards)
            per[s][0].append(rec)
            per[s][1].append(i)
        for s, (recs, rows) in per.items():
            cores[s].put(recs, corpus.vectors[rows])
        prog.update(len(idx))
    prog.close()
    return cores


# -- measuring --------------------------------------------------------------------------------

def fanout(cores: list, req: Any) -> tuple[list, float, float, list[str], list[int | None]]:
    """Run req on every shard; merged top-k hits, sum and max of per-shard seconds."""
    hits, times, used, cands = [], [], [], []
    for core in cores:
        t0 = time.perf_counter()
        res = core.search(req)
        times.append(time.perf_counter() - t0)
        hits.extend(res["hits"])
        used.append(res["strategy"])
        cands.append(res["candidates"])
    hits.sort(key=lambda h: -h.score)
    return hits[: req.k], sum(times), max(times), used, cands


class TunedPlanner:
    """What-if planner (built on QueryPlanner, nothing edited): the same statistics and
    selectivity estimates, with a cost model calibrated on this machine and run the way the
    shard runs each strategy:

    - exact = fixed + per_candidate x (candidates of the biggest shard), plus a per-row scan of
      the shard when the filter has non-indexed leaves (metadata.*: rows are read in Python);
    - ann = one HNSW pass at k' = pool x oversample + post-filter, plus the exact cost times
      the chance that fewer than k survive (Poisson with mean selectivity x k'), because then
      the shard falls back to exact;
    - ann_adaptive = passes at k' = pool x oversample x 2, x4 each time up to 4096, each
      reached with the chance the previous one came up short, then the exact fallback;
    - recall is not a guard: post-filtering an exact top-k' that keeps >= k survivors is the
      exact filtered top-k, and with fewer the shard falls back, so only HNSW's own
      approximation costs recall (measured below);
    - a filter with non-indexed leaves has a guessed selectivity, so each strategy is costed
      at the guess and at a tenth of it and the worse figure counts (minimax).
    """

    def __init__(self, base_cls: Any, constants: dict[str, float]):
        self.c = constants
        self.base = base_cls()

    def update_stats(self, shard_id: int, stats: dict) -> None:
        self.base.update_stats(shard_id, stats)

    def plan(self, node: Any, k: int) -> Any:
        from memoray import filters as flt

        plan = self.base.plan(node, k)  # estimates (cached like the real one)
        c = self.c
        pool = max(4 * k, 20)
        over = plan.oversample
        rows_max = max(int(s.get("total", 0)) for s in self.base.shard_stats.values())
        biggest = max(plan.per_shard or [0])
        indexable = flt.is_indexable(node)
        exact = c["COST_EXACT_FIXED"] + c["COST_EXACT_PER_CANDIDATE"] * (
            rows_max if isinstance(node, flt.All) else biggest)
        if not indexable:
            exact += c["COST_SCAN_PER_ROW"] * rows_max

        def ann_pass(kp: float) -> float:
            return c["COST_ANN_FIXED"] + c["COST_ANN_PER_RESULT"] * kp

        def costs(sel: float) -> dict[str, float]:
            if isinstance(node, flt.All):
                one = ann_pass(pool)
                return {"exact": exact, "ann": one, "ann_adaptive": one}
            kp = min(math.ceil(pool * over), 4096)
            ann = ann_pass(kp) + _p_short(sel * kp, k) * exact
            kp = min(math.ceil(pool * over * 2), 4096)
            reach, adaptive = 1.0, 0.0
            while True:
                adaptive += reach * ann_pass(kp)
                reach *= _p_short(sel * kp, k)
                if kp >= 4096:
                    adaptive += reach * exact
                    break
                kp = min(kp * 4, 4096)
            return {"exact": exact, "ann": ann, "ann_adaptive": adaptive}

        est = costs(plan.selectivity)
        if not indexable:
            low = costs(plan.selectivity / 10)
            est = {s: max(v, low[s]) for s, v in est.items()}
        choice = min(("ann", "ann_adaptive", "exact"), key=lambda s: est[s])  # ties: ann
        plan.strategy = choice
        plan.costs_us = {s: round(v, 1) for s, v in est.items()}
        plan.estimated_cost_us = round(est[choice], 1)
        return plan


def _p_short(lam: float, k: int) -> float:
    """P(X < k) for X ~ Poisson(lam): the chance a post-filtered pass keeps fewer than k."""
    if lam <= 0:
        return 1.0
    term = math.exp(-lam)
    total = term
    for i in range(1, k):
        term *= lam / i
        total += term
    return min(1.0, total)


def run_filter(cores: list, planners: dict[str, Any], node: Any, queries: list, mode: str,
               repeat: int) -> dict[str, Any]:
    """Every runner on every query, interleaved (the order rotates per query) so that load
    from other processes hits all strategies alike; each timing is the min of `repeat`
    back-to-back runs. Runners: the fixed strategies, and each planner (its plan() time
    included)."""
    from memoray.actors.shard_search import SearchRequest

    plans = {name: p.plan(node, K) for name, p in planners.items()}
    out: dict[str, Any] = {name: {"strategy": p.strategy, "selectivity_est": p.selectivity,
                                  "estimated_candidates": p.estimated_candidates,
                                  "costs_us": p.costs_us} for name, p in plans.items()}
    out = {"plans": out}
    runners = [*STRATEGY_NAMES, *planners]
    acc = {r: {"seq": [], "par": [], "ids": [], "plan": [], "used": defaultdict(int)}
           for r in runners}
    over = plans["planner"].oversample
    for qi, (vec, words) in enumerate(queries):
        order = runners[qi % len(runners):] + runners[: qi % len(runners)]
        for name in order:
            best_seq = best_par = math.inf
            for _ in range(repeat):
                t0 = time.perf_counter()
                if name in planners:
                    p = planners[name].plan(node, K)
                    strategy, ov = p.strategy, p.oversample
                else:
                    strategy, ov = name, over
                t_plan = time.perf_counter() - t0
                req = SearchRequest(vector=vec, query=words if mode == "hybrid" else "", k=K,
                                    filter=node, strategy=strategy, oversample=ov, mode=mode,
                                    now=T0, include_content=False)
                hits, s_seq, s_par, used, _cands = fanout(cores, req)
                best_seq = min(best_seq, s_seq + t_plan)
                best_par = min(best_par, s_par + t_plan)
            if qi < WARMUP:
                continue
            a = acc[name]
            a["seq"].append(best_seq)
            a["par"].append(best_par)
            a["plan"].append(t_plan)
            a["ids"].append({h.record["id"] for h in hits})
            for u in used:
                a["used"][u] += 1
    truth = acc["exact"]["ids"]
    for name in runners:
        a = acc[name]
        rec = [len(got & t) / len(t) if t else 1.0 for got, t in zip(a["ids"], truth)]
        out[name] = {"seq": latency_summary(a["seq"]), "par": latency_summary(a["par"]),
                     "recall@10": round(mean(rec), 4), "recall@10_min": round(min(rec), 4),
                     "plan_us_p50": round(percentile(a["plan"], 50) * 1e6, 1),
                     "shard_strategies": dict(a["used"])}
    return out


def plan_timing(planner: Any, nodes: list, reps: int = 300) -> dict[str, Any]:
    """plan() per call: cached (same filter again) and uncached (cache cleared first)."""
    cached, uncached = [], []
    for node in nodes:
        for _ in range(reps):
            planner.cache.clear()
            t0 = time.perf_counter()
            planner.plan(node, K)
            uncached.append(time.perf_counter() - t0)
        planner.plan(node, K)
        for _ in range(reps):
            t0 = time.perf_counter()
            planner.plan(node, K)
            cached.append(time.perf_counter() - t0)

    def us(xs: list[float]) -> dict[str, float]:
        return {"p50_us": round(percentile(xs, 50) * 1e6, 1),
                "p95_us": round(percentile(xs, 95) * 1e6, 1)}

    return {"cached": us(cached), "uncached": us(uncached), "calls": len(cached) + len(uncached)}


def calibrate(cores: list, queries: list, mode: str, repeat: int) -> dict[str, Any]:
    """Measure the cost model's terms on this machine (p50 of the slowest shard, us):
    exact against candidates per shard (workspace filters of 10 to 74k records),
    one ANN pass against k' (oversample varied on a 99% filter, so nothing falls back), and a
    residual row scan (a metadata filter evaluated over every row)."""
    from memoray import filters as flt
    from memoray.actors.shard_search import ANN, EXACT, SearchRequest

    def timed(node: Any, strategy: str, over: float) -> float:
        par = []
        for qi, (vec, words) in enumerate(queries):
            req = SearchRequest(vector=vec, query=words if mode == "hybrid" else "", k=K,
                                filter=node, strategy=strategy, oversample=over, mode=mode,
                                now=T0, include_content=False)
            best = min(fanout(cores, req)[2] for _ in range(repeat))
            if qi >= WARMUP:
                par.append(best)
        return percentile(par, 50) * 1e6

    exact_pts = []
    for wire in ({"workspaceId": "ws-10"}, {"workspaceId": "ws-100"}, {"workspaceId": "ws-1k"},
                 {"workspaceId": "ws-5k"}, {"workspaceId": "ws-20k"},
                 {"workspaceId": "ws-rest"}):
        node = flt.parse_filter(wire)
        cand = max(len(c.labels_matching(node)) for c in cores)
        exact_pts.append({"filter": wire, "candidates_per_shard": cand,
                          "par_p50_us": round(timed(node, EXACT, 3.0), 1)})
    pool = max(4 * K, 20)
    broad = flt.parse_filter({"tier": {"$ne": "preference"}})
    ann_pts = []
    for over in (1.0, 3.0, 6.0, 12.0, 25.0, 50.0, 102.4):
        ann_pts.append({"oversample": over, "k_prime": min(math.ceil(pool * over), 4096),
                        "par_p50_us": round(timed(broad, ANN, over), 1)})
    meta = flt.parse_filter({"metadata.severity": "high"})
    scans = []
    for _ in range(5):
        t0 = time.perf_counter()
        cores[0].labels_matching(meta)
        scans.append((time.perf_counter() - t0) / max(len(cores[0].postings), 1))
    e_fix, e_per = _fit_relative([p["candidates_per_shard"] for p in exact_pts],
                                 [p["par_p50_us"] for p in exact_pts])
    a_fix, a_per = _fit_relative([p["k_prime"] for p in ann_pts],
                                 [p["par_p50_us"] for p in ann_pts])
    constants = {"COST_EXACT_FIXED": round(float(max(e_fix, 1.0)), 1),
                 "COST_EXACT_PER_CANDIDATE": round(float(max(e_per, 0.0)), 4),
                 "COST_ANN_FIXED": round(float(max(a_fix, 1.0)), 1),
                 "COST_ANN_PER_RESULT": round(float(max(a_per, 0.0)), 3),
                 "COST_SCAN_PER_ROW": round(float(np.median(scans)) * 1e6, 4)}
    return {"constants": constants, "exact_points": exact_pts, "ann_points": ann_pts}


def scoped_overhead(cores: list, planner: Any, queries: list, repeat: int) -> list[dict]:
    """What MemoryService adds to every retrieve: it ANDs the caller's filter with
    Or(Not(visibility == "private"), ...) so private memories stay hidden. `visibility` is not
    an indexed field, so that leaf is a Python scan of every candidate row, and the planner
    guesses it (1 - 0.3). Measured: exact-strategy search and the planner's pick, hybrid mode,
    with the plain filter, with the service's scoped filter, and with the same scoping on an
    indexed field (agent_id != a value no record has: the cost visibility would have if the
    postings indexed it)."""
    from memoray import filters as flt
    from memoray.actors.shard_search import EXACT, SearchRequest

    out = []
    for wire in ({"workspaceId": "ws-1k"}, {"workspaceId": "ws-20k"},
                 {"tier": {"$ne": "preference"}}, None):
        base = flt.parse_filter(wire)
        variants = {
            "plain": base,
            "scoped (service)": flt.and_([base, flt.or_([flt.not_(flt.Eq("visibility",
                                                                          "private"))])]),
            "scoped, indexed proxy": flt.and_([base, flt.not_(flt.Eq("agent_id",
                                                                     "__no_such_agent__"))]),
        }
        row: dict[str, Any] = {"filter": wire}
        for label, node in variants.items():
            plan = planner.plan(node, K)
            for strategy in (EXACT, plan.strategy):
                times = []
                for qi, (vec, words) in enumerate(queries):
                    req = SearchRequest(vector=vec, query=words, k=K, filter=node,
                                        strategy=strategy, mode="hybrid", now=T0,
                                        include_content=False)
                    best = min(fanout(cores, req)[1] for _ in range(repeat))
                    if qi >= WARMUP:
                        times.append(best)
                key = "exact" if strategy == EXACT and "exact" not in row.get(label, {}) else (
                    f"planner:{strategy}")
                row.setdefault(label, {})[key] = round(percentile(times, 50) * 1000, 3)
            row[label]["selectivity_est"] = round(plan.selectivity, 4)
        out.append(row)
    return out


def _fit_relative(xs: list[float], ys: list[float]) -> tuple[float, float]:
    """fixed + per * x fitted by least squares on the relative error, so the small points
    (where the planner's choices are close) weigh as much as the big ones."""
    x = np.asarray(xs, dtype=np.float64)
    y = np.maximum(np.asarray(ys, dtype=np.float64), 1e-9)
    a = np.vstack([np.ones_like(x), x]).T / y[:, None]
    (fix, per), *_ = np.linalg.lstsq(a, np.ones_like(y), rcond=None)
    return float(fix), float(per)


def choose_oracle(r: dict) -> str:
    """The fastest fixed strategy (seq p50) among those with recall@10 >= RECALL_OK."""
    ok = [s for s in STRATEGY_NAMES if r[s]["recall@10"] >= RECALL_OK]
    return min(ok or ["exact"], key=lambda s: r[s]["seq"]["p50_ms"])


def plot(results: dict[str, list[dict]], path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    modes = list(results)
    fig, axes = plt.subplots(2, len(modes), figsize=(7.5 * len(modes), 11), squeeze=False)
    colors = {"exact": "#4C72B0", "ann": "#DD8452", "ann_adaptive": "#55A868"}
    for col, mode in enumerate(modes):
        everything = sorted(results[mode], key=lambda r: r["selectivity"])
        rows = [r for r in everything if r.get("indexable", True)]  # the lines
        odd = [r for r in everything if not r.get("indexable", True)]  # metadata.*: apart
        sel = [max(r["selectivity"], 1e-5) * 100 for r in rows]
        ax = axes[0][col]
        for s in STRATEGY_NAMES:
            ax.plot(sel, [r[s]["seq"]["p50_ms"] for r in rows], "-o", ms=4, color=colors[s],
                    label=f"{s} p50")
            ax.scatter([r["selectivity"] * 100 for r in odd], [r[s]["seq"]["p50_ms"] for r in odd],
                       marker="*", s=90, color=colors[s], zorder=4)
        for r in everything:
            x = max(r["selectivity"], 1e-5) * 100
            ax.scatter([x], [r["planner"]["seq"]["p50_ms"]], s=170, facecolors="none",
                       edgecolors=colors.get(r["plans"]["planner"]["strategy"], "k"),
                       linewidths=2, zorder=5)
            ax.scatter([x], [r["tuned"]["seq"]["p50_ms"]], s=90, marker="x",
                       color=colors.get(r["plans"]["tuned"]["strategy"], "k"), linewidths=2,
                       zorder=6)
        ax.scatter([], [], marker="*", s=90, color="gray",
                   label="metadata.severity=high (not indexed; planner guesses 30%)")
        ax.scatter([], [], s=170, facecolors="none", edgecolors="k",
                   label="planner's pick (ring colour = strategy)")
        ax.scatter([], [], s=90, marker="x", color="k", label="tuned what-if pick")
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel("filter selectivity (% of all memories)")
        ax.set_ylabel("latency p50, ms (shards summed, in-process)")
        ax.set_title(f"{mode}: latency vs selectivity")
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=7, loc="upper center", bbox_to_anchor=(0.5, -0.13), ncol=2)
        ax = axes[1][col]
        for s in STRATEGY_NAMES:
            ax.plot(sel, [r[s]["recall@10"] for r in rows], "-o", ms=4, color=colors[s],
                    label=s)
        ax.plot(sel, [r["planner"]["recall@10"] for r in rows], "k--", lw=1, label="planner")
        ax.plot(sel, [r["tuned"]["recall@10"] for r in rows], "k:", lw=1, label="tuned")
        ax.axhline(RECALL_OK, color="gray", ls=":", lw=1)
        ax.set_xscale("log")
        low = min(r[s]["recall@10"] for r in everything for s in (*STRATEGY_NAMES, "planner"))
        ax.set_ylim(min(0.9, low - 0.01), 1.005)
        ax.set_xlabel("filter selectivity (% of all memories)")
        ax.set_ylabel("recall@10 vs exact (mean over queries)")
        ax.set_title(f"{mode}: recall@10 against brute force (exact); dotted = {RECALL_OK}")
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=8)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _title(out: dict[str, Any]) -> str:
    return (f"planner benchmark: {out['n']} memories, {out['shards']} in-process shards, "
            f"k={K}, {out['queries_per_filter']} queries/filter ({out['vectors']} vectors); "
            f"rings = planner's pick, crosses = tuned what-if")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--n", type=int, default=100_000)
    ap.add_argument("--shards", type=int, default=4)
    ap.add_argument("--queries", type=int, default=50)
    ap.add_argument("--modes", default="vector,hybrid")
    ap.add_argument("--vectors", choices=("latent", "random"), default="latent")
    ap.add_argument("--seed", type=int, default=7)
    ap.add_argument("--sections", default="main,scoped",
                    help="main: the strategy table; scoped: the service's visibility filter")
    ap.add_argument("--repeat", type=int, default=2,
                    help="runs per (query, runner); the min is kept (damps other load)")
    ap.add_argument("--out", default="bench_planner")
    ap.add_argument("--plot-only", action="store_true",
                    help="redraw benchmarks/results/<out>.png from <out>.json, run nothing")
    args = ap.parse_args(argv)
    if args.plot_only:
        from benchmarks.common import RESULTS_DIR

        saved = json.loads((RESULTS_DIR / f"{args.out}.json").read_text())
        png = RESULTS_DIR / f"{args.out}.png"
        plot(saved["results"], png, _title(saved))
        print(f"redrew {png}")
        return 0

    import memoray.actors.planner as planner_module
    from memoray import filters as flt
    from memoray.actors.planner import QueryPlanner

    t_start = time.perf_counter()
    corpus = Corpus(args.n, args.seed, args.vectors)
    queries = corpus.queries(args.queries + WARMUP)
    named = [(name, wire, flt.parse_filter(wire)) for name, wire in filters()]
    out: dict[str, Any] = {
        "benchmark": "bench_planner", "n": args.n, "shards": args.shards,
        "queries_per_filter": args.queries, "k": K, "vectors": args.vectors,
        "repeat": args.repeat, "recall_ok": RECALL_OK,
        "constants": {c: getattr(planner_module, c) for c in dir(planner_module)
                      if c.startswith(("COST_", "ANN_", "ADAPTIVE_"))},
        "latency": "seq = sum of per-shard search times (in-process, one after another), par = "
                   "slowest shard; per query the min of `repeat` runs; p50/p95 over queries; "
                   "runners interleaved per query; planners include their plan() time",
        "results": {}, "calibration": {}}
    with tempfile.TemporaryDirectory(prefix="memoray-planner-") as tmp:
        t0 = time.perf_counter()
        cores = build(Path(tmp), corpus, args.shards)
        out["load_seconds"] = round(time.perf_counter() - t0, 1)
        planner = QueryPlanner()
        for i, core in enumerate(cores):
            planner.update_stats(i, core.postings.stats())
        selectivity = {name: sum(len(c.labels_matching(node)) for c in cores) / args.n
                       for name, _wire, node in named}
        out["plan_timing"] = plan_timing(planner, [n for _, _, n in named])
        for mode in (args.modes.split(",") if "main" in args.sections else []):
            log(f"{mode}: calibrating the cost model ...")
            cal = calibrate(cores, queries[: 15 + WARMUP], mode, args.repeat)
            out["calibration"][mode] = cal
            tuned = TunedPlanner(QueryPlanner, cal["constants"])
            for i, core in enumerate(cores):
                tuned.update_stats(i, core.postings.stats())
            planners = {"planner": planner, "tuned": tuned}
            rows = []
            prog = Progress(f"{mode}: filters x runners", len(named), "filters", every_s=0)
            for name, wire, node in named:
                r = run_filter(cores, planners, node, queries, mode, args.repeat)
                r.update({"name": name, "filter": wire, "selectivity": selectivity[name],
                          "actual_candidates": round(selectivity[name] * args.n),
                          "indexable": flt.is_indexable(node)})
                r["oracle"] = choose_oracle(r)
                rows.append(r)
                prog.update()
            prog.close()
            out["results"][mode] = rows
        if "scoped" in args.sections:
            log("measuring the service's visibility scoping ...")
            out["scoped_overhead"] = scoped_overhead(cores, planner, queries[: 20 + WARMUP],
                                                     args.repeat)
        first = out["results"][next(iter(out["results"]))] if out["results"] else []
        q = [max((r["plans"]["planner"]["estimated_candidates"] + 1) / (r["actual_candidates"] + 1),
                 (r["actual_candidates"] + 1) / (r["plans"]["planner"]["estimated_candidates"] + 1))
             for r in first]
        out["estimate_q_error"] = {"p50": round(percentile(q, 50), 3),
                                   "max": round(max(q), 3) if q else None,
                                   "per_filter": {r["name"]: round(x, 3) for r, x in zip(first, q)}}
        for core in cores:
            core.storage.close()
    out["total_seconds"] = round(time.perf_counter() - t_start, 1)

    runners = (*STRATEGY_NAMES, "planner", "tuned")
    for mode, rows in out["results"].items():
        print(f"\n{mode} mode: {args.n} memories, {args.shards} in-process shards, k={K}, "
              f"{args.queries} queries per filter. Cells: latency p50/p95 ms (sum over shards, "
              f"min of {args.repeat} runs per query), recall@10 vs exact shown when < 1. "
              f"planner = actors/planner.py as is; tuned = calibrated what-if (see JSON).")
        table = []
        for r in rows:
            line = [r["name"], f"{100 * r['selectivity']:.3g}%",
                    f"{100 * r['plans']['planner']['selectivity_est']:.3g}%"]
            for s in runners:
                x = r[s]
                cell = f"{x['seq']['p50_ms']:.2f}/{x['seq']['p95_ms']:.2f}"
                if x["recall@10"] < 0.9995:
                    cell += f" r={x['recall@10']:.3f}"
                if s in ("planner", "tuned"):
                    cell += f" {SHORT[r['plans'][s]['strategy']]}"
                line.append(cell)
            best = r[r["oracle"]]["seq"]["p50_ms"]
            line += [SHORT[r["oracle"]], f"{r['planner']['seq']['p50_ms'] / best:.2f}",
                     f"{r['tuned']['seq']['p50_ms'] / best:.2f}"]
            table.append(line)
        print(fmt_table(["filter", "sel", "est", "exact", "ann", "ann_adaptive", "planner",
                         "tuned", "best", "planner/best", "tuned/best"], table))
        totals = {s: sum(r[s]["seq"]["p50_ms"] for r in rows) for s in runners}
        totals["best fixed per filter"] = sum(r[r["oracle"]]["seq"]["p50_ms"] for r in rows)
        low = {s: [r["name"] for r in rows if r[s]["recall@10"] < RECALL_OK]
               for s in ("planner", "tuned")}
        print("sum of p50 over the 17 filters (ms): " + ", ".join(
            f"{s} {v:.1f}" for s, v in totals.items()))
        print(f"recall@10 < {RECALL_OK}: planner on {low['planner'] or 'none'}, tuned on "
              f"{low['tuned'] or 'none'}; lowest recall@10 of any runner: "
              f"{min(r[s]['recall@10'] for r in rows for s in runners):.3f}")
        print(f"calibrated constants ({mode}, us, slowest shard): "
              f"{out['calibration'][mode]['constants']}")
        out.setdefault("totals_p50_ms", {})[mode] = {k: round(v, 2) for k, v in totals.items()}
    if out.get("scoped_overhead"):
        print("\nservice scoping (And(filter, Not(visibility == private))), hybrid, p50 ms "
              "summed over shards [planner's estimated selectivity]:")
        srows = []
        for r in out["scoped_overhead"]:
            line = [json.dumps(r["filter"])]
            for label in ("plain", "scoped (service)", "scoped, indexed proxy"):
                v = r[label]
                picks = ", ".join(f"{k.split(':')[1]} {x:.2f}" for k, x in v.items()
                                  if k.startswith("planner:"))
                line.append(f"exact {v['exact']:.2f}; {picks} [{100 * v['selectivity_est']:.3g}%]")
            srows.append(line)
        print(fmt_table(["filter", "plain", "scoped (service)", "scoped, indexed proxy"], srows))
    pt = out["plan_timing"]
    print(f"\nplan(): cached p50 {pt['cached']['p50_us']} us (p95 {pt['cached']['p95_us']}), "
          f"uncached p50 {pt['uncached']['p50_us']} us (p95 {pt['uncached']['p95_us']})")
    print(f"planner candidate estimates: q-error p50 {out['estimate_q_error']['p50']}, "
          f"max {out['estimate_q_error']['max']}")
    json_path = save_json(f"{args.out}.json", out)
    png = json_path.with_suffix(".png")
    if out["results"]:
        plot(out["results"], png, _title(out))
    print(f"saved {json_path} and {png} ({out['total_seconds']} s total)")
    return 0


if __name__ == "__main__":
    sys.exit(main())

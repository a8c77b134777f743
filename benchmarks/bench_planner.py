"""Query planner benchmark: latency and recall of each search strategy across filter selectivity.

    python -m benchmarks.bench_planner [--n 100000] [--shards 4] [--queries 50] [--modes vector,hybrid]

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
import math
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks.common import Progress, fmt_table, latency_summary, mean, percentile, save_json

DIM = 384
LATENT = 32
TOPICS = 256
WORDS_PER_TOPIC = 30
GLOBAL_WORDS = 2000
K = 10
DAY = 86400.0
T0 = 1_735_689_600.0  # 2025-01-01T00:00:00Z: "now" for the synthetic timestamps
STRATEGY_NAMES = ("exact", "ann", "ann_adaptive")
RECALL_OK = 0.95
WARMUP = 3

WORKSPACES = [("ws-10", 10), ("ws-100", 100), ("ws-1k", 1000), ("ws-5k", 5000),
              ("ws-20k", 20000)]  # the rest go to ws-rest
EVENT_TYPES = (("decision", 0.02), ("code_change", 0.08), ("review", 0.20),
               ("tool_event", 0.70))
TIERS = (("preference", 0.01), ("pattern", 0.09), ("project", 0.30), ("session", 0.60))
SEVERITY = (("high", 0.05), ("medium", 0.25), ("low", 0.70))


def filters() -> list[tuple[str, dict | None]]:
    iso = lambda days: time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(T0 - days * DAY))
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
    from actors.shard import ShardCore
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


def run_filter(cores: list, planner: Any, node: Any, queries: list, mode: str) -> dict[str, Any]:
    from actors.shard import SearchRequest

    plan = planner.plan(node, K)
    out: dict[str, Any] = {"plan": {"strategy": plan.strategy,
                                    "selectivity_est": plan.selectivity,
                                    "estimated_candidates": plan.estimated_candidates,
                                    "costs_us": plan.costs_us}}
    truth: list[set[str]] = []
    for name in (*STRATEGY_NAMES, "planner"):
        seq, par, rec, plan_s, used_all = [], [], [], [], defaultdict(int)
        for qi, (vec, words) in enumerate([*queries[:WARMUP], *queries]):
            warm = qi < WARMUP
            t0 = time.perf_counter()
            if name == "planner":
                p = planner.plan(node, K)
                strategy, over = p.strategy, p.oversample
            else:
                strategy, over = name, plan.oversample
            t_plan = time.perf_counter() - t0
            req = SearchRequest(vector=vec, query=words if mode == "hybrid" else "", k=K,
                                filter=node, strategy=strategy, oversample=over, mode=mode,
                                now=T0, include_content=False)
            hits, s_seq, s_par, used, cands = fanout(cores, req)
            if warm:
                continue
            ids = {h.record["id"] for h in hits}
            if name == "exact":
                truth.append(ids)
                if "actual_candidates" not in out:
                    out["actual_candidates"] = int(sum(c for c in cands if c is not None))
            t = truth[qi - WARMUP]
            rec.append(len(ids & t) / len(t) if t else 1.0)
            seq.append(s_seq + t_plan)
            par.append(s_par + t_plan)
            plan_s.append(t_plan)
            for u in used:
                used_all[u] += 1
        out[name] = {"seq": latency_summary(seq), "par": latency_summary(par),
                     "recall@10": round(mean(rec), 4), "recall@10_min": round(min(rec), 4),
                     "plan_us_p50": round(percentile(plan_s, 50) * 1e6, 1),
                     "shard_strategies": dict(used_all)}
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
    us = lambda xs: {"p50_us": round(percentile(xs, 50) * 1e6, 1),
                     "p95_us": round(percentile(xs, 95) * 1e6, 1)}
    return {"cached": us(cached), "uncached": us(uncached), "calls": len(cached) + len(uncached)}


def ann_cost_curve(cores: list, node: Any, queries: list, mode: str) -> list[dict]:
    """ANN latency against k' (oversample varied) on a broad filter, where post-filtering
    always keeps enough: the planner's ann cost is fixed + per_result * k'."""
    from actors.shard import ANN, SearchRequest

    pool = max(4 * K, 20)
    out = []
    for over in (1.0, 2.0, 3.0, 6.0, 12.0, 25.0, 50.0, 100.0):
        par = []
        for qi, (vec, words) in enumerate(queries):
            req = SearchRequest(vector=vec, query=words if mode == "hybrid" else "", k=K,
                                filter=node, strategy=ANN, oversample=over, mode=mode, now=T0,
                                include_content=False)
            _, _, s_par, _used, _ = fanout(cores, req)
            if qi >= WARMUP:
                par.append(s_par)
        out.append({"oversample": over, "k_prime": min(math.ceil(pool * over), 4096),
                    "par_p50_us": round(percentile(par, 50) * 1e6, 1)})
    return out


def fit_costs(rows: list[dict], curve: list[dict], shards: int) -> dict[str, float]:
    """Least-squares fits, in microseconds, of the planner's cost model to what was measured:
    p50 of the slowest shard (the planner's own latency model). exact = fixed + per_candidate
    x (candidates of one shard), over the filters exact answered itself; ann = fixed +
    per_result x k', from the k' curve."""
    rows = [r for r in rows if r["indexable"]]  # a residual row scan costs far more per candidate
    xs = np.array([r["actual_candidates"] / shards for r in rows], dtype=np.float64)
    ys = np.array([r["exact"]["par"]["p50_ms"] * 1000 for r in rows])
    a = np.vstack([np.ones_like(xs), xs]).T
    (e_fixed, e_per), *_ = np.linalg.lstsq(a, ys, rcond=None)
    kx = np.array([c["k_prime"] for c in curve], dtype=np.float64)
    ky = np.array([c["par_p50_us"] for c in curve])
    (a_fixed, a_per), *_ = np.linalg.lstsq(np.vstack([np.ones_like(kx), kx]).T, ky, rcond=None)
    return {"COST_EXACT_FIXED": round(float(max(e_fixed, 1.0)), 1),
            "COST_EXACT_PER_CANDIDATE": round(float(e_per), 4),
            "COST_ANN_FIXED": round(float(max(a_fixed, 1.0)), 1),
            "COST_ANN_PER_RESULT": round(float(a_per), 3)}


def choose_oracle(r: dict) -> str:
    ok = [s for s in STRATEGY_NAMES if r[s]["recall@10"] >= RECALL_OK]
    return min(ok or ["exact"], key=lambda s: r[s]["seq"]["p50_ms"])


def replan(planner_cls: Any, cores: list, nodes: list, constants: dict[str, float]) -> list[str]:
    """The planner's choices with other cost constants (module attributes patched, restored)."""
    import actors.planner as planner_module

    saved = {name: getattr(planner_module, name) for name in constants}
    try:
        for name, value in constants.items():
            setattr(planner_module, name, value)
        p = planner_cls()
        for i, core in enumerate(cores):
            p.update_stats(i, core.postings.stats())
        return [p.plan(node, K).strategy for node in nodes]
    finally:
        for name, value in saved.items():
            setattr(planner_module, name, value)


def plot(results: dict[str, list[dict]], path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    modes = list(results)
    fig, axes = plt.subplots(2, len(modes), figsize=(7.5 * len(modes), 10), squeeze=False)
    colors = {"exact": "#4C72B0", "ann": "#DD8452", "ann_adaptive": "#55A868"}
    for col, mode in enumerate(modes):
        rows = sorted(results[mode], key=lambda r: r["selectivity"])
        sel = [max(r["selectivity"], 1e-5) * 100 for r in rows]
        ax = axes[0][col]
        for s in STRATEGY_NAMES:
            ax.plot(sel, [r[s]["seq"]["p50_ms"] for r in rows], "-o", ms=4, color=colors[s],
                    label=f"{s} p50")
        for x, r in zip(sel, rows):
            ax.scatter([x], [r["planner"]["seq"]["p50_ms"]], s=160, facecolors="none",
                       edgecolors=colors.get(r["plan"]["strategy"], "k"), linewidths=2,
                       zorder=5)
        ax.scatter([], [], s=160, facecolors="none", edgecolors="k", label="planner's pick "
                   "(ring colour = strategy)")
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel("filter selectivity (% of all memories)")
        ax.set_ylabel("latency p50, ms (shards summed, in-process)")
        ax.set_title(f"{mode}: latency vs selectivity")
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=8)
        ax = axes[1][col]
        for s in STRATEGY_NAMES:
            ax.plot(sel, [r[s]["recall@10"] for r in rows], "-o", ms=4, color=colors[s],
                    label=s)
        ax.plot(sel, [r["planner"]["recall@10"] for r in rows], "k--", lw=1, label="planner")
        ax.axhline(RECALL_OK, color="gray", ls=":", lw=1)
        ax.set_xscale("log")
        ax.set_ylim(0, 1.05)
        ax.set_xlabel("filter selectivity (% of all memories)")
        ax.set_ylabel("recall@10 vs exact")
        ax.set_title(f"{mode}: recall@10 against brute force (exact)")
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=8)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--n", type=int, default=100_000)
    ap.add_argument("--shards", type=int, default=4)
    ap.add_argument("--queries", type=int, default=50)
    ap.add_argument("--modes", default="vector,hybrid")
    ap.add_argument("--vectors", choices=("latent", "random"), default="latent")
    ap.add_argument("--seed", type=int, default=7)
    ap.add_argument("--out", default="bench_planner")
    args = ap.parse_args(argv)

    import actors.planner as planner_module
    from actors.planner import QueryPlanner
    from memoray import filters as flt

    t_start = time.perf_counter()
    corpus = Corpus(args.n, args.seed, args.vectors)
    queries = corpus.queries(args.queries + WARMUP)
    named = [(name, wire, flt.parse_filter(wire)) for name, wire in filters()]
    truth_sel = {}
    for name, wire, node in named:
        truth_sel[name] = None  # filled from the shards below
    out: dict[str, Any] = {"benchmark": "bench_planner", "n": args.n, "shards": args.shards,
                           "queries_per_filter": args.queries, "k": K, "vectors": args.vectors,
                           "constants": {c: getattr(planner_module, c) for c in dir(planner_module)
                                         if c.startswith(("COST_", "ANN_", "ADAPTIVE_"))},
                           "results": {}}
    with tempfile.TemporaryDirectory(prefix="memoray-planner-") as tmp:
        t0 = time.perf_counter()
        cores = build(Path(tmp), corpus, args.shards)
        out["load_seconds"] = round(time.perf_counter() - t0, 1)
        planner = QueryPlanner()
        for i, core in enumerate(cores):
            planner.update_stats(i, core.postings.stats())
        for name, _wire, node in named:
            truth_sel[name] = sum(len(c.labels_matching(node)) for c in cores) / args.n
        out["plan_timing"] = plan_timing(planner, [n for _, _, n in named])
        for mode in args.modes.split(","):
            rows = []
            prog = Progress(f"{mode}: filters x strategies", len(named), "filters", every_s=0)
            for name, wire, node in named:
                r = run_filter(cores, planner, node, queries, mode)
                r.update({"name": name, "filter": wire, "selectivity": truth_sel[name],
                          "indexable": flt.is_indexable(node)})
                r["oracle"] = choose_oracle(r)
                rows.append(r)
                prog.update()
            prog.close()
            out["results"][mode] = rows
        # q-error of the planner's candidate estimates
        q = [max((r["plan"]["estimated_candidates"] + 1) / (r["actual_candidates"] + 1),
                 (r["actual_candidates"] + 1) / (r["plan"]["estimated_candidates"] + 1))
             for r in out["results"][next(iter(out["results"]))]]
        out["estimate_q_error"] = {"p50": round(percentile(q, 50), 3),
                                   "max": round(max(q), 3)}
        broad = flt.parse_filter({"tier": {"$ne": "preference"}})
        out["ann_cost_curve"] = {}
        out["fitted_costs"] = {}
        out["replanned"] = {}
        for mode, rows in out["results"].items():
            curve = ann_cost_curve(cores, broad, queries[: 20 + WARMUP], mode)
            out["ann_cost_curve"][mode] = curve
            fitted = fit_costs(rows, curve, args.shards)
            out["fitted_costs"][mode] = fitted
            choices = replan(QueryPlanner, cores, [n for _, _, n in named], fitted)
            out["replanned"][mode] = choices
        for core in cores:
            core.storage.close()
    out["total_seconds"] = round(time.perf_counter() - t_start, 1)

    for mode, rows in out["results"].items():
        print(f"\n{mode} mode: {args.n} memories, {args.shards} shards, k={K}, "
              f"{args.queries} queries per filter; latency = p50/p95 ms summed over shards "
              f"(in-process), 'par' = p50 of the slowest shard; recall@10 vs exact")
        table = []
        for r in rows:
            line = [r["name"], f"{100 * r['selectivity']:.3g}%"]
            for s in (*STRATEGY_NAMES, "planner"):
                x = r[s]
                line.append(f"{x['seq']['p50_ms']:.2f}/{x['seq']['p95_ms']:.2f} "
                            f"({x['par']['p50_ms']:.2f}) r={x['recall@10']:.3f}")
            line += [r["plan"]["strategy"], r["oracle"],
                     f"{r['planner']['seq']['p50_ms'] / r[r['oracle']]['seq']['p50_ms']:.2f}"]
            table.append(line)
        print(fmt_table(["filter", "sel", "exact", "ann", "ann_adaptive", "planner",
                         "picked", "best", "x best"], table))
        totals = {s: sum(r[s]["seq"]["p50_ms"] for r in rows) for s in (*STRATEGY_NAMES,
                                                                         "planner")}
        totals["oracle"] = sum(r[r["oracle"]]["seq"]["p50_ms"] for r in rows)
        refit = out["replanned"][mode]
        totals["planner_fitted"] = sum(r[c]["seq"]["p50_ms"] + r["planner"]["plan_us_p50"] / 1000
                                       for r, c in zip(rows, refit))
        changed = [f"{r['name']}: {r['plan']['strategy']} -> {c}"
                   for r, c in zip(rows, refit) if c != r["plan"]["strategy"]]
        fitted_bad = [r["name"] for r, c in zip(rows, refit) if r[c]["recall@10"] < RECALL_OK]
        bad = [r["name"] for r in rows if r["planner"]["recall@10"] < RECALL_OK]
        print("sum of p50 over the filters (ms): " + ", ".join(
            f"{s} {v:.1f}" for s, v in totals.items())
              + f"; filters where the planner's recall@10 < {RECALL_OK}: {bad or 'none'}")
        print(f"fitted cost constants ({mode}, slowest shard, us): {out['fitted_costs'][mode]}")
        print(f"planner with the fitted constants would change: {changed or 'nothing'}"
              f"; its recall < {RECALL_OK} on: {fitted_bad or 'none'}")
        out.setdefault("totals_p50_ms", {})[mode] = {k: round(v, 2) for k, v in totals.items()}
    pt = out["plan_timing"]
    print(f"\nplan(): cached p50 {pt['cached']['p50_us']} us (p95 {pt['cached']['p95_us']}), "
          f"uncached p50 {pt['uncached']['p50_us']} us (p95 {pt['uncached']['p95_us']})")
    print(f"planner candidate estimates: q-error p50 {out['estimate_q_error']['p50']}, "
          f"max {out['estimate_q_error']['max']}")
    json_path = save_json(f"{args.out}.json", out)
    png = json_path.with_suffix(".png")
    plot(out["results"], png, f"planner benchmark: {args.n} memories, {args.shards} in-process "
         f"shards, k={K}, {args.queries} queries/filter ({args.vectors} vectors); rings = "
         f"planner's pick")
    print(f"saved {json_path} and {png} ({out['total_seconds']} s total)")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Per-shard search latency in process (issue 14): one shard, N hash-embedded records, 200
queries each as ANN, exact under a 1-in-20 workspace filter, exact over every record (k=10),
and the SessionStart hook's kind of search: exact, k=80, a filter two thirds of the records
pass (p50/p95 of ShardCore.search, the first 20 dropped as warm-up; the means of the shard's
vector and lexical stages beside it). A check that the int8 scan rows and float32 rescoring
from LMDB cost no latency against the float32 matrix they replaced, and of what a wide exact
scan costs.

The shard sets its process's heap as an actor does (memoray/heap.py), so temporaries cost what
they cost in a shard.

Run: python -m benchmarks.bench_shard_latency [--n 20000] [--out shard_latency]
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

import numpy as np

from benchmarks.bench_shard_memory import _record
from benchmarks.common import save_json
from benchmarks.corpus import corpus, queries

# what the SessionStart hook's index leaves out (memoray/hooks/runner.py PER_TOOL_TYPES)
WIDE = {"eventType": {"$nin": ["code_change", "tool_event", "prompt"]}}


def run(n: int = 20000, out_name: str = "shard_latency") -> dict:
    from memoray import filters as flt
    from memoray.actors.shard import ShardCore
    from memoray.actors.shard_search import SearchRequest
    from memoray.embedding import HashEmbedder

    emb = HashEmbedder()
    texts = corpus(n)
    with tempfile.TemporaryDirectory(prefix="memoray-latency-") as tmp:
        core = ShardCore(0, Path(tmp) / "s", emb.dim, map_size=8 << 30, durable=False,
                         snapshot_every=10**9)
        for i in range(0, n, 500):
            recs = [_record(j, texts[j]) for j in range(i, min(n, i + 500))]
            core.put(recs, emb.embed([r["content"] for r in recs]))
        core.index.flush()
        qs = queries(200, seed=3)
        qv = emb.embed(qs)
        out: dict = {"n": n, "loadavg": os.getloadavg()}
        for name, strategy, f, k in (("ann", "ann", None, 10),
                                     ("exact_filtered", "exact", {"workspaceId": "ws7"}, 10),
                                     ("exact_all", "exact", None, 10),
                                     ("exact_wide_k80", "exact", WIDE, 80)):
            node = flt.parse_filter(f) if f else flt.All()
            lat, vector, lexical = [], [], []
            for q, v in zip(qs, qv):
                t = time.perf_counter()
                res = core.search(SearchRequest(vector=v, query=q, k=k, filter=node,
                                                strategy=strategy))
                lat.append(time.perf_counter() - t)
                vector.append(res["stages"].get("vector", 0.0))
                lexical.append(res["stages"].get("lexical", 0.0))
            ms = np.array(lat[20:]) * 1000
            out[name] = {"k": k, "p50_ms": round(float(np.percentile(ms, 50)), 2),
                         "p95_ms": round(float(np.percentile(ms, 95)), 2),
                         "vector_stage_mean_ms": round(float(np.mean(vector[20:])) * 1000, 2),
                         "lexical_stage_mean_ms": round(float(np.mean(lexical[20:])) * 1000, 2)}
        core.close()
    print(f"{n} records, one shard: " + "; ".join(
        f"{k} p50 {v['p50_ms']} / p95 {v['p95_ms']} ms (vector {v['vector_stage_mean_ms']}, "
        f"lexical {v['lexical_stage_mean_ms']})"
        for k, v in out.items() if isinstance(v, dict)) + f"; load {out['loadavg'][0]:.1f}")
    path = save_json(f"{out_name}.json", out)
    print(f"saved {path}")
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=20000)
    ap.add_argument("--out", default="shard_latency", help="file stem under benchmarks/results")
    a = ap.parse_args()
    run(a.n, a.out)


if __name__ == "__main__":
    main()

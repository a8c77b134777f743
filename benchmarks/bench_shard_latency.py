"""Per-shard search latency in process (issue 14): one shard, N hash-embedded records, 200
queries each as ANN, exact under a 1-in-20 workspace filter, and exact over every record
(p50/p95 of ShardCore.search, the first 20 dropped as warm-up). A check that the int8 scan rows
and float32 rescoring from LMDB cost no latency against the float32 matrix they replaced.

Run: python -m benchmarks.bench_shard_latency [--n 20000]
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

import numpy as np

from benchmarks.bench_shard_memory import _record
from benchmarks.corpus import corpus, queries


def run(n: int = 20000) -> dict:
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
        for name, strategy, f in (("ann", "ann", None),
                                  ("exact_filtered", "exact", {"workspaceId": "ws7"}),
                                  ("exact_all", "exact", None)):
            node = flt.parse_filter(f) if f else flt.All()
            lat = []
            for q, v in zip(qs, qv):
                t = time.perf_counter()
                core.search(SearchRequest(vector=v, query=q, k=10, filter=node,
                                          strategy=strategy))
                lat.append(time.perf_counter() - t)
            ms = np.array(lat[20:]) * 1000
            out[name] = {"p50_ms": round(float(np.percentile(ms, 50)), 2),
                         "p95_ms": round(float(np.percentile(ms, 95)), 2)}
        core.close()
    print(f"{n} records, one shard: " + "; ".join(
        f"{k} p50 {v['p50_ms']} / p95 {v['p95_ms']} ms" for k, v in out.items()
        if isinstance(v, dict)) + f"; load {out['loadavg'][0]:.1f}")
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=20000)
    run(ap.parse_args().n)


if __name__ == "__main__":
    main()

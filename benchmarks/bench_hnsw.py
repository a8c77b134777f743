"""HNSW build parameters against recall (issue 14): for each (M, ef_construction), the insert
cost per vector (one thread, as a shard inserts) and recall@10 against exact search at the
shards' ef_search, on MiniLM vectors of the benchmark corpus (near-duplicate templated texts: a
hard case for a graph) and on the hash embedder's.

Run: python -m benchmarks.bench_hnsw [--n 20000] [--queries 300] [--embedder minilm]
"""

from __future__ import annotations

import argparse
import os
import time

import numpy as np

from benchmarks.common import CachedEmbedder, LazyEmbedder, fmt_table, log, save_json
from benchmarks.corpus import corpus, queries
from memoray.actors.vector_index import EF_SEARCH  # the shards' own

GRID = [(16, 200), (16, 100), (16, 64), (12, 100), (8, 100), (16, 40)]


def _vectors(kind: str, n: int, n_queries: int) -> tuple[np.ndarray, np.ndarray]:
    emb = CachedEmbedder(LazyEmbedder(kind))
    texts = [t["content"] for t in corpus(n)]
    base = np.vstack([emb.embed(texts[i:i + 512]) for i in range(0, n, 512)])
    q = emb.embed(queries(n_queries, seed=99))
    emb.save()
    return base.astype(np.float32), q.astype(np.float32)


def sweep(base: np.ndarray, q: np.ndarray, grid: list[tuple[int, int]] = GRID,
          k: int = 10) -> list[dict]:
    import hnswlib

    sims = q @ base.T
    # ties at the k-th exact score count as found (the hash corpus has many exact duplicates)
    kth = -np.partition(-sims, k - 1, axis=1)[:, k - 1]
    out = []
    for m, efc in grid:
        g = hnswlib.Index(space="ip", dim=base.shape[1])
        g.init_index(max_elements=len(base), ef_construction=efc, M=m)
        t0 = time.perf_counter()
        g.add_items(base, np.arange(len(base)), num_threads=1)
        insert = time.perf_counter() - t0
        g.set_ef(EF_SEARCH)
        t0 = time.perf_counter()
        got, _ = g.knn_query(q, k=k, num_threads=1)
        query = time.perf_counter() - t0
        hit = np.take_along_axis(sims, got.astype(np.int64), axis=1) >= kth[:, None] - 1e-5
        recall = float(hit.mean())
        out.append({"M": m, "ef_construction": efc, "insert_ms_per_vector":
                    round(1000 * insert / len(base), 4), "recall_at_10": round(recall, 4),
                    "query_ms": round(1000 * query / len(q), 4)})
        log(f"M={m} ef_c={efc}: {out[-1]}")
    return out


def ef_sweep(n: int, n_queries: int, kind: str = "hash",
             efs: tuple[int, ...] = (32, 64, 100, 128, 200), k: int = 10) -> dict:
    """recall@10 and query time against ef_search on one graph of n vectors built as a shard
    builds it (M 16, ef_construction 100): how ef_search must grow with a shard's size. The
    graph is built on every core (its insert cost is not what this measures)."""
    import hnswlib

    load = os.getloadavg()
    log(f"embedding {n} texts ({kind}) ...")
    base, q = _vectors(kind, n, n_queries)
    sims = q @ base.T
    kth = -np.partition(-sims, k - 1, axis=1)[:, k - 1]
    g = hnswlib.Index(space="ip", dim=base.shape[1])
    g.init_index(max_elements=len(base), ef_construction=100, M=16)
    log(f"building a graph of {n} ...")
    g.add_items(base, np.arange(len(base)))
    rows = []
    for ef in efs:
        g.set_ef(ef)
        t0 = time.perf_counter()
        got, _ = g.knn_query(q, k=k, num_threads=1)
        query = time.perf_counter() - t0
        hit = np.take_along_axis(sims, got.astype(np.int64), axis=1) >= kth[:, None] - 1e-5
        rows.append({"ef_search": ef, "recall_at_10": round(float(hit.mean()), 4),
                     "query_ms": round(1000 * query / len(q), 4)})
        log(f"ef_search {ef}: {rows[-1]}")
    res = {"n": n, "queries": n_queries, "embedder": kind, "M": 16, "ef_construction": 100,
           "rows": rows, "loadavg_at_start": load, "loadavg_at_end": os.getloadavg()}
    path = save_json(f"hnsw_ef_{kind}_{n}.json", res)
    print(fmt_table(["ef_search", "recall@10", "query ms"],
                    [[r["ef_search"], r["recall_at_10"], r["query_ms"]] for r in rows]))
    print(f"load at start {load}; saved {path}")
    return res


def run(n: int = 20000, n_queries: int = 300, embedders: tuple[str, ...] = ("minilm", "hash")
        ) -> dict:
    load = os.getloadavg()
    res: dict = {"n": n, "queries": n_queries, "ef_search": EF_SEARCH, "loadavg_at_start": load}
    rows = []
    for kind in embedders:
        log(f"embedding {n} texts ({kind}) ...")
        base, q = _vectors(kind, n, n_queries)
        res[kind] = sweep(base, q)
        rows += [[kind, r["M"], r["ef_construction"], r["insert_ms_per_vector"],
                  r["recall_at_10"], r["query_ms"]] for r in res[kind]]
    path = save_json("hnsw_params.json", res)
    print(fmt_table(["embedder", "M", "ef_c", "insert ms/vec", "recall@10", "query ms"], rows))
    print(f"load at start {load}; saved {path}")
    return res


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=20000)
    ap.add_argument("--queries", type=int, default=300)
    ap.add_argument("--embedder", action="append", choices=["minilm", "hash"])
    ap.add_argument("--ef-sweep", action="store_true",
                    help="recall against ef_search on one graph of --n vectors instead")
    a = ap.parse_args()
    if a.ef_sweep:
        for kind in a.embedder or ("hash",):
            ef_sweep(a.n, a.queries, kind)
        return
    run(a.n, a.queries, tuple(a.embedder or ("minilm", "hash")))


if __name__ == "__main__":
    main()

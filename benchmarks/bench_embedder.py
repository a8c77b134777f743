"""MiniLM in process, on each runtime (memoray/embedding.py): a lone query's latency on one
thread (what a retrieve, and a capture of one memory, waits for), and batches in the sizes a
capture gives the worker, run the embedder's way (one one-thread call per core on parts of the
batch); for PyTorch also as one call splitting each operator across the cores. The two
runtimes' vectors are compared on the same texts.

Run: python -m benchmarks.bench_embedder [--texts 2000] [--queries 300]
"""

from __future__ import annotations

import argparse
import os
import time

import numpy as np

from benchmarks.common import fmt_table, latency_summary, log, save_json
from benchmarks.corpus import corpus


def run(n_texts: int = 2000, n_queries: int = 300,
        sizes: tuple[int, ...] = (25, 50, 100, 2000)) -> dict:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from memoray.embedding import MiniLMEmbedder, available_cpus

    texts = [r["content"] for r in corpus(n_texts)]
    queries = [t[:80] for t in texts[-n_queries:]]  # a query is a short text
    cpus = available_cpus()
    out: dict = {"texts": n_texts, "queries": n_queries, "cpus": cpus,
                 "loadavg_at_start": os.getloadavg(), "runtimes": {}}
    vectors = {}
    for runtime in ("torch", "onnx"):
        emb = MiniLMEmbedder(device="cpu", runtime=runtime)
        emb.embed(texts[:64])  # warm-up
        lone = []
        for q in queries:
            t0 = time.perf_counter()
            emb.embed([q])
            lone.append(time.perf_counter() - t0)
        rows = []
        for size in sizes:
            row = {"batch": size, "parts_texts_per_s": _rate(emb.embed, texts, size)}
            if runtime == "torch":
                row["one_call_texts_per_s"] = _rate(lambda b, e=emb: e._encode(b, cpus), texts,
                                                    size)
            rows.append(row)
            log(f"{runtime} batch {size}: {row}")
        vectors[runtime] = emb.embed(texts[:500])
        out["runtimes"][runtime] = {"lone_query": latency_summary(lone), "rows": rows}
        log(f"{runtime}: lone query {out['runtimes'][runtime]['lone_query']}")
    out["max_abs_diff"] = float(np.abs(vectors["torch"] - vectors["onnx"]).max())
    out["loadavg_at_end"] = os.getloadavg()
    t, o = out["runtimes"]["torch"], out["runtimes"]["onnx"]
    print(fmt_table(["", "torch", "onnx", "onnx / torch"],
                    [["lone query p50 (ms)", t["lone_query"]["p50_ms"], o["lone_query"]["p50_ms"],
                      round(o["lone_query"]["p50_ms"] / t["lone_query"]["p50_ms"], 2)],
                     ["lone query p95 (ms)", t["lone_query"]["p95_ms"], o["lone_query"]["p95_ms"],
                      round(o["lone_query"]["p95_ms"] / t["lone_query"]["p95_ms"], 2)]]
                    + [[f"batch {a['batch']}, {cpus} parts (texts/s)", a["parts_texts_per_s"],
                        b["parts_texts_per_s"],
                        round(b["parts_texts_per_s"] / a["parts_texts_per_s"], 2)]
                       for a, b in zip(t["rows"], o["rows"])]
                    + [[f"batch {a['batch']}, one {cpus}-thread call (texts/s)",
                        a["one_call_texts_per_s"], "", ""] for a in t["rows"]]))
    print(f"max |torch - onnx| over 500 vectors: {out['max_abs_diff']:.1e}")
    print(f"saved {save_json('embedder.json', out)}")
    return out


def _rate(fn, texts: list[str], size: int) -> float:
    t0 = time.perf_counter()
    for i in range(0, len(texts), size):
        fn(texts[i:i + size])
    return round(len(texts) / (time.perf_counter() - t0), 1)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--texts", type=int, default=2000)
    ap.add_argument("--queries", type=int, default=300)
    args = ap.parse_args()
    run(args.texts, args.queries)


if __name__ == "__main__":
    main()

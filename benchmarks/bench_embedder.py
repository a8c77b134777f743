"""MiniLM in process: one model call splitting each operator across the cores, against the
embedder's own way (one one-thread call per core on parts of the batch, memoray/embedding.py),
in the batch sizes a capture gives the worker.

Run: python -m benchmarks.bench_embedder [--texts 2000]
"""

from __future__ import annotations

import argparse
import os
import time

from benchmarks.common import fmt_table, log, save_json
from benchmarks.corpus import corpus


def run(n_texts: int = 2000, sizes: tuple[int, ...] = (25, 50, 100, 2000)) -> dict:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from memoray.embedding import MiniLMEmbedder, available_cpus

    texts = [r["content"] for r in corpus(n_texts)]
    emb = MiniLMEmbedder(device="cpu")
    emb.embed(texts[:64])  # warm-up
    cpus = available_cpus()

    def rate(fn, size: int) -> float:
        t0 = time.perf_counter()
        for i in range(0, len(texts), size):
            fn(texts[i:i + size])
        return round(len(texts) / (time.perf_counter() - t0), 1)

    rows = []
    for size in sizes:
        one_call = rate(lambda b: emb._encode(b, cpus), size)
        parts = rate(emb.embed, size)
        rows.append({"batch": size, "one_call_texts_per_s": one_call,
                     "parts_texts_per_s": parts, "ratio": round(parts / one_call, 3)})
        log(f"batch {size}: one {cpus}-thread call {one_call}/s, {cpus} parts {parts}/s")
    out = {"texts": n_texts, "cpus": cpus, "rows": rows, "loadavg_at_end": os.getloadavg()}
    print(fmt_table(["batch", f"one {cpus}-thread call (texts/s)", "parts (texts/s)", "ratio"],
                    [[r["batch"], r["one_call_texts_per_s"], r["parts_texts_per_s"], r["ratio"]]
                     for r in rows]))
    print(f"saved {save_json('embedder_parts.json', out)}")
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--texts", type=int, default=2000)
    args = ap.parse_args()
    run(args.texts)


if __name__ == "__main__":
    main()

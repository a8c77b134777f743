"""A full garbage collection's pause in a shard-sized process, before and after gcpause's freeze
(memoray/gcpause.py). In process, no Ray: a ShardCore holding N hash-embedded memories (memoray
and its libraries imported), then gc.collect() timed five times, frozen, timed again, and once
more after 10% more memories stored behind the freeze. A Ray actor tracks several times as many
objects; bench_core reports the collections of the real server's processes (`gc (...)` rows).

Run: python -m benchmarks.bench_gc [--n 10000 50000]
"""

from __future__ import annotations

import argparse
import gc
import os
import statistics
import tempfile
import time
from pathlib import Path

from benchmarks.common import fmt_table, save_json


def _full_ms(times: int = 5) -> float:
    took = []
    for _ in range(times):
        t = time.perf_counter()
        gc.collect()
        took.append(1000 * (time.perf_counter() - t))
    return round(statistics.median(took), 2)


def _one(n: int) -> dict:
    """One child process per N (a freeze cannot be undone for what it froze before)."""
    import json
    import subprocess
    import sys

    code = ("import json; from benchmarks.bench_gc import _measure; "
            f"print(json.dumps(_measure({n})))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True, cwd=Path(__file__).resolve().parents[1])
    return json.loads(out.stdout.strip().splitlines()[-1])


def _measure(n: int) -> dict:
    from benchmarks.bench_shard_memory import _record
    from benchmarks.corpus import corpus
    from memoray import gcpause
    from memoray.actors.shard import ShardCore
    from memoray.embedding import HashEmbedder

    emb = HashEmbedder()
    texts = corpus(n + n // 10)
    with tempfile.TemporaryDirectory(prefix="memoray-gc-") as tmp:
        core = ShardCore(0, Path(tmp) / "s", emb.dim, durable=False, snapshot_every=10**9)

        def put(lo: int, hi: int) -> None:
            for i in range(lo, hi, 500):
                recs = [_record(j, texts[j]) for j in range(i, min(hi, i + 500))]
                core.put(recs, emb.embed([r["content"] for r in recs]))
            core.index.flush()

        put(0, n)
        out = {"n": n, "tracked_objects": len(gc.get_objects()), "full_ms_before": _full_ms()}
        out["frozen"] = gcpause.freeze()
        out["full_ms_after_freeze"] = _full_ms()
        put(n, n + n // 10)
        out["full_ms_after_10pct_more"] = _full_ms()
        out["tracked_after_10pct_more"] = len(gc.get_objects())
        core.close()
    return out


def run(ns: list[int], out_name: str = "gc") -> dict:
    res = {"loadavg_at_start": os.getloadavg(), "runs": [_one(n) for n in ns]}
    res["loadavg_at_end"] = os.getloadavg()
    print(fmt_table(["memories", "tracked objects", "full gc ms", "after freeze ms",
                     "after 10% more ms"],
                    [[r["n"], r["tracked_objects"], r["full_ms_before"],
                      r["full_ms_after_freeze"], r["full_ms_after_10pct_more"]]
                     for r in res["runs"]]))
    print(f"median of 5 collections each; load {res['loadavg_at_start'][0]:.2f} -> "
          f"{res['loadavg_at_end'][0]:.2f}; saved {save_json(f'{out_name}.json', res)}")
    return res


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, nargs="+", default=[10000, 50000])
    ap.add_argument("--out", default="gc", help="file stem under benchmarks/results")
    a = ap.parse_args()
    run(a.n, a.out)


if __name__ == "__main__":
    main()

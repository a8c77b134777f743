"""The audit log's group commit (issue 9): what a capture batch of 100 pays for its audit lines.

- before: one fsync'ed append per item (what the capture path did: 100 fsyncs per batch);
- after: the batch's entries in one group commit (GroupCommit.append_many: one fsync);
- concurrent: 8 batches in flight at once from one event loop (groups form while a sync runs).

Run: python -m benchmarks.bench_audit [--batches 30] [--batch 100]
"""

from __future__ import annotations

import argparse
import asyncio
import tempfile
import time
from pathlib import Path

from benchmarks.common import fmt_table, log, save_json
from memoray.audit import AuditLog, GroupCommit


def per_item(log_: AuditLog, batches: int, batch: int) -> float:
    t0 = time.perf_counter()
    for b in range(batches):
        for i in range(batch):
            log_.append("bench", "capture-batch", workspace="w", ids=[f"{b}-{i}"])
    return time.perf_counter() - t0


async def grouped(gc: GroupCommit, batches: int, batch: int, parallel: int) -> float:
    async def one(b: int) -> None:
        await gc.append_many([gc.entry("bench", "capture-batch", workspace="w",
                                       ids=[f"{b}-{i}"]) for i in range(batch)])

    t0 = time.perf_counter()
    for start in range(0, batches, parallel):
        await asyncio.gather(*[one(b) for b in range(start, min(batches, start + parallel))])
    return time.perf_counter() - t0


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--batches", type=int, default=30)
    ap.add_argument("--batch", type=int, default=100)
    args = ap.parse_args(argv)
    rows, out = [], {}
    with tempfile.TemporaryDirectory() as tmp:
        n = args.batches * args.batch
        s = per_item(AuditLog(Path(tmp) / "a" / "audit.log"), args.batches, args.batch)
        out["per_item_fsync"] = {"seconds": s, "entries_per_s": n / s,
                                 "ms_per_batch": 1000 * s / args.batches}
        for parallel in (1, 8):
            gc = GroupCommit(AuditLog(Path(tmp) / f"g{parallel}" / "audit.log"))
            s = asyncio.run(grouped(gc, args.batches, args.batch, parallel))
            out[f"group_commit_x{parallel}"] = {
                "seconds": s, "entries_per_s": n / s, "ms_per_batch": 1000 * s / args.batches,
                "fsyncs": gc.groups}
    for name, r in out.items():
        rows.append([name, r["ms_per_batch"], r["entries_per_s"], r.get("fsyncs", n)])
    log(fmt_table(["audit path", f"ms per batch of {args.batch}", "entries/s", "fsyncs"],
                  rows))
    path = save_json("bench_audit.json", {"batches": args.batches, "batch": args.batch, **out})
    log(f"saved {path}")
    return out


if __name__ == "__main__":
    main()

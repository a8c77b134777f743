"""`make bench`: every benchmark in turn. Each prints its table and saves its JSON (and PNG)
under benchmarks/results/. Set MEMORAY_BENCH_QUICK=1 for small sizes (a smoke run)."""

from __future__ import annotations

import os
import time

from benchmarks.common import log


def main() -> None:
    quick = os.environ.get("MEMORAY_BENCH_QUICK") == "1"
    from benchmarks import (
        bench_audit,
        bench_core,
        bench_dedup,
        bench_hooks_server,
        bench_planner,
        bench_reshard,
        bench_security,
        coding_memories,
        locomo,
    )

    steps = [
        ("core (issue 2)", lambda: bench_core.run(n=1000 if quick else 10000,
                                                  n_queries=30 if quick else 200)),
        ("hooks (issue 4)", lambda: bench_hooks_server.run(n=500 if quick else 10000,
                                                           samples=10 if quick else 50)),
        ("dedup (issue 5)", lambda: bench_dedup.run(n_facts=50 if quick else 400)),
        ("security (issue 6)", lambda: bench_security.run(samples=30 if quick else 200)),
        ("planner (issue 3)", lambda: bench_planner.main(
            ["--n", "20000", "--out", "bench_planner_quick"] if quick else [])),
        ("locomo (issues 3, 15)", lambda: locomo.main(
            ["--limit-conversations", "2", "--no-sweep", "--out", "locomo_quick"]
            if quick else [])),
        ("coding memories (issue 15)", lambda: coding_memories.main(
            ["--out", "coding_memories_quick"] if quick else [])),
        ("audit group commit (issue 9)", lambda: bench_audit.main(
            ["--batches", "5"] if quick else [])),
        ("online reshard (issue 11)", lambda: bench_reshard.main(
            ["--records", "500", "--samples", "20"] if quick else [])),
    ]
    for name, fn in steps:
        t0 = time.time()
        log(f"\n=== {name} ===")
        fn()
        log(f"=== {name}: {time.time() - t0:.0f}s ===")


if __name__ == "__main__":
    main()

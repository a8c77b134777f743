"""`make bench`: every benchmark in turn. Each prints its table and saves its JSON (and PNG)
under benchmarks/results/. Set MEMORAY_BENCH_QUICK=1 for small sizes (a smoke run)."""

from __future__ import annotations

import os
import time

from benchmarks.common import log


def main() -> None:
    quick = os.environ.get("MEMORAY_BENCH_QUICK") == "1"
    from benchmarks import (
        bench_agent,
        bench_audit,
        bench_core,
        bench_dedup,
        bench_embedder,
        bench_gc,
        bench_hnsw,
        bench_hooks_server,
        bench_peer,
        bench_planner,
        bench_reindex,
        bench_replication,
        bench_reshard,
        bench_roundtrip,
        bench_scale,
        bench_security,
        bench_shard_memory,
        bench_shard_recovery,
        bench_startup,
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
        ("replication (issue 10)", lambda: bench_replication.main(
            ["--seconds", "5", "--seed-records", "200"] if quick else [])),
        ("agent value (issue 12)", lambda: bench_agent.run(embedder="hash" if quick else "minilm")),
        ("reindex pacing (issue 11)", lambda: bench_reindex.main(
            ["--records", "200", "--embedder", "hash"] if quick else [])),
        ("round trip (issue 14)", lambda: bench_roundtrip.run(
            samples=30 if quick else 200, rounds=1 if quick else 3)),
        ("hnsw parameters (issue 14)", lambda: bench_hnsw.run(
            n=2000 if quick else 20000, n_queries=50 if quick else 300)),
        ("garbage collector pauses (issue 14)", lambda: bench_gc.run(
            [2000] if quick else [10000, 50000])),
        ("shard memory (issue 14)", lambda: bench_shard_memory.run(n=2000 if quick else 20000)),
        ("server start and idle (issue 14)", lambda: bench_startup.main(
            ["--runs", "1", "--idle-s", "10"] if quick else [])),
        ("embedder runtimes (issue 14)", lambda: bench_embedder.run(200 if quick else 2000,
                                                                 50 if quick else 300)),
        ("shard recovery, clean stop and kill -9 (issue 14)", lambda: bench_shard_recovery.run(
            n=3000 if quick else 100000, tail=500 if quick else 2500, directory=None)),
        # 1M hash records need hours on a 2-core machine: `make bench-scale` runs the full sizes.
        ("scale (issue 14)", lambda: bench_scale.run([2000] if quick else [10000, 100000])),
        ("the peer side by side (issue 14)", lambda: bench_peer.run(
            n=600 if quick else 10000, n_conv=1 if quick else 10,
            sample=60 if quick else 300)),
    ]
    for name, fn in steps:
        t0 = time.time()
        log(f"\n=== {name} ===")
        fn()
        log(f"=== {name}: {time.time() - t0:.0f}s ===")


if __name__ == "__main__":
    main()

"""Batch reindex: re-embed every memory and rebuild every shard's vector graph, online, on every
embedding worker at once, paced so live retrieves keep their latency.

    ray job submit --working-dir . -- python -m memoray.cluster.jobs.reindex --data-dir DIR
    python -m memoray.cluster.jobs.reindex --data-dir DIR --max-rate 200    # as a plain driver

Records are read from each shard in id order (pages of --page) and cut into embedding batches
(--embed-batch: small, so a retrieve's query embedding never queues behind a long batch).
`--depth` batches per embedding worker are in flight, each on its own worker, so every worker
of the store embeds at once. Each batch is written back under the same ids (an update in place:
nothing is duplicated), after a re-read that skips a record deleted or changed since it was
read. Then each shard builds a fresh graph in the background and swaps it in.

Pacing (cluster/jobs/throttle.py): a token bucket holds the job to a rate in records/s, at most
--max-rate; unless --no-adaptive, the rate follows a probe (a query embedding on every worker and
a call on every shard; the median of three, each --probe-every seconds) kept under --target x
its value before the job started. Progress (records, rate, probe) goes to stderr; the report,
as JSON, to stdout. Idempotent: rerun it after a failure.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import secrets
import statistics
import sys
import time
from dataclasses import dataclass, field

from memoray.actors.embedding_worker import EmbedderPool
from memoray.actors.shard_client import ShardSet
from memoray.cluster.jobs.common import connect, store_embedders, store_shards
from memoray.cluster.jobs.throttle import Throttle, TokenBucket, timed

UNLIMITED = 1e6


@dataclass
class Options:
    page: int = 256
    embed_batch: int = 16
    depth: int = 2
    max_rate: float | None = None
    min_rate: float = 5.0
    adaptive: bool = True
    target: float = 2.0
    probe_every: float = 1.0
    rebuild_only: bool = False
    quiet: bool = False


@dataclass
class _Counts:
    reembedded: int = 0
    skipped: int = 0
    per_embedder: list[int] = field(default_factory=list)
    probes: list[float] = field(default_factory=list)


def probe_for(shards: ShardSet, embedders: EmbedderPool):
    """What a retrieve waits for: a (never cached) query embedding on every worker, and a call
    on every shard."""
    async def probe() -> None:
        text = f"reindex probe {secrets.token_hex(6)}"
        await asyncio.gather(*[c.embed([text], query=True) for c in embedders.clients],
                             *[s.health() for s in shards.clients])
    return probe


async def reindex(shards: ShardSet, embedders: EmbedderPool, opts: Options,
                  probe=None) -> dict:
    """`probe`: an async callable timed for pacing (default probe_for(shards, embedders))."""
    totals = await shards.each(lambda s: s.stats())
    total = sum(t["records"] for t in totals)
    t0 = time.time()
    n_workers = max(1, len(embedders.clients))
    counts = _Counts(per_embedder=[0] * n_workers)
    throttle = Throttle(max_rate=opts.max_rate or UNLIMITED, min_rate=opts.min_rate,
                        adaptive=opts.adaptive, target=opts.target)
    probe = probe or probe_for(shards, embedders)
    if not opts.rebuild_only:
        if opts.adaptive:
            throttle.calibrate([await timed(probe) for _ in range(5)])
        bucket = TokenBucket(throttle.rate, burst=opts.embed_batch)
        queue: asyncio.Queue = asyncio.Queue(maxsize=n_workers * opts.depth * 2)

        async def produce() -> None:
            for i, shard in enumerate(shards.clients):
                after = None
                while page := await shard.scan(after, opts.page):
                    for k in range(0, len(page), opts.embed_batch):
                        await queue.put((i, page[k:k + opts.embed_batch]))
                    after = page[-1]["id"]
            for _ in range(n_workers * opts.depth):
                await queue.put(None)

        async def work(slot: int) -> None:
            w = slot % n_workers
            client = embedders.clients[w]
            while (item := await queue.get()) is not None:
                i, batch = item
                await bucket.take(len(batch))
                vectors = await client.embed([r["content"] for r in batch])
                shard = shards.clients[i]
                # Skip what a client deleted or changed since the scan (a write-back would undo
                # it). The window left is this re-read to the put below.
                fresh = await shard.get([r["id"] for r in batch])
                keep = [k for k, (r, f) in enumerate(zip(batch, fresh)) if f == r]
                if keep:
                    await shard.put([batch[k] for k in keep], vectors[keep])
                counts.reembedded += len(keep)
                counts.skipped += len(batch) - len(keep)
                counts.per_embedder[w] += len(keep)

        async def pace() -> None:
            last_t, last_n = time.monotonic(), 0
            while True:
                # The median of three probes spread over the interval: one unlucky sample
                # (a GC pause, a neighbour's burst) must not halve the rate.
                samples = []
                for _ in range(3):
                    await asyncio.sleep(opts.probe_every / 3)
                    samples.append(await timed(probe))
                p = statistics.median(samples)
                now = time.monotonic()
                achieved = (counts.reembedded + counts.skipped - last_n) / max(now - last_t, 1e-6)
                last_t, last_n = now, counts.reembedded + counts.skipped
                counts.probes.append(p)
                bucket.rate = throttle.observe(p, achieved, now)
                if not opts.quiet:
                    print(f"reindex: {counts.reembedded + counts.skipped}/{total} "
                          f"({achieved:.0f}/s, limit {bucket.rate:.0f}/s, probe "
                          f"{p * 1000:.0f} ms)", file=sys.stderr, flush=True)

        pacer = asyncio.get_running_loop().create_task(pace())
        try:
            await asyncio.gather(produce(), *[work(k) for k in range(n_workers * opts.depth)])
        finally:
            pacer.cancel()
    embed_s = time.time() - t0
    started = await shards.each(lambda s: s.start_rebuild())
    swapped = await shards.each(lambda s: s.finish_rebuild())
    probes = sorted(counts.probes)
    return {"shards": len(shards), "records": total, "reembedded": counts.reembedded,
            "skipped_changed": counts.skipped, "embedders": n_workers,
            "per_embedder": counts.per_embedder,
            "rebuilt": sum(bool(x) for x in swapped), "started": sum(bool(x) for x in started),
            "embed_seconds": round(embed_s, 2), "seconds": round(time.time() - t0, 2),
            "rate": round(counts.reembedded / embed_s, 1) if embed_s > 0 else 0.0,
            "throttle": {"adaptive": opts.adaptive, "max_rate": opts.max_rate,
                         "target": opts.target, "backoffs": throttle.backoffs,
                         "final_rate": round(throttle.rate, 1),
                         "baseline_ms": round((throttle.baseline_s or 0) * 1000, 2),
                         "probe_p50_ms": round(statistics.median(probes) * 1000, 2)
                         if probes else None,
                         "probe_max_ms": round(probes[-1] * 1000, 2) if probes else None}}


def parse(argv: list[str] | None) -> tuple[argparse.Namespace, Options]:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--address", help="Ray cluster address (default: the data dir's run.json)")
    ap.add_argument("--data-dir", default="~/.memoray",
                    help="the store's data dir (its run.json names the store) [~/.memoray]")
    ap.add_argument("--page", type=int, default=256, help="records read per shard call [256]")
    ap.add_argument("--embed-batch", type=int, default=16, help="texts per embedding call [16]")
    ap.add_argument("--batch", type=int, dest="embed_batch", help=argparse.SUPPRESS)  # old name
    ap.add_argument("--depth", type=int, default=2,
                    help="embedding calls in flight per embedding worker [2]")
    ap.add_argument("--max-rate", type=float, default=None,
                    help="at most this many records/s [no cap: the adaptive pacing decides]")
    ap.add_argument("--min-rate", type=float, default=5.0,
                    help="the adaptive pacing never goes below this many records/s [5]")
    ap.add_argument("--no-adaptive", action="store_true",
                    help="no probe-driven pacing: run at --max-rate (or flat out)")
    ap.add_argument("--target", type=float, default=2.0,
                    help="keep the probe latency under this multiple of its baseline [2]")
    ap.add_argument("--probe-every", type=float, default=1.0, help="seconds between probes [1]")
    ap.add_argument("--rebuild-only", action="store_true", help="skip re-embedding")
    ap.add_argument("--quiet", action="store_true", help="no progress lines")
    args = ap.parse_args(argv)
    for name in ("page", "embed_batch", "depth"):
        if getattr(args, name) < 1:
            ap.error(f"--{name.replace('_', '-')} must be at least 1")
    if args.max_rate is not None and args.max_rate <= 0:
        ap.error("--max-rate must be positive")
    opts = Options(page=args.page, embed_batch=args.embed_batch, depth=args.depth,
                   max_rate=args.max_rate, min_rate=args.min_rate,
                   adaptive=not args.no_adaptive, target=args.target,
                   probe_every=args.probe_every, rebuild_only=args.rebuild_only,
                   quiet=args.quiet)
    return args, opts


def main(argv: list[str] | None = None) -> dict:
    args, opts = parse(argv)
    ray = connect(args.address, args.data_dir)
    report = asyncio.run(reindex(store_shards(ray, args.data_dir),
                                 store_embedders(ray, args.data_dir), opts))
    print(json.dumps(report), flush=True)
    return report


if __name__ == "__main__":
    main()

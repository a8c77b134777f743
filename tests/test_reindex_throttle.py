"""The reindex's pacing, mechanically and without Ray: the token bucket holds a rate, the
adaptive throttle backs off on a slow probe and climbs on a fast one, and a reindex over
in-process shards uses every embedding worker, keeps to --max-rate, and skips records changed
or deleted meanwhile."""

from __future__ import annotations

import asyncio
import time

import numpy as np

from memoray.actors.embedding_worker import EmbedderPool, EmbeddingWorker
from memoray.actors.shard import ShardCore
from memoray.actors.shard_client import ShardSet
from memoray.cluster.jobs.reindex import Options, parse, reindex
from memoray.cluster.jobs.throttle import Throttle, TokenBucket
from memoray.embedding import HashEmbedder
from tests.test_shard import rec

EMB = HashEmbedder()


class Clock:
    def __init__(self) -> None:
        self.t = 0.0

    def __call__(self) -> float:
        return self.t


def test_token_bucket_holds_its_rate():
    clock = Clock()
    b = TokenBucket(rate=10, burst=5, clock=clock)
    assert b.wait_for(5) == 0.0
    b.tokens -= 5
    assert b.wait_for(5) == 0.5          # 5 tokens at 10/s
    clock.t = 0.2
    assert abs(b.wait_for(5) - 0.3) < 1e-9
    assert b.wait_for(50) == 0.3         # never asks for more than the burst


def test_throttle_halves_on_a_slow_probe_and_climbs_on_fast_ones():
    t = Throttle(max_rate=1000, start_rate=100)
    t.calibrate([0.010, 0.011, 0.009])   # baseline 10 ms: limit 2 x 10 + 10 = 30 ms
    assert t.rate == 100
    assert t.observe(0.050, achieved=80) == 40      # halved from what was achieved
    assert t.backoffs == 1
    assert t.observe(0.040, achieved=40) == 20
    rates = [t.observe(0.012, achieved=t.rate) for _ in range(10)]
    assert rates == sorted(rates) and rates[-1] > 20   # climbs again while probes are fast
    assert t.observe(0.012, achieved=1) <= max(2 * 1, t.min_rate, t.start_rate)
    for _ in range(20):
        t.observe(0.5, achieved=1000)
    assert t.rate == t.min_rate          # never below the floor


def test_throttle_off_keeps_max_rate():
    t = Throttle(max_rate=200, adaptive=False)
    t.calibrate([0.01])
    assert t.observe(10.0, achieved=200) == 200 and t.backoffs == 0


class SlowEmbedder(HashEmbedder):
    """Hash vectors, at a fixed cost per text (a model's compute, without the model)."""

    def embed(self, texts, query=False):
        time.sleep(0.002 * len(texts))
        return super().embed(texts)


def store(tmp_path, n: int = 300):
    cores = [ShardCore(i, tmp_path / f"s{i}", EMB.dim, map_size=64 << 20) for i in range(2)]
    shards = ShardSet.of(cores)
    records = [rec(f"reindex fact {i} about the kestrel queue") for i in range(n)]
    for r in records:
        shards.for_id(r["id"]).target.put([r], np.zeros((1, EMB.dim), np.float32))
    return shards, records


def test_reindex_uses_every_embedder_and_keeps_to_max_rate(tmp_path):
    shards, records = store(tmp_path)
    pool = EmbedderPool.of([EmbeddingWorker(SlowEmbedder()), EmbeddingWorker(SlowEmbedder())])
    opts = Options(embed_batch=20, max_rate=600, adaptive=False, quiet=True)
    t0 = time.perf_counter()
    report = asyncio.run(reindex(shards, pool, opts))
    elapsed = time.perf_counter() - t0
    assert report["reembedded"] == len(records) and report["skipped_changed"] == 0
    assert all(n > 0 for n in report["per_embedder"]) and sum(report["per_embedder"]) == 300
    assert elapsed >= (len(records) - opts.embed_batch) / opts.max_rate  # the cap held
    index = shards.for_id(records[0]["id"]).target.index
    vec = index.vectors(np.flatnonzero(index.live))
    assert np.abs(vec).sum() > 0                       # zero vectors were replaced


def test_adaptive_reindex_backs_off_when_its_probe_slows(tmp_path):
    shards, records = store(tmp_path, n=120)
    pool = EmbedderPool.of([EmbeddingWorker(SlowEmbedder())])
    state = {"calls": 0}

    async def probe():  # fast while calibrating, then slow: as if the job hurt retrieves
        state["calls"] += 1
        await asyncio.sleep(0.001 if state["calls"] <= 5 else 0.05)

    opts = Options(embed_batch=10, probe_every=0.05, min_rate=40, quiet=True)
    report = asyncio.run(reindex(shards, pool, opts, probe=probe))
    assert report["reembedded"] == 120
    assert report["throttle"]["backoffs"] >= 1
    assert report["throttle"]["final_rate"] == 40.0    # driven down to the floor


def test_reindex_skips_records_changed_meanwhile(tmp_path):
    shards, records = store(tmp_path, n=40)
    gone = records[3]

    class Deleting(HashEmbedder):
        """Embeds, and meanwhile a client deletes a record the job has already read."""

        def embed(self, texts, query=False):
            core = shards.for_id(gone["id"]).target
            if core.get([gone["id"]])[0] is not None:
                core.delete([gone["id"]])
            return super().embed(texts)

    report = asyncio.run(reindex(shards, EmbedderPool.of([EmbeddingWorker(Deleting())]),
                                 Options(adaptive=False, depth=1, quiet=True)))
    assert report["skipped_changed"] == 1 and report["reembedded"] == 39
    assert shards.for_id(gone["id"]).target.get([gone["id"]]) == [None]  # not brought back


def test_flags():
    args, opts = parse(["--max-rate", "50", "--no-adaptive", "--embed-batch", "8"])
    assert opts.max_rate == 50 and not opts.adaptive and opts.embed_batch == 8

"""Query embedding in the replica (actors/query_embedder.py): queries skip the embedding worker
once the replica's own model has loaded, captures never do, and a model that cannot load leaves
every query on the workers."""

from __future__ import annotations

import asyncio
import threading
import time

import numpy as np
import pytest

from memoray.actors.backend import Backend
from memoray.actors.embedding_worker import EmbedderPool, EmbeddingWorker, MicroBatcher
from memoray.actors.query_embedder import ReplicaQueryEmbedder, queries_in_replica
from memoray.actors.shard_client import ShardSet
from memoray.embedding import HashEmbedder
from memoray.settings import Settings


class Counting(HashEmbedder):
    def __init__(self):
        super().__init__()
        self.texts: list[str] = []

    def embed(self, texts):
        self.texts += texts
        return super().embed(texts)


def backend_with(replica: ReplicaQueryEmbedder | None) -> tuple[Backend, Counting]:
    worker = Counting()
    pool = EmbedderPool.of([EmbeddingWorker(MicroBatcher(worker))])
    return Backend(ShardSet.of([object()]), pool, queries=replica), worker


def test_queries_go_to_the_replica_model_and_captures_to_the_workers():
    local = Counting()
    replica = ReplicaQueryEmbedder("hash", load=lambda: local).load_now()
    backend, worker = backend_with(replica)

    async def go():
        q = await backend.embed(["where is the retry loop"], query=True)
        c = await backend.embed(["captured text one", "captured text two"])
        return q, c

    q, c = asyncio.run(go())
    assert local.texts == ["warm up", "where is the retry loop"]
    assert worker.texts == ["captured text one", "captured text two"]
    np.testing.assert_allclose(q, HashEmbedder().embed(["where is the retry loop"]), atol=1e-6)
    assert c.shape == (2, 384)
    st = replica.stats()
    assert st["ready"] and st["embedded"] == 1 and st["fallbacks"] == 0


def test_until_the_model_has_loaded_queries_go_to_the_workers():
    gate = threading.Event()
    local = Counting()

    def slow_load():
        gate.wait(10)
        return local

    replica = ReplicaQueryEmbedder("hash", load=slow_load).start()
    backend, worker = backend_with(replica)
    asyncio.run(backend.embed(["early query"], query=True))
    assert worker.texts == ["early query"] and not replica.ready
    gate.set()
    deadline = time.monotonic() + 10
    while not replica.ready and time.monotonic() < deadline:
        time.sleep(0.01)
    asyncio.run(backend.embed(["later query"], query=True))
    assert worker.texts == ["early query"]
    assert local.texts[-1] == "later query"
    assert replica.stats()["fallbacks"] == 1


def test_a_model_that_cannot_load_leaves_queries_on_the_workers():
    def broken():
        raise OSError("model files missing on this node")

    replica = ReplicaQueryEmbedder("minilm", load=broken).load_now()
    backend, worker = backend_with(replica)
    asyncio.run(backend.embed(["a query"], query=True))
    assert worker.texts == ["a query"]
    st = replica.stats()
    assert not st["ready"] and "model files missing" in st["error"]


def test_the_replica_model_gives_the_workers_vectors():
    """The real MiniLM, one thread in the replica against the worker's batch path."""
    from memoray.embedding import make_embedder

    replica = ReplicaQueryEmbedder("minilm").load_now()
    texts = ["how do failed charges get retried?", "which database did we pick?"]
    local = asyncio.run(replica.embed(texts))
    worker = make_embedder("minilm", device="cpu").embed(texts)
    np.testing.assert_allclose(local, worker, atol=1e-5)


@pytest.mark.parametrize("where,gpus,expected", [
    ("auto", 0.0, True), ("auto", 1.0, False), ("replica", 1.0, True), ("worker", 0.0, False)])
def test_where_queries_are_embedded(where, gpus, expected):
    s = Settings(query_embedding=where, embedding_gpus=gpus)
    assert queries_in_replica(s.query_embedding, s.embedding_gpus) is expected


def test_an_unknown_place_is_refused():
    with pytest.raises(ValueError, match="query_embedding"):
        queries_in_replica("gpu", 0.0)
    with pytest.raises(ValueError):
        Settings(query_embedding="gpu")

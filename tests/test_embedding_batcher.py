"""The micro-batcher: requests that arrive together share one model call; a lone request is
embedded alone (it waits for no batch to form)."""

from __future__ import annotations

import asyncio

import numpy as np

from memoray.actors.embedding_worker import MicroBatcher
from memoray.embedding import HashEmbedder


class Counting(HashEmbedder):
    def __init__(self):
        super().__init__()
        self.calls: list[int] = []

    def embed(self, texts):
        self.calls.append(len(texts))
        return super().embed(texts)


def test_requests_arriving_together_share_one_model_call():
    emb = Counting()
    batcher = MicroBatcher(emb, max_wait_s=0.5)

    async def go():
        return await asyncio.gather(*[batcher.embed([f"text {i}", f"more {i}"])
                                      for i in range(5)])

    outs = asyncio.run(go())
    assert emb.calls == [10]
    for i, out in enumerate(outs):
        np.testing.assert_allclose(out, emb.embed([f"text {i}", f"more {i}"]), atol=1e-6)


def test_a_lone_request_does_not_wait_for_a_batch():
    emb = Counting()
    batcher = MicroBatcher(emb, max_wait_s=5.0)  # a wait this long would show

    async def go():
        loop = asyncio.get_running_loop()
        t0 = loop.time()
        await batcher.embed(["alone"])
        return loop.time() - t0

    assert asyncio.run(go()) < 2.0
    assert emb.calls == [1]

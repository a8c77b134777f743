"""EmbeddingWorker: micro-batches concurrent embedding requests, caches query embeddings.

The batcher is a plain asyncio class (tests drive it without Ray); the actor is made from
EmbeddingWorker, the plain class around it. Requests
that arrive while a batch is being encoded queue up and go in the next batch, so under load one
model call serves many requests, and a lone request waits at most `max_wait_s`.
"""

from __future__ import annotations

import asyncio
import itertools
import time
from collections import OrderedDict
from typing import Any

import numpy as np

from memoray import gcpause
from memoray.actors.client import ActorClient
from memoray.embedding import Embedder, make_embedder
from memoray.errors import ErrorCode, MemorayError


class LRUCache:
    def __init__(self, capacity: int):
        self.capacity = capacity
        self.data: OrderedDict[str, np.ndarray] = OrderedDict()
        self.hits = 0
        self.misses = 0

    def get(self, key: str) -> np.ndarray | None:
        v = self.data.get(key)
        if v is None:
            self.misses += 1
            return None
        self.data.move_to_end(key)
        self.hits += 1
        return v

    def put(self, key: str, value: np.ndarray) -> None:
        self.data[key] = value
        self.data.move_to_end(key)
        while len(self.data) > self.capacity:
            self.data.popitem(last=False)


class MicroBatcher:
    def __init__(self, embedder: Embedder, *, max_batch: int = 128, max_wait_s: float = 0.002,
                 cache_size: int = 4096):
        self.embedder = embedder
        self.max_batch = max_batch
        self.max_wait_s = max_wait_s
        self.cache = LRUCache(cache_size)
        self.queue: asyncio.Queue[tuple[list[str], asyncio.Future]] | None = None
        self.task: asyncio.Task | None = None
        self.loop: asyncio.AbstractEventLoop | None = None
        self.batches = 0
        self.texts = 0
        self.busy_s = 0.0

    def _start(self) -> None:
        loop = asyncio.get_running_loop()
        if self.task is None or self.loop is not loop or self.task.done():
            # (Re)bind to the running loop: a queue and task belong to the loop that made them.
            self.loop = loop
            self.queue = asyncio.Queue()
            self.task = loop.create_task(self._run())

    async def embed(self, texts: list[str], *, query: bool = False) -> np.ndarray:
        if query and len(texts) == 1:
            hit = self.cache.get(texts[0])
            if hit is not None:
                return hit[None, :]
        self._start()
        fut: asyncio.Future = asyncio.get_running_loop().create_future()
        await self.queue.put((texts, fut))
        out = await fut
        if query and len(texts) == 1:
            self.cache.put(texts[0], out[0])
        return out

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            items = [await self.queue.get()]
            size = len(items[0][0])
            # Take what arrived with it (one pass of the event loop lets requests that came in
            # together enqueue), then wait only while a batch is forming: a lone request
            # (a retrieve's query) goes to the model at once instead of waiting max_wait_s.
            await asyncio.sleep(0)
            while size < self.max_batch and not self.queue.empty():
                item = self.queue.get_nowait()
                items.append(item)
                size += len(item[0])
            deadline = loop.time() + (self.max_wait_s if len(items) > 1 else 0.0)
            while size < self.max_batch:
                timeout = deadline - loop.time()
                if timeout <= 0:
                    break
                try:
                    item = await asyncio.wait_for(self.queue.get(), timeout)
                except TimeoutError:
                    break
                items.append(item)
                size += len(item[0])
            texts = [t for batch, _ in items for t in batch]
            t0 = time.perf_counter()
            try:
                vecs = await asyncio.to_thread(self.embedder.embed, texts)
            except Exception as exc:  # the model failing is the caller's EMBEDDING_FAILED
                err = MemorayError(ErrorCode.EMBEDDING_FAILED, f"embedding failed: {exc}")
                for _, fut in items:
                    if not fut.done():
                        fut.set_exception(err)
                continue
            self.busy_s += time.perf_counter() - t0
            self.batches += 1
            self.texts += len(texts)
            offset = 0
            for batch, fut in items:
                if not fut.done():
                    fut.set_result(vecs[offset: offset + len(batch)])
                offset += len(batch)

    def stats(self) -> dict[str, Any]:
        return {
            "embedder": self.embedder.name,
            "runtime": getattr(self.embedder, "runtime", None),
            "dim": self.embedder.dim,
            "batches": self.batches,
            "texts": self.texts,
            "mean_batch": round(self.texts / self.batches, 2) if self.batches else 0.0,
            "busy_seconds": round(self.busy_s, 3),
            "cache_hits": self.cache.hits,
            "cache_misses": self.cache.misses,
            "cache_size": len(self.cache.data),
            "device": getattr(self.embedder, "device", "cpu"),
            "batch_threads": getattr(getattr(self.embedder, "threads", None), "batch_threads",
                                     None),
        }


ACTOR_OPTIONS = {"max_restarts": -1, "max_task_retries": 3, "max_concurrency": 64}


def _device_for(kind: str) -> str | None:
    """CUDA when Ray granted this worker a GPU (num_gpus in its options), else the CPU."""
    import sys

    ray = sys.modules.get("ray")
    if ray is not None and ray.is_initialized() and ray.get_gpu_ids():
        return "cuda"
    return "cpu" if kind == "minilm" else None


class EmbeddingWorker:
    """The embedding actor's plain class: a MicroBatcher over one model."""

    def __init__(self, kind: str | Embedder | MicroBatcher, threads: int = 0,
                 runtime: str = "auto"):
        if isinstance(kind, MicroBatcher):
            self.batcher = kind
        elif isinstance(kind, str):
            self.batcher = MicroBatcher(make_embedder(kind, device=_device_for(kind),
                                                      threads=threads, runtime=runtime))
        else:
            self.batcher = MicroBatcher(kind)
        gcpause.settle()  # torch and the model stay for the actor's life (memoray/gcpause.py)

    async def embed(self, texts: list[str], query: bool = False) -> np.ndarray:
        return await self.batcher.embed(texts, query=query)

    async def stats(self) -> dict:
        return {**self.batcher.stats(), "gc": gcpause.WATCH.stats()}

    async def health(self) -> dict:
        return {"status": "ok", **self.batcher.stats(), "gc": gcpause.WATCH.stats()}


def embedder_actor_class(**options: Any) -> Any:
    import ray

    return ray.remote(**{**ACTOR_OPTIONS, **options})(EmbeddingWorker)


class EmbedderClient(ActorClient[EmbeddingWorker]):
    async def embed(self, texts: list[str], query: bool = False) -> np.ndarray:
        return await self._call(EmbeddingWorker.embed, texts, query)

    async def stats(self) -> dict:
        return await self._call(EmbeddingWorker.stats)

    async def health(self) -> dict:
        return await self._call(EmbeddingWorker.health)


class EmbedderPool:
    """The store's embedding workers, used round robin."""

    def __init__(self, clients: list[EmbedderClient]):
        self.clients = clients
        self._next = itertools.cycle(range(max(1, len(clients))))

    @classmethod
    def of(cls, targets: list[Any]) -> EmbedderPool:
        return cls([EmbedderClient(t) for t in targets])

    async def embed(self, texts: list[str], query: bool = False) -> np.ndarray:
        if not self.clients:
            raise MemorayError(ErrorCode.UNAVAILABLE, "no embedding worker")
        return await self.clients[next(self._next)].embed(texts, query)

    async def health(self) -> list[dict]:
        return list(await asyncio.gather(*[c.health() for c in self.clients]))

"""How the service reaches shards and embedders: Ray actor handles in production, plain
in-process objects in unit tests. Same async interface either way."""

from __future__ import annotations

import asyncio
import itertools
from typing import Any, Protocol

import numpy as np


class Backend(Protocol):
    shards: int

    async def shard(self, index: int, method: str, *args: Any) -> Any: ...

    async def all_shards(self, method: str, *args: Any) -> list[Any]: ...

    async def embed(self, texts: list[str], query: bool = False) -> np.ndarray: ...

    async def embedder_health(self) -> list[dict]: ...


class LocalBackend:
    """ShardCore objects and a MicroBatcher in this process (unit tests, benchmarks)."""

    def __init__(self, cores: list, batcher):
        self.cores = cores
        self.batcher = batcher
        self.shards = len(cores)

    async def shard(self, index: int, method: str, *args: Any) -> Any:
        return getattr(self.cores[index], method)(*args)

    async def all_shards(self, method: str, *args: Any) -> list[Any]:
        return [getattr(c, method)(*args) for c in self.cores]

    async def embed(self, texts: list[str], query: bool = False) -> np.ndarray:
        return await self.batcher.embed(texts, query=query)

    async def embedder_health(self) -> list[dict]:
        return [{"status": "ok", **self.batcher.stats()}]


class RayBackend:
    """Named actors looked up once per replica; calls are awaited ObjectRefs (no ray.get)."""

    def __init__(self, shard_handles: list, embed_handles: list):
        self.handles = shard_handles
        self.embedders = embed_handles
        self.shards = len(shard_handles)
        self._rr = itertools.cycle(range(len(embed_handles)))

    async def shard(self, index: int, method: str, *args: Any) -> Any:
        return await getattr(self.handles[index], method).remote(*args)

    async def all_shards(self, method: str, *args: Any) -> list[Any]:
        return list(await asyncio.gather(
            *[getattr(h, method).remote(*args) for h in self.handles]))

    async def embed(self, texts: list[str], query: bool = False) -> np.ndarray:
        return await self.embedders[next(self._rr)].embed.remote(texts, query)

    async def embedder_health(self) -> list[dict]:
        return list(await asyncio.gather(*[h.health.remote() for h in self.embedders]))

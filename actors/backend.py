"""What a replica (or a job) talks to: the store's shards and its embedding workers, each through
its typed client, the same for in-process objects (unit tests, benchmarks) and Ray actors."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from memoray.actors.embedding_worker import EmbedderPool, EmbeddingWorker
from memoray.actors.shard_client import ShardSet

if TYPE_CHECKING:
    from memoray.actors.query_embedder import ReplicaQueryEmbedder


@dataclass
class Backend:
    shards: ShardSet
    embedders: EmbedderPool
    # A replica's own copy of the model for queries (actors/query_embedder.py), None: workers.
    queries: ReplicaQueryEmbedder | None = None

    @classmethod
    def local(cls, cores: list, batcher: Any = None) -> Backend:
        """ShardCores and a MicroBatcher (or embedder) in this process."""
        pool = EmbedderPool.of([EmbeddingWorker(batcher)] if batcher is not None else [])
        return cls(ShardSet.of(cores), pool)

    @classmethod
    def remote(cls, shard_handles: list, embedder_handles: list) -> Backend:
        return cls(ShardSet.of(shard_handles), EmbedderPool.of(embedder_handles))

    async def embed(self, texts: list[str], query: bool = False) -> np.ndarray:
        """Captures' texts on the workers; queries in this process once its model is loaded."""
        if query and self.queries is not None:
            if self.queries.ready:
                return await self.queries.embed(texts)
            self.queries.fallbacks += 1
        return await self.embedders.embed(texts, query)

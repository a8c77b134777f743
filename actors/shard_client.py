"""The one way to talk to a shard: `ShardClient`, over a ShardCore in process or over the Ray
actor made from ShardCore itself (no wrapper class, no forwarders). `ShardSet` is the shards of
one store, with routing by id and concurrent fan-out."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import numpy as np

from memoray.actors.client import ActorClient
from memoray.actors.shard import ACTOR_OPTIONS, ShardCore
from memoray.actors.shard_search import SearchRequest, SearchResult
from memoray.actors.snapshot_export import SnapshotChunk
from memoray.ids import shard_for
from memoray.records import Record

T = TypeVar("T")


def shard_actor_class(**options: Any) -> Any:
    """The Ray actor class: ShardCore itself (ray imported lazily, so importing this module
    never imports ray)."""
    import ray

    return ray.remote(**{**ACTOR_OPTIONS, **options})(ShardCore)


class ShardClient(ActorClient[ShardCore]):
    """Typed async calls on one shard; every method names ShardCore's own."""

    async def put(self, records: list[Record], vectors: np.ndarray) -> list[tuple[str, bool]]:
        return await self._call(ShardCore.put, records, vectors)

    async def merge(self, record: Record, vector: np.ndarray) -> bool:
        return await self._call(ShardCore.merge, record, vector)

    async def best_match(self, vector: np.ndarray, node: Any, k: int = 8,
                         now: float | None = None) -> tuple[Record, float] | None:
        return await self._call(ShardCore.best_match, vector, node, k, now)

    async def update_record(self, record: Record) -> None:
        return await self._call(ShardCore.update_record, record)

    async def delete(self, ids: list[str]) -> list[str]:
        return await self._call(ShardCore.delete, ids)

    async def purge(self, ids: list[str]) -> list[str]:
        return await self._call(ShardCore.purge, ids)

    async def outbox_read(self, limit: int = 256) -> list[tuple[int, dict]]:
        return await self._call(ShardCore.outbox_read, limit)

    async def outbox_ack(self, upto: int) -> int:
        return await self._call(ShardCore.outbox_ack, upto)

    async def get(self, ids: list[str]) -> list[Record | None]:
        return await self._call(ShardCore.get, ids)

    async def document(self, parent_id: str) -> list[Record]:
        return await self._call(ShardCore.document, parent_id)

    async def select(self, node: Any, limit: int | None = None) -> list[Record]:
        return await self._call(ShardCore.select, node, limit)

    async def recent(self, node: Any, limit: int,
                     before: tuple[float, str] | None = None) -> list[Record]:
        return await self._call(ShardCore.recent, node, limit, before)

    async def day_counts(self, node: Any) -> dict[str, dict[str, int]]:
        return await self._call(ShardCore.day_counts, node)

    async def search(self, req: SearchRequest) -> SearchResult:
        return await self._call(ShardCore.search, req)

    async def expired(self, now: float, limit: int = 10000) -> list[Record]:
        return await self._call(ShardCore.expired, now, limit)

    async def scan(self, after: str | None, limit: int = 256) -> list[Record]:
        return await self._call(ShardCore.scan, after, limit)

    async def stats(self) -> dict:
        return await self._call(ShardCore.stats)

    async def planner_stats(self, known_seq: int) -> dict | None:
        return await self._call(ShardCore.planner_stats, known_seq)

    async def health(self) -> dict:
        return await self._call(ShardCore.health)

    async def snapshot(self) -> dict:
        return await self._call(ShardCore.snapshot)

    async def backup(self, dest: str) -> dict:
        return await self._call(ShardCore.backup, dest)

    async def export_snapshot(self, token: str, offset: int, size: int) -> SnapshotChunk:
        return await self._call(ShardCore.export_snapshot, token, offset, size)

    async def start_rebuild(self) -> bool:
        return await self._call(ShardCore.start_rebuild)

    async def finish_rebuild(self) -> bool:
        return await self._call(ShardCore.finish_rebuild)

    async def reseal(self) -> int:
        return await self._call(ShardCore.reseal)

    async def pid(self) -> int:
        return await self._call(ShardCore.pid)


class ShardSet:
    """The shards of one store. Records live on `shard_for(id, n)` (memoray.ids)."""

    def __init__(self, clients: list[ShardClient]):
        self.clients = clients

    @classmethod
    def of(cls, targets: list[Any]) -> ShardSet:
        """From ShardCores (in process) or shard actor handles."""
        return cls([ShardClient(t) for t in targets])

    def __len__(self) -> int:
        return len(self.clients)

    def __getitem__(self, index: int) -> ShardClient:
        return self.clients[index]

    def index_of(self, memory_id: str) -> int:
        return shard_for(memory_id, len(self.clients))

    def for_id(self, memory_id: str) -> ShardClient:
        return self.clients[self.index_of(memory_id)]

    async def each(self, call: Callable[[ShardClient], Awaitable[T]]) -> list[T]:
        """`call` on every shard at once, results in shard order."""
        return list(await asyncio.gather(*[call(c) for c in self.clients]))

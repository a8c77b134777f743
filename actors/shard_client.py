"""The one way to talk to a shard: `ShardClient`, over a ShardCore in process or over the Ray
actor made from ShardCore itself (no wrapper class, no forwarders). `ShardSet` is the shards of
one store: routing by the store's placement (memoray/routing.py), which it re-reads while
serving so a reshard reaches it without a restart, and concurrent fan-out."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import Any, Protocol, TypeVar

import numpy as np

from memoray.actors.client import ActorClient
from memoray.actors.shard import ACTOR_OPTIONS, ShardCore
from memoray.actors.shard_search import SearchRequest, SearchResult, pack, unpack
from memoray.actors.snapshot_export import SnapshotChunk
from memoray.records import Record
from memoray.routing import WRONG_SHARD, Placement, Routing, home_key, home_keys

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
        return (await self.search_many([req]))[0]

    async def search_many(self, reqs: list[SearchRequest] | bytes) -> list[SearchResult]:
        """ShardCore.search_many's answers, sent as search_packed's blobs; `reqs` may be
        `pack(reqs)` already, made once for every shard of a fan-out."""
        blob = reqs if isinstance(reqs, bytes) else pack(reqs)
        return unpack(await self.search_packed(blob))

    async def search_packed(self, blob: bytes) -> bytes:
        return await self._call(ShardCore.search_packed, blob)

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

    # resharding (cluster/jobs/reshard.py)
    async def placement(self) -> dict | None:
        return await self._call(ShardCore.placement)

    async def set_placement(self, placement: dict) -> dict:
        return await self._call(ShardCore.set_placement, placement)

    async def idem_lookup(self, keys: list[str]) -> list[str | None]:
        return await self._call(ShardCore.idem_lookup, keys)

    async def export_moving(self, after: str | None, limit: int = 256) -> dict:
        return await self._call(ShardCore.export_moving, after, limit)

    async def export_ids(self, ids: list[str]) -> dict:
        return await self._call(ShardCore.export_ids, ids)

    async def import_moved(self, records: list[Record], vectors: np.ndarray,
                           wordings: dict[str, np.ndarray]) -> list[tuple[str, bool]]:
        return await self._call(ShardCore.import_moved, records, vectors, wordings)

    async def drop_moved(self, fingerprints: dict[str, str]) -> dict:
        return await self._call(ShardCore.drop_moved, fingerprints)

    async def spawn_options(self) -> dict:
        return await self._call(ShardCore.spawn_options)


class PlacementSource(Protocol):
    """Where a ShardSet re-reads its store's placement, and how it reaches a shard by index."""

    def read(self) -> Placement | None: ...

    def client(self, index: int) -> ShardClient: ...


REFRESH_S = 0.5        # how stale a ShardSet's placement may be (reads; writes are fenced)
WRONG_SHARD_RETRY_S = 15.0


def _wrong_shard(exc: BaseException) -> bool:
    return WRONG_SHARD in str(exc)


class ShardSet:
    """The shards of one store. A new record goes to the owner of its home key under the
    placement's write routing. While a reshard moves records (placement.moving) a record is on
    its old owner until moved, then on its new one: lookups ask every shard and take the old
    owner's copy while both exist (the mover deletes it only if unchanged since it copied it),
    deletes go to every shard, and a keyed capture asks the key's old owner first."""

    def __init__(self, clients: list[ShardClient], placement: Placement | None = None,
                 source: PlacementSource | None = None):
        self.clients = list(clients)
        self.placement = placement or Placement.legacy(len(self.clients))
        self.source = source
        self._checked = time.monotonic()

    @classmethod
    def of(cls, targets: list[Any], placement: Placement | None = None,
           source: PlacementSource | None = None) -> ShardSet:
        """From ShardCores (in process) or shard actor handles."""
        return cls([ShardClient(t) for t in targets], placement, source)

    def __reduce__(self):  # crosses Ray to the planner and the expiry worker, still refreshing
        return (type(self), (self.clients, self.placement, self.source))

    def __len__(self) -> int:
        return len(self.clients)

    def __getitem__(self, index: int) -> ShardClient:
        return self.clients[index]

    # -- placement ------------------------------------------------------------------------
    def refresh(self, force: bool = False) -> bool:
        """Adopt a newer placement from the source (at most every REFRESH_S unless forced)."""
        if self.source is None or (not force and time.monotonic() - self._checked < REFRESH_S):
            return False
        self._checked = time.monotonic()
        new = self.source.read()
        if new is None or new.epoch <= self.placement.epoch:
            return False
        width = new.width
        while len(self.clients) < width:
            self.clients.append(self.source.client(len(self.clients)))
        del self.clients[width:]
        self.placement = new
        return True

    @property
    def routing(self) -> Routing:
        """Where new records go (ids are minted for it: memoray.ids.new_id_on_shard)."""
        self.refresh()
        return self.placement.writes

    def index_of(self, memory_id: str) -> int:
        return self.placement.writes.owner(memory_id)

    def for_id(self, memory_id: str) -> ShardClient:
        return self.clients[self.index_of(memory_id)]

    async def each(self, call: Callable[[ShardClient], Awaitable[T]]) -> list[T]:
        """`call` on every shard at once, results in shard order."""
        self.refresh()
        return list(await asyncio.gather(*[call(c) for c in self.clients]))

    # -- lookups by id ----------------------------------------------------------------------
    def _authoritative(self, copies: list[tuple[int, Record]]) -> tuple[int, Record]:
        """Of a record found on two shards mid-move, the old owner's copy (not the target's)."""
        if len(copies) > 1 and self.placement.moving:
            target = self.placement.writes.owner(home_key(copies[0][1]))
            rest = [c for c in copies if c[0] != target]
            if rest:
                return rest[0]
        return copies[0]

    async def get_many(self, ids: list[str]) -> list[tuple[int, Record] | None]:
        """(shard, record) per id, or None. Asks each id's owner first; ids not there (moved by
        a reshard with their document or key) and every id while records move, all shards."""
        self.refresh()
        found: dict[str, list[tuple[int, Record]]] = {i: [] for i in ids}
        if self.placement.moving:
            todo = list(dict.fromkeys(ids))
        else:
            groups: dict[int, list[str]] = {}
            for i in dict.fromkeys(ids):
                groups.setdefault(self.index_of(i), []).append(i)
            parts = await asyncio.gather(*[self.clients[s].get(g) for s, g in groups.items()])
            for (s, g), recs in zip(groups.items(), parts):
                for i, r in zip(g, recs):
                    if r is not None:
                        found[i].append((s, r))
            todo = [i for i in found if not found[i]]
        if todo:
            parts = await asyncio.gather(*[c.get(todo) for c in self.clients])
            for s, recs in enumerate(parts):
                for i, r in zip(todo, recs):
                    if r is not None and all(s != t for t, _ in found[i]):
                        found[i].append((s, r))
        return [self._authoritative(found[i]) if found[i] else None for i in ids]

    async def get_one(self, memory_id: str) -> Record | None:
        hit = (await self.get_many([memory_id]))[0]
        return hit[1] if hit else None

    async def document(self, parent_id: str) -> list[Record]:
        """A document's chunks, in order (they share a shard; which one, only they know)."""
        parts = await self.each(lambda c: c.document(parent_id))
        by_id: dict[str, list[tuple[int, Record]]] = {}
        for s, recs in enumerate(parts):
            for r in recs:
                by_id.setdefault(r["id"], []).append((s, r))
        chosen = [self._authoritative(copies)[1] for copies in by_id.values()]
        return sorted(chosen, key=lambda r: r.get("chunk_index") or 0)

    async def delete(self, ids: list[str]) -> list[str]:
        """Hard delete where each record is; on every shard while records move (a record
        mid-move has two copies, and the mover applies a delete it missed to its copy)."""
        self.refresh()
        if self.placement.moving:
            parts = await self.each(lambda c: c.delete(ids))
        else:  # a delete is a durable write transaction: only on the shards that hold the ids
            groups: dict[int, list[str]] = {}
            for i, hit in zip(ids, await self.get_many(ids)):
                if hit is not None:
                    groups.setdefault(hit[0], []).append(i)
            parts = await asyncio.gather(*[self.clients[s].delete(g) for s, g in groups.items()])
        gone = {i for p in parts for i in p}
        return [i for i in ids if i in gone]

    async def update_record(self, record: Record) -> None:
        for attempt in range(3):
            hit = (await self.get_many([record["id"]]))[0]
            if hit is None:
                break
            try:
                return await self.clients[hit[0]].update_record(record)
            except Exception as exc:  # moved between the lookup and the write: look again
                if "not found" not in str(exc) or attempt == 2:
                    raise
        from memoray.errors import not_found

        raise not_found(f"memory {record['id']} not found")

    async def merge(self, record: Record, vector: np.ndarray) -> bool:
        for _ in range(3):
            hit = (await self.get_many([record["id"]]))[0]
            if hit is None:
                return False
            if await self.clients[hit[0]].merge(record, vector):
                return True
        return False

    # -- writes -------------------------------------------------------------------------------
    async def _replayed(self, records: list[Record], homes: list[str]
                        ) -> dict[int, tuple[str, bool]]:
        """Mid-move, a keyed record whose key's old owner already holds it (a retry): its
        outcome, as the shard would give it, without writing it to the new owner."""
        cur, new = self.placement.current, self.placement.writes
        asks: dict[int, list[int]] = {}
        for i, (rec, home) in enumerate(zip(records, homes)):
            if (rec.get("idempotency_key") and cur.owner(home) != new.owner(home)
                    and cur.owner(home) < len(self.clients)):
                asks.setdefault(cur.owner(home), []).append(i)
        out: dict[int, tuple[str, bool]] = {}
        replayed_docs: set[str] = set()
        for s, idx in asks.items():
            keys = [f"{records[i]['workspace_id']}\x00{records[i]['idempotency_key']}"
                    for i in idx]
            for i, have in zip(idx, await self.clients[s].idem_lookup(keys)):
                if have is not None and have != records[i]["id"]:
                    out[i] = (have, False)
                    if records[i].get("parent_id"):
                        replayed_docs.add(records[i]["parent_id"])
        for i, rec in enumerate(records):
            if i not in out and rec.get("parent_id") in replayed_docs:
                out[i] = ("", False)
        return out

    async def put_routed(self, records: list[Record], vectors: np.ndarray
                         ) -> list[tuple[str, bool] | BaseException]:
        """Store new records on their home's owner, each shard's share in one transaction.
        Per record: (id, created) as ShardCore.put gives it, or the exception its shard raised.
        A shard that refuses records under a newer placement gets them re-routed."""
        out: dict[int, tuple[str, bool] | BaseException] = {}
        todo = list(range(len(records)))
        deadline = time.monotonic() + WRONG_SHARD_RETRY_S
        delay = 0.05
        while todo:
            self.refresh()
            batch = [records[i] for i in todo]
            homes = home_keys(batch)
            if self.placement.moving:
                for j, res in (await self._replayed(batch, homes)).items():
                    out[todo[j]] = res
            groups: dict[int, list[int]] = {}
            for i, home in zip(todo, homes):
                if i not in out:
                    groups.setdefault(self.placement.writes.owner(home), []).append(i)
            results = await asyncio.gather(*[
                self.clients[s].put([records[i] for i in idx], vectors[idx])
                for s, idx in groups.items()], return_exceptions=True)
            retry: list[int] = []
            for (_s, idx), res in zip(groups.items(), results):
                if isinstance(res, BaseException):
                    if _wrong_shard(res) and time.monotonic() < deadline:
                        retry.extend(idx)
                        continue
                    out.update((i, res) for i in idx)
                else:
                    out.update(zip(idx, res))
            todo = sorted(retry)
            if todo:
                await asyncio.sleep(delay)
                delay = min(delay * 2, 1.0)
                self.refresh(force=True)
        return [out[i] for i in range(len(records))]

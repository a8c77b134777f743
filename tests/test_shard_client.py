"""The typed shard client: one method per ShardCore method, the same path in process and on Ray."""

from __future__ import annotations

import asyncio
import inspect

from memoray.actors.backend import Backend
from memoray.actors.embedding_worker import MicroBatcher
from memoray.actors.shard import ShardCore
from memoray.actors.shard_client import ShardClient, ShardSet
from memoray.crypto import Keyring, generate_key, is_sealed
from memoray.embedding import HashEmbedder
from memoray.serve.service import MemoryService
from memoray.settings import Settings
from tests.service_harness import caller, item

# ShardCore methods a caller never reaches through a client: used in process only.
IN_PROCESS_ONLY = {"close", "labels_matching"}


def _public(cls: type) -> set[str]:
    return {n for n, f in inspect.getmembers(cls, inspect.isfunction) if not n.startswith("_")}


def test_client_covers_every_public_shard_method():
    core = _public(ShardCore) - IN_PROCESS_ONLY
    client = _public(ShardClient)
    assert core - client == set(), f"ShardCore methods without a client method: {core - client}"
    assert client - core == set(), f"client methods ShardCore lacks: {client - core}"


def test_client_methods_call_the_same_named_core_method(tmp_path):
    core = ShardCore(0, tmp_path, 8, map_size=32 << 20, durable=False)
    client = ShardClient(core)
    assert not client.remote
    assert asyncio.run(client.health())["shard"] == 0
    assert asyncio.run(client.get(["01ARZ3NDEKTSV4RRFFQ69G5FAV"])) == [None]
    core.close()


def test_rotate_encryption_through_the_local_backend(tmp_path):
    """Used to raise AttributeError: `reseal` existed only on the Ray wrapper."""
    old, new = generate_key(), generate_key()
    emb = HashEmbedder()

    def service(key: str) -> tuple[MemoryService, list[ShardCore]]:
        cores = [ShardCore(i, tmp_path / f"s{i}", emb.dim, map_size=64 << 20, durable=False,
                           keyring=Keyring.parse(key)) for i in range(2)]
        backend = Backend.local(cores, MicroBatcher(emb))
        return MemoryService(Settings(data_dir=tmp_path, shards=2), backend), cores

    svc, cores = service(old)
    asyncio.run(svc.capture([item(f"fact {i}") for i in range(6)], caller()))
    for c in cores:
        c.close()
    svc, cores = service(f"{new},{old}")
    report = asyncio.run(svc.rotate_encryption(caller()))
    assert report["resealed"] == 6 and len(report["perShard"]) == 2
    for c in cores:
        c.close()
    # Only the new key now opens every record.
    svc, cores = service(new)
    ids = [r["id"] for c in cores for r in c.scan(None, 100)]
    assert len(ids) == 6
    for c in cores:
        with c.storage.env.begin() as txn:
            for _, blob in txn.cursor(db=c.storage.records):
                assert is_sealed(blob)
        c.close()


def test_shard_set_routes_by_id(tmp_path):
    cores = [ShardCore(i, tmp_path / f"s{i}", 8, map_size=32 << 20, durable=False)
             for i in range(3)]
    shards = ShardSet.of(cores)
    from memoray.ids import new_id, shard_for

    for _ in range(20):
        mid = new_id()
        assert shards.for_id(mid).target is cores[shard_for(mid, 3)]
    for c in cores:
        c.close()

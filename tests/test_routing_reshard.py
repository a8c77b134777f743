"""Resharding in process (actors/resharding.py over real ShardCores and LMDB, no Ray): records
keep their ids and are all found after 2 -> 3 and 3 -> 2 while captures, retries, deletes and
updates run at the same time; a mover killed part way resumes from its cursor; a store written
by the last landed version (modulo routing, layout version 2) opens, serves and reshards."""

from __future__ import annotations

import asyncio
import json
import shutil
from pathlib import Path

import pytest

import memoray.actors.shard_client as shard_client
from memoray.actors.backend import Backend
from memoray.actors.embedding_worker import EmbedderPool, EmbeddingWorker, MicroBatcher
from memoray.actors.planner import PlannerService
from memoray.actors.resharding import STATE_FILE, Mover, reshard
from memoray.actors.shard import ShardCore
from memoray.actors.shard_client import ShardClient, ShardSet
from memoray.embedding import HashEmbedder
from memoray.layout import open_layout, read_layout
from memoray.redaction import Redactor
from memoray.routing import JUMP, MODULO, Placement, Routing, home_keys
from memoray.serve.service import MemoryService
from memoray.settings import Settings
from tests.service_harness import caller, item

FIXTURE = Path(__file__).parent / "data" / "store_v2_main"
DOC = "\n\n".join(f"Section {j}. " + "lorem ipsum dolor sit amet " * 40 for j in range(12))


class Store:
    """A store's shards in this process, found through its layout like a replica finds them."""

    def __init__(self, data: Path, shards: int):
        self.data = data
        self.emb = HashEmbedder()
        layout = open_layout(data, shards=shards, dim=self.emb.dim, embedder="hash")
        self.cores = [self._core(i) for i in range(layout.routing.width)]
        self.set = ShardSet.of(self.cores, layout.routing, self)
        settings = Settings(data_dir=data, shards=shards, durable=False)
        self.svc = MemoryService(settings, Backend(self.set, EmbedderPool.of(
            [EmbeddingWorker(MicroBatcher(self.emb))])), redactor=Redactor())

    def _core(self, i: int) -> ShardCore:
        return ShardCore(i, self.data / "shards" / f"{i:03d}", self.emb.dim,
                         map_size=128 << 20, durable=False)

    # the PlacementSource of the ShardSet
    def read(self) -> Placement | None:
        return read_layout(self.data).routing

    def client(self, index: int) -> ShardClient:
        return ShardClient(self.cores[index])

    def add(self, width: int) -> list[ShardClient]:
        new = [self._core(i) for i in range(len(self.cores), width)]
        self.cores.extend(new)
        return [ShardClient(c) for c in new]

    def remove(self, indexes: list[int]) -> None:
        for i in indexes:
            self.cores[i].close()

    async def reshard(self, n: int, **kw) -> dict:
        clients = [ShardClient(c) for c in self.cores[:read_layout(self.data).routing.width]]
        return await reshard(clients, self.data, n, say=lambda _l: None, batch=16,
                             add_shards=self.add, remove_shards=self.remove, grace_s=0.0, **kw)

    def close(self) -> None:
        for c in self.cores:
            try:
                c.close()
            except Exception:
                pass

    def placement_ok(self) -> None:
        """Every record sits on its home's owner under the layout's routing, once."""
        p = read_layout(self.data).routing
        assert not p.moving
        seen: set[str] = set()
        for s, core in enumerate(self.cores[:p.width]):
            recs = core.scan(None, 100000)
            for rec, home in zip(recs, home_keys(recs)):
                assert p.current.owner(home) == s, (rec["id"], s)
                assert rec["id"] not in seen
                seen.add(rec["id"])


@pytest.fixture(autouse=True)
def fresh_placement(monkeypatch):
    monkeypatch.setattr(shard_client, "REFRESH_S", 0.0)  # every call re-reads the layout


async def _load(store: Store, n: int, start: int = 0) -> dict[str, str]:
    """Captures n facts (every third keyed); returns id -> content."""
    out: dict[str, str] = {}
    for b in range(start, start + n, 20):
        items = [item(f"fact {i} about service {i % 9}",
                      **({"idempotency_key": f"k{i}"} if i % 3 == 0 else {}))
                 for i in range(b, min(b + 20, start + n))]
        res = await store.svc.capture(items, caller())
        for it, r in zip(items, res):
            assert "error" not in r
            out[r["ids"][0]] = it.content
    return out


def test_grow_2_to_3_under_concurrent_writes_deletes_and_retries(tmp_path):
    store = Store(tmp_path, 2)

    async def scenario():
        acked = await _load(store, 240)
        doc = (await store.svc.capture([item(DOC, idempotency_key="the-doc")], caller()))[0]
        assert doc["chunks"] > 1
        doomed = list(acked)[:30]
        stop = asyncio.Event()

        async def writer():
            i = 1000
            while not stop.is_set():
                acked.update(await _load(store, 10, start=i))
                i += 10
                await asyncio.sleep(0)

        async def deleter():
            for mid in doomed:
                await store.svc.delete(caller(), mid)
                acked.pop(mid)
                await asyncio.sleep(0)

        async def sharer():
            for mid in list(acked)[40:70]:
                await store.svc.share(caller("a"), mid, "shared")
                await asyncio.sleep(0)

        async def run_reshard():
            try:
                return await store.reshard(3)
            finally:
                stop.set()

        report, *_ = await asyncio.gather(run_reshard(), writer(), deleter(), sharer())
        assert report["changed"] and report["to"] == {"scheme": "jump", "shards": 3}
        assert report["moved"] > 0
        # every acknowledged record is found, no deleted one is
        for mid, content in acked.items():
            assert (await store.svc.get(caller(), mid)).content == content
        for mid in doomed:
            assert await store.set.get_one(mid) is None
        d = await store.svc.get_document(caller(), doc["ids"][3])
        assert d["complete"] and d["content"] == DOC
        # a retried capture after the reshard stores nothing new
        again = await store.svc.capture([item("fact 90 about service 0", idempotency_key="k90"),
                                         item(DOC, idempotency_key="the-doc")], caller())
        assert again[0]["deduplicated"] and again[1]["deduplicated"]
        assert again[1]["ids"] == doc["ids"]
        total = sum(s["records"] for s in await store.set.each(lambda c: c.stats()))
        assert total == len(acked) + doc["chunks"]
        store.placement_ok()
        assert len(store.set) == 3 and read_layout(tmp_path).routing == Placement(
            2, Routing(JUMP, 3))
        assert not (tmp_path / STATE_FILE).exists()

    try:
        asyncio.run(scenario())
    finally:
        store.close()


class Killed(Exception):
    pass


def test_a_mover_killed_mid_way_resumes_from_its_cursor(tmp_path, monkeypatch):
    store = Store(tmp_path, 2)
    real = Mover._drop
    calls = {"n": 0}

    async def dies_after_some_pages(self, s, fingerprints, rounds):
        calls["n"] += 1
        if calls["n"] == 4:  # killed with a page copied but not yet dropped from its source
            raise Killed()
        return await real(self, s, fingerprints, rounds)

    async def scenario():
        acked = await _load(store, 300)
        monkeypatch.setattr(Mover, "_drop", dies_after_some_pages)
        with pytest.raises(Killed):
            await store.reshard(3)
        state = json.loads((tmp_path / STATE_FILE).read_text())
        assert state["pending"] and state["moved"] > 0
        assert read_layout(tmp_path).routing.moving
        # served meanwhile, mid-move: everything readable, new writes land
        for mid, content in acked.items():
            assert (await store.svc.get(caller(), mid)).content == content
        acked.update(await _load(store, 20, start=5000))
        monkeypatch.setattr(Mover, "_drop", real)
        report = await store.reshard(3)
        assert report["changed"] and report["left"] == 0
        for mid, content in acked.items():
            assert (await store.svc.get(caller(), mid)).content == content
        total = sum(s["records"] for s in await store.set.each(lambda c: c.stats()))
        assert total == len(acked)
        store.placement_ok()
        assert (await store.reshard(3))["changed"] is False  # a rerun after the end: no-op

    try:
        asyncio.run(scenario())
    finally:
        store.close()


def test_shrink_3_to_2(tmp_path):
    store = Store(tmp_path, 3)

    async def scenario():
        acked = await _load(store, 150)
        for core in store.cores:  # the webhook dispatcher has every capture's event
            entries = core.outbox_read(10000)
            assert entries
            core.outbox_ack(entries[-1][0])
        planner = PlannerService(ShardSet.of(store.cores, store.set.placement, store))
        await planner.refresh()
        assert sorted(planner.planner.shard_stats) == [0, 1, 2]
        report = await store.reshard(2)
        await planner.refresh()  # the planner follows the reshard too
        assert sorted(planner.planner.shard_stats) == [0, 1]
        assert planner.planner.total == len(acked)
        # a move is not a change: no memory.created / memory.deleted event for it
        assert all(core.outbox_read(10) == [] for core in store.cores[:2])
        store.set.refresh()
        assert report["changed"] and len(store.set) == 2
        assert abs(report["moved"] / len(acked) - 1 / 3) < 0.15
        for mid, content in acked.items():
            assert (await store.svc.get(caller(), mid)).content == content
        store.placement_ok()
        res = await store.svc.retrieve(caller(), query="fact 7 about service 7", limit=5)
        assert res

    try:
        asyncio.run(scenario())
    finally:
        store.close()


def test_a_store_written_by_the_last_landed_version_opens_serves_and_reshards(tmp_path):
    """tests/data/store_v2_main was written by main at 2363d95 (its make_store.py): layout
    version 2, modulo routing over 2 shards, keyed records and two chunked documents."""
    data = tmp_path / "store"
    shutil.copytree(FIXTURE, data)
    expected = json.loads((data / "expected.json").read_text())
    store = Store(data, 2)
    assert read_layout(data).routing == Placement(0, Routing(MODULO, 2))

    async def scenario():
        for mid in expected["ids"]:
            assert await store.set.get_one(mid) is not None
        again = await store.svc.capture([item("fact 3: the service 3 uses port 8003",
                                              event_type="decision", idempotency_key="k3")],
                                        caller())
        assert again[0]["ids"] == [expected["keyed"]["k3"]] and again[0]["deduplicated"]
        new = await _load(store, 30, start=100)  # written with modulo routing still
        report = await store.reshard(3)
        assert report["from"] == {"scheme": "modulo", "shards": 2}
        for mid in [*expected["ids"], *new]:
            assert await store.set.get_one(mid) is not None, mid
        for parent in expected["documents"]:
            doc = await store.svc.get_document(caller(), parent)
            assert doc["complete"]
        again = await store.svc.capture([item("fact 3: the service 3 uses port 8003",
                                              event_type="decision", idempotency_key="k3")],
                                        caller())
        assert again[0]["ids"] == [expected["keyed"]["k3"]]
        store.placement_ok()

    try:
        asyncio.run(scenario())
    finally:
        store.close()

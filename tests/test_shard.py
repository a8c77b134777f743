"""ShardCore without Ray: durability and recovery of one shard's LMDB + indexes."""

from __future__ import annotations

import numpy as np
import pytest

from memoray import filters as flt
from memoray.actors.shard import ShardCore
from memoray.actors.shard_search import ANN, ANN_ADAPTIVE, EXACT, SearchRequest
from memoray.embedding import HashEmbedder
from memoray.ids import new_id

EMB = HashEmbedder()


def rec(content: str, **kw) -> dict:
    base = {"id": new_id(), "content": content, "event_type": "note", "metadata": {},
            "workspace_id": "ws", "session_id": None, "agent_id": None, "git_branch": None,
            "git_commit": None, "tier": "project", "visibility": "shared", "timestamp": 1.0e9,
            "expires_at": None, "parent_id": None}
    base.update(kw)
    return base


def put(core: ShardCore, records: list[dict]) -> None:
    core.put(records, EMB.embed([r["content"] for r in records]))


def search(core: ShardCore, q: str, k: int = 5, strategy: str = EXACT, node=None, mode="hybrid"):
    req = SearchRequest(vector=EMB.embed([q])[0], query=q, k=k, filter=node or flt.All(),
                        strategy=strategy, mode=mode)
    return core.search(req)


def open_core(path, **kw) -> ShardCore:
    return ShardCore(0, path, EMB.dim, map_size=64 << 20, **kw)


def test_put_get_search_roundtrip(tmp_path):
    core = open_core(tmp_path)
    records = [rec(f"memory number {i} about topic{i % 3}") for i in range(20)]
    put(core, records)
    assert core.get([records[4]["id"]])[0]["content"] == "memory number 4 about topic1"
    hits = search(core, "memory number 7 about topic1")["hits"]
    assert hits[0].record["id"] == records[7]["id"]
    assert all(0.0 <= h.score <= 1.0 for h in hits)


def test_recovery_without_snapshot_rebuilds_from_lmdb(tmp_path):
    core = open_core(tmp_path, snapshot_every=10**9)
    records = [rec(f"fact {i} kiwi{i}") for i in range(30)]
    put(core, records)
    core.storage.close()  # a crash: no snapshot was ever written
    again = open_core(tmp_path)
    assert again.recovery["mode"] == "rebuild"
    assert again.recovery["records"] == 30
    assert search(again, "fact 12 kiwi12", strategy=ANN)["hits"][0].record["id"] == records[12]["id"]


def test_recovery_from_snapshot_replays_newer_writes_and_deletes(tmp_path):
    core = open_core(tmp_path, snapshot_every=10**9)
    first = [rec(f"early {i} mango{i}") for i in range(10)]
    put(core, first)
    core.snapshot()
    later = [rec(f"late {i} papaya{i}") for i in range(5)]
    put(core, later)
    core.delete([first[0]["id"]])
    core.storage.close()  # crash after the snapshot
    again = open_core(tmp_path)
    assert again.recovery["mode"] == "snapshot+replay"
    assert again.recovery["replayed"] == 6
    assert len(again.postings) == 14
    ids = [h.record["id"] for h in search(again, "late 3 papaya3", strategy=ANN)["hits"]]
    assert ids[0] == later[3]["id"]
    assert first[0]["id"] not in {h.record["id"] for h in search(again, "early 0 mango0", k=20, strategy=ANN)["hits"]}


def test_corrupt_snapshot_is_rebuilt(tmp_path):
    core = open_core(tmp_path)
    put(core, [rec(f"doc {i} lemon{i}") for i in range(12)])
    core.snapshot()
    core.storage.close()
    blob = (tmp_path / "hnsw.bin").read_bytes()
    (tmp_path / "hnsw.bin").write_bytes(blob[: len(blob) // 2] + b"\x00" * 100)
    again = open_core(tmp_path)
    assert again.recovery["mode"] == "rebuild"
    assert len(search(again, "doc 3 lemon3", k=12, strategy=ANN)["hits"]) == 12


def test_delete_removes_from_every_index(tmp_path):
    core = open_core(tmp_path)
    records = [rec("the quokka deployment runbook"), rec("unrelated text about lunch")]
    put(core, records)
    assert core.delete([records[0]["id"], "NOPE"]) == [records[0]["id"]]
    assert core.get([records[0]["id"]]) == [None]
    for strategy in (EXACT, ANN):
        for mode in ("hybrid", "lexical", "vector"):
            hits = search(core, "quokka deployment runbook", strategy=strategy, mode=mode)["hits"]
            assert records[0]["id"] not in {h.record["id"] for h in hits}
    assert len(core.lexical) == 1 and len(core.postings) == 1


def test_fewer_than_k_returns_what_exists(tmp_path):
    core = open_core(tmp_path)
    put(core, [rec("alpha"), rec("beta"), rec("gamma")])
    core.delete([core.postings.row(0)["id"]])
    for strategy in (EXACT, ANN, ANN_ADAPTIVE):
        res = search(core, "alpha", k=50, strategy=strategy)
        assert len(res["hits"]) == 2


def test_idempotency_key_stores_once(tmp_path):
    core = open_core(tmp_path)
    a = rec("retry me", idempotency_key="k1")
    b = rec("retry me", idempotency_key="k1")
    first = core.put([a], EMB.embed([a["content"]]))
    second = core.put([b], EMB.embed([b["content"]]))
    assert first == [(a["id"], True)]
    assert second == [(a["id"], False)]
    assert len(core.postings) == 1


def test_filters_are_evaluated_in_the_shard(tmp_path):
    core = open_core(tmp_path)
    put(core, [rec(f"shared text {i}", workspace_id=f"w{i % 2}", tier="session" if i % 3 == 0 else "project")
               for i in range(30)])
    node = flt.parse_filter({"workspaceId": "w1", "tier": {"$ne": "session"}})
    for strategy in (EXACT, ANN, ANN_ADAPTIVE):
        hits = search(core, "shared text", k=30, strategy=strategy, node=node)["hits"]
        assert hits, strategy
        for h in hits:
            assert h.record["workspace_id"] == "w1" and h.record["tier"] != "session"
    exact = search(core, "shared text", k=30, strategy=EXACT, node=node)
    assert exact["candidates"] == len(exact["hits"])


def test_index_grows_past_initial_capacity(tmp_path):
    core = open_core(tmp_path)
    n = 3000
    vecs = np.random.default_rng(0).normal(size=(n, EMB.dim)).astype(np.float32)
    vecs /= np.linalg.norm(vecs, axis=1, keepdims=True)
    records = [rec(f"r{i}") for i in range(n)]
    core.put(records, vecs)
    req = SearchRequest(vector=vecs[2500], query="", k=1, strategy=ANN, mode="vector")
    assert core.search(req)["hits"][0].record["id"] == records[2500]["id"]
    assert core.index.capacity >= n


def test_expired_records_are_invisible(tmp_path):
    core = open_core(tmp_path)
    put(core, [rec("stale fact about caching", expires_at=1.0), rec("fresh fact about caching")])
    hits = search(core, "fact about caching", k=10)["hits"]
    assert [h.record["content"] for h in hits] == ["fresh fact about caching"]


@pytest.mark.parametrize("mode", ["vector", "lexical", "hybrid"])
def test_modes_score_in_unit_interval(tmp_path, mode):
    core = open_core(tmp_path)
    put(core, [rec(f"some words {i}") for i in range(10)])
    for h in search(core, "some words 3", mode=mode)["hits"]:
        assert 0.0 <= h.score <= 1.0


def test_rewriting_a_record_with_an_idempotency_key_updates_it(tmp_path):
    core = open_core(tmp_path)
    a = rec("first wording", idempotency_key="k")
    core.put([a], EMB.embed([a["content"]]))
    b = dict(a, content="second wording")  # same id: a reindex or a merge, not a retry
    assert core.put([b], EMB.embed([b["content"]])) == [(a["id"], True)]
    assert core.get([a["id"]])[0]["content"] == "second wording"


def test_scan_pages_through_every_record_and_backup_copies_them(tmp_path):
    core = open_core(tmp_path)
    records = [rec(f"scan {i}") for i in range(25)]
    put(core, records)
    seen, after = [], None
    while page := core.scan(after, 10):
        seen += [r["id"] for r in page]
        after = page[-1]["id"]
    assert sorted(seen) == sorted(r["id"] for r in records)
    info = core.backup(str(tmp_path / "bk"))
    assert info["records"] == 25 and info["bytes"] > 0
    copy = open_core(tmp_path / "restored")
    copy.storage.close()
    import shutil
    shutil.rmtree(tmp_path / "restored" / "lmdb")
    shutil.copytree(tmp_path / "bk" / "lmdb", tmp_path / "restored" / "lmdb")
    assert len(open_core(tmp_path / "restored").postings) == 25

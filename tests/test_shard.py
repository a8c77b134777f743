"""ShardCore without Ray: durability and recovery of one shard's LMDB + indexes."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys

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


def test_snapshots_run_in_the_background_and_bound_the_replay(tmp_path):
    """Every `snapshot_every` writes the graph is snapshotted on a thread; once it is durable
    the log it covers is trimmed, and a shard that then dies (no close) replays only what came
    after it."""
    core = open_core(tmp_path, snapshot_every=100)
    records = [rec(f"note {i} kiwi{i}") for i in range(330)]
    for i in range(0, 330, 30):
        put(core, records[i:i + 30])
        if core._bg_snapshot is not None:
            core._bg_snapshot.thread.join()  # deterministic: each snapshot lands before the next
    # marks crossed at seq 120 and 240 (a write that crosses one starts it, the next trims)
    assert core.snapshots == 2 and core.index.covered_seq == 240
    assert core.stats()["snapshots"] == 2
    with core.storage.env.begin() as txn:  # the covered log is gone
        assert txn.stat(core.storage.log)["entries"] == 90
    core.index.flush()
    core.storage.env.close()  # as if killed: no close(), no final snapshot
    again = open_core(tmp_path)
    assert again.recovery["mode"] == "snapshot+replay"
    assert again.recovery["replayed"] == 90
    hits = search(again, "note 329 kiwi329", k=1, strategy=ANN)["hits"]
    assert hits[0].record["id"] == records[329]["id"]
    again.close()


def test_a_snapshot_cut_off_before_its_meta_still_loads(tmp_path, monkeypatch):
    """kill -9 between replacing hnsw.bin and writing hnsw.meta.json: the meta written before
    the replace (hnsw.meta.next) matches the new graph, so no full rebuild is needed."""
    from memoray.actors import vector_index

    core = open_core(tmp_path, snapshot_every=10**9)
    put(core, [rec(f"first {i} plum{i}") for i in range(40)])
    core.snapshot()
    put(core, [rec(f"later {i} fig{i}") for i in range(40)])
    real = vector_index._fsync_write

    def killed_at_meta(path, data):
        if path.name == "hnsw.meta.json":
            raise KeyboardInterrupt("killed")  # the process stops here
        real(path, data)

    monkeypatch.setattr(vector_index, "_fsync_write", killed_at_meta)
    with pytest.raises(KeyboardInterrupt):
        core.index.save_snapshot(core.storage.seq)
    monkeypatch.setattr(vector_index, "_fsync_write", real)
    core.storage.env.close()
    assert (tmp_path / "hnsw.meta.next").exists()
    assert json.loads((tmp_path / "hnsw.meta.json").read_text())["seq"] == 40  # stale meta
    again = open_core(tmp_path)
    assert again.recovery["mode"] == "snapshot+replay" and again.recovery["replayed"] == 0
    assert again.index.covered_seq == 80 and len(again.postings) == 80
    again.close()
    assert not (tmp_path / "hnsw.meta.next").exists()


_KILLED_CHILD = r"""
import os, signal, sys
import numpy as np
from memoray.actors.shard import ShardCore
from memoray.embedding import HashEmbedder
emb = HashEmbedder()
core = ShardCore(0, sys.argv[1], emb.dim, map_size=64 << 20, durable=True, snapshot_every=150)
for b in range(12):
    recs = [{"id": f"m{b:02d}-{i:03d}", "content": f"killed shard note {b} {i} word{b * 50 + i}",
             "workspace_id": "ws", "event_type": "note", "timestamp": 1.7e9 + b * 50 + i,
             "tier": "episodic", "visibility": "shared"} for i in range(50)]
    core.put(recs, emb.embed([r["content"] for r in recs]))
    print(f"ack {b}", flush=True)  # acknowledged: the put returned after LMDB's commit
os.kill(os.getpid(), signal.SIGKILL)  # graph inserts and a snapshot may still be in flight
"""


def test_a_shard_killed_with_sigkill_recovers_every_acknowledged_record(tmp_path):
    """A real kill -9 of a process right after its last acknowledged put (background graph
    inserts queued, background snapshots taken every 150 writes, one maybe mid-write): the
    reopened shard holds every acknowledged record, in its postings and in its graph."""
    path = tmp_path / "s"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    p = subprocess.run([sys.executable, "-c", _KILLED_CHILD, str(path)], capture_output=True,
                       text=True, env=env, timeout=300)
    assert p.returncode == -signal.SIGKILL, p.stderr[-2000:]
    acked = [int(line.split()[1]) for line in p.stdout.split("\n") if line.startswith("ack ")]
    assert acked == list(range(12))
    again = open_core(path)
    assert again.recovery["records"] == 600 and len(again.postings) == 600
    assert again.recovery["mode"] == "snapshot+replay"
    live = set(np.flatnonzero(again.index.live).tolist())
    assert len(live) == 600
    for _flushed in (False, True):  # the replayed tail found before and after the worker's done
        for b, i in ((0, 0), (5, 17), (11, 49)):
            q = f"killed shard note {b} {i} word{b * 50 + i}"
            hits = search(again, q, k=1, strategy=ANN, mode="vector")["hits"]
            assert hits[0].record["id"] == f"m{b:02d}-{i:03d}"
        again.index.flush()
    assert live <= set(again.index.graph.get_ids_list())
    again.close()


def test_an_exact_search_reads_each_scanned_vector_once(tmp_path):
    """The exact scan's float32 scores are the hits' vector scores: scoring the pool reads from
    LMDB only the members the scan did not score (here, in vector mode, none)."""
    core = open_core(tmp_path)
    put(core, [rec(f"deploy note number {i} about caching") for i in range(200)])
    core.index.flush()
    asked: list[int] = []
    fetch = core.index.fetch

    def counted(labels):
        asked.append(len(labels))
        return fetch(labels)

    core.index.fetch = counted
    out = search(core, "deploy caching", k=10, mode="vector", node=flt.parse_filter(
        {"workspaceId": "ws"}))
    assert len(out["hits"]) == 10 and len(asked) == 1  # the scan's rescoring, nothing after
    q = EMB.embed(["deploy caching"])[0]
    vecs, _ = fetch(np.array([core.storage.label_of(h.record["id"]) for h in out["hits"]]))
    np.testing.assert_allclose([h.vector_score for h in out["hits"]],
                               np.clip(vecs @ q, 0.0, 1.0), rtol=0, atol=1e-6)

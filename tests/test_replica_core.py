"""ReplicaCore without Ray: the replicated log, log matching, full copy, v1 migration."""

from __future__ import annotations

import numpy as np
import pytest

from memoray.actors.replica_core import FORMAT_VERSION, NeedsResync, ReplicaCore, get_meta, set_meta
from memoray.actors.shard import ShardCore

DIM = 8


def rec(i: int, **kw) -> dict:
    return {"id": f"m{i:04d}", "content": f"memory number {i}", "workspace_id": "w",
            "event_type": "note", "timestamp": 1.0 + i, **kw}


def vecs(n: int, seed: int = 0) -> np.ndarray:
    v = np.random.default_rng(seed).random((n, DIM), dtype=np.float32)
    return v / np.linalg.norm(v, axis=1, keepdims=True)


def replay(dst: ReplicaCore, entries) -> None:
    for s, e, op, payload in entries:
        dst.apply(s, e, op, payload)


def test_log_carries_full_ops_and_a_follower_replays_them(tmp_path):
    a = ReplicaCore(0, tmp_path / "a", DIM, durable=False)
    b = ReplicaCore(0, tmp_path / "b", DIM, durable=False)
    a.apply(1, 1, "put", ([rec(1), rec(2)], vecs(2)))
    a.apply(2, 1, "delete", ["m0001"])
    a.apply(3, 2, "update_record", {**rec(2), "content": "changed"})
    entries = a.entries_after(0, 0)
    assert [(s, e, op) for s, e, op, _ in entries] == [(1, 1, "put"), (2, 1, "delete"),
                                                      (3, 2, "update_record")]
    replay(b, entries)
    assert b.core.get(["m0001", "m0002"]) == [None, {**rec(2), "content": "changed"}]
    assert (b.seq, b.last_epoch) == (3, 2)
    # Vectors travel too: the follower's index finds the record by its vector.
    assert b.core.index.count == 1


def test_log_matching_refuses_a_divergent_or_gapped_follower(tmp_path):
    a = ReplicaCore(0, tmp_path / "a", DIM, durable=False)
    a.apply(1, 1, "put", ([rec(1)], vecs(1)))
    a.apply(2, 2, "put", ([rec(2)], vecs(1, 1)))
    assert a.entries_after(1, 1) is not None
    assert a.entries_after(1, 7) is None      # same seq, other epoch: divergent
    assert a.entries_after(5, 2) is None      # ahead of the primary: a fenced tail
    with pytest.raises(NeedsResync):
        a.apply(9, 2, "delete", ["x"])        # a gap


def test_entries_commit_with_their_effect_and_survive_reopen(tmp_path):
    a = ReplicaCore(0, tmp_path / "a", DIM)
    a.apply(1, 3, "put", ([rec(1)], vecs(1)))
    a.set_epoch(4)
    a.close()
    b = ReplicaCore(0, tmp_path / "a", DIM)
    assert (b.seq, b.last_epoch, b.epoch) == (1, 3, 4)
    assert b.core.get(["m0001"])[0]["content"] == "memory number 1"


def test_full_copy_then_catch_up(tmp_path):
    a = ReplicaCore(0, tmp_path / "a", DIM, durable=False)
    for i in range(1, 30):
        a.apply(i, 1, "put", ([rec(i)], vecs(1, i)))
    b = ReplicaCore(0, tmp_path / "b", DIM, durable=False)
    b.apply(1, 9, "put", ([rec(999)], vecs(1)))  # a stale store with a divergent entry
    assert a.entries_after(b.seq, b.last_epoch) is None
    seq, ep = a.seq, a.last_epoch
    b.begin_copy()
    after = None
    while True:
        records, vectors = a.dump_page(after, 7)
        if not records:
            break
        b.copy_page(records, vectors)
        after = records[-1]["id"]
    b.finish_copy(seq, ep, 2)
    a.apply(30, 2, "delete", ["m0003"])
    replay(b, a.entries_after(b.seq, b.last_epoch))
    assert b.core.get(["m0999"]) == [None]            # the stale record is gone
    assert len(b.core.postings) == len(a.core.postings) == 28


def test_interrupted_copy_is_discarded_on_open(tmp_path):
    b = ReplicaCore(0, tmp_path / "b", DIM)
    b.begin_copy()
    b.copy_page([rec(1)], vecs(1))
    b.close()
    again = ReplicaCore(0, tmp_path / "b", DIM)
    assert again.core.get(["m0001"]) == [None] and again.seq == 0


def test_a_v1_store_opens_and_is_migrated_in_place(tmp_path):
    old = ShardCore(0, tmp_path / "s", DIM)  # the pre-replication format: no rlog, no version
    old.put([rec(1), rec(2)], vecs(2))
    old.close()
    r = ReplicaCore(0, tmp_path / "s", DIM)
    assert r.migrated_from == 1
    assert get_meta(r.core.storage, "format") == FORMAT_VERSION
    assert [x["id"] for x in r.core.get(["m0001", "m0002"])] == ["m0001", "m0002"]
    r.apply(1, 1, "put", ([rec(3)], vecs(1)))
    r.close()
    assert ReplicaCore(0, tmp_path / "s", DIM).seq == 1


def test_a_newer_format_is_refused(tmp_path):
    r = ReplicaCore(0, tmp_path / "s", DIM)
    set_meta(r.core.storage, "format", FORMAT_VERSION + 1)
    r.close()
    from memoray.errors import MemorayError

    with pytest.raises(MemorayError):
        ReplicaCore(0, tmp_path / "s", DIM)


def test_the_primary_refuses_an_update_of_a_missing_record_and_logs_nothing(tmp_path):
    from memoray.errors import MemorayError

    a = ReplicaCore(0, tmp_path / "a", DIM, durable=False)
    with pytest.raises(MemorayError) as e:
        a.apply(1, 1, "update_record", rec(5), strict=True)
    assert e.value.code.value == "NOT_FOUND" and a.seq == 0
    a.apply(1, 1, "update_record", rec(5))   # replayed after a delete: a logged no-op
    assert a.seq == 1 and a.core.get(["m0005"]) == [None]


def test_a_merge_replicates_and_a_merge_of_a_deleted_record_is_still_logged(tmp_path):
    a = ReplicaCore(0, tmp_path / "a", DIM, durable=False)
    b = ReplicaCore(0, tmp_path / "b", DIM, durable=False)
    a.apply(1, 1, "put", ([rec(1)], vecs(1)))
    assert a.apply(2, 1, "merge", ({**rec(1), "content": "merged"}, vecs(1, 7)[0])) is True
    a.apply(3, 1, "delete", ["m0001"])
    assert a.apply(4, 1, "merge", (rec(1), vecs(1)[0])) is False   # gone: nothing written
    assert a.seq == 4 and a.epoch_at(4) == 1                       # ...but the entry is there
    replay(b, a.entries_after(0, 0))
    assert b.seq == 4 and b.core.get(["m0001"]) == [None]

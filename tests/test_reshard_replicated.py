"""The reshard's steps through the replicated log, without Ray: each shard is a primary and a
backup ReplicaCore; every write (the placement pushes, the moved copies, the source drops) is
logged on the primary and replayed on the backup, as ShardReplica does. After the reshard the
backups alone (a failover of every shard) hold the placement and every record, once, on its
owner."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import numpy as np

import memoray.actors.shard_client as shard_client
from memoray.actors.replica_core import WRITE_OPS, ReplicaCore
from memoray.actors.resharding import reshard
from memoray.actors.shard_client import ShardClient
from memoray.layout import open_layout, read_layout
from memoray.routing import home_keys

DIM = 8


class Pair:
    """One replicated shard: ordered writes on the primary, replayed on the backup."""

    def __init__(self, i: int, root: Path):
        self.primary = ReplicaCore(i, root / f"p{i}", DIM, durable=False, map_size=64 << 20)
        self.backup = ReplicaCore(i, root / f"b{i}", DIM, durable=False, map_size=64 << 20)

    def write(self, op: str, payload: Any) -> Any:
        seq = self.primary.seq + 1
        out = self.primary.apply(seq, 1, op, payload, strict=True)
        for s, e, o, p in self.primary.entries_after(self.backup.seq, self.backup.last_epoch):
            self.backup.apply(s, e, o, p)
        return out


class PairClient(ShardClient):
    """Routes by method name like ReplicatedShard: writes through the log, reads to the
    primary's core."""

    def __init__(self, pair: Pair):
        self.pair, self.target, self.remote = pair, pair.primary.core, False

    async def _call(self, fn, *args: Any, **kwargs: Any) -> Any:
        name = fn.__name__
        if name in WRITE_OPS:
            payload = args if name in ("put", "merge", "import_moved") else args[0]
            return self.pair.write(name, payload)
        return fn(self.pair.primary.core, *args, **kwargs)


def records(n: int) -> tuple[list[dict], np.ndarray]:
    recs = [{"id": f"m{i:05d}", "content": f"fact {i}", "workspace_id": "w",
             "event_type": "note", "timestamp": 1.0 + i} for i in range(n)]
    v = np.random.default_rng(0).random((n, DIM), dtype=np.float32)
    return recs, v / np.linalg.norm(v, axis=1, keepdims=True)


def test_grow_2_to_3_through_the_log_leaves_every_backup_complete(tmp_path, monkeypatch):
    monkeypatch.setattr(shard_client, "REFRESH_S", 0.0)
    data = tmp_path / "store"
    layout = open_layout(data, shards=2, dim=DIM, embedder="hash")
    pairs = [Pair(i, tmp_path) for i in range(2)]
    recs, vecs = records(300)
    owner = layout.routing.current.owner
    for s, pair in enumerate(pairs):
        idx = [i for i, h in enumerate(home_keys(recs)) if owner(h) == s]
        pair.write("put", ([recs[i] for i in idx], vecs[idx]))

    def add(width: int) -> list[ShardClient]:
        pairs.extend(Pair(i, tmp_path) for i in range(len(pairs), width))
        return [PairClient(p) for p in pairs[2:width]]

    report = asyncio.run(reshard([PairClient(p) for p in pairs], data, 3, say=lambda _l: None,
                                 batch=32, add_shards=add, grace_s=0.0))
    assert report["changed"] and report["left"] == 0 and 0 < report["moved"] < 300
    final = read_layout(data).routing
    assert final.current.shards == 3 and not final.moving
    seen: dict[str, int] = {}
    for s, pair in enumerate(pairs):
        backup = pair.backup.core
        # the backup adopted every placement push: promoted, it fences with the new routing
        assert backup.placement() == final.to_dict()
        assert (pair.backup.seq, pair.backup.last_epoch) == (pair.primary.seq, 1)
        got = backup.scan(None, 10_000)
        for rec, home in zip(got, home_keys(got)):
            assert final.current.owner(home) == s
            assert rec["id"] not in seen
            seen[rec["id"]] = s
        # the moved copies carry their vectors into the backup's index
        assert backup.index.count == len(got)
    assert sorted(seen) == [r["id"] for r in recs]


def test_a_full_copy_takes_the_moved_marks(tmp_path, monkeypatch):
    """A replica rebuilt by a full copy mid-reshard, then promoted, must answer a rerun's drop
    of an already-dropped record as moved (not as deleted, which would delete the copy)."""
    monkeypatch.setattr(shard_client, "REFRESH_S", 0.0)
    pair = Pair(0, tmp_path)
    recs, vecs = records(4)
    pair.write("put", (recs, vecs))
    fps = pair.primary.core.export_ids(["m00001"])["fingerprints"]
    assert pair.write("drop_moved", fps)["dropped"] == ["m00001"]
    fresh = ReplicaCore(0, tmp_path / "copy", DIM, durable=False, map_size=64 << 20)
    fresh.begin_copy()
    got, mat = pair.primary.dump_page(None, 100)
    fresh.copy_page(got, mat)
    fresh.copy_moved(pair.primary.moved_marks())
    fresh.finish_copy(pair.primary.seq, pair.primary.last_epoch, 1)
    again = fresh.core.drop_moved(fps)
    assert again == {"dropped": ["m00001"], "changed": [], "gone": []}

"""A store written by the code before issue 14's changes still opens and answers: one shard as
main (2363d95) wrote it (tests/data/store-v0, made by its make_store.py): 300 records, an index
snapshot covering the first 200, the rest and 10 deletes only in the LMDB log (as after kill -9).
The changes here are in memory only (postings, lexical index, graph inserts); the LMDB databases
and the snapshot format are unchanged, so no version moved."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np

from memoray import filters as flt
from memoray.actors.shard import ShardCore
from memoray.actors.shard_search import SearchRequest

FIXTURE = Path(__file__).parent / "data" / "store-v0"


def test_a_store_written_before_opens_and_answers(tmp_path):
    shutil.copytree(FIXTURE / "shard-0", tmp_path / "shard-0")
    vecs = np.load(FIXTURE / "vectors.npy")
    core = ShardCore(0, tmp_path / "shard-0", 16, map_size=16 << 20)
    try:
        assert core.recovery["mode"] == "snapshot+replay"
        assert core.recovery["records"] == 290 and core.recovery["replayed"] >= 110
        gone = set(range(250, 260))
        for i in (0, 150, 210, 299):
            labels, _ = core.index.ann(vecs[i], 1)
            assert core.postings.row(int(labels[0]))["id"] == f"mem-{i:04d}"
        for i in gone:
            assert core.get([f"mem-{i:04d}"]) == [None]
            assert f"mem-{i:04d}" not in {core.postings.row(int(lb))["id"]
                                          for lb in core.index.ann(vecs[i], 5)[0]}
        # filters (postings) and words (lexical) over the recovered records
        ws1 = core.labels_matching(flt.parse_filter({"workspaceId": "ws1"}))
        assert len(ws1) == sum(1 for i in range(300) if i % 3 == 1 and i not in gone)
        req = SearchRequest(vector=vecs[42], query="record 42 charlie", k=3,
                            filter=flt.parse_filter({"workspaceId": "ws0"}), strategy="exact")
        hits = core.search(req)["hits"]
        assert hits[0].record["id"] == "mem-0042" and hits[0].record["metadata"] == {"n": 42}
        # an idempotent retry is recognised, a new write lands
        retry = {**core.get(["mem-0007"])[0], "id": "mem-retry"}  # same key, a fresh id
        assert core.put([retry], vecs[7:8]) == [("mem-0007", False)]
        new = {**retry, "id": "mem-new", "idempotency_key": "k-new"}
        assert core.put([new], vecs[8:9]) == [("mem-new", True)]
    finally:
        core.close()

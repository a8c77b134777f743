"""The ANN strategies' post-filter: a filter on indexed fields is answered by one vectorised
membership test over the postings' label arrays, and must keep exactly the candidates (in their
ranked order) that the per-row check keeps, deleted and unknown labels included."""

from __future__ import annotations

import random

import numpy as np

from memoray import filters as flt
from memoray.actors.shard import ShardCore
from memoray.embedding import HashEmbedder
from memoray.ids import new_id

EMB = HashEmbedder()


def _rec(i: int) -> dict:
    return {"id": new_id(), "content": f"note {i} about topic{i % 7}", "event_type":
            ["decision", "error", "note"][i % 3], "metadata": {"kind": "x" if i % 2 else "y"},
            "workspace_id": f"w{i % 3}", "session_id": f"s{i % 5}" if i % 4 else None,
            "agent_id": None, "git_branch": ["main", "dev", None][i % 3], "git_commit": None,
            "tier": "project", "visibility": "shared", "timestamp": 1.0e9 + i,
            "expires_at": None, "parent_id": None}


def _slow(core: ShardCore, node, labels: np.ndarray) -> list[int]:
    return [lb for lb in labels.tolist()
            if lb in core.postings and flt.matches(node, core.postings.row(lb))]


def test_vectorised_post_filter_keeps_what_the_row_check_keeps(tmp_path):
    core = ShardCore(0, str(tmp_path / "s"), EMB.dim, durable=False)
    recs = [_rec(i) for i in range(300)]
    core.put(recs, EMB.embed([r["content"] for r in recs]))
    core.delete([r["id"] for r in recs[::11]])
    rng = random.Random(7)
    filters = [
        {"workspaceId": "w1"},
        {"workspaceId": {"$in": ["w0", "w2"]}, "eventType": "error"},
        {"$or": [{"gitBranch": "dev"}, {"sessionId": {"$exists": False}}]},
        {"$not": {"workspaceId": "w1"}},
        {"timestamp": {"$gte": 1.0e9 + 100, "$lt": 1.0e9 + 200}},
        {"workspaceId": "nobody"},
        {"$and": [{"workspaceId": "w1"}, {"metadata.kind": "x"}]},  # not indexable: row path
    ]
    for spec in filters:
        node = flt.parse_filter(spec)
        for _ in range(20):
            labels = np.asarray(rng.sample(range(-5, 340), 60), dtype=np.int64)
            got = core.reader._post_filter(node, labels).tolist()
            assert got == _slow(core, node, labels), spec

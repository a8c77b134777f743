"""The coding-memories set (benchmarks/coding_memories.py) with every retrieval feature on:
no query's results may break its filters (workspace, branch, event type, time), whatever
neighbour expansion, session aggregation and query expansion (PRF) pull in. Hash embedder: deterministic and fast;
the recall figures with MiniLM come from `make bench-coding`."""

from __future__ import annotations

import asyncio

from benchmarks.coding_memories import build_set, evaluate
from benchmarks.common import build_service
from memoray.embedding import HashEmbedder
from tests.service_harness import caller


def test_labelled_set_has_the_promised_shape():
    memories, queries = build_set()
    assert len(memories) >= 300 and len(queries) == 150
    assert len({m["workspace_id"] for m in memories}) >= 5
    assert len({(m["workspace_id"], m["git_branch"]) for m in memories}) >= 9
    keys = {m["key"] for m in memories if m["key"]}
    assert all(q["key"] in keys for q in queries)
    assert all("workspaceId" in q["filters"] for q in queries)
    assert sum(len(q["filters"]) > 1 for q in queries) >= 60


def test_no_filter_violations_with_every_feature_on(tmp_path):
    from memoray.models import CaptureItem

    memories, queries = build_set()
    service, cores, _batcher, planner = build_service(tmp_path, HashEmbedder(), 2)
    key_of = {}

    async def go():
        for m in memories:
            res = await service.capture([CaptureItem(
                content=m["content"], event_type=m["event_type"],
                workspace_id=m["workspace_id"], git_branch=m["git_branch"],
                session_id=m["session_id"], timestamp=m["timestamp"])], caller())
            if m["key"]:
                key_of[res[0]["ids"][0]] = m["key"]
        for name, value in {"retrieval_fusion": "rrf", "neighbor_weight": 1.0,
                            "neighbor_turns": 2, "session_weight": 0.5,
                            "temporal_weight": 0.5, "prf_docs": 3, "vector_prf": 0.3}.items():
            setattr(service.settings, name, value)
        return await evaluate(service, caller(), queries, key_of)

    out = asyncio.run(go())
    for core in cores:
        core.storage.close()
    assert out["queries"] == 150
    assert out["filter_violations"] == 0
    assert out["recall@5"] > 0.5  # the hash embedder is a bag of words: far from MiniLM

"""Stage timing and the pipelined capture (issue 14): every capture and retrieve records its
stages in memoray_stage_seconds, shards report their own, and a batch cut into pipeline groups
stores every item, in order, with documents whole."""

from __future__ import annotations

import asyncio

from prometheus_client.parser import text_string_to_metric_families

from memoray.serve import capture as capture_mod
from tests.service_harness import caller, item, make_service


def _stage_counts(svc) -> dict[tuple[str, str], float]:
    out = {}
    for fam in text_string_to_metric_families(svc.metrics.render().decode()):
        if fam.name == "memoray_stage_seconds":
            for s in fam.samples:
                if s.name.endswith("_count"):
                    out[(s.labels["path"], s.labels["stage"])] = s.value
    return out


def test_capture_and_retrieve_record_their_stages(tmp_path):
    svc = make_service(tmp_path)
    asyncio.run(svc.capture([item(f"stage timing note {i}") for i in range(5)], caller()))
    asyncio.run(svc.retrieve(caller(), "stage timing", limit=3))
    counts = _stage_counts(svc)
    for stage in ("validation", "auth", "prepare", "embed", "commit", "audit",
                  "serialization"):
        assert counts.get(("capture", stage), 0) >= 1, stage
    for stage in ("validation", "auth", "plan", "embed_query", "fanout", "shard_search",
                  "shard_vector", "shard_lexical", "shard_score", "shard_fetch", "merge",
                  "serialization"):
        assert counts.get(("retrieve", stage), 0) >= 1, stage
    assert counts[("retrieve", "shard_search")] == 2  # one per shard
    # the fanout's wait split per shard: sending, and the reply after the shard's method ended
    assert counts[("retrieve", "fanout_send")] == 2
    assert counts[("retrieve", "fanout_reply")] == 2
    # five records land on either shard by id hash (all five on one, 1 run in 16): the shard
    # that got some
    st = next(c.stats()["stages"] for c in svc.cores if len(c.postings))
    assert {"commit", "index_postings_lexical", "index_vector"} <= set(st)
    assert st["commit"]["calls"] >= 1 and st["commit"]["seconds"] > 0


def test_a_pipelined_batch_stores_every_item_in_order(tmp_path, monkeypatch):
    monkeypatch.setattr(capture_mod, "PIPELINE_RECORDS", 4)
    svc = make_service(tmp_path)
    doc = "x" * 9000 + " the document's tail"  # chunked: its chunks stay in one group
    items = [item(f"pipelined memory {i}") for i in range(9)] + [item(doc)] + [
        item(f"pipelined memory {i}") for i in range(9, 14)]
    res = asyncio.run(svc.capture(items, caller()))
    assert len(res) == 15 and all("error" not in r for r in res)
    assert res[9]["chunks"] >= 2 and res[9]["parentId"]
    chunks = [r for c in svc.cores for r in c.document(res[9]["parentId"])]
    assert len(chunks) == res[9]["chunks"]
    assert len({c.shard_id for c in svc.cores if c.document(res[9]["parentId"])}) == 1
    assert "".join(r["content"] for r in chunks).endswith("the document's tail")
    for i, r in enumerate(res):
        if i == 9:
            continue
        n = i if i < 9 else i - 1
        rec = svc.cores[0].get(r["ids"]) + svc.cores[1].get(r["ids"])
        assert any(x is not None and x["content"] == f"pipelined memory {n}" for x in rec)
    # the whole batch again with keys: nothing is stored twice
    keyed = [item(f"keyed {i}", idempotency_key=f"k{i}") for i in range(10)]
    first = asyncio.run(svc.capture(keyed, caller()))
    again = asyncio.run(svc.capture(keyed, caller()))
    assert [r["ids"] for r in first] == [r["ids"] for r in again]
    assert all(r["deduplicated"] for r in again)


def test_groups_never_split_an_item():
    class P:
        def __init__(self, n):
            self.records = [None] * n

    groups = capture_mod._groups([P(1), P(1), P(5), P(1), P(2), P(1)], 2)
    assert groups == [[0, 1], [2, 3, 4, 5, 6], [7, 8, 9], [10]]


def test_a_shard_search_reports_its_wall_clock_window(tmp_path):
    """The window the replica splits its fanout wait with: the actor method's own start and end,
    inside the caller's, the same for every search of one search_many call."""
    import time

    from memoray.actors.shard_search import SearchRequest
    from memoray.embedding import HashEmbedder

    svc = make_service(tmp_path)
    asyncio.run(svc.capture([item(f"window note {i}") for i in range(6)], caller()))
    core = svc.cores[0]
    q = HashEmbedder().embed(["window note"])[0]
    before = time.time()
    res = core.search_many([SearchRequest(vector=q, query="window note", k=3),
                            SearchRequest(vector=q, query="note", k=2)])
    after = time.time()
    began, ended = res[0]["wall"]
    assert before <= began <= ended <= after
    assert res[1]["wall"] == (began, ended)
    assert core.search(SearchRequest(vector=None, query="window", k=2, mode="lexical"))["wall"]

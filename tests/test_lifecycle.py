"""Dedup and merge, documents in chunks, TTL expiry and retention, sharing, index rebuilds."""

from __future__ import annotations

import asyncio
import time

import numpy as np
import pytest

from memoray.actors.expiry import read_archive
from memoray.actors.shard import ShardCore
from memoray.actors.shard_search import SearchRequest
from memoray.embedding import HashEmbedder
from memoray.errors import MemorayError
from memoray.ids import new_id
from memoray.settings import RetentionPolicy
from tests.service_harness import caller, item, make_service


def run(coro):
    return asyncio.run(coro)


@pytest.fixture(scope="module")
def minilm():
    from memoray.embedding import MiniLMEmbedder

    return MiniLMEmbedder(device="cpu")


def test_same_fact_in_three_wordings_merges_into_one(tmp_path, minilm):
    svc = make_service(tmp_path, embedder=minilm)
    wordings = [
        "We use PostgreSQL 16 as our primary database.",
        "Our primary database is PostgreSQL 16.",
        "PostgreSQL 16 is the primary database we use.",
    ]
    report = run(svc.upsert([item(w) for w in wordings], caller()))
    assert report["created"] == 1 and report["merged"] == 2, report
    ids = {r["id"] for r in report["items"]}
    assert len(ids) == 1
    got = run(svc.get(caller(), ids.pop()))
    stored = [r for c in svc.cores for r in c.select(__import__("memoray.filters").filters.All())]
    assert len(stored) == 1
    assert stored[0]["merge_count"] == 3 and len(stored[0]["merged_ids"]) == 2
    assert got.content == wordings[-1]  # the newer wording wins
    # an unrelated fact is not merged, and an exact duplicate is left unchanged
    again = run(svc.upsert([item("The CI pipeline runs on GitHub Actions."),
                            item(wordings[-1])], caller()))
    assert [r["action"] for r in again["items"]] == ["created", "unchanged"]


def test_upsert_respects_scope(tmp_path):
    svc = make_service(tmp_path)
    run(svc.upsert([item("cache ttl is 5 minutes", workspace_id="a")], caller()))
    rep = run(svc.upsert([item("cache ttl is 5 minutes", workspace_id="b")], caller()))
    assert rep["created"] == 1  # another workspace is another scope
    rep = run(svc.upsert([item("cache ttl is 5 minutes", workspace_id="a", git_branch="feat")],
                         caller()))
    assert rep["created"] == 1  # another branch too


def test_document_of_several_hundred_kb_reassembles_byte_for_byte(tmp_path):
    svc = make_service(tmp_path, shards=3)
    parts = []
    for i in range(1000):
        parts.append(f"## Section {i}\r\n\nSome prose about component {i} – ünïcode ✓.\n")
        parts.append("```python\n" + "\n".join(f"def f{i}_{j}(x):\n    return x * {j}"
                                              for j in range(8)) + "\n```\n\n")
    doc = "".join(parts)
    assert len(doc.encode()) > 300_000
    res = run(svc.capture([item(doc, event_type="document")], caller()))[0]
    assert res["chunks"] > 50 and res["parentId"]
    for some_id in (res["parentId"], res["ids"][0], res["ids"][len(res["ids"]) // 2]):
        out = run(svc.get_document(caller(), some_id))
        assert out["complete"] and out["content"] == doc
    hits = run(svc.retrieve(caller(), "component 217", limit=3))
    assert hits[0].parent_id == res["parentId"] and hits[0].chunk_index is not None
    # deleting one chunk deletes the document
    run(svc.delete(caller(), res["ids"][3]))
    with pytest.raises(MemorayError):
        run(svc.get_document(caller(), res["parentId"]))


def test_expired_memory_is_gone_everywhere_and_dry_run_removes_nothing(tmp_path):
    svc = make_service(tmp_path, shards=1)
    short = run(svc.capture([item("the kumquat flag is enabled", ttl_seconds=1)], caller()))[0]
    keep = run(svc.capture([item("the kumquat flag is documented", ttl_seconds=3600)], caller()))[0]
    later = time.time() + 5
    dry = run(svc.expiry.run(dry_run=True, now=later))
    assert dry["expired"] == 1 and dry["dryRun"]
    core = svc.cores[0]
    assert core.storage.get(short["ids"][0]) is not None
    rep = run(svc.expiry.run(now=later))
    assert rep["expired"] == 1 and rep["byEventType"] == {"note": 1} and rep["errors"] == []
    mid = short["ids"][0]
    assert core.storage.get(mid) is None  # LMDB
    assert core.storage.label_of(mid) is None
    assert len(core.lexical) == 1 and len(core.postings) == 1  # lexical and postings
    assert core.index.count == 1  # vector index
    hits = run(svc.retrieve(caller(), "kumquat flag", limit=10))
    assert [h.id for h in hits] == [keep["ids"][0]]
    assert run(svc.expiry.status())["totals"]["expired"] == 1


def test_retention_policy_archives_and_the_archive_reads_back(tmp_path):
    policy = RetentionPolicy(after_days=30, action="archive", event_types=["tool_event"])
    svc = make_service(tmp_path, policies=[policy])
    old = "2020-01-01T00:00:00Z"
    run(svc.capture([item("npm test passed in 3s", event_type="tool_event", timestamp=old,
                          ttl_seconds=10**9),
                     item("we decided on pnpm", event_type="decision", timestamp=old)], caller()))
    rep = run(svc.expiry.run())
    assert rep["policies"][0]["applied"] == 1
    files = list((tmp_path / "archive").glob("*.jsonl"))
    archived = read_archive(files[0])
    assert [a["content"] for a in archived] == ["npm test passed in 3s"]
    assert archived[0]["timestamp"].startswith("2020-01-01")
    left = run(svc.retrieve(caller(), "npm pnpm", limit=10))
    assert [h.content for h in left] == ["we decided on pnpm"]


def test_retention_anonymize_keeps_the_lesson(tmp_path):
    policy = RetentionPolicy(after_days=1, action="anonymize")
    svc = make_service(tmp_path, policies=[policy])
    res = run(svc.capture([item("Ask bob.smith@example.com before changing the billing schema",
                                timestamp="2020-01-01T00:00:00Z", session_id="s1",
                                agent_id="a1")], caller("a1")))[0]
    svc.redactor = None  # what was stored keeps the email (pii redaction off at capture)
    run(svc.expiry.run())
    got = run(svc.get(caller("a1"), res["ids"][0]))
    assert "bob.smith@example.com" not in got.content and "billing schema" in got.content
    assert got.metadata["anonymized"] is True and got.session_id is None


def test_private_memory_is_invisible_to_other_agents_until_shared(tmp_path):
    svc = make_service(tmp_path)
    mid = run(svc.capture([item("agent A's scratch idea about sharding", agent_id="A",
                                visibility="private")], caller("A")))[0]["ids"][0]
    assert [h.id for h in run(svc.retrieve(caller("A"), "sharding idea"))] == [mid]
    assert run(svc.retrieve(caller("B"), "sharding idea")) == []
    with pytest.raises(MemorayError) as err:
        run(svc.get(caller("B"), mid))
    assert err.value.code.value == "NOT_FOUND"
    with pytest.raises(MemorayError) as err:
        run(svc.share(caller("B"), mid, "shared"))
    run(svc.share(caller("A"), mid, "shared"))
    assert [h.id for h in run(svc.retrieve(caller("B"), "sharding idea"))] == [mid]


def test_tier_outranks_old_tool_event(tmp_path):
    svc = make_service(tmp_path, shards=1)
    run(svc.capture([item("use tabs for indentation in the makefile", event_type="tool_event"),
                     item("use tabs for indentation in the makefile!", event_type="preference")],
                    caller()))
    hits = run(svc.retrieve(caller(), "use tabs for indentation in the makefile", limit=2))
    assert hits[0].tier == "preference"


def test_rebuild_under_concurrent_writes_loses_nothing(tmp_path):
    emb = HashEmbedder()
    core = ShardCore(0, tmp_path, emb.dim, map_size=256 << 20, durable=False)
    rng = np.random.default_rng(1)

    def recs(n, tag):
        vecs = rng.normal(size=(n, emb.dim)).astype(np.float32)
        vecs /= np.linalg.norm(vecs, axis=1, keepdims=True)
        return [{"id": new_id(), "content": f"{tag} {i}", "event_type": "note", "metadata": {},
                 "workspace_id": "w", "tier": "project", "timestamp": 1.0} for i in range(n)], vecs

    base, bvecs = recs(3000, "base")
    core.put(base, bvecs)
    core.delete([r["id"] for r in base[:1000]])  # a third deleted: past the threshold
    assert core._rebuild is not None, "the rebuild starts by itself"
    written = []
    while core._rebuild is not None and not core._rebuild.done:
        more, mvecs = recs(20, "during")
        core.put(more, mvecs)
        written.append((more, mvecs))
        core.delete([base[1000 + len(written)]["id"]])
    assert written, "writes went on while the graph was rebuilt"
    core.finish_rebuild()
    assert core.rebuilds == 1
    live = set(np.flatnonzero(core.index.live).tolist())
    assert len(live) == 2000 - len(written) + 20 * len(written)
    for more, mvecs in written:
        for r, v in zip(more, mvecs):
            req = SearchRequest(vector=v, query="", k=1, strategy="ann", mode="vector")
            assert core.search(req)["hits"][0].record["id"] == r["id"]
    graph = core.index.graph
    assert len(live - set(graph.get_ids_list())) == 0

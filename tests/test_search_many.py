"""build-context's searches go to each shard in one call (`ShardCore.search_many`), answered
as the same searches sent one by one would be."""

from __future__ import annotations

import asyncio

from memoray import filters as flt
from memoray.actors.shard_client import ShardClient
from memoray.actors.shard_search import EXACT, SearchRequest, pack, unpack
from memoray.postings import Postings
from tests.service_harness import caller, item, make_service
from tests.test_shard import EMB, open_core, put, rec


def test_search_many_answers_each_request_as_search_does(tmp_path):
    core = open_core(tmp_path)
    put(core, [rec(f"deploy note {i} about caching", event_type="decision" if i % 3 else "note",
                   git_branch="main" if i % 2 else "feat") for i in range(120)])
    core.index.flush()
    reqs = [SearchRequest(vector=EMB.embed([q])[0], query=q, k=k, filter=f, strategy=EXACT,
                          now=2.0e9)
            for q, k, f in (("deploy caching", 40, flt.All()),
                            ("changes on feat", 20, flt.parse_filter({"gitBranch": "feat"})),
                            ("deploy caching", 10, flt.parse_filter({"eventType": "decision"})))]
    many = core.search_many(reqs)
    one_by_one = [core.search(r) for r in reqs]
    assert len(many) == 3
    for a, b in zip(many, one_by_one):
        assert [(h.record["id"], h.score) for h in a["hits"]] == [
            (h.record["id"], h.score) for h in b["hits"]]
        assert a["hits"] and a["candidates"] == b["candidates"]


def test_search_many_decodes_each_row_and_record_once(tmp_path, monkeypatch):
    """The searches of one call share what they decode (shard_search.Memo), with neighbours
    on (build-context's settings), and still answer as one by one."""
    core = open_core(tmp_path)
    put(core, [rec(f"deploy note {i} about caching", session_id=f"s{i % 7}",
                   timestamp=1.0e9 + i, event_type="decision" if i % 3 else "note",
                   git_branch="main" if i % 2 else "feat") for i in range(150)])
    core.index.flush()
    reqs = [SearchRequest(vector=EMB.embed([q])[0], query=q, k=k, filter=f, strategy=EXACT,
                          now=2.0e9, neighbor_weight=0.3)
            for q, k, f in (("deploy caching", 40, flt.All()),
                            ("changes on feat", 20, flt.parse_filter({"gitBranch": "feat"})),
                            ("deploy caching", 30, flt.parse_filter({"eventType": "decision"})))]
    rows, fetched = [], []
    real_row, real_fetch = Postings.row, core.reader.fetch
    monkeypatch.setattr(Postings, "row", lambda self, lb: rows.append(lb) or real_row(self, lb))
    monkeypatch.setattr(core.reader, "fetch", lambda lbs: fetched.extend(lbs) or real_fetch(lbs))
    many = core.search_many(reqs)
    assert rows and len(rows) == len(set(rows)) and len(fetched) == len(set(fetched))
    shared = len(rows), len(fetched)
    rows.clear()
    fetched.clear()
    one_by_one = [core.search(r) for r in reqs]
    assert len(rows) > shared[0] and len(fetched) > shared[1]  # the pools overlap
    for a, b in zip(many, one_by_one):
        assert [(h.record["id"], h.score, h.vector_score) for h in a["hits"]] == [
            (h.record["id"], h.score, h.vector_score) for h in b["hits"]]
        assert a["hits"] and a["pool"] == b["pool"]


def test_build_context_calls_each_shard_once(tmp_path, monkeypatch):
    svc = make_service(tmp_path, shards=2)
    items = [item(f"we decided to cache the deploy step, note {i}", event_type="decision",
                  git_branch="feat") for i in range(12)]
    items += [item(f"changed the deploy script, step {i}", event_type="code_change",
                   git_branch="feat") for i in range(12)]
    asyncio.run(svc.capture(items, caller()))
    calls = {"search": 0, "search_many": 0}
    sent: list = []
    for client in svc.backend.shards.clients:
        for name in calls:
            def counted(*args, _name=name, _real=getattr(client, name)):
                calls[_name] += 1
                sent.append(args[0])
                return _real(*args)
            monkeypatch.setattr(client, name, counted)
    out = asyncio.run(svc.build_context(caller(), query=None, limit=40, filters=None,
                                        budget=1500, workspace_id="ws", branch="feat",
                                        session_id=None, style="index"))
    assert calls == {"search": 0, "search_many": 2}  # three searches, one call per shard
    assert out["included"] > 0 and "cache the deploy step" in out["context"]
    sections = out["sections"]  # the decisions and the branch's changes both made it in
    assert sections["Decisions and conventions"] and sections["Recent changes on this branch"]
    calls.update(search=0, search_many=0)
    sent.clear()
    hits = asyncio.run(svc.retrieve(caller(), "deploy step", 5))
    assert calls == {"search": 0, "search_many": 2}  # a retrieve: one call per shard...
    assert isinstance(sent[0], bytes) and sent[0] is sent[1]  # ...its request packed once
    assert len(unpack(sent[0])) == 1 and hits


def test_a_shard_client_packs_and_unpacks_what_the_core_answers(tmp_path):
    """ShardClient's one wire form (shard_search.pack): the same answers as the core's own
    search_many, from a request list or a blob packed once for several shards."""
    core = open_core(tmp_path)
    put(core, [rec(f"deploy note {i} about caching") for i in range(40)])
    core.index.flush()
    reqs = [SearchRequest(vector=EMB.embed([q])[0], query=q, k=5, strategy=EXACT, now=2.0e9)
            for q in ("deploy caching", "note 7")]
    client = ShardClient(core)
    direct = core.search_many(reqs)
    for arg in (reqs, pack(reqs)):
        got = asyncio.run(client.search_many(arg))
        assert [[(h.record["id"], h.score) for h in r["hits"]] for r in got] == [
            [(h.record["id"], h.score) for h in r["hits"]] for r in direct]
    one = asyncio.run(client.search(reqs[1]))
    assert [h.record["id"] for h in one["hits"]] == [h.record["id"] for h in direct[1]["hits"]]

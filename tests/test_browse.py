"""Browse (newest first, cursor paging with timestamp ties), timeline counts, export and import
over an in-process service on real shards: ids, timestamps and every field survive, a re-import
changes nothing, bad records change nothing, scopes hold."""

from __future__ import annotations

import asyncio

import pytest

from memoray.auth import Principal
from memoray.errors import MemorayError
from memoray.serve import browse
from tests.service_harness import caller, item, make_service


def run(coro):
    return asyncio.run(coro)


async def _export(svc, who=None, ws=None):
    return [r async for r in browse.export_records(svc, who or caller(), ws)]


def _seed(svc):
    run(svc.capture([item(f"batch item {i}", workspace_id="a", git_branch="main")
                     for i in range(25)], caller()))  # one batch: one shared timestamp
    run(svc.capture([item("old decision", event_type="decision", workspace_id="a",
                          timestamp="2026-01-02T03:04:05Z")], caller()))
    run(svc.capture([item("other workspace", workspace_id="b", git_branch="dev",
                          timestamp="2026-02-01T00:00:00Z")], caller()))
    run(svc.capture([item("secret plan", workspace_id="a", agent_id="ag", visibility="private",
                          metadata={"k": [1, {"x": None}]}, ttl_seconds=3600,
                          idempotency_key="key-1")], caller(agent="ag")))
    run(svc.capture([item("word " * 3000, event_type="document", workspace_id="a")], caller()))
    run(svc.upsert([item("We deploy on Fridays never.", workspace_id="a"),
                    item("We deploy on Fridays never!", workspace_id="a")], caller(),
                   threshold=0.5))


def test_recent_pages_newest_first_without_gaps_or_repeats(tmp_path):
    svc = make_service(tmp_path)
    _seed(svc)
    seen, cursor = [], None
    while True:
        page = run(browse.recent(svc, caller(), {"workspaceId": "a"}, 7, cursor))
        seen += page["memories"]
        cursor = page["nextCursor"]
        if cursor is None:
            break
    ids = [m["id"] for m in seen]
    assert len(ids) == len(set(ids))
    everything = [r for r in run(_export(svc)) if r["workspace_id"] == "a"
                  and r.get("visibility") != "private"]
    assert set(ids) == {r["id"] for r in everything}
    keys = [(m["timestamp"], m["id"]) for m in seen]
    assert keys == sorted(keys, reverse=True)
    assert seen[-1]["content"] == "old decision"
    one = run(browse.recent(svc, caller(), {"gitBranch": "dev"}, 50))
    assert [m["content"] for m in one["memories"]] == ["other workspace"]
    with pytest.raises(MemorayError):
        run(browse.recent(svc, caller(), None, 50, "not-a-cursor"))
    with pytest.raises(MemorayError):
        run(browse.recent(svc, caller(), None, 0))


def test_timeline_counts_days_and_types(tmp_path):
    svc = make_service(tmp_path)
    _seed(svc)
    t = run(browse.timeline(svc, caller(), None))
    days = {d["day"]: d for d in t["days"]}
    assert days["2026-01-02"]["eventTypes"] == {"decision": 1}
    assert days["2026-02-01"]["total"] == 1
    assert t["eventTypes"]["note"] >= 25 and t["total"] == sum(d["total"] for d in t["days"])
    only_b = run(browse.timeline(svc, caller(), {"workspaceId": "b"}))
    assert only_b["total"] == 1


def test_export_import_round_trip_is_identical_and_idempotent(tmp_path):
    src = make_service(tmp_path / "src")
    _seed(src)
    exported = run(_export(src))
    assert any(r.get("visibility") == "private" for r in exported)  # an export is a backup
    assert any(r.get("merge_count", 1) > 1 for r in exported)
    assert any(r.get("parent_id") for r in exported)
    dst = make_service(tmp_path / "dst")
    res = run(browse.import_records(dst, caller(), exported))
    assert res == {"received": len(exported), "created": len(exported), "updated": 0,
                   "unchanged": 0, "skipped": 0}
    again = run(_export(dst))
    assert {r["id"]: r for r in again} == {r["id"]: r for r in exported}
    res = run(browse.import_records(dst, caller(), exported))
    assert res["unchanged"] == len(exported) and res["created"] == 0
    # The imported store serves them: search, documents, idempotency keys.
    hits, _ = run(dst.search(caller(), "old decision", 3, {"workspaceId": "a"}))
    assert hits[0]["content"] == "old decision"
    parent = next(r["parent_id"] for r in exported if r.get("parent_id"))
    doc = run(dst.get_document(caller(), parent))
    assert doc["complete"] and doc["content"].count("word") == 3000
    retry = run(dst.capture([item("secret plan", workspace_id="a", agent_id="ag",
                                  visibility="private", idempotency_key="key-1")],
                            caller(agent="ag")))
    assert retry[0]["deduplicated"]


def test_import_refuses_bad_records_and_changes_nothing(tmp_path):
    svc = make_service(tmp_path)
    good = {"id": "01ARZ3NDEKTSV4RRFFQ69G5FAV", "content": "fine", "event_type": "note",
            "workspace_id": "w", "timestamp": 1.5}
    for bad, field in [({**good, "id": "nope"}, "records[1].id"),
                       ({**good, "surprise": 1}, "records[1].surprise"),
                       ({**good, "content": ""}, "records[1].content"),
                       ({**good, "event_type": "Bad Type"}, "records[1].event_type"),
                       ({**good, "timestamp": "yesterday"}, "records[1].timestamp"),
                       ({**good, "tier": "forever"}, "records[1].tier")]:
        with pytest.raises(MemorayError) as err:
            run(browse.import_records(svc, caller(), [good, bad]))
        assert field in err.value.message
    assert run(_export(svc)) == []
    with pytest.raises(MemorayError):
        run(browse.import_records(svc, caller(), []))
    with pytest.raises(MemorayError):
        browse.check_header({"format": "memoray-export", "version": 99})


def test_scopes_hold_for_browse_export_and_import(tmp_path):
    svc = make_service(tmp_path)
    _seed(svc)
    reader = caller(principal=Principal("bob", frozenset({"b"}), frozenset({"read"})))
    page = run(browse.recent(svc, reader, None, 100))
    assert {m["workspaceId"] for m in page["memories"]} == {"b"}
    assert {r["workspace_id"] for r in run(_export(svc, reader))} == {"b"}
    with pytest.raises(MemorayError) as err:
        run(browse.recent(svc, reader, {"workspaceId": "a"}, 10))
    assert err.value.code.value == "FORBIDDEN"
    rec = run(_export(svc, ws="a"))[0]
    with pytest.raises(MemorayError) as err:
        run(browse.import_records(svc, reader, [rec]))
    assert err.value.code.value == "FORBIDDEN"
    # Without admin, other agents' private memories stay out of an export.
    writer = caller(principal=Principal("carol", frozenset({"a"}), frozenset({"read", "write"})))
    assert not any(r.get("visibility") == "private" for r in run(_export(svc, writer)))

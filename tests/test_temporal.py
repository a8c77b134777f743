"""Temporal understanding (memoray/temporal.py): date terms for the lexical index, events a
query orders itself against ("before the migration"), and the anchored span at retrieval."""

from __future__ import annotations

import asyncio
import math

from memoray.temporal import Anchor, anchored_span, date_terms, query_anchor
from tests.service_harness import caller, item, make_service


def test_date_terms_meet_across_formats():
    same = ["(1:56 pm on 8 May, 2023) we met", "met on May 8, 2023", "met 2023-05-08",
            "met on 8th May 2023"]
    for text in same:
        assert date_terms(text) == ["@2023-05-08", "@2023-05"], text
    assert date_terms("shipped in June 2022") == ["@2022-06"]
    # impossible days yield no day term (April's month term still stands)
    assert date_terms("2023-02-30 and 31 April, 2023") == ["@2023-04"]
    assert date_terms("no dates here, 42 of them") == []


def test_query_anchor_finds_events_not_dates():
    assert query_anchor("what broke before the migration?") == Anchor("before", "the migration")
    assert query_anchor("what changed after we upgraded numpy") == Anchor(
        "after", "we upgraded numpy")
    assert query_anchor("errors since the outage") == Anchor("after", "the outage")
    assert query_anchor("what happened after June 2023") is None  # a date: its own span
    assert query_anchor("two weeks before August 11, 2023") is None
    assert query_anchor("why did we pin pandas") is None
    assert query_anchor("before it") is None


def test_anchored_span_is_half_open_on_the_asked_side():
    assert anchored_span(Anchor("before", "x"), 100.0) == (-math.inf, 100.0)
    assert anchored_span(Anchor("after", "x"), 100.0) == (100.0, math.inf)


def test_before_the_migration_prefers_records_before_it(tmp_path):
    """Two identical-looking errors, one before and one after the migration: with temporal
    understanding on, "before the migration" ranks the earlier one first, "after" the later;
    off, the query's order is the store's. One shard: with two, the ids land on shards at random
    and each shard's own BM25 statistics score the two twins differently, which is noise here."""
    svc = make_service(tmp_path, shards=1)

    def cap(content, day):
        return asyncio.run(svc.capture([item(content, timestamp=f"2026-03-{day:02d}T10:00:00Z",
                                             session_id=f"s{day}")], caller()))[0]["ids"][0]

    early = cap("login page returned a 500 error on submit", 2)
    cap("ran the postgres migration to version 14 for the accounts schema", 10)
    late = cap("login page returned a 500 error on submit", 20)

    def ask(query, weight):
        svc.settings.temporal_weight = weight
        records, _ = asyncio.run(svc.search(caller(), query, 3, {"workspaceId": "ws"}))
        return [r["id"] for r in records]

    before = ask("login page 500 error before the postgres migration", 0.6)
    after = ask("login page 500 error after the postgres migration", 0.6)
    assert before.index(early) < before.index(late)
    assert after.index(late) < after.index(early)

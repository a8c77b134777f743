"""Retrieval features of issue 15 on real ShardCores (no Ray), hash embedder:
reciprocal-rank fusion, neighbouring-record expansion, session-level aggregation. Each is a
setting; off, retrieval is what it was."""

from __future__ import annotations

import asyncio

import numpy as np

from memoray.actors.shard_search import _rrf
from tests.service_harness import caller, item, make_service

T0 = "2026-05-04T10:00:00Z"


def run(coro):
    return asyncio.run(coro)


def capture(svc, rows):
    """rows: (content, session_id, workspace, iso timestamp), stored one by one in order."""
    ids = []
    for content, sid, ws, ts in rows:
        ids.append(run(svc.capture([item(content, session_id=sid, workspace_id=ws,
                                         timestamp=ts)], caller()))[0]["ids"][0])
    return ids


def ts(minutes: int) -> str:
    return f"2026-05-04T{10 + minutes // 60:02d}:{minutes % 60:02d}:00Z"


FILLER = ["we talked about the weather and the garden", "the build is green again today",
          "lunch was a sandwich with soup", "reviewed the pull request about logging",
          "the meeting moved to thursday afternoon", "updated the onboarding notes"]


def conversation(svc, ws="ws", sid="s1", gap_minutes=1):
    """A question, its reply (which shares no word with the query) `gap_minutes` later, then
    filler in the same session and in others."""
    rows = [("what did you end up doing about the flaky zeppelin deploy", sid, ws, ts(1)),
            ("pinned it to the older runner image, works now", sid, ws, ts(1 + gap_minutes)),
            (FILLER[0], sid, ws, ts(3 + gap_minutes))]
    rows += [(f, f"other-{i}", ws, ts(5 + i)) for i, f in enumerate(FILLER[1:])]
    return capture(svc, rows)


OFF = {"retrieval_fusion": "score", "neighbor_weight": 0.0, "session_weight": 0.0,
       "temporal_weight": 0.0}


def search(svc, query, limit=3, filters=None, **settings):
    """Every feature off but the ones named (the defaults turn some on)."""
    for key, value in {**OFF, **settings}.items():
        setattr(svc.settings, key, value)
    records, _ = run(svc.search(caller(), query, limit, filters))
    return [r["id"] for r in records], [r["score"] for r in records]


def scored(svc, query, **settings):
    got, scores = search(svc, query, limit=20, **settings)
    return dict(zip(got, scores)), got


def test_neighbour_expansion_finds_the_reply_through_its_question(tmp_path):
    svc = make_service(tmp_path, shards=1)
    ids = conversation(svc)
    question, answer = ids[0], ids[1]  # the answer shares no word with the query
    off, _ = scored(svc, "zeppelin deploy flaky", neighbor_weight=0.0)
    assert off.get(answer, 0.0) == 0.0
    on, order = scored(svc, "zeppelin deploy flaky", neighbor_weight=0.5)
    assert order[:2] == [question, answer]
    assert on[answer] > 0.0 and all(on[i] == 0.0 for i in ids[3:])
    assert on[question] < off[question]  # normalised: a lone hit loses a little
    assert all(0.0 <= s <= 1.0 for s in on.values())


def test_neighbours_must_be_close_in_time(tmp_path):
    svc = make_service(tmp_path, shards=1)
    ids = conversation(svc, gap_minutes=180)  # the "reply" came three hours later
    near, _ = scored(svc, "zeppelin deploy flaky", neighbor_weight=0.5,
                     neighbor_window_s=3600.0)
    assert near.get(ids[1], 0.0) == 0.0
    wide, order = scored(svc, "zeppelin deploy flaky", neighbor_weight=0.5,
                         neighbor_window_s=4 * 3600.0)
    assert order[:2] == [ids[0], ids[1]] and wide[ids[1]] > 0.0


def test_neighbour_expansion_never_crosses_the_filter(tmp_path):
    svc = make_service(tmp_path, shards=1)
    # the same session id in two workspaces: the neighbour in the other one must not leak
    rows = [("what did you end up doing about the flaky zeppelin deploy", "s1", "ws-a", ts(1)),
            ("secret answer from the other workspace", "s1", "ws-b", ts(1)),
            ("unrelated filler in ws-a", "s1", "ws-a", ts(2))]
    ids = capture(svc, rows)
    svc.settings.neighbor_weight = 1.0
    for strategy in ("exact", "ann", "ann_adaptive"):
        records, _ = run(svc.search(caller(), "zeppelin deploy flaky", 5,
                                    {"workspaceId": "ws-a"}, strategy=strategy))
        got = [r["id"] for r in records]
        assert ids[1] not in got, strategy
        assert all(r["workspace_id"] == "ws-a" for r in records), strategy


def test_session_aggregation_lifts_the_session_that_matches(tmp_path):
    # one shard: BM25 statistics are per shard and ids route by hash, so two shards would make
    # the baseline order depend on the run's ids (the aggregation itself runs on the replica)
    svc = make_service(tmp_path, shards=1)
    # two sessions; the query matches one line of s-good strongly and one line of s-bad weakly
    rows = [("the zeppelin deploy failed on the staging runner", "s-good", "ws", ts(0)),
            ("rolled back and opened an incident ticket", "s-good", "ws", ts(1)),
            ("zeppelin is a nice name for a deploy tool", "s-bad", "ws", ts(2)),
            ("incident ticket template updated", "s-bad", "ws", ts(3))]
    ids = capture(svc, rows)
    plain, _ = search(svc, "zeppelin deploy failed incident ticket", limit=4,
                      session_weight=0.0)
    assert plain.index(ids[3]) < plain.index(ids[1])  # alone, the shorter s-bad line wins
    got, boosted = search(svc, "zeppelin deploy failed incident ticket", limit=4,
                          session_weight=1.0)
    assert got[:2] == [ids[0], ids[1]]
    assert all(0.0 <= s <= 1.0 for s in boosted)


def test_rrf_ranks_agreement_first_and_stays_in_unit_range():
    vec = np.array([0.9, 0.85, 0.1, 0.7], dtype=np.float32)
    lex = np.array([0.05, 0.9, 0.0, 0.1], dtype=np.float32)
    fused = _rrf(vec, lex, 60.0)
    assert int(np.argmax(fused)) == 1  # 2nd by vector, 1st by lexical
    assert fused[2] < fused[3]  # no lexical match: no lexical term
    assert np.all((fused > 0) & (fused <= 1.0))
    assert np.isclose(_rrf(np.array([1.0]), np.array([1.0]), 60.0)[0], 1.0)


def test_rrf_setting_returns_unit_scores(tmp_path):
    svc = make_service(tmp_path, shards=1)
    conversation(svc)
    rrf, scores = search(svc, "flaky deploy", limit=5, retrieval_fusion="rrf")
    assert set(rrf) and all(0.0 <= s <= 1.0 for s in scores)


def test_query_dates_resolve_to_spans():
    from datetime import UTC, datetime

    from memoray.temporal import query_time_span

    now = datetime(2026, 6, 1, 12, tzinfo=UTC).timestamp()

    def days(q):
        span = query_time_span(q, now)
        return None if span is None else [datetime.fromtimestamp(x, UTC).date().isoformat()
                                          for x in span]

    assert days("what setback did she face in October 2023?") == ["2023-10-01", "2023-11-01"]
    assert days("the painting shown on October 13, 2023") == ["2023-10-13", "2023-10-14"]
    assert days("found on 1 February, 2023") == ["2023-02-01", "2023-02-02"]
    assert days("deploy of 2023-05-08") == ["2023-05-08", "2023-05-09"]
    assert days("camping in June") == ["2026-06-01", "2026-07-01"]
    assert days("camping in July") == ["2025-07-01", "2025-08-01"]  # the latest July so far
    assert days("what broke the login page yesterday") == ["2026-05-31", "2026-06-01"]
    assert days("may I ask why we pinned pandas") is None  # "may" the verb is no month
    assert days("why did we pin pandas") is None


def test_temporal_weight_prefers_records_of_the_named_month(tmp_path):
    svc = make_service(tmp_path, shards=1)
    rows = [("released the mobile app update", "s-may", "ws", "2025-05-10T10:00:00Z"),
            ("released the mobile app update", "s-oct", "ws", "2025-10-10T10:00:00Z")]
    ids = capture(svc, rows)
    on, scores = search(svc, "which app update did we release in October 2025", limit=2,
                        temporal_weight=0.5)
    assert on[0] == ids[1] and scores[0] > scores[1]
    on, _ = search(svc, "which app update did we release in May 2025", limit=2,
                   temporal_weight=0.5)
    assert on[0] == ids[0]


# -- query expansion (pseudo-relevance feedback) ----------------------------------------------

PRF_ROWS = [("zeppelin deploy failed on the old runner image", "s1", "ws", ts(1)),
            ("zeppelin deploy: pinned the older runner image", "s2", "ws", ts(2)),
            ("older runner image pinned, green again", "s3", "ws", ts(3)),
            ("lunch was a sandwich with soup", "s4", "ws", ts(4)),
            ("the meeting moved to thursday afternoon", "s5", "ws", ts(5))]


def lexical_search(svc, query, limit=5, **settings):
    for key, value in {**OFF, **settings}.items():
        setattr(svc.settings, key, value)
    records, _ = run(svc.search(caller(), query, limit, None, mode="lexical"))
    return [r["id"] for r in records]


def test_lexical_prf_finds_a_record_sharing_no_query_word(tmp_path):
    svc = make_service(tmp_path, shards=1)
    ids = capture(svc, PRF_ROWS)
    assert ids[2] not in lexical_search(svc, "zeppelin deploy")  # no word in common
    found = lexical_search(svc, "zeppelin deploy", prf_docs=2, prf_terms=5, prf_weight=0.5)
    assert ids[2] in found and set(found) & set(ids[3:]) == set()
    assert found.index(ids[2]) > max(found.index(ids[0]), found.index(ids[1]))


def test_lexical_prf_respects_the_filter(tmp_path):
    svc = make_service(tmp_path, shards=1)
    rows = [(c, s, "ws" if i < 2 else "other", t) for i, (c, s, _, t) in enumerate(PRF_ROWS)]
    ids = capture(svc, rows)
    for key, value in {**OFF, "prf_docs": 2, "prf_terms": 5}.items():
        setattr(svc.settings, key, value)
    for strategy in ("exact", "ann", "ann_adaptive"):
        records, _ = run(svc.search(caller(), "zeppelin deploy", 5, {"workspaceId": "ws"},
                                    mode="lexical", strategy=strategy))
        assert {r["id"] for r in records} == set(ids[:2]), strategy


def test_expansion_terms_skip_query_terms_and_single_document_terms(tmp_path):
    svc = make_service(tmp_path, shards=1)
    capture(svc, PRF_ROWS)
    from memoray.actors.shard_search import SearchRequest

    core = svc.cores[0]
    ranked = core.lexical.search("zeppelin deploy", 2)[0]
    terms = core.reader._expansion_terms(
        SearchRequest(vector=None, query="zeppelin deploy", k=5, prf_docs=2, prf_terms=10),
        ranked)
    stems = core.lexical.analyzer.tokenize
    assert not set(stems("zeppelin deploy")) & set(terms)
    assert set(stems("runner image")) <= set(terms)
    assert not set(stems("failed")) & set(terms)  # in one document only: expands nothing


def test_vector_prf_moves_the_query_towards_its_first_hits(tmp_path):
    from memoray.actors.shard_search import SearchRequest
    from memoray.embedding import HashEmbedder

    svc = make_service(tmp_path, shards=1)  # make_service embeds with HashEmbedder
    ids = capture(svc, PRF_ROWS)
    vec = HashEmbedder().embed(["zeppelin deploy"])[0]

    def scores(**kw):
        res = svc.cores[0].reader.run(SearchRequest(vector=vec, query="zeppelin deploy", k=5,
                                                    mode="vector", **kw))
        return {h.record["id"]: h.vector_score for h in res["hits"]}

    plain, moved = scores(), scores(vector_prf=1.0, vector_prf_docs=2)
    # the third record shares only the first hits' other words: Rocchio lifts it
    assert moved.get(ids[2], 0.0) > plain.get(ids[2], 0.0) + 0.05
    assert moved.get(ids[3], 0.0) <= plain.get(ids[3], 0.0) + 1e-6


# -- session aggregation methods and the session ranking --------------------------------------

class _Hit:
    def __init__(self, score, sid):
        self.score, self.record = score, {"session_id": sid}


def test_session_scores_max_damped_rrf():
    from memoray.serve.retrieve import session_scores

    # s-one: one strong hit; s-many: three good ones; s-none: no session
    hits = [_Hit(0.9, "s-one"), _Hit(0.8, "s-many"), _Hit(0.75, "s-many"),
            _Hit(0.7, "s-many"), _Hit(0.95, None), _Hit(-1.0, "s-expired")]
    best = session_scores(hits, "max")
    assert list(best) == ["s-one", "s-many"] and best["s-one"] == 0.9  # nothing for s-expired
    damped = session_scores(hits, "damped", depth=3, damping=0.5)
    assert list(damped) == ["s-many", "s-one"]
    assert np.isclose(damped["s-one"], 0.9 / 1.75)
    assert np.isclose(damped["s-many"], (0.8 + 0.5 * 0.75 + 0.25 * 0.7) / 1.75)
    # depth 1 is max again; damping 0 too
    assert session_scores(hits, "damped", depth=1) == best
    assert session_scores(hits, "damped", damping=0.0) == best
    rrf = session_scores(hits, "rrf", depth=3, rrf_k=60.0)
    assert list(rrf) == ["s-many", "s-one"]
    assert all(0.0 < v <= 1.0 for v in rrf.values())
    try:
        session_scores(hits, "mean")
    except ValueError as exc:
        assert "mean" in str(exc)
    else:
        raise AssertionError("an unknown method must be refused")


def test_session_ranking_is_reported_and_damped_lifts_the_session_with_more_matches(tmp_path):
    svc = make_service(tmp_path, shards=1)
    rows = [("zeppelin deploy failed on the staging runner again today", "s-one", "ws", ts(0)),
            ("zeppelin deploy broke", "s-many", "ws", ts(10)),
            ("the deploy of zeppelin is flaky", "s-many", "ws", ts(11)),
            ("zeppelin runner deploy retried", "s-many", "ws", ts(12)),
            ("lunch was a sandwich with soup", "s-other", "ws", ts(20))]
    capture(svc, rows)
    for key, value in {**OFF, "session_weight": 0.5}.items():
        setattr(svc.settings, key, value)
    svc.settings.session_aggregate = "damped"
    _, info = run(svc.search(caller(), "zeppelin deploy", 5, None))
    ranked = [s["sessionId"] for s in info["sessions"]]
    assert ranked == ["s-many", "s-one", "s-other"]  # hash vectors give everything a score
    assert all(0.0 <= s["score"] <= 1.0 for s in info["sessions"])
    svc.settings.session_aggregate = "max"
    _, info = run(svc.search(caller(), "zeppelin deploy failed staging runner", 5, None))
    assert info["sessions"][0]["sessionId"] == "s-one"


# -- neighbouring-turn context (retrieve's contextTurns) --------------------------------------

def _session(svc, shards_rows):
    return capture(svc, shards_rows)


def test_context_turns_return_the_neighbours_in_order_across_shards(tmp_path):
    svc = make_service(tmp_path, shards=2)  # a session's records spread over both shards
    lines = ["we planned the trip", "which city first", "the zeppelin museum in friedrichshafen",
             "booked the train", "packed the bags", "left on friday"]
    rows = [(text, "s1", "ws", "2026-05-04T10:00:00Z") for text in lines]  # one timestamp:
    rows += [("zeppelin museum review for work", "s2", "ws", ts(30))]  # capture order decides
    ids = capture(svc, rows)
    records, info = run(svc.search(caller(), "zeppelin museum friedrichshafen", 1, None,
                                   context_turns=2))
    assert records[0]["id"] == ids[2]
    ctx = records[0]["context"]
    assert [c["id"] for c in ctx] == [ids[0], ids[1], ids[3], ids[4]]
    assert [c["offset"] for c in ctx] == [-2, -1, 1, 2]
    assert [c["content"] for c in ctx] == [lines[0], lines[1], lines[3], lines[4]]
    assert all(c["tokens"] > 0 for c in ctx)
    assert records[0]["context_tokens"] == sum(c["tokens"] for c in ctx) == info[
        "context_tokens"]
    # at the end of a session there is less on one side
    records, _ = run(svc.search(caller(), "left on friday", 1, None, context_turns=3))
    assert records[0]["id"] == ids[5]
    assert [c["offset"] for c in records[0]["context"]] == [-3, -2, -1]
    # without contextTurns nothing is attached
    records, info = run(svc.search(caller(), "zeppelin museum friedrichshafen", 1, None))
    assert "context" not in records[0] and "context_tokens" not in info


def test_context_turns_never_cross_the_filter_or_the_session(tmp_path):
    svc = make_service(tmp_path, shards=1)
    rows = [("first line in a", "s1", "ws-a", ts(1)),
            ("secret in b, same session id", "s1", "ws-b", ts(2)),
            ("zeppelin answer in a", "s1", "ws-a", ts(3)),
            ("another session in a", "s2", "ws-a", ts(4)),
            ("last line in a", "s1", "ws-a", ts(5))]
    ids = capture(svc, rows)
    records, _ = run(svc.search(caller(), "zeppelin answer", 1, {"workspaceId": "ws-a"},
                                context_turns=2))
    assert records[0]["id"] == ids[2]
    assert [c["id"] for c in records[0]["context"]] == [ids[0], ids[4]]
    assert [c["offset"] for c in records[0]["context"]] == [-1, 1]


def test_context_token_budget_takes_the_nearest_turns_first(tmp_path):
    from memoray.tokens import count_tokens

    svc = make_service(tmp_path, shards=1)
    lines = ["one two three four five six seven eight", "alpha beta", "zeppelin hangar door",
             "gamma delta", "nine ten eleven twelve thirteen fourteen fifteen"]
    ids = capture(svc, [(t, "s1", "ws", ts(i)) for i, t in enumerate(lines)])
    near = count_tokens(lines[1]) + count_tokens(lines[3])
    records, info = run(svc.search(caller(), "zeppelin hangar", 1, None, context_turns=2,
                                   context_budget=near))
    assert [c["id"] for c in records[0]["context"]] == [ids[1], ids[3]]
    assert info["context_tokens"] == near
    records, _ = run(svc.search(caller(), "zeppelin hangar", 1, None, context_turns=2,
                                context_budget=0))
    assert records[0]["context"] == [] and records[0]["context_tokens"] == 0


def test_context_turns_are_validated_and_a_record_without_session_gets_none(tmp_path):
    import pytest

    from memoray.errors import MemorayError

    svc = make_service(tmp_path, shards=1)
    run(svc.capture([item("zeppelin without a session")], caller()))
    records, _ = run(svc.search(caller(), "zeppelin", 1, None, context_turns=2))
    assert records[0]["context"] == []
    for bad in ({"context_turns": 11}, {"context_turns": -1},
                {"context_turns": 1, "context_budget": -5}):
        with pytest.raises(MemorayError) as err:
            run(svc.search(caller(), "zeppelin", 1, None, **bad))
        assert err.value.code.value == "INVALID_INPUT"
    mems = run(svc.retrieve(caller(), "zeppelin", 1, None, context_turns=1))
    assert mems[0].context == [] and mems[0].context_tokens == 0


def test_context_turns_obey_every_filter_of_the_coding_set(tmp_path):
    """The coding-memories set's 150 filtered queries (workspace, branch, event type, time),
    each asked with two context turns either side: no context turn may break the filter, each
    is in its memory's session, and some are found (the set has multi-record sessions)."""
    from benchmarks.coding_memories import build_set
    from memoray import filters as flt
    from memoray.models import CaptureItem

    memories, queries = build_set()
    svc = make_service(tmp_path, shards=2)
    for m in memories:
        run(svc.capture([CaptureItem(content=m["content"], event_type=m["event_type"],
                                     workspace_id=m["workspace_id"], git_branch=m["git_branch"],
                                     session_id=m["session_id"], timestamp=m["timestamp"])],
                        caller()))
    stored = {}
    for core in svc.cores:
        for _label, rec, _vec in core.storage.iter_all():
            stored[rec["id"]] = rec
    attached = 0
    for q in queries:
        records, _ = run(svc.search(caller(), q["query"], 5, q["filters"], context_turns=2))
        node = flt.parse_filter(q["filters"])
        for r in records:
            for turn in r["context"]:
                full = stored[turn["id"]]
                assert flt.matches(node, full), (q["query"], turn["id"])
                assert full["session_id"] == r["session_id"]
                assert turn["id"] != r["id"]
                attached += 1
    assert attached > 100

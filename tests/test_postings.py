"""Postings: the per-shard secondary indexes stay equal to a brute-force view of the records."""

from __future__ import annotations

import json

import msgpack
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from memoray.models import SCOPED_FIELDS
from memoray.postings import NONE_KEY, Postings, union_sorted


def rec(ws="w1", tier=None, ts=100.0, **extra):
    return {"id": "x", "content": "long text", "workspace_id": ws, "tier": tier,
            "event_type": "note", "timestamp": ts, "metadata": {}, **extra}


def arr(*labels):
    return np.array(labels, dtype=np.int64)


def check_sorted_unique(a: np.ndarray):
    assert a.dtype == np.int64
    assert np.all(a[1:] > a[:-1])


def test_add_keeps_slim_row_without_content():
    p = Postings()
    p.add(3, rec(metadata={"k": 1}))
    assert len(p) == 1 and 3 in p and 4 not in p
    assert "content" not in p.row(3)
    assert p.row(3)["metadata"] == {"k": 1}
    with pytest.raises(KeyError):
        p.row(4)


def test_labels_eq_sorted_and_none_means_missing_or_null():
    p = Postings()
    for label, tier in [(9, "a"), (2, "a"), (5, None), (7, "b")]:
        p.add(label, rec(tier=tier))
    p.add(1, {"id": "y", "workspace_id": "w1", "timestamp": 1.0})  # no tier key at all
    np.testing.assert_array_equal(p.labels_eq("tier", "a"), arr(2, 9))
    np.testing.assert_array_equal(p.labels_eq("tier", None), arr(1, 5))
    np.testing.assert_array_equal(p.labels_eq("tier", "zzz"), arr())
    check_sorted_unique(p.labels_eq("tier", "a"))
    with pytest.raises(ValueError, match="not an indexed field"):
        p.labels_eq("metadata.k", 1)


def test_labels_in_unions_and_dedupes():
    p = Postings()
    for label, ws in enumerate(["a", "b", "c", "a", None]):
        p.add(label, rec(ws=ws))
    np.testing.assert_array_equal(p.labels_in("workspace_id", ["a", "c", "a"]), arr(0, 2, 3))
    np.testing.assert_array_equal(p.labels_in("workspace_id", [None, "b"]), arr(1, 4))
    np.testing.assert_array_equal(p.labels_in("workspace_id", []), arr())
    np.testing.assert_array_equal(p.labels_in("workspace_id", ["nope"]), arr())


def test_readd_replaces_old_entries():
    p = Postings()
    p.add(1, rec(ws="a", tier="x", ts=10.0))
    p.add(1, rec(ws="b", tier=None, ts=20.0))
    assert len(p) == 1
    assert len(p.labels_eq("workspace_id", "a")) == 0
    np.testing.assert_array_equal(p.labels_eq("workspace_id", "b"), arr(1))
    np.testing.assert_array_equal(p.labels_eq("tier", None), arr(1))
    assert len(p.labels_ts_range(10.0, True, 10.0, True)) == 0
    np.testing.assert_array_equal(p.labels_ts_range(20.0, True, 20.0, True), arr(1))
    assert p.stats()["fields"]["workspace_id"] == {"b": 1}


def test_remove_undoes_add_and_unknown_is_noop():
    p = Postings()
    p.add(1, rec(ws="a", ts=5.0))
    p.add(2, rec(ws="a", ts=6.0))
    p.remove(1)
    p.remove(1)
    p.remove(99)
    assert len(p) == 1 and 1 not in p
    np.testing.assert_array_equal(p.labels_eq("workspace_id", "a"), arr(2))
    np.testing.assert_array_equal(p.labels_ts_range(None, True, None, True), arr(2))
    p.remove(2)
    assert p.stats() == {
        "total": 0, "fields": {f: {} for f in SCOPED_FIELDS}, "ts_quantiles": []
    }
    assert len(p.all_labels()) == 0


@pytest.mark.parametrize(
    "lo, lo_incl, hi, hi_incl, expected",
    [
        (20.0, True, 30.0, True, [2, 3, 4, 5]),
        (20.0, False, 30.0, True, [5]),
        (20.0, True, 30.0, False, [2, 3, 4]),
        (20.0, False, 30.0, False, []),
        (None, True, 20.0, False, [1]),
        (25.0, True, None, True, [5, 6]),
        (None, True, None, True, [1, 2, 3, 4, 5, 6]),
        (40.0, True, 10.0, True, []),
        (15.0, True, 15.0, True, []),
    ],
)
def test_ts_range_bounds(lo, lo_incl, hi, hi_incl, expected):
    p = Postings()
    for label, ts in [(1, 10.0), (2, 20.0), (3, 20.0), (4, 20.0), (5, 30.0), (6, 40.0)]:
        p.add(label, rec(ts=ts))
    p.add(7, rec(ts=None))  # no timestamp: never in a range
    got = p.labels_ts_range(lo, lo_incl, hi, hi_incl)
    np.testing.assert_array_equal(got, arr(*expected))
    check_sorted_unique(got)


def test_ts_range_after_writes_uses_both_paths_consistently():
    p = Postings()
    for label in range(200):
        p.add(label, rec(ts=float(1000 - label)))  # timestamps in the opposite order of labels
    small = p.labels_ts_range(900.0, True, 910.0, True)  # fresh after writes: the islice path
    np.testing.assert_array_equal(small, np.arange(90, 101))
    big = p.labels_ts_range(850.0, False, None, True)  # rebuilds the arrays
    np.testing.assert_array_equal(big, np.arange(0, 150))
    np.testing.assert_array_equal(p.labels_ts_range(900.0, True, 910.0, True), small)
    p.add(500, rec(ts=905.0))
    np.testing.assert_array_equal(
        p.labels_ts_range(900.0, True, 910.0, True), np.append(np.arange(90, 101), 500)
    )
    np.testing.assert_array_equal(p.labels_eq("timestamp", 905.0), arr(95, 500))
    np.testing.assert_array_equal(p.labels_in("timestamp", [905.0, 999.0, 905]), arr(1, 95, 500))


def test_labels_eq_timestamp_none_is_records_without_timestamp():
    p = Postings()
    p.add(1, rec(ts=1.0))
    p.add(2, rec(ts=None))
    np.testing.assert_array_equal(p.labels_eq("timestamp", None), arr(2))


def test_caches_are_reused_read_only_and_invalidated():
    p = Postings()
    for label in range(10):
        p.add(label, rec(ws="a" if label % 2 else "b"))
    first = p.labels_eq("workspace_id", "a")
    assert p.labels_eq("workspace_id", "a") is first
    assert not first.flags.writeable
    all1 = p.all_labels()
    assert p.all_labels() is all1 and not all1.flags.writeable
    other = p.labels_eq("workspace_id", "b")
    p.add(11, rec(ws="a"))
    assert p.labels_eq("workspace_id", "b") is other  # untouched bucket keeps its cache
    np.testing.assert_array_equal(p.labels_eq("workspace_id", "a"), arr(1, 3, 5, 7, 9, 11))
    np.testing.assert_array_equal(p.all_labels(), np.append(np.arange(10), 11))


def test_stats_shape_quantiles_and_caching():
    p = Postings()
    for label in range(101):
        p.add(label, rec(ws="a" if label < 60 else "b", tier=None if label % 2 else "t",
                         ts=float(label * 10)))
    s = p.stats()
    assert s["total"] == 101
    assert s["fields"]["workspace_id"] == {"a": 60, "b": 41}
    assert s["fields"]["tier"] == {"t": 51, NONE_KEY: 50}
    assert s["fields"]["event_type"] == {"note": 101}
    qs = s["ts_quantiles"]
    assert len(qs) == 21 and qs[0] == 0.0 and qs[-1] == 1000.0 and qs[10] == 500.0
    assert qs == sorted(qs)
    assert p.stats() is s  # cached until a write
    json.dumps(s)
    msgpack.packb(s)
    p.add(200, rec(ts=5000.0))
    assert p.stats() is not s and p.stats()["ts_quantiles"][-1] == 5000.0


def test_single_record_quantiles():
    p = Postings()
    p.add(0, rec(ts=7.5))
    assert p.stats()["ts_quantiles"] == [7.5] * 21


def test_union_sorted():
    np.testing.assert_array_equal(union_sorted([arr(1, 5, 9), arr(), arr(2, 5, 10)]),
                                  arr(1, 2, 5, 9, 10))
    assert len(union_sorted([])) == 0


# -- property: the indexes always equal a brute-force view of the live records --------------------

_VALS = st.sampled_from(["a", "b", "c", None])
_RECORD = st.fixed_dictionaries(
    {f: _VALS for f in SCOPED_FIELDS}
    | {"timestamp": st.one_of(st.none(), st.sampled_from([1.0, 2.0, 3.0, 4.0]))}
)
_OPS = st.lists(
    st.tuples(st.sampled_from(["add", "add", "remove"]), st.integers(0, 15), _RECORD), max_size=60
)


@settings(max_examples=60, deadline=None)
@given(_OPS)
def test_postings_match_brute_force(ops):
    p = Postings()
    model: dict[int, dict] = {}
    for op, label, record in ops:
        if op == "add":
            p.add(label, record)
            model[label] = record
        else:
            p.remove(label)
            model.pop(label, None)
        # interleave reads with writes so cache invalidation is exercised
        np.testing.assert_array_equal(p.all_labels(), np.array(sorted(model), dtype=np.int64))
    for f in SCOPED_FIELDS:
        for v in ["a", "b", "c", None]:
            want = sorted(lab for lab, r in model.items() if r[f] == v)
            np.testing.assert_array_equal(p.labels_eq(f, v), np.array(want, dtype=np.int64))
        want = sorted(lab for lab, r in model.items() if r[f] in ("a", None))
        np.testing.assert_array_equal(p.labels_in(f, ["a", None]), np.array(want, dtype=np.int64))
    for lo, hi in [(None, None), (2.0, 3.0), (1.5, None), (None, 2.0)]:
        want = sorted(
            lab for lab, r in model.items() if r["timestamp"] is not None
            and (lo is None or r["timestamp"] > lo) and (hi is None or r["timestamp"] <= hi)
        )
        got = p.labels_ts_range(lo, False, hi, True)
        np.testing.assert_array_equal(got, np.array(want, dtype=np.int64))
    stats = p.stats()
    assert stats["total"] == len(model)
    for f in SCOPED_FIELDS:
        counts: dict = {}
        for r in model.values():
            key = NONE_KEY if r[f] is None else r[f]
            counts[key] = counts.get(key, 0) + 1
        assert stats["fields"][f] == counts
    stamps = sorted(r["timestamp"] for r in model.values() if r["timestamp"] is not None)
    if stamps:
        assert stats["ts_quantiles"][0] == stamps[0] and stats["ts_quantiles"][-1] == stamps[-1]
    else:
        assert stats["ts_quantiles"] == []


@settings(max_examples=200, deadline=None)
@given(st.dictionaries(
    st.sampled_from(["id", "content_hash", "metadata", "expires_at", "merged_ids",
                     "chunk_index", "custom", "other"]),  # not indexed: any value
    st.one_of(st.none(), st.booleans(), st.integers(-2**40, 2**40), st.floats(allow_nan=False),
              st.text(max_size=20), st.lists(st.text(max_size=5), max_size=3),
              st.dictionaries(st.text(max_size=5), st.integers(-2**40, 2**40), max_size=3))))
def test_rows_round_trip_whatever_keys_they_have(row):
    """Rows are packed as a key bitmask plus values (and a map of unknown keys): a missing key
    stays missing, a None stays None, unknown keys come back."""
    p = Postings()
    p.add(3, row)
    assert p.row(3) == {k: v for k, v in row.items() if k != "content"}


def test_a_full_row_packs_to_less_than_half_a_msgpack_map():
    from memoray.postings import _pack

    row = {"id": "01JD3M8X9Q6W0R2T5Y7U1I3O5P", "content_hash": "ab" * 32, "event_type": "note",
           "metadata": {"file": "src/a.py"}, "workspace_id": "ws3", "session_id": "s1",
           "agent_id": None, "git_branch": "main", "git_commit": None, "tier": "episodic",
           "visibility": "shared", "timestamp": 1.7e9, "created_at": 1.7e9,
           "updated_at": 1.7e9, "expires_at": None, "parent_id": None, "chunk_index": None,
           "chunk_count": None, "idempotency_key": None}
    assert len(_pack(row)) * 2 < len(msgpack.packb(row, use_bin_type=True))

"""The filter language: parsing (and its errors), matching, evaluation over postings, planning."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from memoray.errors import ErrorCode, MemorayError
from memoray.filters import (
    DEFAULT_EQ_SELECTIVITY,
    DEFAULT_SELECTIVITY,
    MAX_CLAUSES,
    MAX_DEPTH,
    MAX_IN_LIST,
    MAX_STRING,
    All,
    And,
    Eq,
    Exists,
    In,
    Not,
    Or,
    Range,
    estimate,
    evaluate,
    is_indexable,
    matches,
    parse_filter,
    referenced_workspaces,
    shape,
    to_wire,
)
from memoray.postings import Postings
from memoray.timeutil import parse_iso, to_iso

T0 = "2024-01-01T00:00:00Z"
T1 = "2024-02-01T00:00:00Z"
F0, F1 = parse_iso(T0), parse_iso(T1)


# -- parsing --------------------------------------------------------------------------------------


@pytest.mark.parametrize("empty", [None, {}])
def test_empty_filter_is_all(empty):
    assert parse_filter(empty) == All()


@pytest.mark.parametrize(
    "wire, field",
    [
        ("eventType", "event_type"), ("workspaceId", "workspace_id"), ("sessionId", "session_id"),
        ("agentId", "agent_id"), ("gitBranch", "git_branch"), ("tier", "tier"), ("id", "id"),
        ("parentId", "parent_id"), ("visibility", "visibility"), ("metadata.a.b", "metadata.a.b"),
    ],
)
def test_wire_fields_map_to_internal_names(wire, field):
    assert parse_filter({wire: "v"}) == Eq(field, "v")


@pytest.mark.parametrize(
    "wire, node",
    [
        ({"tier": {"$eq": "p"}}, Eq("tier", "p")),
        ({"tier": {"$ne": "p"}}, Not(Eq("tier", "p"))),
        ({"tier": {"$in": ["p", "s", "p"]}}, In("tier", ("p", "s"))),
        ({"tier": {"$in": ["p"]}}, Eq("tier", "p")),
        ({"tier": {"$in": []}}, In("tier", ())),
        ({"tier": {"$nin": ["p", "s"]}}, Not(In("tier", ("p", "s")))),
        ({"metadata.n": {"$gt": 1}}, Range("metadata.n", 1, False, None, False)),
        ({"metadata.n": {"$gte": 1}}, Range("metadata.n", 1, True, None, False)),
        ({"metadata.n": {"$lt": 1}}, Range("metadata.n", None, False, 1, False)),
        ({"metadata.n": {"$lte": 1.5}}, Range("metadata.n", None, False, 1.5, True)),
        ({"metadata.n": {"$gt": 1, "$lte": 5, "$gte": 2}}, Range("metadata.n", 2, True, 5, True)),
        ({"metadata.n": {"$gt": 1, "$lt": "z"}},
         And((Range("metadata.n", 1, False, None, False),
              Range("metadata.n", None, False, "z", False)))),
        ({"tier": {"$exists": True}}, Exists("tier", True)),
        ({"tier": {"$exists": False}}, Exists("tier", False)),
        ({"tier": None}, Exists("tier", False)),
        ({"tier": {"$ne": None}}, Exists("tier", True)),
        ({"tier": {"$nin": [None]}}, Exists("tier", True)),
        ({"tier": {"$in": [None, "p"]}}, In("tier", (None, "p"))),
        ({"$not": {"tier": "p"}}, Not(Eq("tier", "p"))),
        ({"$not": {"$not": {"tier": "p"}}}, Eq("tier", "p")),
        ({"tier": {"$not": {"$in": ["p", "s"]}}}, Not(In("tier", ("p", "s")))),
        ({"tier": {"$ne": "p", "$exists": True}},
         And((Not(Eq("tier", "p")), Exists("tier", True)))),
        ({"metadata.flag": True}, Eq("metadata.flag", True)),
        ({"metadata.n": 2}, Eq("metadata.n", 2)),
        ({"timestamp": T0}, Eq("timestamp", F0)),
        ({"timestamp": {"$gte": T0, "$lt": T1}}, Range("timestamp", F0, True, F1, False)),
        ({"timestamp": {"$in": [T0, T1]}}, In("timestamp", (F0, F1))),
        ({"timestamp": F0}, Eq("timestamp", F0)),
        ({"startTime": T0}, Range("timestamp", F0, True, None, False)),
        ({"endTime": T1}, Range("timestamp", None, False, F1, True)),
        ({"startTime": T0, "endTime": T1}, Range("timestamp", F0, True, F1, True)),
        ({"startTime": T0, "timestamp": {"$gt": T0}}, Range("timestamp", F0, False, None, False)),
    ],
)
def test_operators(wire, node):
    assert parse_filter(wire) == node


def test_keys_are_anded_and_logical_operators_flatten():
    got = parse_filter({
        "workspaceId": "w",
        "$and": [{"tier": "p"}, {"$and": [{"eventType": "note"}, {"tier": "p"}]}],
        "$or": [{"sessionId": "s"}, {"$or": [{"agentId": "a"}, {}]}],
    })
    # the inner $or holds {} (All), so the whole $or is All and disappears; duplicates dedupe
    assert got == And((Eq("workspace_id", "w"), Eq("tier", "p"), Eq("event_type", "note")))
    got = parse_filter({"$or": [{"tier": "p"}, {"$or": [{"tier": "s"}, {"agentId": "a"}]}]})
    assert got == Or((Eq("tier", "p"), Eq("tier", "s"), Eq("agent_id", "a")))
    assert parse_filter({"$and": [{"tier": "p"}]}) == Eq("tier", "p")
    assert parse_filter({"$not": {}}) == Not(All())


def test_dedupe_keeps_types_apart():
    # 1 == True in Python, but as conditions they differ: both must survive
    got = parse_filter({"$and": [{"metadata.x": 1}, {"metadata.x": True}]})
    assert isinstance(got, And) and len(got.children) == 2
    got = parse_filter({"metadata.x": {"$in": [1, True]}})
    assert isinstance(got, In) and len(got.values) == 2


def _deep(n: int) -> dict:
    node: dict = {"tier": "p"}
    for _ in range(n - 1):
        node = {"$not": node}
    return node


@pytest.mark.parametrize(
    "wire, message",
    [
        ("nope", "filters: expected an object"),
        ([{"tier": "p"}], "filters: expected an object"),
        ({"colour": "red"}, "filters.colour: unknown field (allowed: eventType, workspaceId, "),
        ({"metadata": {"a": 1}}, "filters.metadata: unknown field"),
        ({"workspace_id": "w"}, "filters.workspace_id: unknown field; did you mean 'workspaceId'?"),
        ({"metadata.": 1}, "filters.metadata.: empty segment in metadata path"),
        ({"metadata.a..b": 1}, "filters.metadata.a..b: empty segment"),
        ({"$nor": [{"tier": "p"}]}, "filters.$nor: unknown operator"),
        ({"$and": [{"tier": "p"}, {"tier": {"$in": "p"}}]},
         "filters.$and[1].tier.$in: expected a list"),
        ({"tier": {"$regex": "p"}}, "filters.tier.$regex: unknown operator (allowed: $eq, "),
        ({"timestamp": {"$gt": "yesterday"}},
         "filters.timestamp.$gt: 'yesterday' is not an ISO 8601 timestamp"),
        ({"startTime": "soon"}, "filters.startTime: 'soon' is not an ISO 8601 timestamp"),
        ({"endTime": None}, "filters.endTime: expected an ISO 8601 timestamp"),
        ({"timestamp": True}, "filters.timestamp: expected an ISO 8601 timestamp, got a boolean"),
        ({"timestamp": {"$lt": [T0]}}, "filters.timestamp.$lt: expected an ISO 8601 timestamp"),
        ({"timestamp": {"$gt": 1e400}}, "filters.timestamp.$gt: expected a finite timestamp"),
        ({"timestamp": {"$gt": 10**400}}, "filters.timestamp.$gt: expected a finite timestamp"),
        ({"tier": {"$exists": 1}}, "filters.tier.$exists: expected true or false"),
        ({"tier": {"$exists": "yes"}}, "filters.tier.$exists: expected true or false"),
        ({"tier": 5}, "filters.tier: expected a string or null"),
        ({"tier": {"$in": ["p", 5]}}, "filters.tier.$in[1]: expected a string or null"),
        ({"tier": ["p", "s"]}, "filters.tier: expected a string or null"),
        ({"metadata.x": [1, 2]}, "filters.metadata.x: expected a scalar value (use $in"),
        ({"metadata.x": {"a": 1}},
         "filters.metadata.x: expected a value or an object of operators"),
        ({"metadata.x": {"$eq": 1, "a": 1}}, "filters.metadata.x: expected a value or an object"),
        ({"metadata.x": {"$eq": {"a": 1}}}, "filters.metadata.x.$eq: expected a string, number"),
        ({"metadata.x": {"$gt": True}}, "filters.metadata.x.$gt: expected a number or a string"),
        ({"metadata.x": {"$gte": None}}, "filters.metadata.x.$gte: expected a number or a string"),
        ({"metadata.x": {"$lt": {"$a": 1}}}, "filters.metadata.x.$lt: expected a number or a"),
        ({"metadata.x": math.nan}, "filters.metadata.x: expected a finite number"),
        ({"metadata.x": {"$gt": math.inf}}, "filters.metadata.x.$gt: expected a finite number"),
        ({"gitBranch": {"$gt": 1}}, "filters.gitBranch.$gt: expected a string"),
        ({"tier": {}}, "filters.tier: empty operator object"),
        ({"tier": {"$not": "p"}}, "filters.tier.$not: expected an object of operators"),
        ({"$and": {"tier": "p"}}, "filters.$and: expected a list of filter objects"),
        ({"$or": []}, "filters.$or: must not be empty"),
        ({"$or": [{"tier": "p"}, 3]}, "filters.$or[1]: expected an object"),
        ({"$not": "p"}, "filters.$not: expected an object"),
        ({"tier": "x" * (MAX_STRING + 1)}, f"filters.tier: longer than {MAX_STRING} characters"),
        ({"timestamp": "x" * (MAX_STRING + 1)}, "filters.timestamp: longer than"),
        ({"metadata." + "k" * MAX_STRING: 1}, "field name longer than"),
        ({"tier": {"$in": ["v"] * (MAX_IN_LIST + 1)}},
         f"filters.tier.$in: more than {MAX_IN_LIST}"),
        ({"$or": [{"tier": "p"}] * (MAX_IN_LIST + 1)}, f"filters.$or: more than {MAX_IN_LIST}"),
        ({"$and": [{"tier": str(i)} for i in range(MAX_CLAUSES + 1)]},
         f"filters.$and[{MAX_CLAUSES}].tier: too many conditions (at most {MAX_CLAUSES}"),
        (_deep(MAX_DEPTH + 1), f"nested deeper than {MAX_DEPTH} levels"),
    ],
)
def test_errors_name_the_offending_part(wire, message):
    with pytest.raises(MemorayError) as err:
        parse_filter(wire)
    assert err.value.code is ErrorCode.INVALID_INPUT
    assert message in err.value.message


def test_limits_are_inclusive():
    parse_filter(_deep(MAX_DEPTH))
    parse_filter({"$and": [{"tier": str(i)} for i in range(MAX_CLAUSES)]})
    parse_filter({"tier": {"$in": [str(i) for i in range(MAX_IN_LIST)]}})
    parse_filter({"tier": "x" * MAX_STRING})
    deep_field_not: dict = {"$eq": "p"}
    for _ in range(MAX_DEPTH - 1):
        deep_field_not = {"$not": deep_field_not}
    parse_filter({"tier": deep_field_not})
    with pytest.raises(MemorayError, match="nested deeper"):
        parse_filter({"tier": {"$not": deep_field_not}})


# -- matching -------------------------------------------------------------------------------------


REC = {
    "id": "m1", "event_type": "note", "workspace_id": "w", "session_id": None, "tier": "project",
    "timestamp": F0, "visibility": "shared",
    "metadata": {"n": 2, "s": "b", "flag": True, "tags": ["x", "y", 3, None], "deep": {"k": "v"},
                 "nil": None, "f": 1.0},
}


@pytest.mark.parametrize(
    "wire, expected",
    [
        ({}, True),
        ({"tier": "project"}, True),
        ({"tier": "session"}, False),
        ({"sessionId": None}, True),  # present but None
        ({"agentId": None}, True),  # key missing
        ({"agentId": {"$exists": False}}, True),
        ({"sessionId": {"$exists": True}}, False),
        ({"tier": {"$exists": True}}, True),
        ({"agentId": {"$ne": "a"}}, True),  # $ne matches missing fields
        ({"agentId": {"$nin": ["a", "b"]}}, True),
        ({"tier": {"$nin": ["project"]}}, False),
        ({"metadata.n": 2}, True),
        ({"metadata.n": 2.0}, True),
        ({"metadata.f": 1}, True),
        ({"metadata.n": "2"}, False),  # number vs string never match
        ({"metadata.s": {"$gt": 1}}, False),
        ({"metadata.n": {"$gt": "a"}}, False),
        ({"metadata.flag": True}, True),
        ({"metadata.flag": 1}, False),  # booleans are not numbers
        ({"metadata.n": True}, False),
        ({"metadata.flag": {"$gt": 0}}, False),
        ({"metadata.n": {"$gt": 1, "$lte": 2}}, True),
        ({"metadata.n": {"$gt": 2}}, False),
        ({"metadata.s": {"$gte": "a", "$lt": "c"}}, True),
        ({"metadata.tags": "x"}, True),  # list contains
        ({"metadata.tags": 3}, True),
        ({"metadata.tags": {"$in": ["q", "y"]}}, True),
        ({"metadata.tags": {"$gt": 2}}, True),
        ({"metadata.tags": {"$ne": "x"}}, False),
        ({"metadata.tags": "z"}, False),
        ({"metadata.tags": None}, False),  # null inside a list is not "field is null"
        ({"metadata.tags": {"$in": [None, "z"]}}, False),
        ({"metadata.deep.k": "v"}, True),
        ({"metadata.deep.k.more": {"$exists": False}}, True),
        ({"metadata.n.more": None}, True),
        ({"metadata.tags.0": {"$exists": True}}, False),  # paths do not index lists
        ({"metadata.nil": {"$exists": False}}, True),
        ({"metadata.nil": {"$in": [None, 1]}}, True),
        ({"metadata.missing": {"$nin": [1]}}, True),
        ({"metadata.missing": {"$lt": 5}}, False),
        ({"timestamp": T0}, True),
        ({"startTime": T0, "endTime": T1}, True),
        ({"timestamp": {"$gt": T0}}, False),
        ({"id": "m1", "visibility": "shared"}, True),
        ({"parentId": {"$exists": False}}, True),
        ({"$or": [{"tier": "x"}, {"metadata.n": 2}]}, True),
        ({"$or": [{"tier": "x"}, {"metadata.n": 3}]}, False),
        ({"$not": {"$or": [{"tier": "x"}, {"metadata.n": 3}]}}, True),
        ({"metadata.n": {"$not": {"$gt": 5}}}, True),
        ({"metadata.missing": {"$not": {"$gt": 5}}}, True),
    ],
)
def test_matches(wire, expected):
    assert matches(parse_filter(wire), REC) is expected


# -- evaluation over postings ---------------------------------------------------------------------


def _records() -> list[dict]:
    out = []
    for i in range(60):
        out.append({
            "id": f"m{i}", "content": "c", "event_type": ["note", "decision", "code_change"][i % 3],
            "workspace_id": ["w1", "w2"][i % 2], "session_id": [None, "s1", "s2", "s3"][i % 4],
            "agent_id": None, "git_branch": ["main", "dev", None][i % 3 == 0 and 2 or i % 2],
            "tier": [None, "project", "session"][i % 3], "visibility": "private",
            "timestamp": F0 + 3600 * i, "metadata": {"n": i % 5, "tags": ["a", "b"][: i % 3]},
        })
    return out


class CountingPostings(Postings):
    """Counts row reads, to prove indexed leaves never scan."""

    __slots__ = ("reads",)

    def __init__(self) -> None:
        super().__init__()
        self.reads = 0

    def row(self, label: int) -> dict:
        self.reads += 1
        return super().row(label)


@pytest.fixture(scope="module")
def shard():
    p = CountingPostings()
    records = _records()
    for i, r in enumerate(records):
        p.add(i * 3 + 1, r)  # labels need not be dense
    return p, {i * 3 + 1: r for i, r in enumerate(records)}


def _brute(node, records):
    return sorted(lab for lab, r in records.items() if matches(node, r))


@pytest.mark.parametrize(
    "wire, indexable",
    [
        ({}, True),
        ({"workspaceId": "w1", "tier": "project"}, True),
        ({"workspaceId": "w1", "tier": {"$ne": "project"}}, True),
        ({"sessionId": {"$in": ["s1", None]}}, True),
        ({"gitBranch": {"$gte": "dev", "$lt": "main"}}, True),
        ({"gitBranch": {"$exists": True}}, True),
        ({"tier": None}, True),
        ({"startTime": "2024-01-01T05:00:00Z", "endTime": "2024-01-02T00:00:00Z"}, True),
        ({"timestamp": {"$in": ["2024-01-01T05:00:00Z", T0, T1]}}, True),
        ({"timestamp": "2024-01-01T05:00:00Z"}, True),
        ({"timestamp": {"$exists": True}}, True),
        ({"timestamp": {"$exists": False}}, True),
        ({"$or": [{"eventType": "note"}, {"tier": "session"}]}, True),
        ({"$not": {"$or": [{"eventType": "note"}, {"workspaceId": "w2"}]}}, True),
        ({"metadata.n": 2}, False),
        ({"workspaceId": "w1", "metadata.n": {"$gte": 2}}, False),
        ({"workspaceId": "w1", "$or": [{"tier": "project"}, {"metadata.tags": "b"}]}, False),
        ({"$or": [{"tier": "project"}, {"metadata.tags": "b"}, {"id": "m7"}]}, False),
        ({"workspaceId": "w2", "$not": {"metadata.n": {"$in": [1, 2]}}}, False),
        ({"eventType": "note", "metadata.n": {"$ne": 0}, "tier": {"$ne": "session"}}, False),
    ],
)
def test_evaluate_agrees_with_matches(shard, wire, indexable):
    p, records = shard
    node = parse_filter(wire)
    assert is_indexable(node) is indexable
    p.reads = 0
    got = evaluate(node, p)
    assert got.dtype == np.int64
    assert got.tolist() == _brute(node, records)
    if indexable:
        assert p.reads == 0


def test_residual_reads_only_the_indexed_intersection(shard):
    p, records = shard
    narrow = parse_filter({"workspaceId": "w1", "eventType": "note"})
    node = parse_filter({"workspaceId": "w1", "eventType": "note", "metadata.n": 3})
    p.reads = 0
    got = evaluate(node, p)
    assert p.reads == len(evaluate(narrow, p)) < len(records)
    assert got.tolist() == _brute(node, records)


META_VALUES = [
    None, 0, 1, 1.0, 2, 2.5, True, False, "a", "b", "", [], [None], [1, None], ["a", 2], [True],
    [[1]], {"k": 1},
]
OPERANDS = [None, 0, 1, 1.0, 2, True, False, "a", "b", [], [None, 1], [1, "a"], [True, 2]]


def test_residual_predicates_agree_with_matches_exhaustively():
    """Every operator x operand against every kind of metadata value, including lists holding
    null, nested lists and objects: the compiled residual path must agree with matches()."""
    p = Postings()
    records = {}
    for label, v in enumerate(META_VALUES):
        records[label] = {"metadata": {"x": v}}
    records[len(META_VALUES)] = {"metadata": {}}  # missing
    records[len(META_VALUES) + 1] = {"metadata": "not an object"}
    for label, r in records.items():
        p.add(label, r)
    ops = ["$eq", "$ne", "$in", "$nin", "$gt", "$gte", "$lt", "$lte", "$exists"]
    wires = [{"metadata.x": v} for v in OPERANDS]
    for op in ops:
        for operand in OPERANDS:
            wires += [{"metadata.x": {op: operand}}, {"metadata.x": {"$not": {op: operand}}}]
    checked = 0
    for wire in wires:
        try:
            node = parse_filter(wire)
        except MemorayError:
            continue  # e.g. $gt: true, $exists: "a"
        assert evaluate(node, p).tolist() == _brute(node, records), wire
        checked += 1
    assert checked > 100


def test_evaluate_on_empty_postings():
    p = Postings()
    for wire in [{}, {"tier": "p"}, {"metadata.n": 1}, {"$not": {"tier": "p"}}]:
        assert len(evaluate(parse_filter(wire), p)) == 0


# -- planning helpers -----------------------------------------------------------------------------


def test_estimate_exact_for_scoped_fields(shard):
    p, records = shard
    stats = p.stats()
    n = len(records)
    for wire in [
        {"workspaceId": "w1"}, {"tier": None}, {"tier": {"$exists": True}},
        {"sessionId": {"$in": ["s1", "s2"]}}, {"sessionId": {"$in": ["s1", None]}},
        {"gitBranch": {"$gt": "dev"}}, {"eventType": "nope"},
    ]:
        node = parse_filter(wire)
        assert estimate(node, stats) == pytest.approx(len(_brute(node, records)) / n)


def test_estimate_timestamps_combinators_and_defaults(shard):
    p, _ = shard
    stats = p.stats()
    half = parse_filter({"endTime": to_iso(F0 + 3600 * 29.5)})
    assert estimate(half, stats) == pytest.approx(0.5, abs=0.05)
    assert estimate(parse_filter({"startTime": T1}), stats) == 0.0
    assert estimate(parse_filter({"endTime": T1}), stats) == 1.0
    assert estimate(parse_filter({"timestamp": T0}), stats) == pytest.approx(1 / 60)
    ws = parse_filter({"workspaceId": "w1"})
    note = parse_filter({"eventType": "note"})
    assert estimate(And((ws, note)), stats) == pytest.approx(0.5 / 3)
    assert estimate(Or((ws, note)), stats) == pytest.approx(1 - 0.5 * (2 / 3))
    assert estimate(Not(note), stats) == pytest.approx(2 / 3)
    assert estimate(All(), stats) == 1.0
    assert estimate(parse_filter({"metadata.n": 1}), stats) == DEFAULT_EQ_SELECTIVITY
    assert estimate(parse_filter({"metadata.n": {"$gt": 1}}), stats) == DEFAULT_SELECTIVITY
    assert estimate(parse_filter({"id": "m1"}), stats) == pytest.approx(1 / 60)
    assert estimate(parse_filter({"tier": "p"}), Postings().stats()) == 0.0


def test_shape_ignores_values_and_order():
    a = parse_filter({"workspaceId": "w1", "tier": "p", "startTime": T0})
    b = parse_filter({"startTime": T1, "tier": "s", "workspaceId": "w9"})
    assert shape(a) == shape(b) == "and(eq:tier,eq:workspace_id,range:timestamp[>=,-])"
    assert shape(parse_filter({"tier": {"$in": ["a", "b"]}})) != shape(parse_filter({"tier": "a"}))
    assert shape(parse_filter({"tier": None})) != shape(parse_filter({"tier": {"$ne": None}}))
    assert shape(parse_filter({"endTime": T0})) != shape(parse_filter({"startTime": T0}))
    assert shape(All()) == "all"
    assert shape(parse_filter({"$not": {"metadata.a": 1}})) == "not(eq:metadata.a)"


@pytest.mark.parametrize(
    "wire",
    [
        {"workspaceId": "w", "tier": {"$nin": ["a", "b"]}, "startTime": T0, "endTime": T1},
        {"$or": [{"metadata.a.b": {"$gt": 1, "$lt": "z"}}, {"$not": {"tier": {"$gt": "m"}}}]},
        {"timestamp": {"$in": [T0, T1]}, "sessionId": None, "agentId": {"$ne": "x"}},
        {"timestamp": {"$gt": 1704067200.123456789}},  # not representable in ISO: stays a number
        {"$not": {}},
        {},
    ],
)
def test_to_wire_round_trips(wire):
    node = parse_filter(wire)
    assert parse_filter(to_wire(node)) == node


def test_to_wire_is_readable():
    assert to_wire(parse_filter({"timestamp": {"$gte": T0}})) == {
        "timestamp": {"$gte": "2024-01-01T00:00:00Z"}
    }
    assert to_wire(parse_filter({"tier": {"$ne": "a"}})) == {"tier": {"$ne": "a"}}


@pytest.mark.parametrize(
    "wire, expected",
    [
        ({}, None),
        ({"workspaceId": "w1"}, {"w1"}),
        ({"workspaceId": {"$in": ["w1", "w2"]}, "tier": "p"}, {"w1", "w2"}),
        ({"$and": [{"workspaceId": {"$in": ["w1", "w2"]}}, {"workspaceId": "w2"}]}, {"w2"}),
        ({"$or": [{"workspaceId": "w1"}, {"workspaceId": "w3", "tier": "p"}]}, {"w1", "w3"}),
        ({"$or": [{"workspaceId": "w1"}, {"tier": "p"}]}, None),
        ({"workspaceId": {"$ne": "w1"}}, None),
        ({"workspaceId": {"$gt": "a"}}, None),
        ({"$not": {"workspaceId": "w1"}}, None),
        ({"workspaceId": None}, set()),
    ],
)
def test_referenced_workspaces(wire, expected):
    assert referenced_workspaces(parse_filter(wire)) == expected


# -- properties: random records x random wire filters ---------------------------------------------

TS = [F0 + 60 * k for k in range(5)]
SCOPED_WIRE = ["eventType", "workspaceId", "sessionId", "agentId", "gitBranch", "tier"]
STR_VALUES = ["a", "b", "c"]
META_SCALARS = st.one_of(
    st.sampled_from([0, 1, 2, 2.0, 2.5, "a", "b", True, False]), st.none()
)


def _value(field: str) -> st.SearchStrategy:
    if field == "timestamp":
        return st.one_of(st.sampled_from([to_iso(t) for t in TS] + [to_iso(TS[0] + 30)]), st.none())
    if field.startswith("metadata."):
        return META_SCALARS
    return st.sampled_from([*STR_VALUES, None])


def _bound(field: str) -> st.SearchStrategy:
    if field == "timestamp":
        return st.sampled_from([to_iso(t) for t in TS] + [to_iso(TS[1] + 1)])
    if field.startswith("metadata."):
        return st.sampled_from([0, 1, 1.5, 2, 3, "a", "b", "bb"])
    return st.sampled_from(["a", "b", "bb", "c"])


def _condition(field: str) -> st.SearchStrategy:
    v, b = _value(field), _bound(field)
    ops = st.one_of(
        v,
        st.builds(lambda x: {"$eq": x}, v),
        st.builds(lambda x: {"$ne": x}, v),
        st.builds(lambda xs: {"$in": xs}, st.lists(v, max_size=3)),
        st.builds(lambda xs: {"$nin": xs}, st.lists(v, max_size=3)),
        st.builds(lambda op, x: {op: x}, st.sampled_from(["$gt", "$gte", "$lt", "$lte"]), b),
        st.builds(lambda lo, hi: {"$gte": lo, "$lt": hi}, b, b),
        st.builds(lambda x: {"$exists": x}, st.booleans()),
    )
    return st.one_of(ops, st.builds(lambda x, y: {"$not": {"$gt": x, "$ne": y}}, b, v))


# metadata fields twice: they take the residual (row-scanning) path, which needs the coverage
FIELDS = [*SCOPED_WIRE, "timestamp", "id", "visibility"] + 2 * [
    "metadata.n", "metadata.tags", "metadata.d.k"
]
LEAF = st.sampled_from(FIELDS).flatmap(lambda f: _condition(f).map(lambda c: {f: c}))
TIME = st.builds(
    lambda k, t: {k: to_iso(t)}, st.sampled_from(["startTime", "endTime"]), st.sampled_from(TS)
)


def _filters(depth: int) -> st.SearchStrategy:
    base = st.lists(st.one_of(LEAF, TIME), min_size=0, max_size=3).map(
        lambda parts: {k: v for part in parts for k, v in part.items()}
    )
    if depth == 0:
        return base
    sub = _filters(depth - 1)
    return st.one_of(
        base,
        st.builds(lambda xs: {"$and": xs}, st.lists(sub, min_size=1, max_size=2)),
        st.builds(lambda xs: {"$or": xs}, st.lists(sub, min_size=1, max_size=2)),
        st.builds(lambda x: {"$not": x}, sub),
        st.builds(lambda a, b: a | b, base, st.builds(lambda x: {"$or": [x]}, sub)),
    )


WIRE_FILTERS = _filters(3)


def _meta() -> st.SearchStrategy:
    return st.fixed_dictionaries(
        {},
        optional={
            "n": st.one_of(META_SCALARS, st.lists(META_SCALARS, max_size=2)),
            "tags": st.lists(st.sampled_from(["a", "b", 1, 2, None]), max_size=3),
            "d": st.one_of(st.fixed_dictionaries({}, optional={"k": META_SCALARS}), st.just(5)),
        },
    )


RECORD = st.fixed_dictionaries(
    {"content": st.just("c"), "metadata": _meta()},
    optional={
        **{f: st.sampled_from([*STR_VALUES, None]) for f in
           ["event_type", "workspace_id", "session_id", "agent_id", "git_branch", "tier",
            "visibility"]},
        "timestamp": st.sampled_from(TS),
        "id": st.sampled_from(["a", "b"]),
    },
)


@settings(max_examples=200, deadline=None)
@given(st.lists(RECORD, max_size=25), WIRE_FILTERS)
def test_property_evaluate_equals_matches(records, wire):
    node = parse_filter(wire)
    p = Postings()
    for label, r in enumerate(records):
        p.add(label * 2, r)
    expected = {label * 2 for label, r in enumerate(records) if matches(node, r)}
    got = evaluate(node, p)
    assert set(got.tolist()) == expected
    assert got.dtype == np.int64 and np.all(got[1:] > got[:-1])
    assert 0.0 <= estimate(node, p.stats()) <= 1.0


@settings(max_examples=150, deadline=None)
@given(WIRE_FILTERS)
def test_property_wire_filters_parse_and_round_trip(wire):
    node = parse_filter(wire)
    again = parse_filter(to_wire(node))
    assert again == node
    assert shape(again) == shape(node)
    assert to_wire(again) == to_wire(node)

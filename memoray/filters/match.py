"""Matching one internal (snake_case) record: matches() is the readable reference,
compile_matcher() the same test as closures for residual scans over many rows."""

from __future__ import annotations

from collections.abc import Callable
from functools import lru_cache
from typing import Any

from memoray.filters.nodes import (
    All,
    And,
    Eq,
    Exists,
    In,
    Leaf,
    Node,
    Not,
    Or,
    Range,
    Scalar,
    range_kind,
    value_kind,
)


@lru_cache(maxsize=4096)
def _path(field: str) -> tuple[str, ...]:
    return tuple(field.split(".")[1:])


def _get(record: dict, field: str) -> Any:
    if not field.startswith("metadata."):
        return record.get(field)
    cur: Any = record.get("metadata")
    for part in _path(field):
        if not isinstance(cur, dict):
            return None
        cur = cur.get(part)
    return cur


def _same(a: Any, b: Scalar) -> bool:
    return a == b and value_kind(a) == value_kind(b)


def in_range(node: Range, v: Any) -> bool:
    k = value_kind(v)
    if k not in (2, 3) or k != range_kind(node):
        return False
    if node.lo is not None and (v < node.lo or (v == node.lo and not node.lo_incl)):
        return False
    return node.hi is None or v < node.hi or (node.hi_incl and v == node.hi)


def _leaf_scalar(node: Leaf, v: Any) -> bool:
    if isinstance(node, Eq):
        return _same(v, node.value)
    if isinstance(node, In):
        return any(_same(v, x) for x in node.values)
    assert isinstance(node, Range)
    return in_range(node, v)


def matches(node: Node, record: dict) -> bool:
    """Evaluate the tree on one internal (snake_case) record."""
    if isinstance(node, And):
        return all(matches(c, record) for c in node.children)
    if isinstance(node, Or):
        return any(matches(c, record) for c in node.children)
    if isinstance(node, Not):
        return not matches(node.child, record)
    if isinstance(node, All):
        return True
    v = _get(record, node.field)
    if isinstance(node, Exists):
        return (v is not None) == node.present
    if isinstance(v, list):  # any element; a null inside a list is not "field is null"
        return any(_leaf_scalar(node, e) for e in v if e is not None)
    return _leaf_scalar(node, v)


def compile_matcher(node: Node) -> Callable[[dict], bool]:
    """A closure equivalent to matches(node, .): residual scans run it per row, and closures
    skip the isinstance walk. matches() stays the readable reference; the property tests check
    the two agree."""
    if isinstance(node, All):
        return lambda r: True
    if isinstance(node, And):
        fs = tuple(map(compile_matcher, node.children))
        return lambda r: all(f(r) for f in fs)
    if isinstance(node, Or):
        fs = tuple(map(compile_matcher, node.children))
        return lambda r: any(f(r) for f in fs)
    if isinstance(node, Not):
        f = compile_matcher(node.child)
        return lambda r: not f(r)
    get = _getter(node.field)
    if isinstance(node, Exists):
        if node.present:
            return lambda r: get(r) is not None
        return lambda r: get(r) is None
    test = _tester(node)

    def leaf(r: dict) -> bool:
        v = get(r)
        if isinstance(v, list):
            return any(test(e) for e in v if e is not None)
        return test(v)

    return leaf


def _getter(field: str) -> Callable[[dict], Any]:
    if not field.startswith("metadata."):
        return lambda r: r.get(field)
    path = _path(field)
    if len(path) == 1:
        key = path[0]

        def get1(r: dict) -> Any:
            m = r.get("metadata")
            return m.get(key) if isinstance(m, dict) else None

        return get1
    return lambda r: _get(r, field)


def _tester(node: Leaf) -> Callable[[Any], bool]:
    """A typed test of one scalar for Eq/In/Range, following _same and in_range."""
    if isinstance(node, Eq):
        value, kind = node.value, value_kind(node.value)
        if kind == 3:
            return lambda v: v == value and isinstance(v, str)
        if kind == 1:
            return lambda v: v is value
        if kind == 0:
            return lambda v: v is None
        return lambda v: v == value and value_kind(v) == 2
    if isinstance(node, In):
        strs = frozenset(v for v in node.values if isinstance(v, str))
        nums = frozenset(v for v in node.values if value_kind(v) == 2)
        bools = tuple(v for v in node.values if value_kind(v) == 1)
        has_none = None in node.values

        def in_test(v: Any) -> bool:
            if isinstance(v, str):
                return v in strs
            k = value_kind(v)
            if k == 2:
                return v in nums
            if k == 1:
                return any(v is b for b in bools)
            return k == 0 and has_none

        return in_test
    assert isinstance(node, Range)
    lo, lo_incl, hi, hi_incl = node.lo, node.lo_incl, node.hi, node.hi_incl
    want = range_kind(node)

    def range_test(v: Any) -> bool:
        if value_kind(v) != want:
            return False
        if lo is not None and (v < lo or (not lo_incl and v == lo)):
            return False
        return hi is None or v < hi or (hi_incl and v == hi)

    return range_test

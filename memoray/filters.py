"""The filter language: wire JSON (Mongo-like, camelCase) parsed once into a typed, normal tree.

Parsing validates everything up front (limits below), so evaluation never raises. Semantics, where
Mongo leaves room or differs:

- Missing and null are the same thing: `{"f": null}` and `{"f": {"$exists": false}}` both match a
  missing field and a None value (internal records carry every scoped key, often None), and
  `$exists: true` means "present and not null". `f == null` is normalized to Exists(f, False).
- `$ne` / `$nin` / `$not` are plain complements, so they match records where the field is missing.
- Types never mix: a number never equals or compares with a string, and booleans are neither
  numbers nor strings (`{"metadata.x": 1}` does not match `true`). 1 and 1.0 are equal.
- A list-valued field (metadata) matches $eq / $in / ranges when any element does; `null` and
  `$exists` look at the field itself, never inside the list. Nested-object equality is rejected:
  address the key with a dotted path (`metadata.a.b`). Paths do not descend into lists, and a
  metadata key that itself contains a dot cannot be addressed.
- Scoped fields, `id`, `parentId` and `visibility` take string values (or null); `timestamp`,
  `startTime` and `endTime` take ISO 8601 strings (epoch seconds accepted too) and become floats.
- `startTime` / `endTime` are shorthand for timestamp >= / <= and are accepted in any filter
  object, not only at the top.
"""

from __future__ import annotations

import math
from bisect import bisect_left, bisect_right
from collections.abc import Callable
from dataclasses import dataclass
from functools import lru_cache
from typing import TYPE_CHECKING, Any

import numpy as np

from memoray.errors import invalid
from memoray.models import SCOPED_FIELDS, WIRE_TO_FIELD
from memoray.postings import NONE_KEY, union_sorted
from memoray.timeutil import parse_iso, to_iso

if TYPE_CHECKING:
    from memoray.postings import Postings

MAX_DEPTH = 8  # nested filter objects ($and/$or/$not levels), the root being 1
MAX_CLAUSES = 64  # leaf conditions (each field operator, each startTime/endTime)
MAX_IN_LIST = 256  # values in one $in/$nin, and entries in one $and/$or
MAX_STRING = 1024  # characters in any string value or field name

# estimate() defaults for leaves the stats know nothing about (metadata.*, parentId, visibility).
DEFAULT_EQ_SELECTIVITY = 0.3
DEFAULT_SELECTIVITY = 0.5

WIRE_FIELDS: dict[str, str] = WIRE_TO_FIELD | {
    "id": "id", "parentId": "parent_id", "visibility": "visibility", "gitCommit": "git_commit"
}
FIELD_TO_WIRE: dict[str, str] = {v: k for k, v in WIRE_FIELDS.items()}
INDEXED_FIELDS = frozenset(SCOPED_FIELDS) | {"timestamp"}
_STRING_FIELDS = frozenset(SCOPED_FIELDS) | {"id", "parent_id", "visibility", "git_commit"}
_ALLOWED_FIELDS = ", ".join([*WIRE_FIELDS, "metadata.<path>", "startTime", "endTime"])
_FIELD_OPS = ("$eq", "$ne", "$in", "$nin", "$gt", "$gte", "$lt", "$lte", "$exists", "$not")
# operator -> (is the lower bound, inclusive)
_RANGE_OPS = {
    "$gt": (True, False), "$gte": (True, True), "$lt": (False, False), "$lte": (False, True)
}

Scalar = str | int | float | bool | None


# -- the tree -------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class All:
    """Matches every record (the empty filter)."""


@dataclass(frozen=True, slots=True)
class Eq:
    field: str
    value: Scalar  # never None after parsing: null equality is Exists(field, False)


@dataclass(frozen=True, slots=True)
class In:
    field: str
    values: tuple[Scalar, ...]  # distinct; a single value is normalized to Eq


@dataclass(frozen=True, slots=True)
class Range:
    """lo <(=) value <(=) hi; a None bound is open. Both bounds are numbers, or both strings."""

    field: str
    lo: float | str | None
    lo_incl: bool
    hi: float | str | None
    hi_incl: bool


@dataclass(frozen=True, slots=True)
class Exists:
    field: str
    present: bool  # True: present and not null


@dataclass(frozen=True, slots=True)
class And:
    children: tuple[Node, ...]


@dataclass(frozen=True, slots=True)
class Or:
    children: tuple[Node, ...]


@dataclass(frozen=True, slots=True)
class Not:
    child: Node


Node = All | Eq | In | Range | Exists | And | Or | Not
Leaf = Eq | In | Range | Exists


# -- parsing --------------------------------------------------------------------------------------


def parse_filter(obj: dict | None) -> Node:
    """Validate a wire filter and return its normalized tree; INVALID_INPUT names the bad part."""
    if obj is None:
        return All()
    return _Parser().object(obj, "filters", 1)


def _show(key: str) -> str:
    return key if len(key) <= 64 else key[:61] + "..."


class _Parser:
    __slots__ = ("clauses",)

    def __init__(self) -> None:
        self.clauses = 0

    def count(self, path: str) -> None:
        self.clauses += 1
        if self.clauses > MAX_CLAUSES:
            raise invalid(f"{path}: too many conditions (at most {MAX_CLAUSES} per filter)")

    def object(self, obj: Any, path: str, depth: int) -> Node:
        if not isinstance(obj, dict):
            raise invalid(f"{path}: expected an object")
        if depth > MAX_DEPTH:
            raise invalid(f"{path}: nested deeper than {MAX_DEPTH} levels")
        parts: list[Node] = []
        for key, val in obj.items():
            if not isinstance(key, str):
                raise invalid(f"{path}: keys must be strings")
            kpath = f"{path}.{_show(key)}"
            if key in ("$and", "$or"):
                if not isinstance(val, list):
                    raise invalid(f"{kpath}: expected a list of filter objects")
                if not val:
                    raise invalid(f"{kpath}: must not be empty")
                if len(val) > MAX_IN_LIST:
                    raise invalid(f"{kpath}: more than {MAX_IN_LIST} entries")
                children = [self.object(c, f"{kpath}[{i}]", depth + 1) for i, c in enumerate(val)]
                parts.append(_and(children) if key == "$and" else _or(children))
            elif key == "$not":
                parts.append(_not(self.object(val, kpath, depth + 1)))
            elif key.startswith("$"):
                raise invalid(
                    f"{kpath}: unknown operator (allowed here: $and, $or, $not or a field name)"
                )
            elif key in ("startTime", "endTime"):
                self.count(kpath)
                ts = self.timestamp(val, kpath)
                parts.append(
                    Range("timestamp", ts, True, None, False) if key == "startTime"
                    else Range("timestamp", None, False, ts, True)
                )
            else:
                parts.append(self.field_value(self.field(key, kpath), val, kpath, depth))
        return _and(parts)

    def field(self, key: str, path: str) -> str:
        if key in WIRE_FIELDS:
            return WIRE_FIELDS[key]
        if key.startswith("metadata."):
            if len(key) > MAX_STRING:
                raise invalid(f"{path}: field name longer than {MAX_STRING} characters")
            if any(not part for part in key.split(".")[1:]):
                raise invalid(f"{path}: empty segment in metadata path")
            return key
        if key in FIELD_TO_WIRE:
            raise invalid(f"{path}: unknown field; did you mean {FIELD_TO_WIRE[key]!r}?")
        raise invalid(f"{path}: unknown field (allowed: {_ALLOWED_FIELDS})")

    def field_value(self, field: str, val: Any, path: str, depth: int) -> Node:
        if not isinstance(val, dict):
            self.count(path)
            return _eq(field, self.scalar(field, val, path))
        if not val:
            raise invalid(f"{path}: empty operator object")
        if not all(isinstance(k, str) and k.startswith("$") for k in val):
            hint = "a dotted path such as metadata.a.b" if field.startswith("metadata") else "$eq"
            raise invalid(
                f"{path}: expected a value or an object of operators ($eq, $in, ...); "
                f"nested-object equality is not supported, use {hint}"
            )
        parts: list[Node] = []
        for op, arg in val.items():
            opath = f"{path}.{_show(op)}"
            if op == "$not":
                if depth + 1 > MAX_DEPTH:
                    raise invalid(f"{opath}: nested deeper than {MAX_DEPTH} levels")
                if not isinstance(arg, dict):
                    raise invalid(f"{opath}: expected an object of operators")
                parts.append(_not(self.field_value(field, arg, opath, depth + 1)))
                continue
            if op not in _FIELD_OPS:
                raise invalid(f"{opath}: unknown operator (allowed: {', '.join(_FIELD_OPS)})")
            self.count(opath)
            if op in ("$eq", "$ne"):
                node = _eq(field, self.scalar(field, arg, opath))
                parts.append(node if op == "$eq" else _not(node))
            elif op in ("$in", "$nin"):
                if not isinstance(arg, list):
                    raise invalid(f"{opath}: expected a list")
                if len(arg) > MAX_IN_LIST:
                    raise invalid(f"{opath}: more than {MAX_IN_LIST} values")
                values = [self.scalar(field, a, f"{opath}[{i}]") for i, a in enumerate(arg)]
                node = _in(field, values)
                parts.append(node if op == "$in" else _not(node))
            elif op == "$exists":
                if not isinstance(arg, bool):
                    raise invalid(f"{opath}: expected true or false")
                parts.append(Exists(field, arg))
            else:
                is_lo, incl = _RANGE_OPS[op]
                bound = self.bound(field, arg, opath)
                parts.append(
                    Range(field, bound, incl, None, False) if is_lo
                    else Range(field, None, False, bound, incl)
                )
        return _and(parts)

    def timestamp(self, v: Any, path: str) -> float:
        if isinstance(v, str) and len(v) > MAX_STRING:
            raise invalid(f"{path}: longer than {MAX_STRING} characters")
        if not isinstance(v, (str, int, float)):
            raise invalid(f"{path}: expected an ISO 8601 timestamp")
        try:
            ts = parse_iso(v, path)
        except OverflowError:
            ts = math.inf
        if not math.isfinite(ts):
            raise invalid(f"{path}: expected a finite timestamp")
        return ts

    def scalar(self, field: str, v: Any, path: str) -> Scalar:
        """A value for $eq/$in: null, or the field's type."""
        if v is None:
            return None
        if field == "timestamp":
            return self.timestamp(v, path)
        if isinstance(v, str):
            return _bounded(v, path)
        if field in _STRING_FIELDS:
            raise invalid(f"{path}: expected a string or null")
        if isinstance(v, bool):
            return v
        if isinstance(v, (int, float)):
            if isinstance(v, float) and not math.isfinite(v):
                raise invalid(f"{path}: expected a finite number")
            return v
        if isinstance(v, list):
            raise invalid(f"{path}: expected a scalar value (use $in to match any of several)")
        raise invalid(f"{path}: expected a string, number, boolean or null")

    def bound(self, field: str, v: Any, path: str) -> float | str:
        """A value for $gt/$gte/$lt/$lte: something that orders."""
        if field == "timestamp":
            return self.timestamp(v, path)
        if isinstance(v, str):
            return _bounded(v, path)
        if field in _STRING_FIELDS:
            raise invalid(f"{path}: expected a string")
        if isinstance(v, (int, float)) and not isinstance(v, bool):
            if isinstance(v, float) and not math.isfinite(v):
                raise invalid(f"{path}: expected a finite number")
            return v
        raise invalid(f"{path}: expected a number or a string to compare with")


# -- normalizing constructors ---------------------------------------------------------------------


def _bounded(v: str, path: str) -> str:
    if len(v) > MAX_STRING:
        raise invalid(f"{path}: longer than {MAX_STRING} characters")
    return v


def _eq(field: str, value: Scalar) -> Node:
    return Exists(field, False) if value is None else Eq(field, value)


def _in(field: str, values: list[Scalar]) -> Node:
    distinct = tuple({(type(v), v): v for v in values}.values())
    if len(distinct) == 1:
        return _eq(field, distinct[0])
    return In(field, distinct)


def _not(child: Node) -> Node:
    if isinstance(child, Not):
        return child.child
    if isinstance(child, Exists):
        return Exists(child.field, not child.present)
    return Not(child)


def _and(children: list[Node]) -> Node:
    """Flatten, drop All, merge ranges on one field, dedupe."""
    flat: list[Node] = []
    for c in children:
        if isinstance(c, All):
            continue
        for cc in c.children if isinstance(c, And) else (c,):
            if isinstance(cc, Range):
                for i, prev in enumerate(flat):
                    merged = _merge_ranges(prev, cc) if isinstance(prev, Range) else None
                    if merged is not None:
                        flat[i] = merged
                        break
                else:
                    flat.append(cc)
            else:
                flat.append(cc)
    flat = _dedupe(flat)
    if not flat:
        return All()
    return flat[0] if len(flat) == 1 else And(tuple(flat))


def _or(children: list[Node]) -> Node:
    flat: list[Node] = []
    for c in children:
        if isinstance(c, All):
            return All()
        flat.extend(c.children if isinstance(c, Or) else (c,))
    flat = _dedupe(flat)
    return flat[0] if len(flat) == 1 else Or(tuple(flat))


def _dedupe(nodes: list[Node]) -> list[Node]:
    # repr, not ==: Eq(f, 1) and Eq(f, True) compare equal but are different conditions.
    seen: dict[str, Node] = {}
    for n in nodes:
        seen.setdefault(repr(n), n)
    return list(seen.values())


def _range_kind(r: Range) -> int:
    return _kind(r.lo if r.lo is not None else r.hi)


def _merge_ranges(a: Range, b: Range) -> Range | None:
    """The intersection of two ranges on one field, or None when their types differ."""
    if a.field != b.field or _range_kind(a) != _range_kind(b):
        return None
    lo, lo_incl = a.lo, a.lo_incl
    if b.lo is not None and (lo is None or b.lo > lo or (b.lo == lo and not b.lo_incl)):
        lo, lo_incl = b.lo, b.lo_incl
    hi, hi_incl = a.hi, a.hi_incl
    if b.hi is not None and (hi is None or b.hi < hi or (b.hi == hi and not b.hi_incl)):
        hi, hi_incl = b.hi, b.hi_incl
    return Range(a.field, lo, lo_incl, hi, hi_incl)


# -- matching one record --------------------------------------------------------------------------


def _kind(v: Any) -> int:
    """Type classes that may be compared: 0 null, 1 bool, 2 number, 3 string, 4 other."""
    if v is None:
        return 0
    if v is True or v is False:
        return 1
    if isinstance(v, (int, float)):
        return 2
    if isinstance(v, str):
        return 3
    return 4


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
    return a == b and _kind(a) == _kind(b)


def _in_range(node: Range, v: Any) -> bool:
    k = _kind(v)
    if k not in (2, 3) or k != _range_kind(node):
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
    return _in_range(node, v)


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


# -- evaluating over postings ---------------------------------------------------------------------

_EMPTY = np.empty(0, dtype=np.int64)


def _intersect(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Sorted-unique intersection; searchsorted is O(m log n), intersect1d would re-sort both."""
    if len(a) > len(b):
        a, b = b, a
    if not len(a):
        return _EMPTY
    idx = np.searchsorted(b, a)
    np.minimum(idx, len(b) - 1, out=idx)
    return a[b[idx] == a]


def _difference(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """a minus b, both sorted unique (setdiff1d without its sort)."""
    if not len(a) or not len(b):
        return a
    idx = np.searchsorted(b, a)
    np.minimum(idx, len(b) - 1, out=idx)
    return a[b[idx] != a]


def is_indexable(node: Node) -> bool:
    """True when evaluate() answers from the postings alone, never reading a row."""
    if isinstance(node, All):
        return True
    if isinstance(node, (And, Or)):
        return all(is_indexable(c) for c in node.children)
    if isinstance(node, Not):
        return is_indexable(node.child)
    return node.field in INDEXED_FIELDS


def evaluate(node: Node, postings: Postings) -> np.ndarray:
    """The exact labels matching node: sorted unique int64, the same set matches() accepts."""
    return _eval(node, postings, None)


def _eval(node: Node, p: Postings, cand: np.ndarray | None) -> np.ndarray:
    """node evaluated within cand (None: all labels). Rows are read only for non-indexed parts,
    and only for labels still in cand."""
    if isinstance(node, All):
        return p.all_labels() if cand is None else cand
    if isinstance(node, And):
        # Positive indexed children narrow first; indexed negations then subtract from what is
        # left (cheaper than complementing against all labels); rows are read last, and only
        # for the survivors.
        positive, negative, residual = [], [], []
        for c in node.children:
            if not is_indexable(c):
                residual.append(c)
            else:
                (negative if isinstance(c, Not) else positive).append(c)
        out = cand
        for c in positive:
            r = _eval(c, p, None)
            out = r if out is None else _intersect(out, r)
            if not len(out):
                return _EMPTY
        for c in negative:
            out = _eval(c, p, out)
            if not len(out):
                return _EMPTY
        if residual:
            if out is None:
                out = p.all_labels()
            pred = _compile(And(tuple(residual)) if len(residual) > 1 else residual[0])
            out = _scan(out, p, pred)
        return out if out is not None else p.all_labels()
    if isinstance(node, Or):
        parts = [_eval(c, p, cand) for c in node.children if is_indexable(c)]
        residual = [c for c in node.children if not is_indexable(c)]
        out = union_sorted(parts)
        if residual:
            rest = _difference(p.all_labels() if cand is None else cand, out)
            pred = _compile(Or(tuple(residual)) if len(residual) > 1 else residual[0])
            out = union_sorted([out, _scan(rest, p, pred)])
        return out
    if isinstance(node, Not):
        base = p.all_labels() if cand is None else cand
        return _difference(base, _eval(node.child, p, base))
    if node.field in INDEXED_FIELDS:
        r = _leaf_postings(node, p)
        return r if cand is None else _intersect(cand, r)
    return _scan(p.all_labels() if cand is None else cand, p, _compile(node))


def _scan(labels: np.ndarray, p: Postings, pred: Callable[[dict], bool]) -> np.ndarray:
    row = p.row
    kept = [lab for lab in labels.tolist() if pred(row(lab))]
    return np.array(kept, dtype=np.int64) if kept else _EMPTY


def _compile(node: Node) -> Callable[[dict], bool]:
    """A closure equivalent to matches(node, .): residual scans run it per row, and closures
    skip the isinstance walk. matches() stays the readable reference; the property tests check
    the two agree."""
    if isinstance(node, All):
        return lambda r: True
    if isinstance(node, And):
        fs = tuple(map(_compile, node.children))
        return lambda r: all(f(r) for f in fs)
    if isinstance(node, Or):
        fs = tuple(map(_compile, node.children))
        return lambda r: any(f(r) for f in fs)
    if isinstance(node, Not):
        f = _compile(node.child)
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
    """A typed test of one scalar for Eq/In/Range, following _same and _in_range."""
    if isinstance(node, Eq):
        value, kind = node.value, _kind(node.value)
        if kind == 3:
            return lambda v: v == value and isinstance(v, str)
        if kind == 1:
            return lambda v: v is value
        if kind == 0:
            return lambda v: v is None
        return lambda v: v == value and _kind(v) == 2
    if isinstance(node, In):
        strs = frozenset(v for v in node.values if isinstance(v, str))
        nums = frozenset(v for v in node.values if _kind(v) == 2)
        bools = tuple(v for v in node.values if _kind(v) == 1)
        has_none = None in node.values

        def in_test(v: Any) -> bool:
            if isinstance(v, str):
                return v in strs
            k = _kind(v)
            if k == 2:
                return v in nums
            if k == 1:
                return any(v is b for b in bools)
            return k == 0 and has_none

        return in_test
    assert isinstance(node, Range)
    lo, lo_incl, hi, hi_incl = node.lo, node.lo_incl, node.hi, node.hi_incl
    want = _range_kind(node)

    def range_test(v: Any) -> bool:
        if _kind(v) != want:
            return False
        if lo is not None and (v < lo or (not lo_incl and v == lo)):
            return False
        return hi is None or v < hi or (hi_incl and v == hi)

    return range_test


def _leaf_postings(node: Leaf, p: Postings) -> np.ndarray:
    field = node.field
    if field == "timestamp":  # values and bounds are floats here (the parser made them so)
        if isinstance(node, Eq):
            return p.labels_ts_range(node.value, True, node.value, True)  # type: ignore[arg-type]
        if isinstance(node, In):
            return p.labels_in("timestamp", node.values)
        if isinstance(node, Range):
            lo, hi = node.lo, node.hi
            return p.labels_ts_range(lo, node.lo_incl, hi, node.hi_incl)  # type: ignore[arg-type]
        with_ts = p.labels_ts_range(None, True, None, True)
        return with_ts if node.present else _difference(p.all_labels(), with_ts)
    if isinstance(node, Eq):
        return p.labels_eq(field, node.value)
    if isinstance(node, In):
        return p.labels_in(field, node.values)
    if isinstance(node, Range):
        return p.labels_in(field, [v for v in p.values(field) if _in_range(node, v)])
    missing = p.labels_eq(field, None)
    return _difference(p.all_labels(), missing) if node.present else missing


# -- planning helpers -----------------------------------------------------------------------------


def estimate(node: Node, stats: dict) -> float:
    """Selectivity in [0, 1] from Postings.stats(), never touching rows.

    Scoped fields are exact from counts; timestamp ranges interpolate the quantiles; And assumes
    independence; `id` equality is 1/total; anything else uses DEFAULT_EQ_SELECTIVITY for
    equality ($in: 1 - (1 - d)^k) and DEFAULT_SELECTIVITY otherwise.
    """
    return min(1.0, max(0.0, _est(node, stats)))


def _est(node: Node, stats: dict) -> float:
    if isinstance(node, All):
        return 1.0
    if isinstance(node, And):
        return math.prod(_est(c, stats) for c in node.children)
    if isinstance(node, Or):
        return 1.0 - math.prod(1.0 - _est(c, stats) for c in node.children)
    if isinstance(node, Not):
        return 1.0 - _est(node.child, stats)
    total = stats.get("total") or 0
    field = node.field
    counts = stats.get("fields", {}).get(field)
    if counts is not None:
        if not total:
            return 0.0
        if isinstance(node, Eq):
            n = counts.get(node.value, 0)
        elif isinstance(node, In):
            n = sum(counts.get(NONE_KEY if v is None else v, 0) for v in node.values)
        elif isinstance(node, Range):
            n = sum(c for v, c in counts.items() if v != NONE_KEY and _in_range(node, v))
        else:
            n = counts.get(NONE_KEY, 0)
            n = total - n if node.present else n
        return n / total
    if field == "timestamp":
        qs = stats.get("ts_quantiles") or []
        if not total or not qs:
            return 0.0
        if isinstance(node, Range):
            hi = 1.0 if node.hi is None else _cdf(qs, node.hi, node.hi_incl)
            lo = 0.0 if node.lo is None else _cdf(qs, node.lo, not node.lo_incl)
            return max(0.0, hi - lo)
        if isinstance(node, (Eq, In)):
            points = (node.value,) if isinstance(node, Eq) else node.values
            return sum(1.0 / total for v in points if v is not None and qs[0] <= v <= qs[-1])
        return 1.0 if node.present else 0.0
    if field == "id" and isinstance(node, (Eq, In)) and total:
        return (1 if isinstance(node, Eq) else len(node.values)) / total
    if isinstance(node, Eq):
        return DEFAULT_EQ_SELECTIVITY
    if isinstance(node, In):
        return 1.0 - (1.0 - DEFAULT_EQ_SELECTIVITY) ** len(node.values)
    return DEFAULT_SELECTIVITY


def _cdf(qs: list[float], x: float, inclusive: bool) -> float:
    """Fraction of timestamps <= x (inclusive) or < x, interpolated between quantiles."""
    n = len(qs) - 1
    j = bisect_right(qs, x) if inclusive else bisect_left(qs, x)
    if j == 0:
        return 0.0
    if j > n:
        return 1.0
    a, b = qs[j - 1], qs[j]
    return (j - 1 + ((x - a) / (b - a) if b > a else 0.0)) / n


def shape(node: Node) -> str:
    """A canonical key for the query's shape: fields and operators, values elided, children
    sorted, so plans can be cached per shape."""
    if isinstance(node, All):
        return "all"
    if isinstance(node, (And, Or)):
        name = "and" if isinstance(node, And) else "or"
        return f"{name}({','.join(sorted(shape(c) for c in node.children))})"
    if isinstance(node, Not):
        return f"not({shape(node.child)})"
    if isinstance(node, Eq):
        return f"eq:{node.field}"
    if isinstance(node, In):
        return f"in:{node.field}"
    if isinstance(node, Exists):
        return f"exists:{node.field}={'true' if node.present else 'false'}"
    lo = "-" if node.lo is None else (">=" if node.lo_incl else ">")
    hi = "-" if node.hi is None else ("<=" if node.hi_incl else "<")
    return f"range:{node.field}[{lo},{hi}]"


def _wire_value(field: str, v: Any) -> Any:
    if field == "timestamp" and isinstance(v, float):
        try:
            iso = to_iso(v)
        except (ValueError, OverflowError, OSError):  # beyond datetime's years
            return v
        return iso if parse_iso(iso) == v else v  # epoch seconds when ISO would lose precision
    return v


def to_wire(node: Node) -> dict:
    """The wire form of a tree (for explain-query); parse_filter(to_wire(n)) == n."""
    if isinstance(node, All):
        return {}
    if isinstance(node, And):
        return {"$and": [to_wire(c) for c in node.children]}
    if isinstance(node, Or):
        return {"$or": [to_wire(c) for c in node.children]}
    if isinstance(node, Not):
        c = node.child
        if isinstance(c, Eq):
            return {_wire_name(c.field): {"$ne": _wire_value(c.field, c.value)}}
        if isinstance(c, In):
            return {_wire_name(c.field): {"$nin": [_wire_value(c.field, v) for v in c.values]}}
        return {"$not": to_wire(c)}
    name = _wire_name(node.field)
    if isinstance(node, Eq):
        return {name: _wire_value(node.field, node.value)}
    if isinstance(node, In):
        return {name: {"$in": [_wire_value(node.field, v) for v in node.values]}}
    if isinstance(node, Exists):
        return {name: {"$exists": node.present}}
    ops: dict[str, Any] = {}
    if node.lo is not None:
        ops["$gte" if node.lo_incl else "$gt"] = _wire_value(node.field, node.lo)
    if node.hi is not None:
        ops["$lte" if node.hi_incl else "$lt"] = _wire_value(node.field, node.hi)
    return {name: ops}


def _wire_name(field: str) -> str:
    return FIELD_TO_WIRE.get(field, field)  # metadata.* paths are the same on both sides


def referenced_workspaces(node: Node) -> set[str] | None:
    """The workspaces a filter provably confines results to, or None when it does not.

    Eq/In on workspaceId confine; And confines to the intersection of its confining children;
    Or only when every branch confines (to the union). Not never confines. An empty set means
    "no workspace at all", which is still a confinement.
    """
    if isinstance(node, Eq) and node.field == "workspace_id":
        return {node.value} if isinstance(node.value, str) else set()
    if isinstance(node, In) and node.field == "workspace_id":
        return {v for v in node.values if isinstance(v, str)}
    if isinstance(node, Exists) and node.field == "workspace_id" and not node.present:
        return set()
    if isinstance(node, And):
        found = [r for r in map(referenced_workspaces, node.children) if r is not None]
        return set.intersection(*found) if found else None
    if isinstance(node, Or):
        branches = [referenced_workspaces(c) for c in node.children]
        if any(r is None for r in branches):
            return None
        return set().union(*branches)  # type: ignore[arg-type]
    return None

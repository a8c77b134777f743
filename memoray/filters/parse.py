"""Wire JSON -> tree: validates everything up front (the limits below), so evaluation never
raises; each error names the bad part of the filter (INVALID_INPUT)."""

from __future__ import annotations

import math
from typing import Any

from memoray.errors import invalid
from memoray.filters.nodes import All, Exists, Node, Range, Scalar, and_, eq, in_, not_, or_
from memoray.filters.wire import FIELD_TO_WIRE, WIRE_FIELDS
from memoray.models import SCOPED_FIELDS
from memoray.timeutil import parse_iso

MAX_DEPTH = 8  # nested filter objects ($and/$or/$not levels), the root being 1
MAX_CLAUSES = 64  # leaf conditions (each field operator, each startTime/endTime)
MAX_IN_LIST = 256  # values in one $in/$nin, and entries in one $and/$or
MAX_STRING = 1024  # characters in any string value or field name

_STRING_FIELDS = frozenset(SCOPED_FIELDS) | {"id", "parent_id", "visibility", "git_commit"}
_ALLOWED_FIELDS = ", ".join([*WIRE_FIELDS, "metadata.<path>", "startTime", "endTime"])
_FIELD_OPS = ("$eq", "$ne", "$in", "$nin", "$gt", "$gte", "$lt", "$lte", "$exists", "$not")
# operator -> (is the lower bound, inclusive)
_RANGE_OPS = {
    "$gt": (True, False), "$gte": (True, True), "$lt": (False, False), "$lte": (False, True)
}


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
                parts.append(and_(children) if key == "$and" else or_(children))
            elif key == "$not":
                parts.append(not_(self.object(val, kpath, depth + 1)))
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
        return and_(parts)

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
            return eq(field, self.scalar(field, val, path))
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
                parts.append(not_(self.field_value(field, arg, opath, depth + 1)))
                continue
            if op not in _FIELD_OPS:
                raise invalid(f"{opath}: unknown operator (allowed: {', '.join(_FIELD_OPS)})")
            self.count(opath)
            if op in ("$eq", "$ne"):
                node = eq(field, self.scalar(field, arg, opath))
                parts.append(node if op == "$eq" else not_(node))
            elif op in ("$in", "$nin"):
                if not isinstance(arg, list):
                    raise invalid(f"{opath}: expected a list")
                if len(arg) > MAX_IN_LIST:
                    raise invalid(f"{opath}: more than {MAX_IN_LIST} values")
                values = [self.scalar(field, a, f"{opath}[{i}]") for i, a in enumerate(arg)]
                node = in_(field, values)
                parts.append(node if op == "$in" else not_(node))
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
        return and_(parts)

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


def _bounded(v: str, path: str) -> str:
    if len(v) > MAX_STRING:
        raise invalid(f"{path}: longer than {MAX_STRING} characters")
    return v

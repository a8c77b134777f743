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

from memoray.filters.estimate import DEFAULT_EQ_SELECTIVITY, DEFAULT_SELECTIVITY, estimate
from memoray.filters.evaluate import INDEXED_FIELDS, evaluate, is_indexable
from memoray.filters.match import matches
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
    and_,
    eq,
    in_,
    not_,
    or_,
)
from memoray.filters.parse import MAX_CLAUSES, MAX_DEPTH, MAX_IN_LIST, MAX_STRING, parse_filter
from memoray.filters.wire import FIELD_TO_WIRE, WIRE_FIELDS, referenced_workspaces, shape, to_wire

__all__ = [
    "DEFAULT_EQ_SELECTIVITY", "DEFAULT_SELECTIVITY", "FIELD_TO_WIRE", "INDEXED_FIELDS",
    "MAX_CLAUSES", "MAX_DEPTH", "MAX_IN_LIST", "MAX_STRING", "WIRE_FIELDS",
    "All", "And", "Eq", "Exists", "In", "Leaf", "Node", "Not", "Or", "Range", "Scalar",
    "and_", "eq", "in_", "not_", "or_",
    "estimate", "evaluate", "is_indexable", "matches", "parse_filter", "referenced_workspaces",
    "shape", "to_wire",
]

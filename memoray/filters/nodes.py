"""The filter tree: typed nodes in normal form, and the builders that keep it normal.

Every tree is built through eq / in_ / not_ / and_ / or_ (the parser, the service's scoping, the
expiry worker), so a tree that means the same thing has the same shape: null equality is
Exists, single-value $in is Eq, double negation and nested And/Or are flattened, ranges on one
field are intersected and duplicates dropped.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

Scalar = str | int | float | bool | None


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


# -- value types ----------------------------------------------------------------------------------


def value_kind(v: Any) -> int:
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


def range_kind(r: Range) -> int:
    return value_kind(r.lo if r.lo is not None else r.hi)



# -- normalizing constructors ---------------------------------------------------------------------


def eq(field: str, value: Scalar) -> Node:
    return Exists(field, False) if value is None else Eq(field, value)


def in_(field: str, values: list[Scalar]) -> Node:
    distinct = tuple({(type(v), v): v for v in values}.values())
    if len(distinct) == 1:
        return eq(field, distinct[0])
    return In(field, distinct)


def not_(child: Node) -> Node:
    if isinstance(child, Not):
        return child.child
    if isinstance(child, Exists):
        return Exists(child.field, not child.present)
    return Not(child)


def and_(children: list[Node]) -> Node:
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


def or_(children: list[Node]) -> Node:
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


def _merge_ranges(a: Range, b: Range) -> Range | None:
    """The intersection of two ranges on one field, or None when their types differ."""
    if a.field != b.field or range_kind(a) != range_kind(b):
        return None
    lo, lo_incl = a.lo, a.lo_incl
    if b.lo is not None and (lo is None or b.lo > lo or (b.lo == lo and not b.lo_incl)):
        lo, lo_incl = b.lo, b.lo_incl
    hi, hi_incl = a.hi, a.hi_incl
    if b.hi is not None and (hi is None or b.hi < hi or (b.hi == hi and not b.hi_incl)):
        hi, hi_incl = b.hi, b.hi_incl
    return Range(a.field, lo, lo_incl, hi, hi_incl)

"""The tree seen from outside: wire field names, the wire form back (explain-query), the
query's shape (plan cache key) and the workspaces a filter confines results to."""

from __future__ import annotations

from typing import Any

from memoray.filters.nodes import All, And, Eq, Exists, In, Node, Not, Or
from memoray.models import WIRE_TO_FIELD
from memoray.timeutil import parse_iso, to_iso

WIRE_FIELDS: dict[str, str] = WIRE_TO_FIELD | {
    "id": "id", "parentId": "parent_id", "visibility": "visibility", "gitCommit": "git_commit"
}
FIELD_TO_WIRE: dict[str, str] = {v: k for k, v in WIRE_FIELDS.items()}


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

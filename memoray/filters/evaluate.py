"""Evaluating a tree over a shard's postings: indexed leaves come from the postings alone,
and rows are read only for the non-indexed rest, only for labels still in play."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

import numpy as np

from memoray.filters.match import compile_matcher, in_range
from memoray.filters.nodes import All, And, Eq, In, Leaf, Node, Not, Or, Range
from memoray.models import SCOPED_FIELDS
from memoray.postings import union_sorted

if TYPE_CHECKING:
    from memoray.postings import Postings

INDEXED_FIELDS = frozenset(SCOPED_FIELDS) | {"timestamp"}

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
            pred = compile_matcher(And(tuple(residual)) if len(residual) > 1 else residual[0])
            out = _scan(out, p, pred)
        return out if out is not None else p.all_labels()
    if isinstance(node, Or):
        parts = [_eval(c, p, cand) for c in node.children if is_indexable(c)]
        residual = [c for c in node.children if not is_indexable(c)]
        out = union_sorted(parts)
        if residual:
            rest = _difference(p.all_labels() if cand is None else cand, out)
            pred = compile_matcher(Or(tuple(residual)) if len(residual) > 1 else residual[0])
            out = union_sorted([out, _scan(rest, p, pred)])
        return out
    if isinstance(node, Not):
        base = p.all_labels() if cand is None else cand
        return _difference(base, _eval(node.child, p, base))
    if node.field in INDEXED_FIELDS:
        r = _leaf_postings(node, p)
        return r if cand is None else _intersect(cand, r)
    return _scan(p.all_labels() if cand is None else cand, p, compile_matcher(node))


def _scan(labels: np.ndarray, p: Postings, pred: Callable[[dict], bool]) -> np.ndarray:
    row = p.row
    kept = [lab for lab in labels.tolist() if pred(row(lab))]
    return np.array(kept, dtype=np.int64) if kept else _EMPTY


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
        return p.labels_in(field, [v for v in p.values(field) if in_range(node, v)])
    missing = p.labels_eq(field, None)
    return _difference(p.all_labels(), missing) if node.present else missing

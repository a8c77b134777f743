"""Selectivity estimates for the planner (actors/planner.py), from Postings.stats() only."""

from __future__ import annotations

import math
from bisect import bisect_left, bisect_right

from memoray.filters.match import in_range
from memoray.filters.nodes import All, And, Eq, In, Node, Not, Or, Range
from memoray.postings import NONE_KEY

# estimate() defaults for leaves the stats know nothing about (metadata.*, parentId, visibility).
DEFAULT_EQ_SELECTIVITY = 0.3
DEFAULT_SELECTIVITY = 0.5


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
            n = sum(c for v, c in counts.items() if v != NONE_KEY and in_range(node, v))
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

"""build_context: prepare, pack, report what was included and what was left out."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

from memoray.context.constants import DROP, INDEX_TITLE, SECTIONS, STYLES
from memoray.context.items import prepare_items
from memoray.context.packer import Packer
from memoray.context.render import title_for
from memoray.errors import invalid
from memoray.timeutil import now as _now


@dataclass
class ContextBlock:
    text: str
    tokens: int
    included: list[str]
    omitted: list[str]  # dropped for budget, then near-duplicates, then empty memories
    sections: dict[str, int] = field(default_factory=dict)



def build_context(
    memories: list[dict[str, Any]],
    *,
    budget: int,
    query: str | None,
    workspace_id: str,
    branch: str | None,
    now: float | None = None,
    margin: float = 0.0,
    style: str = "full",
) -> ContextBlock:
    """Pack ``memories`` (internal snake_case records, ``score`` in 0-1 when from a query).

    ``style="index"`` makes each entry one line that starts with the memory's id (expandable
    with get-memory), so a budget carries many more memories; room left over lengthens the
    best-ranked lines to their trimmed form, never to full text. Nothing to show gives "".

    Deterministic for the same inputs and ``now`` (the current time when None; it only sets ages
    and recency).
    """
    if style not in STYLES:
        raise invalid(f"style: must be one of {', '.join(STYLES)}")
    if isinstance(budget, bool) or not isinstance(budget, int) or budget < 0:
        raise invalid("tokenBudget: must be a non-negative integer")
    if not isinstance(margin, (int, float)) or not math.isfinite(margin) or margin < 0:
        raise invalid("margin: must be a non-negative number")
    limit = int(budget / (1.0 + margin))
    while limit > 0 and limit * (1.0 + margin) > budget:  # guard float rounding
        limit -= 1
    now_s = _now() if now is None else float(now)
    if style == "index" and not query:
        # An index without a query ranks by what lasts and how recent it is: the scores the
        # search attached answer a stand-in query, and favour whatever shares its words.
        memories = [{**m, "score": None} for m in memories]
    items, duplicates, empty = prepare_items(memories, query, branch, now_s, style == "index")
    # an index goes to a caller that names the workspace and branch itself (the hook's header)
    title = INDEX_TITLE if style == "index" else title_for(workspace_id, branch)
    packer = Packer(items, title, limit, index=style == "index")
    text = packer.pack()
    tokens = packer.tokens
    included = [it for it in packer.order if it.level != DROP]
    shown = {it.id for it in included}
    sections = {name: 0 for name in SECTIONS}
    for it in included:
        sections[SECTIONS[it.section]] += 1
    return ContextBlock(
        text=text,
        tokens=tokens,
        included=[it.id for it in packer.display_order() if it.id in shown],
        omitted=list(
            dict.fromkeys(
                mid
                for mid in [
                    *(it.id for it in packer.order if it.level == DROP),
                    *duplicates,
                    *empty,
                ]
                if mid not in shown
            )
        ),
        sections=sections,
    )


# -- preparing records --------------------------------------------------------------------------

"""build-context: pack the memories that matter into a markdown block that fits a token budget.

Layout: a header naming the workspace and branch (and, when anything was left out, how much), then
up to five sections in a fixed order, each only when it has an entry; each memory appears once,
in the first section that claims it; nothing at all ("") when there is no memory to show:

1. "Decisions and conventions": event types decision/convention/preference, tiers
   preference/pattern.
2. "Lessons: failed, then fixed": event type lesson (a failure and the change that fixed it);
   the failure it fixes (``metadata.failureId`` == the lesson's ``metadata.fixes``) is dropped.
3. "Recent changes on this branch": code_change/session_summary on ``branch``, newest first.
4. "Open problems and failures": errors, reviews, and commands whose metadata says they failed
   (``exitCode``/``exit_code`` non-zero, ``failed``/``isError``/``is_error`` true), newest first.
5. "Relevant to the query": everything else, best score first.

Each entry is labelled with its type, its age (within a day) or date, and its branch when that
is not the current one. ``style="index"`` puts the id first on every line (see build_context).

Budget: each memory has three forms before it is dropped: full text, trimmed (first
``TRIM_TOKENS`` tokens, cut at a word, + "…") and one line (first meaningful line, at most
``LINE_TOKENS`` tokens). Memories are ranked by priority, ``0.6 score + 0.25 recency + 0.15 tier``
plus ``LASTING_BONUS`` for decisions and lessons (missing scores count as neutral), ties to the
newer. Forms are handed out best-first under a
ceiling that only ever lowers, so no memory gets a better form than one ranked above it and the
lowest-ranked degrade first: full text while ``DETAIL_SHARE`` of the room lasts, then trimmed
while it lasts, then one line each while the whole room lasts, then dropped. The one exception is
size, not rank: a memory whose full text alone would take more than ``FULL_SHARE`` of the room is
trimmed without lowering the ceiling. Room left at the end upgrades forms best-first. So a long
list shows breadth (many one-liners) under a few detailed entries, instead of three in full.

Guarantee: ``count_tokens(text) * (1 + margin) <= budget``, always, header included. Costs are
summed per entry (WordPiece counts are additive across whitespace) and the final text is counted
once more; if that ever disagrees, the lowest-ranked entry degrades until it fits. Counts are
MiniLM WordPiece tokens (see ``memoray.tokens``); pass ``margin=SAFETY_MARGIN`` to leave room for
the agent's own tokenizer.

Tiny budgets: with no room for even the best memory's line, the text is the first of these that
fits: the full header with its "_N memories omitted to fit the budget_" line; "# Memory context"
plus that line; "# Memory context" (3 tokens); "" (budgets of 0-2 tokens).
"""

from memoray.context.build import ContextBlock, build_context
from memoray.context.constants import (
    DETAIL_SHARE,
    FULL_SHARE,
    INDEX_LINE_TOKENS,
    LINE_TOKENS,
    SAFETY_MARGIN,
    SECTIONS,
    STYLES,
    TRIM_TOKENS,
)

__all__ = ["DETAIL_SHARE", "FULL_SHARE", "INDEX_LINE_TOKENS", "LINE_TOKENS", "SAFETY_MARGIN",
           "SECTIONS", "STYLES", "TRIM_TOKENS", "ContextBlock", "build_context"]

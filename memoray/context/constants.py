"""Section names, styles, budget shares and the patterns the packer uses."""

from __future__ import annotations

import re

SECTIONS = (
    "Decisions and conventions",
    "Lessons: failed, then fixed",
    "Recent changes on this branch",
    "Open problems and failures",
    "Relevant to the query",
)
STYLES = ("full", "index")
# Two short memories of one type whose word sets overlap this much are one (a prompt asked
# twice in other words, a decision restated): the best-ranked copy is kept. Long texts are
# left alone: their word sets overlap without their content being the same.
NEAR_DUPLICATE = 0.8
NEAR_DUPLICATE_MAX_WORDS = 40
# Recommended ``margin``: WordPiece drops whitespace that BPE tokenizers pay for (indentation).
SAFETY_MARGIN = 0.15
TRIM_TOKENS = 48
LINE_TOKENS = 20
INDEX_LINE_TOKENS = 14  # an index line's text; its id costs ~25 WordPiece tokens more
DETAIL_SHARE = 0.6
FULL_SHARE = 0.3
HEAD_CHARS = 480
LINE_CHARS = 160
RECENCY_HALF_LIFE_S = 7 * 86400.0
# Decisions and lessons outrank a summary or a change of equal score: they are what a later
# session cannot work out again by itself.
LASTING_BONUS = 0.1
MIN_TITLE = "# Memory context"
INDEX_TITLE = "# Memory index"

DECISION_TYPES = {"decision", "convention", "preference"}
DECISION_TIERS = {"preference", "pattern"}
CHANGE_TYPES = {"code_change", "session_summary"}
LESSON_TYPES = {"lesson"}
PROBLEM_TYPES = {"error", "review"}
TIER_WEIGHT = {"preference": 1.0, "pattern": 0.8, "project": 0.5, "session": 0.3}
FULL, TRIM, LINE, DROP = 0, 1, 2, 3
ELLIPSIS = "\u2026"

FENCE_LINE = re.compile(r"^ {0,3}(`{3,}|~{3,})(.*)$", re.MULTILINE)
FIRST_LINE = re.compile(r"^[^\S\n]*(?![`~]{3})\S[^\n]*", re.MULTILINE)
LIST_MARK = re.compile(r"^(?:#{1,6}|>|[-*+]|\d{1,3}[.)])\s+")
WORD = re.compile(r"\w{2,}")
ALNUM = re.compile(r"\w+")
NAME_UNSAFE = re.compile(r"[`\s]+")

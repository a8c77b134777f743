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

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any

from memoray.errors import invalid
from memoray.timeutil import now as _now
from memoray.timeutil import parse_iso
from memoray.tokens import count_many, count_tokens, spans_many

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

_DECISION_TYPES = {"decision", "convention", "preference"}
_DECISION_TIERS = {"preference", "pattern"}
_CHANGE_TYPES = {"code_change", "session_summary"}
_LESSON_TYPES = {"lesson"}
_PROBLEM_TYPES = {"error", "review"}
_TIER_WEIGHT = {"preference": 1.0, "pattern": 0.8, "project": 0.5, "session": 0.3}
_FULL, _TRIM, _LINE, _DROP = 0, 1, 2, 3
_ELLIPSIS = "\u2026"

_FENCE_LINE = re.compile(r"^ {0,3}(`{3,}|~{3,})(.*)$", re.MULTILINE)
_FIRST_LINE = re.compile(r"^[^\S\n]*(?![`~]{3})\S[^\n]*", re.MULTILINE)
_LIST_MARK = re.compile(r"^(?:#{1,6}|>|[-*+]|\d{1,3}[.)])\s+")
_WORD = re.compile(r"\w{2,}")
_ALNUM = re.compile(r"\w+")
_NAME_UNSAFE = re.compile(r"[`\s]+")


@dataclass
class ContextBlock:
    text: str
    tokens: int
    included: list[str]
    omitted: list[str]  # dropped for budget, then near-duplicates, then empty memories
    sections: dict[str, int] = field(default_factory=dict)


@dataclass(slots=True, eq=False)
class _Item:
    id: str
    content: str
    norm: str
    section: int
    value: float
    score: float
    ts: float | None
    label: str = ""
    label_tokens: int = 0
    line_text: str = ""
    line_tokens: int = 0
    line_is_all: bool = False
    trim_text: str | None = None
    trim_tokens: int = 0
    full_tokens: int | None = None  # exact, fence close included
    full_floor: int = 0  # a known lower bound while full_tokens is unknown
    level: int = _DROP

    def cost(self, level: int) -> int:
        if level == _FULL:
            return self.label_tokens + self._full()
        if level == _TRIM:
            self._trim()
            return self.label_tokens + self.trim_tokens
        if level == _LINE:
            return self.label_tokens + self.line_tokens
        return 0

    def body(self, level: int) -> str:
        if level == _FULL:
            return self.content
        if level == _TRIM:
            self._trim()
            return self.trim_text or ""
        return self.line_text

    def full_upto(self, cap: int) -> int:
        """The full form's cost if it is at most ``cap``, else some number above ``cap``.

        A 1 MiB memory is never tokenized whole just to learn it does not fit: a prefix sized for
        ``cap`` settles that first.
        """
        if self.full_tokens is None:
            room = cap - self.label_tokens
            if self.full_floor > room:
                return self.label_tokens + self.full_floor
            probe = max(2 * HEAD_CHARS, 8 * (room + 1))
            if len(self.content) > probe:
                self.full_floor = max(self.full_floor, count_tokens(_head(self.content, probe)))
                if self.full_floor > room:
                    return self.label_tokens + self.full_floor
        return self.label_tokens + self._full()

    def _full(self) -> int:
        if self.full_tokens is None:
            self.full_tokens = count_tokens(self.content) + _fence_close_tokens(self.content)
        return self.full_tokens

    def _trim(self) -> None:
        """First ``TRIM_TOKENS`` tokens, cut back to a word start, from an encoded head only."""
        if self.trim_text is not None:
            return
        head = _head(self.content, HEAD_CHARS)
        spans = spans_many([head])[0]
        for size in (16 * HEAD_CHARS, len(self.content)):  # whitespace-heavy: look further
            if len(spans.offsets) > TRIM_TOKENS or len(head) == len(self.content):
                break
            head = _head(self.content, size)
            spans = spans_many([head])[0]
        n = len(spans.offsets)
        if n <= TRIM_TOKENS and len(head) == len(self.content):
            self.trim_text = self.content
            self.full_tokens = n + _fence_close_tokens(self.content)
            self.trim_tokens = self.full_tokens
            return
        keep = _word_cut(spans.words, TRIM_TOKENS)
        text = self.content[: spans.offsets[keep - 1][1]] + _ELLIPSIS
        self.trim_text = text
        self.trim_tokens = keep + 1 + _fence_close_tokens(text)

    def lower(self, level: int) -> int:
        """The next form down that actually saves tokens (or drop)."""
        here = self.cost(level)
        for nxt in range(level + 1, _DROP):
            if self.cost(nxt) < here:
                return nxt
        return _DROP


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
    items, duplicates, empty = _prepare(memories, query, branch, now_s, style == "index")
    # an index goes to a caller that names the workspace and branch itself (the hook's header)
    title = INDEX_TITLE if style == "index" else _title(workspace_id, branch)
    packer = _Packer(items, title, limit, index=style == "index")
    text = packer.pack()
    tokens = count_tokens(text)
    included = [it for it in packer.order if it.level != _DROP]
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
                    *(it.id for it in packer.order if it.level == _DROP),
                    *duplicates,
                    *empty,
                ]
                if mid not in shown
            )
        ),
        sections=sections,
    )


# -- preparing records --------------------------------------------------------------------------


def _prepare(
    memories: list[dict[str, Any]], query: str | None, branch: str | None, now_s: float,
    show_ids: bool = False,
) -> tuple[list[_Item], list[str], list[str]]:
    """Classify, score and de-duplicate; the one-line forms are counted in one batch.

    Dropped on the way: near-duplicates (see NEAR_DUPLICATE), and failures that a lesson in the
    same batch says were fixed (the lesson tells the whole story)."""
    fixed = {str(m["metadata"]["fixes"]) for m in memories
             if m.get("event_type") in _LESSON_TYPES and isinstance(m.get("metadata"), dict)
             and m["metadata"].get("fixes")}
    q_terms = set(_WORD.findall(query.casefold())) if query else set()
    candidates: list[_Item] = []
    meta: dict[int, dict[str, Any]] = {}
    empty: list[str] = []
    for m in memories:
        mid = str(m.get("id", ""))
        content = str(m.get("content") or "").replace("\r\n", "\n").strip()
        meta_m = m.get("metadata")
        if fixed and isinstance(meta_m, dict) and str(meta_m.get("failureId")) in fixed:
            continue  # shown through its lesson
        if not content:
            empty.append(mid)
            continue
        ts = _timestamp(m.get("timestamp"))
        norm = " ".join(content.split())
        score = _score(m.get("score"), q_terms, norm)
        tier = m.get("tier")
        age = None if ts is None else max(0.0, now_s - ts)
        recency = 0.0 if age is None else 0.5 ** (age / RECENCY_HALF_LIFE_S)
        section = _section(m, branch)
        value = (0.6 * score + 0.25 * recency + 0.15 * _TIER_WEIGHT.get(str(tier), 0.4)
                 + (LASTING_BONUS if section <= 1 else 0.0))
        item = _Item(mid, content, norm, section, value, score, ts)
        meta[id(item)] = m
        candidates.append(item)

    candidates.sort(key=_priority_key)
    seen_ids: set[str] = set()
    seen_text: set[str] = set()
    kept_words: dict[str, list[frozenset[str]]] = {}
    items: list[_Item] = []
    duplicates: list[str] = []
    for it in candidates:  # best first, so the copy kept is the best-ranked one
        key = it.norm.casefold()
        all_words = _ALNUM.findall(key)
        words = frozenset(all_words)
        kind = str(meta[id(it)].get("event_type"))
        short = len(all_words) <= NEAR_DUPLICATE_MAX_WORDS
        if it.id in seen_ids or key in seen_text or (
                short and _near_duplicate(words, kept_words.get(kind, []))):
            if it.id not in seen_ids:
                duplicates.append(it.id)
            continue
        seen_ids.add(it.id)
        seen_text.add(key)
        if short:
            kept_words.setdefault(kind, []).append(words)
        items.append(it)

    lines = []
    for it in items:
        m = meta[id(it)]
        it.label, it.label_tokens = _label(m, it, branch, now_s, show_ids)
        line, it.line_is_all = _first_line(it.content, it.norm)
        lines.append(line)
    line_tokens = INDEX_LINE_TOKENS if show_ids else LINE_TOKENS
    for it, sp, line in zip(items, spans_many(lines), lines):
        n = len(sp.offsets)
        if n > line_tokens:
            keep = _word_cut(sp.words, line_tokens)
            it.line_text = line[: sp.offsets[keep - 1][1]] + _ELLIPSIS
            it.line_tokens = keep + 1
        elif it.line_is_all:
            it.line_text, it.line_tokens = line, n
        else:
            it.line_text, it.line_tokens = line + _ELLIPSIS, n + 1
    return items, duplicates, empty


def _near_duplicate(words: frozenset[str], kept: list[frozenset[str]]) -> bool:
    if len(words) < 4:
        return False
    for other in kept:
        union = len(words | other)
        if union and len(words & other) / union >= NEAR_DUPLICATE:
            return True
    return False


def _priority_key(it: _Item) -> tuple[float, float, str, str]:
    return (-it.value, -(it.ts or 0.0), it.id, it.content)


def _timestamp(value: Any) -> float | None:
    if value is None or value == "":
        return None
    return parse_iso(value)


def _score(raw: Any, q_terms: set[str], norm: str) -> float:
    """A query score in 0-1; without one, a neutral 0.25-0.75 from the share of query words
    present."""
    if isinstance(raw, (int, float)) and not isinstance(raw, bool) and math.isfinite(raw):
        return min(1.0, max(0.0, float(raw)))
    if not q_terms:
        return 0.5
    hits = len(q_terms & set(_WORD.findall(norm.casefold())))
    return 0.25 + 0.5 * hits / len(q_terms)


def _failed(meta: dict[str, Any]) -> bool:
    for key in ("exitCode", "exit_code"):
        code = meta.get(key)
        if isinstance(code, (int, float)) and not isinstance(code, bool) and code != 0:
            return True
    return any(meta.get(k) is True for k in ("failed", "isError", "is_error"))


def _section(m: dict[str, Any], branch: str | None) -> int:
    etype = m.get("event_type")
    if etype in _DECISION_TYPES or m.get("tier") in _DECISION_TIERS:
        return 0
    if etype in _LESSON_TYPES:
        return 1
    if etype in _CHANGE_TYPES and branch is not None and m.get("git_branch") == branch:
        return 2
    meta = m.get("metadata")
    if etype in _PROBLEM_TYPES or (isinstance(meta, dict) and _failed(meta)):
        return 3
    return 4


# -- rendering pieces ---------------------------------------------------------------------------


def _name(value: str, limit: int = 64) -> str:
    clean = _NAME_UNSAFE.sub(" ", value).strip()
    return clean if len(clean) <= limit else clean[: limit - 1] + _ELLIPSIS


def _title(workspace_id: str, branch: str | None) -> str:
    out = f"{MIN_TITLE} · workspace `{_name(workspace_id)}`"
    return out + (f" · branch `{_name(branch)}`" if branch else "")


def _age(seconds: float) -> str:
    for unit, size, upto in (
        ("m", 60, 3600),
        ("h", 3600, 86400),
        ("d", 86400, 14 * 86400),
        ("w", 7 * 86400, 60 * 86400),
        ("mo", 30 * 86400, 730 * 86400),
    ):
        if seconds < upto:
            return "just now" if seconds < 60 else f"{int(seconds // size)}{unit} ago"
    return f"{int(seconds // (365 * 86400))}y ago"


def _when(ts: float, now_s: float) -> str:
    """"2h ago" within a day, else the date: ages drift, a date stays true."""
    age = max(0.0, now_s - ts)
    if age < 86400:
        return _age(age)
    import time

    return time.strftime("%Y-%m-%d", time.gmtime(ts))


def _label(m: dict[str, Any], it: _Item, branch: str | None, now_s: float,
           show_id: bool = False) -> tuple[str, int]:
    """``- type, tier, date, on `branch`, exit N:`` and its token count, summed from cached
    parts (commas and the dash split tokens, so the parts count independently). With
    ``show_id`` the line starts with the id in backticks, for get-memory."""
    parts = [_name(str(m.get("event_type") or "note"), 32)]
    if show_id and it.id:
        parts[0] = f"`{_name(it.id, 80)}` {parts[0]}"
    tier = m.get("tier")
    if tier in _DECISION_TIERS and m.get("event_type") != tier:
        parts.append(str(tier))
    if it.ts is not None:
        parts.append(_when(it.ts, now_s))
    other = m.get("git_branch")
    if other and other != branch:
        parts.append(f"on `{_name(str(other), 40)}`")
    meta = m.get("metadata")
    if isinstance(meta, dict):
        code = meta.get("exitCode", meta.get("exit_code"))
        if isinstance(code, int) and not isinstance(code, bool) and code != 0:
            parts.append(f"exit {code}")
    return "- " + ", ".join(parts) + ":", 1 + len(parts) + sum(map(_part_tokens, parts))


@lru_cache(maxsize=4096)
def _part_tokens(part: str) -> int:
    return count_tokens(part)


def _first_line(content: str, norm: str) -> tuple[str, bool]:
    """The first line with text that is not a fence marker, markers stripped, whitespace collapsed.

    Also says whether that line is the whole memory (so the one-line form needs no "…").
    """
    m = _FIRST_LINE.search(content)
    raw = m.group() if m else content
    line = " ".join(_head(raw, LINE_CHARS).split())
    stripped = _LIST_MARK.sub("", line, count=1) or line
    return stripped, len(raw) <= LINE_CHARS and line == norm


def _head(content: str, size: int) -> str:
    """About ``size`` leading characters, ending at whitespace when one is near so that its tokens
    are exactly the first tokens of the whole text."""
    if len(content) <= size:
        return content
    for i in range(size, min(len(content), size + 64)):
        if content[i].isspace():
            return content[:i]
    return content[:size]


def _word_cut(words: list[int | None], limit: int) -> int:
    """How many of the first tokens to keep (at most ``limit``) so the cut falls between words."""
    keep = limit
    while keep > 0 and words[keep] is not None and words[keep] == words[keep - 1]:
        keep -= 1
    return keep or limit


def _open_fence(text: str) -> str | None:
    """The marker of a code fence left open at the end of ``text``, if any."""
    open_marker: str | None = None
    for m in _FENCE_LINE.finditer(text):
        marker, rest = m.group(1), m.group(2).strip()
        if open_marker is None:
            open_marker = marker
        elif marker[0] == open_marker[0] and len(marker) >= len(open_marker) and not rest:
            open_marker = None
    return open_marker


@lru_cache(maxsize=64)
def _marker_tokens(marker: str) -> int:
    return count_tokens(marker)


def _fence_close_tokens(text: str) -> int:
    marker = _open_fence(text) if "``" in text or "~~" in text else None
    return _marker_tokens(marker) if marker else 0


def _entry(label: str, body: str, level: int) -> str:
    """One bullet; continuation lines indented so the markdown list holds, open fences closed."""
    if level == _LINE:  # one line after the label: backticks there are inline, never a fence
        return f"{label} {body}"
    marker = _open_fence(body) if "``" in body or "~~" in body else None
    if marker:
        body += "\n" + marker
    lines = body.split("\n")
    rest = "".join("\n  " + ln if ln.strip() else "\n" for ln in lines[1:])
    if _FENCE_LINE.match(lines[0]):
        return label + "\n  " + lines[0] + rest
    return label + " " + lines[0] + rest


# -- packing ------------------------------------------------------------------------------------


class _Packer:
    def __init__(self, items: list[_Item], title: str, limit: int, index: bool = False):
        self.order = items  # priority order, best first
        self.title = title
        self.limit = limit
        self.index = index  # one line each first; never more than the trimmed form
        self.heading_tokens = count_many([f"## {name}" for name in SECTIONS])
        self._header_cache: dict[tuple[int, int], int] = {}

    def note(self, dropped: int, shortened: int) -> str:
        """What was left out, e.g. ``_12 more memories omitted, 3 shortened to fit the budget_``."""
        parts = []
        if dropped:
            more = "more " if dropped < len(self.order) else ""
            noun = "memory" if dropped == 1 else "memories"
            parts.append(f"{dropped} {more}{noun} omitted")
        if shortened:
            parts.append(f"{shortened} shortened")
        return f"_{', '.join(parts)} to fit the budget_" if parts else ""

    def header(self, dropped: int, shortened: int) -> str:
        note = self.note(dropped, shortened)
        return f"{self.title}\n{note}" if note else self.title

    def header_tokens(self, dropped: int, shortened: int) -> int:
        key = (dropped, shortened)
        if key not in self._header_cache:
            self._header_cache[key] = count_tokens(self.header(dropped, shortened))
        return self._header_cache[key]

    def total(self) -> int:
        dropped = shortened = 0
        used = [False] * len(SECTIONS)
        body = 0
        for it in self.order:
            if it.level == _DROP:
                dropped += 1
                continue
            shortened += it.level != _FULL
            used[it.section] = True
            body += it.cost(it.level)
        headings = sum(t for t, u in zip(self.heading_tokens, used) if u)
        return self.header_tokens(dropped, shortened) + headings + body

    def pack(self) -> str:
        if not self.order:
            return ""  # nothing to show: no header either
        if self.index or not self._all_full():
            # The header's numbers depend on the outcome: start from the worst case, then retry
            # with the header the last attempt produced while that frees room.
            estimate = self.header_tokens(len(self.order), len(self.order))
            for _ in range(3):
                self._allocate(estimate)
                actual = self.header_tokens(*self.counts())
                if actual >= estimate:
                    break
                estimate = actual
        while any(it.level != _DROP for it in self.order) and self.total() > self.limit:
            self._degrade_lowest()
        text = self.render()
        while any(it.level != _DROP for it in self.order) and count_tokens(text) > self.limit:
            self._degrade_lowest()  # counts were not additive after all: shed and re-check
            text = self.render()
        if any(it.level != _DROP for it in self.order):
            return text
        note = self.note(*self.counts())
        for fallback in (text, f"{MIN_TITLE}\n{note}", MIN_TITLE):
            if count_tokens(fallback) <= self.limit:
                return fallback
        return ""

    def _all_full(self) -> bool:
        """Everything in full, if it fits; a cheap lower bound first, then one batched count."""
        lower = sum(it.label_tokens + it.line_tokens - 1 for it in self.order)
        if lower + self.header_tokens(0, 0) > self.limit:
            return False
        small = [
            it
            for it in self.order
            if it.full_tokens is None and len(it.content) <= 16 * (self.limit + 1)
        ]
        for it, c in zip(small, count_many([it.content for it in small])):
            it.full_tokens = c + _fence_close_tokens(it.content)
        spent = self.header_tokens(0, 0)
        for it in self.order:
            spent += it.full_upto(self.limit - spent)
            if spent > self.limit:
                return False
        for it in self.order:
            it.level = _FULL
        if self.total() <= self.limit:
            return True
        for it in self.order:
            it.level = _DROP
        return False

    def _allocate(self, header: int) -> None:
        """Hand out forms best-first under a ceiling that only ever lowers, so no memory ever
        gets a better form than one ranked above it; then spend what is left on upgrades.

        The one exception is size, not rank: a memory whose full text alone would take more than
        ``FULL_SHARE`` of the room is capped at its trimmed form without lowering the ceiling.
        """
        body = self.limit - header
        share = int(FULL_SHARE * body)
        remaining = body
        detail_left = int(DETAIL_SHARE * body)
        ceiling = _LINE if self.index else _FULL
        used = [False] * len(SECTIONS)
        for it in self.order:
            it.level = _DROP
            head = 0 if used[it.section] else self.heading_tokens[it.section]
            if ceiling <= _TRIM:
                room = min(remaining, detail_left) - head
                big = ceiling == _FULL and it.full_upto(share) > share
                if ceiling == _FULL and not big and it.cost(_FULL) <= room:
                    it.level = _FULL
                elif it.cost(_TRIM) <= room:
                    it.level = _TRIM
                    ceiling = _FULL if big else _TRIM
                else:
                    ceiling = _LINE
            if ceiling == _LINE:
                if it.cost(_LINE) + head <= remaining:
                    it.level = _LINE
                else:
                    ceiling = _DROP
            if it.level != _DROP:
                spent = head + it.cost(it.level)
                remaining -= spent
                if it.level != _LINE:
                    detail_left -= spent
                used[it.section] = True
        self._upgrade(remaining, share)

    def _upgrade(self, remaining: int, share: int) -> None:
        """Leftover room improves forms best-first under the same ceiling rule; the size cap no
        longer applies, since every memory that fits already has its line."""
        ceiling = _TRIM if self.index else _FULL
        for it in self.order:
            if it.level == _DROP or remaining <= 0:
                return
            here = it.cost(it.level)
            for better in range(ceiling, it.level):
                there = it.full_upto(here + remaining) if better == _FULL else it.cost(better)
                extra = there - here
                if extra <= remaining:
                    it.level = better
                    remaining -= extra
                    break
            if not (it.level == _TRIM and ceiling == _FULL and it.full_upto(share) > share):
                ceiling = max(ceiling, it.level)

    def counts(self) -> tuple[int, int]:
        """(dropped, shortened): what the header reports."""
        dropped = sum(it.level == _DROP for it in self.order)
        return dropped, sum(it.level not in (_FULL, _DROP) for it in self.order)

    def _degrade_lowest(self) -> None:
        for it in reversed(self.order):
            if it.level != _DROP:
                it.level = it.lower(it.level)
                return

    def display_order(self) -> list[_Item]:
        by_section: list[list[_Item]] = [[] for _ in SECTIONS]
        for it in self.order:
            by_section[it.section].append(it)

        def newest(it: _Item) -> tuple[float, str]:
            return (-(it.ts or 0.0), it.id)

        by_section[1].sort(key=newest)
        by_section[2].sort(key=newest)
        by_section[3].sort(key=newest)
        by_section[4].sort(key=lambda it: (-it.score, -(it.ts or 0.0), it.id))
        return [it for group in by_section for it in group]

    def render(self) -> str:
        shown = [it for it in self.display_order() if it.level != _DROP]
        dropped = len(self.order) - len(shown)
        shortened = sum(it.level != _FULL for it in shown)
        parts = [self.header(dropped, shortened)]
        for s, name in enumerate(SECTIONS):
            entries = [
                _entry(it.label, it.body(it.level), it.level) for it in shown if it.section == s
            ]
            if entries:
                parts.append(f"## {name}\n" + "\n".join(entries))
        return "\n\n".join(parts)

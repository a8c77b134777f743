"""Which memories, in what order: one Item per memory, its section, score and priority;
near-duplicates and empty memories set aside."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from memoray.context.constants import (
    ALNUM,
    CHANGE_TYPES,
    DECISION_TIERS,
    DECISION_TYPES,
    DROP,
    ELLIPSIS,
    FULL,
    HEAD_CHARS,
    INDEX_LINE_TOKENS,
    LASTING_BONUS,
    LESSON_TYPES,
    LINE,
    LINE_TOKENS,
    NEAR_DUPLICATE,
    NEAR_DUPLICATE_MAX_WORDS,
    PROBLEM_TYPES,
    RECENCY_HALF_LIFE_S,
    TIER_WEIGHT,
    TRIM,
    TRIM_TOKENS,
    WORD,
)
from memoray.context.render import fence_close_tokens, first_line, head_text, label_for, word_cut
from memoray.timeutil import parse_iso
from memoray.tokens import LINE_CACHE, BatchCache, count_tokens, spans_many


@dataclass(slots=True, eq=False)
class Item:
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
    level: int = DROP

    def cost(self, level: int) -> int:
        if level == FULL:
            return self.label_tokens + self._full()
        if level == TRIM:
            self._trim()
            return self.label_tokens + self.trim_tokens
        if level == LINE:
            return self.label_tokens + self.line_tokens
        return 0

    def body(self, level: int) -> str:
        if level == FULL:
            return self.content
        if level == TRIM:
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
                self.full_floor = max(self.full_floor, count_tokens(head_text(self.content, probe)))
                if self.full_floor > room:
                    return self.label_tokens + self.full_floor
        return self.label_tokens + self._full()

    def _full(self) -> int:
        if self.full_tokens is None:
            self.full_tokens = count_tokens(self.content) + fence_close_tokens(self.content)
        return self.full_tokens

    def _trim(self) -> None:
        """First ``TRIM_TOKENS`` tokens, cut back to a word start, from an encoded head only."""
        if self.trim_text is not None:
            return
        head = head_text(self.content, HEAD_CHARS)
        spans = spans_many([head])[0]
        for size in (16 * HEAD_CHARS, len(self.content)):  # whitespace-heavy: look further
            if len(spans.offsets) > TRIM_TOKENS or len(head) == len(self.content):
                break
            head = head_text(self.content, size)
            spans = spans_many([head])[0]
        n = len(spans.offsets)
        if n <= TRIM_TOKENS and len(head) == len(self.content):
            self.trim_text = self.content
            self.full_tokens = n + fence_close_tokens(self.content)
            self.trim_tokens = self.full_tokens
            return
        keep = word_cut(spans.words, TRIM_TOKENS)
        text = self.content[: spans.offsets[keep - 1][1]] + ELLIPSIS
        self.trim_text = text
        self.trim_tokens = keep + 1 + fence_close_tokens(text)

    def lower(self, level: int) -> int:
        """The next form down that actually saves tokens (or drop)."""
        here = self.cost(level)
        for nxt in range(level + 1, DROP):
            if self.cost(nxt) < here:
                return nxt
        return DROP





def prepare_items(
    memories: list[dict[str, Any]], query: str | None, branch: str | None, now_s: float,
    show_ids: bool = False,
) -> tuple[list[Item], list[str], list[str]]:
    """Classify, score and de-duplicate; the one-line forms are counted in one batch.

    Dropped on the way: near-duplicates (see NEAR_DUPLICATE), and failures that a lesson in the
    same batch says were fixed (the lesson tells the whole story)."""
    fixed = {str(m["metadata"]["fixes"]) for m in memories
             if m.get("event_type") in LESSON_TYPES and isinstance(m.get("metadata"), dict)
             and m["metadata"].get("fixes")}
    q_terms = set(WORD.findall(query.casefold())) if query else set()
    candidates: list[Item] = []
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
        ts = timestamp_of(m.get("timestamp"))
        norm = " ".join(content.split())
        score = match_score(m.get("score"), q_terms, norm)
        tier = m.get("tier")
        age = None if ts is None else max(0.0, now_s - ts)
        recency = 0.0 if age is None else 0.5 ** (age / RECENCY_HALF_LIFE_S)
        section = section_of(m, branch)
        value = (0.6 * score + 0.25 * recency + 0.15 * TIER_WEIGHT.get(str(tier), 0.4)
                 + (LASTING_BONUS if section <= 1 else 0.0))
        item = Item(mid, content, norm, section, value, score, ts)
        meta[id(item)] = m
        candidates.append(item)

    candidates.sort(key=priority_key)
    seen_ids: set[str] = set()
    seen_text: set[str] = set()
    kept_words: dict[str, list[frozenset[str]]] = {}
    items: list[Item] = []
    duplicates: list[str] = []
    for it in candidates:  # best first, so the copy kept is the best-ranked one
        key = it.norm.casefold()
        all_words = ALNUM.findall(key)
        words = frozenset(all_words)
        kind = str(meta[id(it)].get("event_type"))
        short = len(all_words) <= NEAR_DUPLICATE_MAX_WORDS
        if it.id in seen_ids or key in seen_text or (
                short and near_duplicate(words, kept_words.get(kind, []))):
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
        it.label, it.label_tokens = label_for(m, it, branch, now_s, show_ids)
        line, it.line_is_all = first_line(it.content, it.norm)
        lines.append(line)
    line_tokens = INDEX_LINE_TOKENS if show_ids else LINE_TOKENS
    for it, line, (n, end) in zip(items, lines, line_fits(lines, line_tokens)):
        if end is not None:
            it.line_text = line[:end] + ELLIPSIS
            it.line_tokens = n + 1
        elif it.line_is_all:
            it.line_text, it.line_tokens = line, n
        else:
            it.line_text, it.line_tokens = line + ELLIPSIS, n + 1
    return items, duplicates, empty


# (line, token limit) -> line_fits' answer for it: the same memories come back in the next block
_line_fits: BatchCache[tuple[str, int], tuple[int, int | None]] = BatchCache(LINE_CACHE)


def line_fits(lines: list[str], limit: int) -> list[tuple[int, int | None]]:
    """Per line, (its tokens, None) when it has at most `limit` tokens, else (the tokens kept,
    the character offset to cut at): the cut falls between words (word_cut). Lines seen before
    are not tokenized again; the rest are tokenized in one batch."""
    def fit(keys: list[tuple[str, int]]) -> list[tuple[int, int | None]]:
        out: list[tuple[int, int | None]] = []
        for (_, lim), sp in zip(keys, spans_many([line for line, _ in keys])):
            if len(sp.offsets) <= lim:
                out.append((len(sp.offsets), None))
            else:
                keep = word_cut(sp.words, lim)
                out.append((keep, sp.offsets[keep - 1][1]))
        return out

    known = _line_fits.get_many([(line, limit) for line in lines], fit)
    return [known[(line, limit)] for line in lines]


def near_duplicate(words: frozenset[str], kept: list[frozenset[str]]) -> bool:
    if len(words) < 4:
        return False
    for other in kept:
        union = len(words | other)
        if union and len(words & other) / union >= NEAR_DUPLICATE:
            return True
    return False


def priority_key(it: Item) -> tuple[float, float, str, str]:
    return (-it.value, -(it.ts or 0.0), it.id, it.content)


def timestamp_of(value: Any) -> float | None:
    if value is None or value == "":
        return None
    return parse_iso(value)


def match_score(raw: Any, q_terms: set[str], norm: str) -> float:
    """A query score in 0-1; without one, a neutral 0.25-0.75 from the share of query words
    present."""
    if isinstance(raw, (int, float)) and not isinstance(raw, bool) and math.isfinite(raw):
        return min(1.0, max(0.0, float(raw)))
    if not q_terms:
        return 0.5
    hits = len(q_terms & set(WORD.findall(norm.casefold())))
    return 0.25 + 0.5 * hits / len(q_terms)


def is_failed(meta: dict[str, Any]) -> bool:
    for key in ("exitCode", "exit_code"):
        code = meta.get(key)
        if isinstance(code, (int, float)) and not isinstance(code, bool) and code != 0:
            return True
    return any(meta.get(k) is True for k in ("failed", "isError", "is_error"))


def section_of(m: dict[str, Any], branch: str | None) -> int:
    etype = m.get("event_type")
    if etype in DECISION_TYPES or m.get("tier") in DECISION_TIERS:
        return 0
    if etype in LESSON_TYPES:
        return 1
    if etype in CHANGE_TYPES and branch is not None and m.get("git_branch") == branch:
        return 2
    meta = m.get("metadata")
    if etype in PROBLEM_TYPES or (isinstance(meta, dict) and is_failed(meta)):
        return 3
    return 4


# -- rendering pieces ---------------------------------------------------------------------------

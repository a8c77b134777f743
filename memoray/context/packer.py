"""Fitting the budget: forms handed out best-first under a lowering ceiling, leftover room
upgraded, the final text counted once more (the module docstring of memoray.context)."""

from __future__ import annotations

from memoray.context.constants import (
    DETAIL_SHARE,
    DROP,
    FULL,
    FULL_SHARE,
    LINE,
    MIN_TITLE,
    SECTIONS,
    TRIM,
)
from memoray.context.items import Item
from memoray.context.render import entry_text, fence_close_tokens
from memoray.tokens import count_lines, count_many, count_tokens


class Packer:
    def __init__(self, items: list[Item], title: str, limit: int, index: bool = False):
        self.order = items  # priority order, best first
        self.title = title
        self.limit = limit
        self.index = index  # one line each first; never more than the trimmed form
        self.tokens = 0  # the count of the text pack() returned (counted there once)
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
            if it.level == DROP:
                dropped += 1
                continue
            shortened += it.level != FULL
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
        while any(it.level != DROP for it in self.order) and self.total() > self.limit:
            self._degrade_lowest()
        text = self.render()
        while any(it.level != DROP for it in self.order):
            self.tokens = count_lines(text)
            if self.tokens <= self.limit:
                return text
            self._degrade_lowest()  # counts were not additive after all: shed and re-check
            text = self.render()
        note = self.note(*self.counts())
        for fallback in (text, f"{MIN_TITLE}\n{note}", MIN_TITLE):
            self.tokens = count_tokens(fallback)
            if self.tokens <= self.limit:
                return fallback
        self.tokens = 0
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
            it.full_tokens = c + fence_close_tokens(it.content)
        spent = self.header_tokens(0, 0)
        for it in self.order:
            spent += it.full_upto(self.limit - spent)
            if spent > self.limit:
                return False
        for it in self.order:
            it.level = FULL
        if self.total() <= self.limit:
            return True
        for it in self.order:
            it.level = DROP
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
        ceiling = LINE if self.index else FULL
        used = [False] * len(SECTIONS)
        for it in self.order:
            it.level = DROP
            head = 0 if used[it.section] else self.heading_tokens[it.section]
            if ceiling <= TRIM:
                room = min(remaining, detail_left) - head
                big = ceiling == FULL and it.full_upto(share) > share
                if ceiling == FULL and not big and it.cost(FULL) <= room:
                    it.level = FULL
                elif it.cost(TRIM) <= room:
                    it.level = TRIM
                    ceiling = FULL if big else TRIM
                else:
                    ceiling = LINE
            if ceiling == LINE:
                if it.cost(LINE) + head <= remaining:
                    it.level = LINE
                else:
                    ceiling = DROP
            if it.level != DROP:
                spent = head + it.cost(it.level)
                remaining -= spent
                if it.level != LINE:
                    detail_left -= spent
                used[it.section] = True
        self._upgrade(remaining, share)

    def _upgrade(self, remaining: int, share: int) -> None:
        """Leftover room improves forms best-first under the same ceiling rule; the size cap no
        longer applies, since every memory that fits already has its line."""
        ceiling = TRIM if self.index else FULL
        for it in self.order:
            if it.level == DROP or remaining <= 0:
                return
            here = it.cost(it.level)
            for better in range(ceiling, it.level):
                there = it.full_upto(here + remaining) if better == FULL else it.cost(better)
                extra = there - here
                if extra <= remaining:
                    it.level = better
                    remaining -= extra
                    break
            if not (it.level == TRIM and ceiling == FULL and it.full_upto(share) > share):
                ceiling = max(ceiling, it.level)

    def counts(self) -> tuple[int, int]:
        """(dropped, shortened): what the header reports."""
        dropped = sum(it.level == DROP for it in self.order)
        return dropped, sum(it.level not in (FULL, DROP) for it in self.order)

    def _degrade_lowest(self) -> None:
        for it in reversed(self.order):
            if it.level != DROP:
                it.level = it.lower(it.level)
                return

    def display_order(self) -> list[Item]:
        by_section: list[list[Item]] = [[] for _ in SECTIONS]
        for it in self.order:
            by_section[it.section].append(it)

        def newest(it: Item) -> tuple[float, str]:
            return (-(it.ts or 0.0), it.id)

        by_section[1].sort(key=newest)
        by_section[2].sort(key=newest)
        by_section[3].sort(key=newest)
        by_section[4].sort(key=lambda it: (-it.score, -(it.ts or 0.0), it.id))
        return [it for group in by_section for it in group]

    def render(self) -> str:
        shown = [it for it in self.display_order() if it.level != DROP]
        dropped = len(self.order) - len(shown)
        shortened = sum(it.level != FULL for it in shown)
        parts = [self.header(dropped, shortened)]
        for s, name in enumerate(SECTIONS):
            entries = [
                entry_text(it.label, it.body(it.level), it.level) for it in shown if it.section == s
            ]
            if entries:
                parts.append(f"## {name}\n" + "\n".join(entries))
        return "\n\n".join(parts)

"""What a rule is, the helpers that build one, and the placeholder rules write.

A rule yields spans; its needles (lowercase) gate it, so the engine skips a rule whose needles
are absent. `scan` rules start with a literal or an ASCII class, so plain `finditer` skips
ahead fast; `anchored` rules run their regex only where a needle occurs.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass

MARK = "[REDACTED:"
# Only well-formed placeholders count as redacted: "[REDACTED: pw=hunter2]" shields nothing.
PLACEHOLDER = re.compile(r"\[REDACTED:[a-z0-9_]{1,32}\]")


def placeholder(kind: str) -> str:
    """What replaces a finding: typed, so a reader still knows what stood there."""
    return f"{MARK}{kind}]"


Span = tuple[int, int, str]
Check = Callable[[re.Match[str], str], bool]


@dataclass(frozen=True)
class Rule:
    """One detector: `find` yields spans; `needles` (lowercase) gate it cheaply."""

    kind: str
    # (text, text.lower() when `folds` else "", needles that may occur in the text)
    find: Callable[[str, str, frozenset[str]], Iterator[Span]]
    needles: tuple[str, ...]
    folds: bool = False  # searches case-insensitively, so needs the current lowercase text


def scan(kind: str, pattern: str, needles: tuple[str, ...] = (), *, group: int | str = 0,
         check: Check | None = None) -> Rule:
    """A rule whose pattern starts with a literal or an ASCII class: plain `finditer`."""
    rx = re.compile(pattern)

    def find(text: str, _low: str, _present: frozenset[str]) -> Iterator[Span]:
        for m in rx.finditer(text):
            if check is None or check(m, text):
                yield m.start(group), m.end(group), kind

    return Rule(kind, find, needles)


def positions(text: str, low: str, needles: tuple[str, ...], fold: bool) -> list[int]:
    """Where any needle occurs, case-insensitively with `fold`.

    Folded search runs on `low` when it aligns with `text` (lower() kept every character one
    character long, as it does for ASCII); otherwise on lower, Capitalized and UPPER forms.
    """
    if fold and len(low) == len(text):
        hay, variants = low, {n.lower() for n in needles}
    elif fold:
        hay, variants = text, {v for n in needles for v in (n, n.capitalize(), n.upper())}
    else:
        hay, variants = text, set(needles)
    found: set[int] = set()
    for v in variants:
        i = hay.find(v)
        while i >= 0:
            found.add(i)
            i = hay.find(v, i + 1)
    return sorted(found)


def anchored(kind: str, needles: tuple[str, ...], pattern: str, *, fold: bool = False,
             group: int | str = 0, check: Check | None = None) -> Rule:
    """A rule matched only where a needle occurs: `re` cannot skip ahead on `(?i:...)`."""
    rx = re.compile(pattern)

    lowered = tuple(n.lower() for n in needles)

    def find(text: str, low: str, present: frozenset[str]) -> Iterator[Span]:
        end = -1
        live = tuple(n for n, n_low in zip(needles, lowered) if n_low in present)
        for p in positions(text, low, live, fold):
            if p < end or (m := rx.match(text, p)) is None:
                continue
            if check is None or check(m, text):
                end = m.end()
                yield m.start(group), m.end(group), kind

    return Rule(kind, find, lowered, fold)

"""Long documents in chunks that embed well and reassemble byte for byte.

Each chunk owns the span ``[start, end)`` of the text; consecutive spans tile the text exactly, so
concatenating the owned parts gives the original back. For retrieval, each chunk after the first
also carries up to ``overlap`` characters of the text before its span (``overlap_prefix`` of them),
so a chunk that starts mid-topic still embeds with some of its context. Sizes are in characters
(Python code points), which is what the 1 MiB content limit and the embedder's window care about.

Cuts are structural, best first: before markdown headings, at code fence edges (a fence that fits in
``max_chars`` is never cut), after blank lines, after line ends, after sentence ends, after
whitespace, and only then at an arbitrary character. Small neighbouring pieces are merged up to
``max_chars`` so chunks are not needlessly tiny.
"""

from __future__ import annotations

import bisect
import itertools
import re
from collections.abc import Sequence
from dataclasses import dataclass

from memoray.errors import invalid

DEFAULT_MAX_CHARS = 4000
DEFAULT_OVERLAP = 200

_LINE = re.compile(r"[^\n]*\n|[^\n]+")
_FENCE_OPEN = re.compile(r" {0,3}(`{3,}|~{3,})")
_HEADING = re.compile(r" {0,3}#{1,6}(?:[ \t\r]|$)")
# Boundary = end of match, for levels below fences.
_PARAGRAPH = re.compile(r"\n(?:[^\S\n]*\n)+")
_LINE_END = re.compile(r"\n")
_SENTENCE = re.compile(r"[.!?\u2026\u3002\uff01\uff1f][\"')\]]*\s+")
_SPACE = re.compile(r"\s+")
_NON_SPACE_AFTER_SPACE = re.compile(r"\s\S")
_FINE_LEVELS = (_PARAGRAPH, _LINE_END, _SENTENCE, _SPACE)
_HEADINGS, _FENCES, _HARD = 0, 1, 2 + len(_FINE_LEVELS)


@dataclass(frozen=True, slots=True)
class Chunk:
    """``content == text[start - overlap_prefix : end]``; ``[start, end)`` is the chunk's own
    span."""

    index: int
    content: str
    start: int
    end: int
    overlap_prefix: int


def needs_chunking(text: str, max_chars: int = DEFAULT_MAX_CHARS) -> bool:
    return len(text) > max_chars


def split_document(
    text: str, *, max_chars: int = DEFAULT_MAX_CHARS, overlap: int = DEFAULT_OVERLAP
) -> list[Chunk]:
    """Split ``text`` into chunks whose own spans are at most ``max_chars`` and tile the text.

    Empty or short text gives exactly one chunk. ``len(content) <= max_chars + overlap`` always.
    """
    if isinstance(max_chars, bool) or not isinstance(max_chars, int) or max_chars < 1:
        raise invalid("max_chars: must be a positive integer")
    if isinstance(overlap, bool) or not isinstance(overlap, int) or overlap < 0:
        raise invalid("overlap: must be a non-negative integer")
    if len(text) <= max_chars:
        return [Chunk(0, text, 0, len(text), 0)]
    splitter = _Splitter(text, max_chars)
    bounds = [0, *splitter.cuts(0, len(text), _HEADINGS), len(text)]
    chunks = []
    for i, (start, end) in enumerate(itertools.pairwise(bounds)):
        pre = _overlap(text, start, overlap)
        chunks.append(Chunk(i, text[start - pre : end], start, end, pre))
    return chunks


def reassemble(chunks: Sequence[Chunk] | Sequence[tuple[int, str, int]]) -> str:
    """The original text from its chunks in index order: each chunk's content minus its overlap.

    Accepts ``Chunk`` objects or ``(index, content, overlap_prefix)`` tuples as stored. With every
    chunk present the result is the original byte for byte; with some missing it is the present
    chunks' text in order, and judging completeness is the caller's job (get-document reports
    it). A repeated or negative index, or a prefix longer than its content, is INVALID_INPUT:
    those mean corrupt input, not a partial document.
    """
    items = sorted(
        ((c.index, c.content, c.overlap_prefix) if isinstance(c, Chunk) else tuple(c))
        for c in chunks
    )
    parts = []
    previous = -1
    for index, content, prefix in items:
        if index < 0 or index == previous:
            raise invalid(f"chunks: index {index} is {'negative' if index < 0 else 'repeated'}")
        if not 0 <= prefix <= len(content):
            raise invalid(f"chunks: overlap_prefix of chunk {index} is outside its content")
        parts.append(content[prefix:])
        previous = index
    return "".join(parts)


def _overlap(text: str, start: int, overlap: int) -> int:
    """How many characters before ``start`` to repeat: up to ``overlap``, from a line start if
    that leaves some text, else from a word start, else wherever the window begins."""
    if overlap <= 0 or start == 0:
        return 0
    lo = max(0, start - overlap)
    line = lo if lo == 0 or text[lo - 1] == "\n" else text.find("\n", lo, start - 1) + 1
    if (line > 0 or lo == 0) and not text[line:start].isspace():
        return start - line
    if lo > 0 and text[lo - 1].isspace() and not text[lo].isspace():
        return start - lo
    m = _NON_SPACE_AFTER_SPACE.search(text, lo, start)
    return start - (m.end() - 1 if m else lo)


class _Splitter:
    def __init__(self, text: str, max_chars: int):
        self.text = text
        self.max = max_chars
        self.fence_edges: list[int] = []
        self.headings: list[int] = []
        self._scan()

    def _scan(self) -> None:
        """One pass over the lines: fence blocks (open line .. close line) and headings outside
        them."""
        fence: tuple[str, int] | None = None
        for m in _LINE.finditer(self.text):
            line = m.group()
            if fence is None:
                f = _FENCE_OPEN.match(line)
                if f:
                    fence = (f.group(1)[0], len(f.group(1)))
                    self.fence_edges.append(m.start())
                elif _HEADING.match(line):
                    self.headings.append(m.start())
            else:
                body = line.strip()
                char, n = fence
                if len(body) >= n and body == char * len(body):
                    fence = None
                    self.fence_edges.append(m.end())
        if fence is not None:
            self.fence_edges.append(len(self.text))

    def _boundaries(self, s: int, e: int, level: int) -> list[int]:
        if level in (_HEADINGS, _FENCES):
            marks = self.headings if level == _HEADINGS else self.fence_edges
            return marks[bisect.bisect_right(marks, s) : bisect.bisect_left(marks, e)]
        pattern = _FINE_LEVELS[level - 2]
        return [b for m in pattern.finditer(self.text, s, e) if s < (b := m.end()) < e]

    def cuts(self, s: int, e: int, level: int) -> list[int]:
        """Cut positions inside ``(s, e)`` leaving pieces of at most ``max`` characters.

        Pieces between this level's boundaries are merged greedily; a piece too big on its own is
        cut at the next level down and its last part merges on with what follows.
        """
        if e - s <= self.max:
            return []
        if level == _HARD:
            return self._hard(s, e)
        marks = self._boundaries(s, e, level)
        if not marks:
            return self.cuts(s, e, level + 1)
        out: list[int] = []
        start = s
        for a, b in zip([s, *marks], [*marks, e]):
            if b - start <= self.max:
                continue
            if a > start:
                out.append(a)
                start = a
            if b - a > self.max:
                sub = self.cuts(a, b, level + 1)
                out.extend(sub)
                start = sub[-1]
        return out

    def _hard(self, s: int, e: int) -> list[int]:
        out = []
        p = s
        while e - p > self.max:
            c = p + self.max
            if self.text[c - 1] == "\r" and self.text[c] == "\n" and c - 1 > p:
                c -= 1  # keep CRLF together
            out.append(c)
            p = c
        return out

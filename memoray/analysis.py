"""Text analysis for the lexical index: text -> index terms (the same for documents and queries).

Code-aware: an identifier yields itself plus its parts (`getUserToken` -> getusertoken, get,
user, token), so the exact identifier matches as a rare whole token and prose about "user
token" still meets it. Stemming folds inflections ("cached embeddings" meets "embedding
cache"). Date tokens: every absolute date in a text ("8 May, 2023", "May 8, 2023",
"2023-05-08", "May 2023") also yields `@2023-05-08` / `@2023-05`, so differently written dates
meet, and a query naming a month meets every record that names a day in it.

Stemmers weighed: `snowball` is the Snowball English (Porter2) algorithm through PyStemmer (the
C build of the Snowball project's own stemmers; the pure-Python snowballstemmer package gives
the same stems at a fraction of the speed; NLTK's Porter is a large dependency for one
function). `light` is memoray's earlier hand-written suffix stripper (plurals, -ing, -ed, final
-e), kept for comparison; `none` turns stemming off. benchmarks/locomo.py measures them.

A LexicalIndex is rebuilt from LMDB at every shard start, so the analyzer carries no on-disk
format: changing it takes effect at the next start.
"""

from __future__ import annotations

import re
import sys
from typing import Literal

import Stemmer

from memoray.temporal import date_terms

StemmerName = Literal["snowball", "light", "none"]
STEMMERS: tuple[str, ...] = ("snowball", "light", "none")
DEFAULT_STEMMER: StemmerName = "snowball"
DEFAULT_DATES = False
MAX_TOKENS = 5_000  # per document (and per query): huge contents must not dominate memory/time
_MAX_CHARS = 64 * MAX_TOKENS  # scan bound for huge contents; ample for MAX_TOKENS tokens
_CHUNK_CACHE_MAX = 200_000  # memoised chunk expansions (bounded; cleared when full)

_CHUNK_RE = re.compile(r"\w+(?:-\w+)*")
_SEP_RE = re.compile(r"[_-]+")
# camelCase / PascalCase / ACRONYMWord parts; digits stay attached (utf8, HTTP2Server -> http2).
_CAMEL_RE = re.compile(r"[A-Z]+[0-9]*(?=[A-Z][a-z])|[A-Z]?[a-z0-9]+|[A-Z0-9]+")
_STOPWORD_TEXT = """
    a an and are as at be been but by can could did do does for from had has have he her his
    how i if in into is it its just me my no not of on or our she so than that the their them
    then there these they this those to too up us was we were what when where which while who
    why will with would you your
"""
STOPWORDS = frozenset(_STOPWORD_TEXT.split())
_VOWELS = frozenset("aeiouy")


def light_stem(word: str) -> str:
    """Light suffix stripper (plurals, -ing, -ed, final -e) so "cached embeddings" meets
    "embedding cache"; conservative lengths keep "string", "embed", "status" intact."""
    n = len(word)
    if n < 4 or not (word.isascii() and word.isalpha()):  # English suffixes only
        return word
    if word.endswith("ies") and n > 4:
        word = word[:-3] + "y"
    elif word.endswith(("sses", "xes", "zes", "ches", "shes")):
        word = word[:-2]
    elif word.endswith("s") and not word.endswith(("ss", "us", "is")):
        word = word[:-1]
    n = len(word)
    stripped = ""
    if n >= 7 and word.endswith("ing"):
        stripped = word[:-3]
    elif n >= 6 and word.endswith("ed") and not word.endswith("eed"):
        stripped = word[:-2]
    if stripped and not _VOWELS.isdisjoint(stripped):
        word = stripped
        if word[-1] == word[-2] and word[-1] not in "lsz":  # running -> runn -> run
            word = word[:-1]
    if len(word) >= 5 and word.endswith("e") and not word.endswith("ee"):
        word = word[:-1]  # cache/cached/caching/caches all -> cach
    return word


def _parts(chunk: str) -> list[str]:
    """Identifier parts of a snake/kebab/camel chunk, lowercased."""
    parts: list[str] = []
    for piece in _SEP_RE.split(chunk):
        if not piece:
            continue
        if piece.isascii():
            parts.extend(p.lower() for p in _CAMEL_RE.findall(piece))
        else:  # the camel regex is ASCII-only; keep non-ASCII words whole
            parts.append(piece.lower())
    return parts


class Analyzer:
    """text -> terms. `stemmer`: snowball | light | none; `dates`: add `@YYYY-MM(-DD)` terms
    for the absolute dates a text names. Chunks repeat heavily (Zipf), so their expansions are
    memoised per analyzer; that and `findall` keep a 100k-document rebuild to a few seconds."""

    def __init__(self, stemmer: str = DEFAULT_STEMMER, dates: bool = DEFAULT_DATES) -> None:
        if stemmer not in STEMMERS:
            raise ValueError(f"stemmer: one of {', '.join(STEMMERS)}, not {stemmer!r}")
        self.stemmer = stemmer
        self.dates = bool(dates)
        self._cache: dict[str, tuple[str, ...]] = {}
        if stemmer == "snowball":
            snow = Stemmer.Stemmer("english")
            self._stem = lambda w: snow.stemWord(w) if w.isalpha() else w
        elif stemmer == "light":
            self._stem = light_stem
        else:
            self._stem = lambda w: w

    def __repr__(self) -> str:
        return f"Analyzer(stemmer={self.stemmer!r}, dates={self.dates})"

    def __eq__(self, other: object) -> bool:
        return (isinstance(other, Analyzer) and other.stemmer == self.stemmer
                and other.dates == self.dates)

    def __hash__(self) -> int:
        return hash((self.stemmer, self.dates))

    def _chunk_tokens(self, chunk: str) -> tuple[str, ...]:
        low = chunk.lower()
        stem = self._stem
        if (
            "_" not in chunk
            and "-" not in chunk
            and (chunk == low or chunk[1:] == low[1:] or chunk.isupper())
        ):  # plain word (lower, Capitalised or ACRONYM)
            return () if len(low) < 2 or low in STOPWORDS else (sys.intern(stem(low)),)
        parts = _parts(chunk)
        tokens = [low.strip("_-")] if len(parts) > 1 else []  # literal identifier, unstemmed
        tokens += (stem(p) for p in parts if len(p) > 1 and p not in STOPWORDS)
        return tuple(map(sys.intern, tokens))

    def tokenize(self, text: str) -> list[str]:
        """Code-aware terms of `text`, at most MAX_TOKENS (date terms first when on)."""
        if len(text) > _MAX_CHARS:
            text = text[:_MAX_CHARS]
        out: list[str] = date_terms(text) if self.dates else []
        cache = self._cache
        for chunk in _CHUNK_RE.findall(text):
            tokens = cache.get(chunk)
            if tokens is None:
                tokens = self._chunk_tokens(chunk)
                if len(cache) >= _CHUNK_CACHE_MAX:
                    cache.clear()
                cache[chunk] = tokens
            out += tokens
        if len(out) > MAX_TOKENS:
            del out[MAX_TOKENS:]
        return out


DEFAULT_ANALYZER = Analyzer()


def tokenize(text: str) -> list[str]:
    """The default analyzer's terms (what LexicalIndex uses unless given another analyzer)."""
    return DEFAULT_ANALYZER.tokenize(text)

"""Per-shard in-memory BM25 index, the lexical half of hybrid retrieval.

Embeddings blur exact identifiers, file names and error strings, which is what coding agents
search for most; a keyword index next to each shard's hnswlib index catches those.

Library trade-off: bm25s builds a fast static sparse matrix but has no add/remove, so each
write or delete would rebuild the shard's index (O(N) per write), and rank-bm25 is static too
and makes a pure-Python pass over every document per query term. tantivy is incremental and
fast, but it is a segment engine with a writer heap, commit/reload visibility and its own
on-disk state, duplicating LMDB (our source of truth), and restricting a search to a filtered
label set means a term-set query per call. None fits "mutate one document at a time inside an
actor, score within a candidate set", so this is a small inverted index: term -> {slot: tf}
dicts for O(len(doc)) updates, scored per query term with numpy.

Not thread-safe: the owning shard actor serialises calls.
"""

from __future__ import annotations

import math
import sys
from array import array
from bisect import bisect_left
from collections import Counter
from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np

from memoray.analysis import DEFAULT_ANALYZER, MAX_TOKENS, Analyzer, tokenize

# A posting is one int64: slot << 16 | tf (tf <= MAX_TOKENS < 2**16). A term's postings are that
# int alone when it has one (most terms of a store are rare), else an array('q') sorted by slot
# (slots only grow, so adding appends): 8 bytes a posting, against ~50 in a {slot: tf} dict.
_SHIFT = 16
_TF_MASK = (1 << _SHIFT) - 1

__all__ = ["B", "K1", "MAX_TOKENS", "LexicalIndex", "normalize", "tokenize"]

K1 = 1.2
B = 0.4  # memories are short; 0.4 beat 0.75 on LoCoMo (hybrid recall@5 .618 -> .632)
_CACHE_MIN_DF = 32  # cache numpy postings only where dict -> array conversion costs something
# A (candidate, term) dict lookup costs about as much as numpy scoring this many postings;
# measured crossover at 100k docs: ~2.5k candidates for a 5-term query with 120k postings.
_DIRECT_LOOKUP_COST = 8


def normalize(scores: np.ndarray, scale: float) -> np.ndarray:
    """Map raw BM25 scores into [0, 1) as tanh(score / scale), scale = `query_scale(query)`.

    A fixed per-query reference (not the top hit) keeps absolute meaning: a best hit that only
    shares one common word stays low instead of being stretched to 1.0 for fusion. At k1+1
    weighting, a document of average length containing every query term once scores exactly
    `scale`, so full coverage maps to tanh(1) ~ 0.76, weak partial matches stay near linear,
    and repeated terms saturate towards 1.
    """
    scores = np.asarray(scores, dtype=np.float64)
    if scale <= 0:
        return np.zeros_like(scores)
    return np.tanh(scores / scale)


class LexicalIndex:
    """Incremental BM25 (Robertson form with the (k1 + 1) factor, Lucene's non-negative idf
    ln(1 + (N - df + 0.5) / (df + 0.5))), keyed by int64 labels.

    Documents live in dense slots so one query term's postings score as numpy arrays and
    accumulate into a slot-indexed vector; df and avgdl are exact at every moment because
    they derive from posting sizes and a running length total.
    """

    def __init__(self, k1: float = K1, b: float = B, analyzer: Analyzer | None = None) -> None:
        self.k1 = float(k1)
        self.b = float(b)
        self.analyzer = analyzer or DEFAULT_ANALYZER  # text -> terms (memoray.analysis)
        self._postings: dict[str, int | array] = {}  # term -> packed posting(s), see _SHIFT
        self._cache: dict[str, tuple[np.ndarray, np.ndarray]] = {}  # term -> (slots, tfs)
        self._slot_of: dict[int, int] = {}  # label -> slot
        # slot -> distinct terms (None once removed). Slots are never reused, so each term's
        # postings stay sorted by slot; a removed slot costs its 24 bytes here until restart.
        self._doc_terms: list[tuple[str, ...] | None] = []
        self._labels = np.full(0, -1, dtype=np.int64)  # slot -> label
        self._doclen = np.zeros(0, dtype=np.float64)  # slot -> token count
        self._total_len = 0

    @classmethod
    def from_documents(cls, docs: Iterable[tuple[int, str]], **kwargs: Any) -> LexicalIndex:
        """Rebuild from (label, text) pairs, e.g. an LMDB scan on shard start."""
        index = cls(**kwargs)
        for label, text in docs:
            index.add(label, text)
        return index

    def __len__(self) -> int:
        return len(self._slot_of)

    def __contains__(self, label: object) -> bool:
        return label in self._slot_of

    @property
    def avgdl(self) -> float:
        return self._total_len / len(self._slot_of) if self._slot_of else 0.0

    def df(self, term: str) -> int:
        postings = self._postings.get(term)
        return 0 if postings is None else _df(postings)

    def idf(self, df: int) -> float:
        n = len(self._slot_of)
        return math.log(1.0 + (n - df + 0.5) / (df + 0.5))

    def add(self, label: int, text: str) -> None:
        """Index `text` under `label`; an existing label is replaced."""
        label = int(label)
        if label in self._slot_of:
            self.remove(label)
        tokens = self.analyzer.tokenize(text)
        counts = Counter(tokens)
        slot = self._new_slot()
        self._slot_of[label] = slot
        self._labels[slot] = label
        self._doclen[slot] = len(tokens)
        self._total_len += len(tokens)
        postings, cache = self._postings, self._cache
        base = slot << _SHIFT
        for term, tf in counts.items():  # tokens are interned: one string per term, shared
            plist = postings.get(term)
            if plist is None:
                postings[term] = base | tf
            else:
                if isinstance(plist, int):
                    postings[term] = array("q", (plist, base | tf))
                else:
                    plist.append(base | tf)  # the newest slot: still sorted
                if cache:
                    cache.pop(term, None)
        self._doc_terms[slot] = tuple(counts)

    def remove(self, label: int) -> bool:
        """Drop `label`; returns whether it was present."""
        slot = self._slot_of.pop(int(label), None)
        if slot is None:
            return False
        postings, cache = self._postings, self._cache
        base = slot << _SHIFT
        for term in self._doc_terms[slot] or ():
            plist = postings[term]
            if isinstance(plist, int):
                del postings[term]
            else:
                del plist[bisect_left(plist, base)]  # this slot's posting (sorted by slot)
                if len(plist) == 1:
                    postings[term] = plist[0]
            cache.pop(term, None)
        self._total_len -= int(self._doclen[slot])
        self._doclen[slot] = 0.0
        self._labels[slot] = -1
        self._doc_terms[slot] = None
        return True

    def terms(self, query: str | Sequence[str]) -> list[str]:
        """A query's distinct terms: text goes through the analyzer; a sequence is taken as
        terms already analysed (query expansion passes terms it picked from documents)."""
        return list(dict.fromkeys(self.analyzer.tokenize(query) if isinstance(query, str)
                                  else query))

    def query_scale(self, query: str | Sequence[str]) -> float:
        """Sum of idf over the query's distinct terms (unknown terms at df=0): the score of an
        average-length document holding each term once; the reference for `normalize`."""
        if not self._slot_of:
            return 0.0
        return sum(self.idf(self.df(t)) for t in self.terms(query))

    def search(
        self, query: str | Sequence[str], k: int, candidates: np.ndarray | None = None
    ) -> tuple[np.ndarray, np.ndarray]:
        """Top-k (labels, raw BM25 scores), score descending then label ascending, score > 0.

        `candidates` (int64 labels that passed a filter, ideally sorted) restricts results:
        when looking each candidate up in the terms' postings is cheaper than scanning those
        postings, only candidates are scored; otherwise the hits are filtered. Either way the
        floats are bit-identical to an unrestricted search.
        """
        if k <= 0 or not self._slot_of:
            return _empty()
        present = [
            (term, plist)
            for term in self.terms(query)
            if (plist := self._postings.get(term))
        ]
        if not present:
            return _empty()
        if candidates is None:
            return self._search_all(present, k, None)
        cand = np.asarray(candidates, dtype=np.int64).ravel()
        if cand.size == 0:
            return _empty()
        if cand.size > 1 and bool(np.any(cand[1:] < cand[:-1])):
            cand = np.sort(cand)
        scanned = sum(_df(plist) for _, plist in present)
        if cand.size * len(present) * _DIRECT_LOOKUP_COST <= scanned:
            return self._search_direct(present, k, cand)
        return self._search_all(present, k, cand)

    def stats(self) -> dict[str, int]:
        """Sizes for metrics; approx_bytes walks every term, so call it rarely."""
        getsize = sys.getsizeof
        approx = sum(getsize(t) + getsize(p) for t, p in self._postings.items())
        approx += getsize(self._postings) + getsize(self._slot_of) + getsize(self._doc_terms)
        approx += sum(getsize(t) for t in self._doc_terms if t is not None)
        approx += self._labels.nbytes + self._doclen.nbytes
        approx += sum(s.nbytes + f.nbytes for s, f in self._cache.values())
        return {
            "docs": len(self._slot_of),
            "terms": len(self._postings),
            "postings": sum(_df(p) for p in self._postings.values()),
            "cached_terms": len(self._cache),
            "approx_bytes": approx,
        }

    # -- internals ---------------------------------------------------------------------------

    def _new_slot(self) -> int:
        slot = len(self._doc_terms)
        self._doc_terms.append(None)
        if slot >= self._labels.size:
            cap = max(1024, 2 * self._labels.size)
            labels = np.full(cap, -1, dtype=np.int64)
            labels[: self._labels.size] = self._labels
            doclen = np.zeros(cap, dtype=np.float64)
            doclen[: self._doclen.size] = self._doclen
            self._labels, self._doclen = labels, doclen
        return slot

    def _term_arrays(self, term: str, plist: int | array) -> tuple[np.ndarray, np.ndarray]:
        """(slots, tfs) of a term, sorted by slot."""
        arrays = self._cache.get(term)
        if arrays is None:
            packed = _packed(plist)
            arrays = ((packed >> _SHIFT).astype(np.intp),
                      (packed & _TF_MASK).astype(np.float64))
            if len(packed) >= _CACHE_MIN_DF:
                self._cache[term] = arrays
        return arrays

    def _weights(self, tfs: np.ndarray, slots: np.ndarray, df: int) -> np.ndarray:
        """BM25 term weights; the single formula both search paths share (bit-identical)."""
        avgdl = self._total_len / len(self._slot_of)
        k1, b = self.k1, self.b
        # idf * (k1 + 1) * tf / (tf + k1 * ((1 - b) + b * dl / avgdl)), evaluated in that
        # order in two arrays: a common term's postings are long, and each temporary that size
        # is a fresh mmap in a shard (memoray/heap.py), page-faulted on every query
        norm = self._doclen.take(slots)
        np.multiply(norm, b, out=norm)
        np.divide(norm, avgdl, out=norm)
        np.add(norm, 1.0 - b, out=norm)
        np.multiply(norm, k1, out=norm)
        np.add(norm, tfs, out=norm)
        weights = np.multiply(tfs, self.idf(df) * (k1 + 1.0))
        return np.divide(weights, norm, out=weights)

    def _search_all(
        self, present: list[tuple[str, int | array]], k: int, cand: np.ndarray | None
    ) -> tuple[np.ndarray, np.ndarray]:
        acc = np.zeros(self._labels.size, dtype=np.float64)
        for term, plist in present:
            slots, tfs = self._term_arrays(term, plist)
            # each slot occurs once per term, so fancy-index += is a correct scatter-add
            acc[slots] += self._weights(tfs, slots, _df(plist))
        hits = np.flatnonzero(acc > 0.0)
        labels = self._labels[hits]
        if cand is not None:
            # Filtering the (few) hits beats masking every posting of every term: scores are
            # per-document sums, so dropping non-candidates afterwards changes nothing.
            pos = np.searchsorted(cand, labels)
            np.minimum(pos, cand.size - 1, out=pos)
            keep = cand[pos] == labels
            hits, labels = hits[keep], labels[keep]
        return _top(labels, acc[hits], k)

    def _search_direct(
        self, present: list[tuple[str, int | array]], k: int, cand: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray]:
        slot_of = self._slot_of
        slot_list = [s for s in map(slot_of.get, cand.tolist()) if s is not None]
        if not slot_list:
            return _empty()
        slots = np.asarray(slot_list, dtype=np.intp)
        keys = slots.astype(np.int64) << _SHIFT
        acc = np.zeros(slots.size, dtype=np.float64)
        for _term, plist in present:
            # each candidate's posting found by binary search in the slot-sorted postings
            packed = _packed(plist)
            pos = np.minimum(np.searchsorted(packed, keys), len(packed) - 1)
            got = packed[pos]
            tfs = np.where((got >> _SHIFT) == slots, got & _TF_MASK, 0).astype(np.float64)
            del packed, got  # drop the view: the array may grow again
            hit = tfs > 0.0
            if hit.any():
                acc[hit] += self._weights(tfs[hit], slots[hit], _df(plist))
        hits = np.flatnonzero(acc > 0.0)
        return _top(self._labels[slots[hits]], acc[hits], k)


def _df(plist: int | array) -> int:
    return 1 if isinstance(plist, int) else len(plist)


def _packed(plist: int | array) -> np.ndarray:
    """A term's packed postings as int64: a view of the array, no copy. While a view lives the
    array cannot grow, so callers drop it before returning (the shard is single-threaded)."""
    if isinstance(plist, int):
        return np.array([plist], dtype=np.int64)
    return np.frombuffer(plist, dtype=np.int64)


def _empty() -> tuple[np.ndarray, np.ndarray]:
    return np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.float64)


def _top(labels: np.ndarray, scores: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Deterministic top-k: ties broken by label so equal indexes give equal answers."""
    n = scores.size
    if n > k:
        kth = np.partition(scores, n - k)[n - k]
        keep = scores >= kth
        labels, scores = labels[keep], scores[keep]
    order = np.lexsort((labels, -scores))[:k]
    return labels[order], scores[order]

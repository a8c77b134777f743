"""The offline WordPiece token counter: counts, batching, truncation, robustness."""

from __future__ import annotations

import threading
from pathlib import Path

from hypothesis import given, settings
from hypothesis import strategies as st

from memoray import tokens
from memoray.tokens import count_many, count_tokens, spans_many, truncate_to_tokens

REPO = Path(__file__).resolve().parents[1]


def test_counts_words_without_special_tokens():
    assert count_tokens("") == 0
    assert count_tokens("hello world") == 2
    assert count_tokens("   \n\t ") == 0  # WordPiece gives whitespace no tokens
    assert count_tokens("def f(x): return x") == 8


def test_count_many_matches_single_counts():
    texts = ["", "hello", "a longer sentence, with punctuation!", "日本語のテキスト", "x" * 500]
    assert count_many(texts) == [count_tokens(t) for t in texts]
    assert count_many([]) == []


def test_long_words_are_not_one_unknown_token():
    # Stock MiniLM maps any word over 100 chars to one [UNK]; budgets must not collapse.
    blob = "QUJD" * 2500  # 10 kB of base64-ish text without spaces
    assert count_tokens(blob) > len(blob) // 32
    assert count_tokens("a" * 10_000) > 300


def test_each_symbol_counts():
    assert count_tokens("done✅") == 2
    assert count_tokens("🎉🎉🎉") == 3


def test_lone_surrogates_are_counted_not_fatal():
    text = "bad \ud800 text"
    assert count_tokens(text) == 2  # replaced by U+FFFD, which the BERT normalizer drops
    assert count_many([text]) == [2]
    assert truncate_to_tokens(text, 1) == "bad"


def test_truncate_cuts_at_token_boundary():
    text = "The quick brown fox jumps over the lazy dog"
    assert truncate_to_tokens(text, 3) == "The quick brown"
    assert truncate_to_tokens(text, 100) == text
    assert truncate_to_tokens(text, 0) == ""
    assert truncate_to_tokens(text, -5) == ""
    assert truncate_to_tokens("", 3) == ""


def test_spans_give_offsets_into_the_original():
    text = "Naïve  café, ok"
    (spans,) = spans_many([text])
    assert [text[a:b] for a, b in spans.offsets] == ["Naïve", "café", ",", "ok"]
    assert len(spans.words) == len(spans.offsets)
    assert spans_many([]) == []


@settings(max_examples=300, deadline=None)
@given(st.text(max_size=400), st.integers(min_value=0, max_value=60))
def test_truncate_is_a_prefix_within_the_limit(text, limit):
    out = truncate_to_tokens(text, limit)
    assert text.startswith(out)
    assert count_tokens(out) <= limit
    if 0 < limit and count_tokens(text) <= limit:
        assert out == text


def test_lazy_load_is_once_per_process_and_thread_safe(monkeypatch):
    monkeypatch.setattr(tokens, "_tokenizer", None)
    seen = []
    barrier = threading.Barrier(8)

    def work():
        barrier.wait()
        seen.append(tokens.tokenizer())

    threads = [threading.Thread(target=work) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(seen) == 8 and all(s is seen[0] for s in seen)


def test_estimate_against_chars_over_4():
    """Documents the gap to a chars/4 estimate (printed with -s): WordPiece counts punctuation
    per character and skips whitespace, so it lands a little above chars/4 on this repo's code."""
    sources = sorted((REPO / "memoray").glob("*.py"))
    code = "".join(p.read_text() for p in sources)
    prose = (
        "Agents capture what happened (decisions, code changes, tool events, reviews) and get back, "
        "at the right moment, the few memories that matter, scoped to the project and the git "
        "branch they stand on, inside a token budget. It runs on Ray: one laptop by default. "
    ) * 40
    for name, text in (("python", code), ("prose", prose)):
        ratio = count_tokens(text) / (len(text) / 4)
        print(
            f"{name}: {count_tokens(text)} WordPiece tokens vs {len(text) / 4:.0f} chars/4 "
            f"= {ratio:.2f}x"
        )
        assert 0.7 < ratio < 1.6


PIECES = [*"ab xyz,.!:;-_()[]{}", "\t", "\r", "\n", "\n", "\n\n", "é", "日本", "✅", "🚀",
          "x" * 40, "\ud800", "\u00a0", "\u2028", "Ⅻ", "ﬁ", "deploy", "ing"]


@settings(max_examples=300, deadline=None)
@given(st.lists(st.sampled_from(PIECES), max_size=60))
def test_count_lines_is_count_tokens(parts):
    """Summing per-line counts is exact (no token spans a newline), cached or not."""
    text = "".join(parts)
    assert tokens.count_lines(text) == count_tokens(text)
    assert tokens.count_lines(text) == count_tokens(text)  # now from the line cache


def test_count_lines_keeps_a_bounded_cache(monkeypatch):
    monkeypatch.setattr(tokens, "_line_counts", tokens.BatchCache(3))
    assert tokens.count_lines("one two\nthree\nfour five six\nseven") == 7
    assert len(tokens._line_counts) == 3 and "one two" not in tokens._line_counts
    calls = []
    real = tokens.count_many
    monkeypatch.setattr(tokens, "count_many", lambda t: calls.append(list(t)) or real(t))
    assert tokens.count_lines("seven\nthree") == 2 and calls == []  # both kept
    assert tokens.count_lines("one two\nseven") == 3 and calls == [["one two"]]

"""Document chunking: exact reassembly, structural cuts, size limits, overlap."""

from __future__ import annotations

import itertools
import random
import re

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from memoray.chunking import (
    DEFAULT_MAX_CHARS,
    DEFAULT_OVERLAP,
    Chunk,
    needs_chunking,
    reassemble,
    split_document,
)
from memoray.errors import ErrorCode, MemorayError


def check_invariants(text: str, chunks: list[Chunk], max_chars: int, overlap: int) -> None:
    assert [c.index for c in chunks] == list(range(len(chunks)))
    assert chunks[0].start == 0 and chunks[-1].end == len(text)
    for prev, cur in itertools.pairwise(chunks):
        assert prev.end == cur.start  # own spans tile the text
    for c in chunks:
        assert c.content == text[c.start - c.overlap_prefix : c.end]
        assert 0 <= c.overlap_prefix <= overlap
        assert c.end - c.start <= max_chars
        assert len(c.content) <= max_chars + overlap
        if len(chunks) > 1:
            assert c.end > c.start
    assert chunks[0].overlap_prefix == 0
    assert reassemble(chunks) == text
    assert reassemble([(c.index, c.content, c.overlap_prefix) for c in chunks]) == text


@settings(max_examples=400, deadline=None)
@given(
    st.text(max_size=3000),
    st.integers(min_value=1, max_value=600),
    st.integers(min_value=0, max_value=300),
)
def test_reassemble_inverts_split_for_any_text(text, max_chars, overlap):
    check_invariants(
        text, split_document(text, max_chars=max_chars, overlap=overlap), max_chars, overlap
    )


markdownish = st.lists(
    st.sampled_from(
        [
            "# Title\n",
            "## Sub\n",
            "\n",
            "\r\n",
            "```py\n",
            "```\n",
            "~~~\n",
            "text line\n",
            "A sentence. Another one! ",
            "word ",
            "x" * 50,
            "- item\n",
            "    code\n",
            "é🎉日本 ",
        ]
    ),
    max_size=400,
).map("".join)


@settings(max_examples=300, deadline=None)
@given(markdownish, st.integers(min_value=8, max_value=400), st.integers(min_value=0, max_value=80))
def test_reassemble_inverts_split_for_markdownish_text(text, max_chars, overlap):
    check_invariants(
        text, split_document(text, max_chars=max_chars, overlap=overlap), max_chars, overlap
    )


def test_empty_and_short_text_is_one_chunk():
    assert split_document("") == [Chunk(0, "", 0, 0, 0)]
    assert split_document("short") == [Chunk(0, "short", 0, 5, 0)]
    text = "y" * DEFAULT_MAX_CHARS
    assert split_document(text) == [Chunk(0, text, 0, len(text), 0)]
    assert reassemble(split_document("")) == ""


def test_needs_chunking():
    assert not needs_chunking("a" * 4000)
    assert needs_chunking("a" * 4001)
    assert needs_chunking("abc", 2)


def fenced_document(seed: int, size: int) -> tuple[str, list[tuple[int, int]]]:
    """Realistic markdown with code: sections, prose, lists, fences (recorded), tables."""
    rng = random.Random(seed)
    words = [
        "shard",
        "index",
        "record",
        "vector",
        "replica",
        "query",
        "budget",
        "token",
        "branch",
        "merge",
        "commit",
        "the",
        "a",
        "of",
        "to",
        "and",
        "LMDB",
        "HNSW",
        "snapshot",
        "durable",
        "acknowledged",
        "sequence",
    ]
    parts: list[str] = []
    fences: list[tuple[int, int]] = []
    pos = 0

    def add(s: str) -> None:
        nonlocal pos
        parts.append(s)
        pos += len(s)

    n = 0
    while pos < size:
        n += 1
        add(f"{'#' * rng.randint(1, 3)} Section {n}: {rng.choice(words)}\n\n")
        for _ in range(rng.randint(1, 6)):
            kind = rng.random()
            if kind < 0.45:
                sents = [
                    " ".join(rng.choices(words, k=rng.randint(4, 25))).capitalize() + "."
                    for _ in range(rng.randint(1, 8))
                ]
                add(" ".join(sents) + "\n\n")
            elif kind < 0.75:
                body = "".join(
                    f"{'    ' * rng.randint(0, 3)}value_{i} = compute({rng.choice(words)!r})\n"
                    f"{'# a comment, not a heading' if i % 5 == 0 else ''}\n"
                    for i in range(rng.randint(2, 60))
                )
                block = f"```python\n{body}```\n"
                fences.append((pos, pos + len(block)))
                add(block + "\n")
            elif kind < 0.9:
                add("".join(f"- {' '.join(rng.choices(words, k=6))}\n" for _ in range(8)) + "\n")
            else:
                add("| a | b |\n|---|---|\n" + "| x | y |\n" * rng.randint(1, 10) + "\n")
    return "".join(parts), fences


def test_large_markdown_document_round_trips_and_keeps_fences_whole():
    text, fences = fenced_document(7, 400_000)
    assert len(text) > 400_000
    chunks = split_document(text)
    check_invariants(text, chunks, DEFAULT_MAX_CHARS, DEFAULT_OVERLAP)
    assert reassemble(list(reversed(chunks))).encode() == text.encode()
    cuts = {c.start for c in chunks[1:]}
    fitting = [(a, b) for a, b in fences if b - a <= DEFAULT_MAX_CHARS]
    assert fitting
    for a, b in fitting:
        assert not any(a < cut < b for cut in cuts), (a, b)
    # Cuts are structural: at a heading, a fence edge or a blank line, never mid-line here.
    for cut in cuts:
        assert text[cut - 1] == "\n"
    headings = sum(1 for c in chunks[1:] if re.match(r"#{1,3} Section", text[c.start :]))
    assert headings > len(chunks) // 3
    # Chunks are not needlessly small: merged up towards the limit.
    assert sum(c.end - c.start for c in chunks) / len(chunks) > DEFAULT_MAX_CHARS / 2


def test_fence_bigger_than_the_limit_is_cut_at_lines():
    body = "".join(f"line {i} of code\n" for i in range(400))
    text = "intro\n\n```\n" + body + "```\n\nafter\n"
    chunks = split_document(text, max_chars=1000, overlap=50)
    check_invariants(text, chunks, 1000, 50)
    assert all(text[c.start - 1] == "\n" for c in chunks[1:])


def test_fence_that_fits_is_one_piece_and_hash_lines_inside_are_not_headings():
    fence = "```bash\n# install\npip install x\n\n# run\nx --go\n```\n"
    text = (
        "# Guide\n\n" + "Some words here. " * 20 + "\n\n" + fence + "\n# Next\n\n" + "More. " * 30
    )
    chunks = split_document(text, max_chars=len(fence) + 20, overlap=0)
    check_invariants(text, chunks, len(fence) + 20, 0)
    start = text.index(fence)
    assert any(c.start == start and c.content.startswith(fence) for c in chunks)


def test_crlf_text_round_trips_and_cuts_after_line_ends():
    text = "".join(f"Line number {i} with some words\r\n" for i in range(300))
    chunks = split_document(text, max_chars=500, overlap=60)
    check_invariants(text, chunks, 500, 60)
    for c in chunks[1:]:
        assert text[c.start - 2 : c.start] == "\r\n"
        assert not c.content.startswith("\n")
        assert c.content[: c.overlap_prefix].startswith("Line")  # overlap starts at a line


def test_sentences_then_words_then_hard_cuts():
    prose = "First sentence is here. Second one follows! Third? " * 20
    chunks = split_document(prose, max_chars=120, overlap=0)
    check_invariants(prose, chunks, 120, 0)
    assert all(prose[c.start - 2 : c.start] in (". ", "! ", "? ") for c in chunks[1:])
    words = "word " * 100
    chunks = split_document(words, max_chars=33, overlap=7)
    check_invariants(words, chunks, 33, 7)
    assert all(words[c.start - 1] == " " for c in chunks[1:])
    assert all(c.content[: c.overlap_prefix].startswith("word") for c in chunks[1:])
    blob = "z" * 1000
    chunks = split_document(blob, max_chars=300, overlap=10)
    check_invariants(blob, chunks, 300, 10)
    assert [c.end - c.start for c in chunks] == [300, 300, 300, 100]


def test_reassemble_rejects_corrupt_input_and_joins_partial_documents():
    text = "a b c d e f g h i j " * 10
    chunks = split_document(text, max_chars=30, overlap=5)
    partial = reassemble(chunks[:1] + chunks[2:])  # a missing chunk is the caller's to report
    assert partial == text[: chunks[0].end] + text[chunks[2].start :]
    with pytest.raises(MemorayError) as err:
        reassemble(chunks + chunks[1:2])
    assert err.value.code == ErrorCode.INVALID_INPUT
    with pytest.raises(MemorayError):
        reassemble([(0, "abc", 4)])
    with pytest.raises(MemorayError):
        reassemble([(-1, "abc", 0)])
    assert reassemble([]) == ""


@pytest.mark.parametrize(
    "kwargs",
    [{"max_chars": 0}, {"max_chars": -3}, {"overlap": -1}, {"max_chars": True}, {"max_chars": 2.5}],
)
def test_bad_parameters_are_invalid_input(kwargs):
    with pytest.raises(MemorayError) as err:
        split_document("text", **kwargs)
    assert err.value.code == ErrorCode.INVALID_INPUT

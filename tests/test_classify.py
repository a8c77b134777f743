"""LLM-free classification of decisions, conventions and preferences (memoray.classify)."""

from __future__ import annotations

import pytest

from memoray.classify import RECORD, classify_sentence, extract, sentences
from memoray.classify_eval import evaluate, load, split


def test_labelled_set_is_big_enough_and_balanced():
    rows = load()
    assert len(rows) >= 200
    labels = {r[0] for r in rows}
    assert labels == {"decision", "convention", "preference", "none"}
    assert len(split(rows, "heldout")) >= 70


def test_heldout_precision_and_recall():
    """The held-out third was never used to tune the rules; figures are in the README."""
    result = evaluate(split(load(), "heldout"))
    assert result["precision"] >= 0.95 and result["recall"] >= 0.85, result
    assert result["strictPrecision"] >= 0.9 and result["strictRecall"] >= 0.85, result


@pytest.mark.parametrize("text,source,kind", [
    ("We keep the limiter in-process, never add Redis.", "prompt", "decision"),
    ("Let's go with SQLite instead of Postgres for the cache.", "prompt", "decision"),
    ("All handlers must validate input before calling the service.", "prompt", "convention"),
    ("Please always show me the diff before committing.", "prompt", "preference"),
    ("Should we use Redis for the limiter?", "prompt", None),
    ("Maybe we could cache the embeddings.", "prompt", None),
    ("refactor the cache layer please", "prompt", None),
    ("I'll run the tests now.", "assistant", None),
    ("I went with a bounded queue because the producer can outrun the writer.", "assistant",
     "decision"),
])
def test_examples(text: str, source: str, kind: str | None) -> None:
    assert classify_sentence(text, source) == kind  # type: ignore[arg-type]


def test_extract_keeps_the_stating_sentence_and_skips_code():
    prompt = ("The limiter keeps failing under load. We keep the limiter in-process, never add "
              "Redis for it. Can you look at the bucket refill?\n```\nuse redis;\n```\n"
              "- Always run the linter before telling me you're done.")
    found = extract(prompt)
    assert [(f.kind, f.text) for f in found] == [
        ("decision", "We keep the limiter in-process, never add Redis for it."),
        ("preference", "Always run the linter before telling me you're done."),
    ]
    assert sentences("A b. C d.\n```\nx = 1\n```") == ["A b.", "C d."]
    assert {RECORD[k][1] for k in RECORD} <= {"project", "pattern", "preference"}

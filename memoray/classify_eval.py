"""Precision and recall of memoray.classify on the labelled sentences (tests/data), used by the
test and by `make bench-agent`. Kept out of classify.py: the hook never needs it."""

from __future__ import annotations

from pathlib import Path

from memoray.classify import classify_sentence

DATA = Path(__file__).resolve().parents[1] / "tests" / "data" / "classify_sentences.tsv"


def load(path: Path = DATA) -> list[tuple[str, str, str]]:
    """(label, source, sentence) rows, in file order."""
    rows = []
    for line in path.read_text(encoding="utf-8").splitlines():
        if line.strip() and not line.startswith("#"):
            label, source, sentence = line.split("\t")
            rows.append((label, source, sentence))
    return rows


def split(rows: list, part: str) -> list:
    """"dev" (rules were written against it) or "heldout" (every third row, never tuned on)."""
    return [r for i, r in enumerate(rows) if (i % 3 == 2) == (part == "heldout")]


def evaluate(rows: list[tuple[str, str, str]]) -> dict[str, float | int]:
    """Detection (any kind vs none) and strict (the right kind) precision and recall."""
    tp = fp = fn = right_kind = 0
    for label, source, sentence in rows:
        got = classify_sentence(sentence, source) or "none"  # type: ignore[arg-type]
        if got != "none" and label != "none":
            tp += 1
            right_kind += got == label
        elif got != "none":
            fp += 1
        elif label != "none":
            fn += 1

    def ratio(a: int, b: int) -> float:
        return round(a / b, 4) if b else 0.0
    return {"sentences": len(rows), "statements": tp + fn,
            "precision": ratio(tp, tp + fp), "recall": ratio(tp, tp + fn),
            "strictPrecision": ratio(right_kind, tp + fp),
            "strictRecall": ratio(right_kind, tp + fn)}

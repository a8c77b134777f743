"""build-context: sections, de-duplication, degradation order, the budget guarantee, speed."""

from __future__ import annotations

import random
import re
import time

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from memoray import context
from memoray.context import SAFETY_MARGIN, SECTIONS, ContextBlock, build_context
from memoray.errors import ErrorCode, MemorayError
from memoray.tokens import count_tokens

NOW = 1_700_000_000.0
DECISIONS, LESSONS, CHANGES, PROBLEMS, RELEVANT = SECTIONS


def mem(mid: str, content: str, event_type: str = "note", **kw) -> dict:
    rec = {
        "id": mid,
        "content": content,
        "event_type": event_type,
        "tier": kw.pop("tier", None),
        "timestamp": kw.pop("timestamp", NOW - 3600),
        "git_branch": kw.pop("git_branch", "main"),
        "session_id": "s1",
        "metadata": kw.pop("metadata", {}),
    }
    rec.update(kw)
    return rec


def build(memories, budget=4000, **kw) -> ContextBlock:
    kw.setdefault("query", None)
    kw.setdefault("workspace_id", "ws")
    kw.setdefault("branch", "main")
    kw.setdefault("now", NOW)
    return build_context(memories, budget=budget, **kw)


def section_of(block: ContextBlock, text: str) -> str:
    """The section heading above the first line containing ``text``."""
    current = ""
    for line in block.text.splitlines():
        if line.startswith("## "):
            current = line[3:]
        elif text in line:
            return current
    raise AssertionError(f"{text!r} not in output")


def test_sections_in_order_and_each_memory_once():
    memories = [
        mem("m1", "Use LMDB as the source of truth.", "decision"),
        mem("m2", "Tabs are forbidden in this repo.", "note", tier="pattern"),
        mem("m3", "Refactored the shard router.", "code_change", timestamp=NOW - 7200),
        mem("m4", "Session summary: router done.", "session_summary", timestamp=NOW - 60),
        mem("m5", "Changed CI config elsewhere.", "code_change", git_branch="other"),
        mem("m6", "pytest failed with 3 errors", "tool_event", metadata={"exitCode": 1}),
        mem("m7", "ls -la worked", "tool_event", metadata={"exitCode": 0}),
        mem("m8", "Segfault in hnswlib on resize", "error"),
        mem("m9", "Review: missing fsync before ack", "review"),
        mem("m10", "Build step marked failed", "tool_event", metadata={"failed": True}),
        mem("m11", "Prefer small PRs", "preference", tier="preference"),
        mem("m12", "Random note about query planning", "note", score=0.9),
        mem("m13", "Lesson: `pytest -x` failed with: KeyError, fixed by editing a.py", "lesson",
            metadata={"fixes": "f1"}),
        mem("m14", "Failed: $ pytest -x (KeyError)", "error", metadata={"failureId": "f1"}),
    ]
    block = build(memories)
    text = block.text
    positions = [text.index(f"## {name}") for name in SECTIONS]
    assert positions == sorted(positions)
    assert block.sections == {DECISIONS: 3, LESSONS: 1, CHANGES: 2, PROBLEMS: 4, RELEVANT: 3}
    # the failure a lesson fixed is told by the lesson alone
    assert "Failed: $ pytest" not in text and section_of(block, "Lesson:") == LESSONS
    assert sorted(block.included) == sorted(m["id"] for m in memories if m["id"] != "m14")
    assert block.omitted == []
    for needle, section in [
        ("Use LMDB", DECISIONS),
        ("Tabs are", DECISIONS),
        ("Prefer small", DECISIONS),
        ("Refactored", CHANGES),
        ("Session summary", CHANGES),
        ("CI config", RELEVANT),
        ("pytest failed", PROBLEMS),
        ("ls -la", RELEVANT),
        ("Segfault", PROBLEMS),
        ("missing fsync", PROBLEMS),
        ("marked failed", PROBLEMS),
        ("query planning", RELEVANT),
    ]:
        assert section_of(block, needle) == section
        assert text.count(needle) == 1
    # newest first in "Recent changes"; other branches are marked
    assert text.index("Session summary") < text.index("Refactored")
    assert "on `other`" in text and "exit 1" in text
    assert text.startswith("# Memory context · workspace `ws` · branch `main`")


def test_without_a_branch_changes_fall_to_relevant():
    block = build([mem("a", "Refactored the router", "code_change")], branch=None)
    assert block.sections[CHANGES] == 0 and block.sections[RELEVANT] == 1
    assert "branch" not in block.text.splitlines()[0]


def test_relevant_section_is_ordered_by_score():
    memories = [
        mem(f"r{i}", f"memory number {i} text", score=s) for i, s in enumerate([0.2, 0.9, 0.5])
    ]
    block = build(memories)
    assert block.included == ["r1", "r2", "r0"]


def test_duplicates_by_id_and_by_normalised_content():
    memories = [
        mem("a", "Use   LMDB\nfor storage.", "decision", score=0.9),
        mem("b", "use lmdb for STORAGE.", "note", score=0.2),
        mem("a", "Use LMDB for storage, a copy with the same id", "decision"),
        mem("c", "Something else", "note"),
        mem("d", "   \n  ", "note"),
    ]
    block = build(memories)
    assert block.included.count("a") == 1
    assert "b" not in block.included and "b" in block.omitted
    assert "d" in block.omitted  # empty content
    assert "c" in block.included
    assert block.text.count("LMDB") == 1


def test_everything_fits_in_full_with_a_plain_header():
    memories = [mem(f"m{i}", f"Memory {i}: line one\nline two of {i}") for i in range(5)]
    block = build(memories, budget=10_000)
    assert len(block.included) == 5 and block.omitted == []
    assert "omitted" not in block.text and "shortened" not in block.text
    assert block.text.count("line two") == 5
    assert block.tokens == count_tokens(block.text)


def long_text(i: int, words: int) -> str:
    rng = random.Random(i)
    vocab = [
        "shard",
        "index",
        "vector",
        "replica",
        "budget",
        "token",
        "branch",
        "merge",
        "commit",
        "fsync",
    ]
    return f"Memory {i}. " + " ".join(rng.choice(vocab) for _ in range(words))


def test_degradation_follows_priority():
    memories = [mem(f"m{i:02d}", long_text(i, 300), score=1.0 - i / 40) for i in range(40)]
    block = build(memories, budget=600)
    assert block.tokens <= 600
    lines = [ln for ln in block.text.splitlines() if ln.startswith("- ")]
    ids = block.included
    # Best first, and each form no better than the one above: full > trimmed > one line.
    assert ids == [f"m{i:02d}" for i in range(len(ids))]

    def form(line: str) -> int:
        if not line.endswith("\u2026"):
            return 0
        return 1 if count_tokens(line) > context.LINE_TOKENS + 12 else 2

    forms = [form(ln) for ln in lines]
    assert forms == sorted(forms)
    assert forms[-1] == 2 and len(ids) < 40
    assert block.omitted == [f"m{i:02d}" for i in range(len(ids), 40)]
    note = re.search(
        r"_(\d+) more memories omitted, (\d+) shortened to fit the budget_", block.text
    )
    assert note and int(note.group(1)) == 40 - len(ids)
    assert int(note.group(2)) == sum(f > 0 for f in forms)


def test_older_and_lower_tier_degrade_first_when_scores_tie():
    memories = [
        mem("old", long_text(1, 200), timestamp=NOW - 30 * 86400, score=0.5),
        mem("new", long_text(2, 200), timestamp=NOW - 60, score=0.5),
        mem("session", long_text(3, 200), timestamp=NOW - 60, score=0.5, tier="session"),
    ]
    block = build(memories, budget=90)
    assert block.included[0] == "new"
    assert "old" in block.omitted or block.included[-1] == "old"


def test_big_memory_is_trimmed_not_allowed_to_eat_the_budget():
    huge = "Header line of a huge paste\n" + "word " * 250_000  # ~1.25 MB
    memories = [mem("huge", huge, score=1.0)] + [
        mem(f"s{i}", f"Small fact number {i}", score=0.5) for i in range(10)
    ]
    start = time.process_time()
    block = build(memories, budget=400)
    assert time.process_time() - start < 1.0
    assert block.tokens <= 400
    assert block.included[0] == "huge" and len(block.included) == 11
    assert "Header line of a huge paste" in block.text and block.text.count("word") < 60


def test_open_code_fences_are_closed_when_trimmed():
    code = "Patch:\n```python\n" + "".join(f"x{i} = compute({i})\n" for i in range(200)) + "```\n"
    block = build([mem("c", code, "code_change"), mem("n", "After the fence")], budget=150)
    fences = [ln for ln in block.text.splitlines() if ln.strip().startswith("```")]
    assert len(fences) % 2 == 0 and fences
    assert block.tokens <= 150
    assert section_of(block, "After the fence") == RELEVANT


def test_tiny_budgets_degrade_to_a_minimal_header_then_nothing():
    memories = [mem(f"m{i}", long_text(i, 50)) for i in range(5)]
    assert build(memories, budget=0).text == ""
    assert build(memories, budget=2).text == ""
    tiny = build(memories, budget=5)
    assert tiny.text == "# Memory context" and tiny.tokens == 3
    assert tiny.included == [] and len(tiny.omitted) == 5
    small = build(memories, budget=20)
    assert small.text == "# Memory context\n_5 memories omitted to fit the budget_"
    assert build([], budget=2).text == ""
    empty = build([], budget=100)
    assert empty.text == "" and empty.included == [] and empty.omitted == []  # nothing at all
    assert build([], budget=100, style="index").text == ""


def test_margin_shrinks_the_usable_budget():
    memories = [mem(f"m{i}", long_text(i, 200)) for i in range(10)]
    block = build(memories, budget=1000, margin=SAFETY_MARGIN)
    assert block.tokens * (1 + SAFETY_MARGIN) <= 1000
    assert block.tokens > 1000 / (1 + SAFETY_MARGIN) - 60


def test_iso_timestamps_and_missing_fields_are_accepted():
    memories = [
        {"id": "x", "content": "bare record"},
        {"id": "y", "content": "iso time", "timestamp": "2023-11-14T20:13:20Z", "metadata": None},
    ]
    block = build(memories)
    assert set(block.included) == {"x", "y"}
    assert "- note: bare record" in block.text  # no timestamp, no age
    assert "- note, 2h ago: iso time" in block.text  # NOW is 2023-11-14T22:13:20Z


@pytest.mark.parametrize(
    "kwargs",
    [{"budget": -1}, {"budget": 1.5}, {"budget": True}, {"margin": -0.1}, {"margin": float("nan")}],
)
def test_bad_arguments_are_invalid_input(kwargs):
    args = {"budget": 100, **kwargs}
    with pytest.raises(MemorayError) as err:
        build([mem("a", "x")], **args)
    assert err.value.code == ErrorCode.INVALID_INPUT


EVENT_TYPES = [
    "note",
    "decision",
    "code_change",
    "tool_event",
    "review",
    "error",
    "session_summary",
    "convention",
    "preference",
    "prompt",
]
content_st = st.one_of(
    st.text(min_size=0, max_size=300),
    st.lists(
        st.sampled_from(
            [
                "word",
                "```",
                "```py",
                "\n",
                "\n\n",
                "# h",
                "x" * 80,
                "🎉",
                "é",
                "exit",
                "  indented",
                ".",
                "…",
                "\r\n",
                "~~~",
            ]
        ),
        max_size=120,
    ).map(" ".join),
)
memory_st = st.builds(
    lambda i, content, etype, tier, age, branch, meta, score: {
        "id": f"id{i}",
        "content": content,
        "event_type": etype,
        "tier": tier,
        "timestamp": NOW - age,
        "git_branch": branch,
        "session_id": "s",
        "metadata": meta,
        **({} if score is None else {"score": score}),
    },
    st.integers(0, 60),
    content_st,
    st.sampled_from(EVENT_TYPES),
    st.sampled_from([None, "session", "project", "preference", "pattern"]),
    st.floats(-100, 400 * 86400),
    st.sampled_from([None, "main", "feat/x"]),
    st.sampled_from([{}, {"exitCode": 1}, {"exitCode": 0}, {"failed": True}]),
    st.one_of(st.none(), st.floats(0, 1)),
)


@settings(max_examples=250, deadline=None)
@given(
    st.lists(memory_st, max_size=40, unique_by=lambda m: m["id"]),
    st.one_of(st.integers(0, 40), st.integers(0, 3000)),
    st.sampled_from([0.0, 0.1, SAFETY_MARGIN, 0.5]),
    st.one_of(st.none(), st.text(max_size=30)),
    st.sampled_from([None, "main", "feat/x"]),
)
def test_never_over_budget(memories, budget, margin, query, branch):
    def pack(mems):
        return build_context(mems, budget=budget, query=query, workspace_id="w", branch=branch,
                             now=NOW, margin=margin)

    block = pack(memories)
    assert block.tokens == count_tokens(block.text)
    assert block.tokens * (1 + margin) <= budget
    ids = {m["id"] for m in memories}
    assert set(block.included) | set(block.omitted) == ids
    assert not set(block.included) & set(block.omitted)
    assert len(block.included) == len(set(block.included))
    assert sum(block.sections.values()) == len(block.included)
    if block.included:
        assert block.text.startswith("# Memory context")
    again = pack(list(reversed(memories)))
    assert (again.text, again.included) == (block.text, block.included)


def test_packing_200_memories_is_fast():
    rng = random.Random(3)
    memories = [
        mem(
            f"m{i:03d}",
            long_text(i, rng.randint(5, 400)),
            rng.choice(EVENT_TYPES),
            tier=rng.choice([None, "session", "project", "preference", "pattern"]),
            timestamp=NOW - rng.randint(0, 30 * 86400),
            git_branch=rng.choice(["main", "x"]),
            metadata={"exitCode": rng.choice([0, 0, 1])},
            score=rng.random(),
        )
        for i in range(200)
    ]
    build(memories, budget=1500, query="fix the shard")  # warm the tokenizer
    best = float("inf")
    for _ in range(5):
        start = time.process_time()
        block = build(memories, budget=1500, query="fix the shard")
        best = min(best, time.process_time() - start)
    print(f"200 memories into 1500 tokens: {best * 1000:.1f} ms CPU")
    assert block.tokens <= 1500 and len(block.included) > 15
    assert best < 0.1


def test_near_identical_prompts_appear_once_and_old_items_are_dated():
    memories = [
        mem("p1", "How is the rate limiter configured for the API?", "prompt", score=0.9),
        mem("p2", "how is the rate limiter configured for the API", "prompt", score=0.8),
        mem("p3", "How is the rate limiter configured for the public API?", "prompt", score=0.7),
        mem("d1", "Keep the limiter in-process", "decision", timestamp=NOW - 3 * 86400,
            git_branch="feature/x"),
    ]
    block = build(memories, query="rate limiter")
    assert block.text.count("rate limiter configured") == 1
    assert block.included[0] == "d1" and "p1" in block.included
    assert "2023-11-11" in block.text  # older than a day: a date, not a drifting age
    assert "on `feature/x`" in block.text  # another branch is named; the current one is not
    assert "on `main`" not in block.text
    assert "## Open problems" not in block.text  # sections only with items


def test_index_style_puts_ids_first_on_one_line_each():
    memories = [mem(f"01JDX{i:021d}", long_text(i, 120), score=1 - i / 100) for i in range(60)]
    full = build(memories, budget=1500)
    index = build(memories, budget=1500, style="index")
    assert index.tokens <= 1500
    # ids are dear (~25 WordPiece tokens for a ULID), so an index carries about as many
    # memories as the packed form, but every one of them can be expanded with get-memory
    assert len(index.included) >= len(full.included)
    assert all(f"`{mid}`" in index.text for mid in index.included)
    lines = [ln for ln in index.text.splitlines() if ln.startswith("- ")]
    assert lines[0].startswith(f"- `{index.included[0]}` note")
    assert all(count_tokens(ln) <= 120 for ln in lines)  # never the full text
    with pytest.raises(MemorayError):
        build(memories, budget=100, style="fancy")


_LINES = st.text(alphabet=st.sampled_from(list("ab cd-ef_g.h()/✅é漢\t")), max_size=120)


@settings(max_examples=60, deadline=None)
@given(lines=st.lists(_LINES, min_size=1, max_size=12), limit=st.integers(1, 40))
def test_line_fits_is_the_uncached_cut(lines, limit):
    """The one-line form's cut, cached or not, is what tokenizing the line gives: its tokens when
    they fit, else the tokens kept up to a word boundary and where the text is cut."""
    from memoray.context import items
    from memoray.context.render import word_cut
    from memoray.tokens import spans_many

    want = []
    for sp in spans_many(lines):
        if len(sp.offsets) <= limit:
            want.append((len(sp.offsets), None))
        else:
            keep = word_cut(sp.words, limit)
            want.append((keep, sp.offsets[keep - 1][1]))
    assert items.line_fits(lines, limit) == want
    assert items.line_fits(lines, limit) == want  # now from the cache


def test_line_fits_tokenizes_only_lines_it_has_not_seen(monkeypatch):
    from memoray.context import items
    from memoray.tokens import BatchCache

    monkeypatch.setattr(items, "_line_fits", BatchCache(8))
    calls: list[list[str]] = []
    real = items.spans_many
    monkeypatch.setattr(items, "spans_many", lambda t: calls.append(list(t)) or real(t))
    long = " ".join(f"word{i}" for i in range(60))
    first = items.line_fits(["short line", long], 10)
    assert calls == [["short line", long]] and first[0] == (2, None) and first[1][1] is not None
    assert items.line_fits([long, "short line"], 10) == first[::-1] and len(calls) == 1
    items.line_fits([long], 80)  # another limit is another answer
    assert calls[1:] == [[long]]

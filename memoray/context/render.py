"""How one entry is written: its label (type, age or date, branch), its first line, its
trimmed head, code fences kept balanced."""

from __future__ import annotations

from functools import lru_cache
from typing import TYPE_CHECKING, Any

from memoray.context.constants import (
    DECISION_TIERS,
    ELLIPSIS,
    FENCE_LINE,
    FIRST_LINE,
    LINE,
    LINE_CHARS,
    LIST_MARK,
    MIN_TITLE,
    NAME_UNSAFE,
)
from memoray.tokens import count_tokens

if TYPE_CHECKING:  # items imports this module; the annotation only needs the name
    from memoray.context.items import Item


def safe_name(value: str, limit: int = 64) -> str:
    clean = NAME_UNSAFE.sub(" ", value).strip()
    return clean if len(clean) <= limit else clean[: limit - 1] + ELLIPSIS


def title_for(workspace_id: str, branch: str | None) -> str:
    out = f"{MIN_TITLE} · workspace `{safe_name(workspace_id)}`"
    return out + (f" · branch `{safe_name(branch)}`" if branch else "")


def age_text(seconds: float) -> str:
    for unit, size, upto in (
        ("m", 60, 3600),
        ("h", 3600, 86400),
        ("d", 86400, 14 * 86400),
        ("w", 7 * 86400, 60 * 86400),
        ("mo", 30 * 86400, 730 * 86400),
    ):
        if seconds < upto:
            return "just now" if seconds < 60 else f"{int(seconds // size)}{unit} ago"
    return f"{int(seconds // (365 * 86400))}y ago"


def when_text(ts: float, now_s: float) -> str:
    """"2h ago" within a day, else the date: ages drift, a date stays true."""
    age = max(0.0, now_s - ts)
    if age < 86400:
        return age_text(age)
    import time

    return time.strftime("%Y-%m-%d", time.gmtime(ts))


def label_for(m: dict[str, Any], it: Item, branch: str | None, now_s: float,
           show_id: bool = False) -> tuple[str, int]:
    """``- type, tier, date, on `branch`, exit N:`` and its token count, summed from cached
    parts (commas and the dash split tokens, so the parts count independently). With
    ``show_id`` the line starts with the id in backticks, for get-memory."""
    parts = [safe_name(str(m.get("event_type") or "note"), 32)]
    if show_id and it.id:
        parts[0] = f"`{safe_name(it.id, 80)}` {parts[0]}"
    tier = m.get("tier")
    if tier in DECISION_TIERS and m.get("event_type") != tier:
        parts.append(str(tier))
    if it.ts is not None:
        parts.append(when_text(it.ts, now_s))
    other = m.get("git_branch")
    if other and other != branch:
        parts.append(f"on `{safe_name(str(other), 40)}`")
    meta = m.get("metadata")
    if isinstance(meta, dict):
        code = meta.get("exitCode", meta.get("exit_code"))
        if isinstance(code, int) and not isinstance(code, bool) and code != 0:
            parts.append(f"exit {code}")
    return "- " + ", ".join(parts) + ":", 1 + len(parts) + sum(map(part_tokens, parts))


@lru_cache(maxsize=4096)
def part_tokens(part: str) -> int:
    return count_tokens(part)


def first_line(content: str, norm: str) -> tuple[str, bool]:
    """The first line with text that is not a fence marker, markers stripped, whitespace collapsed.

    Also says whether that line is the whole memory (so the one-line form needs no "…").
    """
    m = FIRST_LINE.search(content)
    raw = m.group() if m else content
    line = " ".join(head_text(raw, LINE_CHARS).split())
    stripped = LIST_MARK.sub("", line, count=1) or line
    return stripped, len(raw) <= LINE_CHARS and line == norm


def head_text(content: str, size: int) -> str:
    """About ``size`` leading characters, ending at whitespace when one is near so that its tokens
    are exactly the first tokens of the whole text."""
    if len(content) <= size:
        return content
    for i in range(size, min(len(content), size + 64)):
        if content[i].isspace():
            return content[:i]
    return content[:size]


def word_cut(words: list[int | None], limit: int) -> int:
    """How many of the first tokens to keep (at most ``limit``) so the cut falls between words."""
    keep = limit
    while keep > 0 and words[keep] is not None and words[keep] == words[keep - 1]:
        keep -= 1
    return keep or limit


def open_fence(text: str) -> str | None:
    """The marker of a code fence left open at the end of ``text``, if any."""
    open_marker: str | None = None
    for m in FENCE_LINE.finditer(text):
        marker, rest = m.group(1), m.group(2).strip()
        if open_marker is None:
            open_marker = marker
        elif marker[0] == open_marker[0] and len(marker) >= len(open_marker) and not rest:
            open_marker = None
    return open_marker


@lru_cache(maxsize=64)
def marker_tokens(marker: str) -> int:
    return count_tokens(marker)


def fence_close_tokens(text: str) -> int:
    marker = open_fence(text) if "``" in text or "~~" in text else None
    return marker_tokens(marker) if marker else 0


def entry_text(label: str, body: str, level: int) -> str:
    """One bullet; continuation lines indented so the markdown list holds, open fences closed."""
    if level == LINE:  # one line after the label: backticks there are inline, never a fence
        return f"{label} {body}"
    marker = open_fence(body) if "``" in body or "~~" in body else None
    if marker:
        body += "\n" + marker
    lines = body.split("\n")
    rest = "".join("\n  " + ln if ln.strip() else "\n" for ln in lines[1:])
    if FENCE_LINE.match(lines[0]):
        return label + "\n  " + lines[0] + rest
    return label + " " + lines[0] + rest


# -- packing ------------------------------------------------------------------------------------

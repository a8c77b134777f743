"""Read the last assistant message from a Claude Code transcript (JSONL) without loading it.

Transcripts grow to hundreds of MB, so this reads from the end in growing windows and parses
lines backwards; a missing file, a partial last line or foreign lines just yield less.
"""

from __future__ import annotations

import json
import os

TYPE_CHECKING = False
if TYPE_CHECKING:  # not at run time: typing's import costs every hook ~5 ms
    from typing import Any

WINDOWS = (64 * 1024, 1024 * 1024, 8 * 1024 * 1024)


def last_assistant_text(path: str | None) -> str | None:
    """Text of the newest assistant message that has any text (tool-only turns are skipped)."""
    if not path:
        return None
    try:
        size = os.path.getsize(path)
        with open(path, "rb") as f:
            for window in WINDOWS:
                start = max(0, size - window)
                f.seek(start)
                data = f.read(size - start)
                lines = data.split(b"\n")
                if start > 0:
                    lines = lines[1:]  # the first line is cut by the window
                for line in reversed(lines):
                    text = _assistant_text(line)
                    if text:
                        return text
                if start == 0:
                    return None
    except OSError:
        return None
    return None


def _assistant_text(line: bytes) -> str | None:
    line = line.strip()
    if not line or b"assistant" not in line:
        return None
    try:
        entry = json.loads(line)
    except ValueError:
        return None
    if not isinstance(entry, dict) or entry.get("type") != "assistant":
        return None
    if entry.get("isSidechain") or entry.get("isApiErrorMessage"):
        return None
    message: Any = entry.get("message")
    content = message.get("content") if isinstance(message, dict) else None
    if isinstance(content, str):
        return content.strip() or None
    if not isinstance(content, list):
        return None
    texts = [str(b.get("text", "")) for b in content
             if isinstance(b, dict) and b.get("type") == "text"]
    joined = "\n".join(t for t in texts if t.strip()).strip()
    return joined or None

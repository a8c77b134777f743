"""Per-session state kept next to the spool, so the summary hooks know what the session did.

One small JSON file per session (`<spool dir>/sessions/<id>.json`), read-modify-written under
an flock because Claude Code may run hooks for parallel tool calls at the same time. It holds
aggregates only (files touched, the last commands, counters), bounded in size.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import re
import sys
import time
from collections.abc import Iterator
from pathlib import Path

TYPE_CHECKING = False
if TYPE_CHECKING:  # not at run time: typing's import costs every hook ~5 ms
    from typing import Any

MAX_COMMANDS = 40
MAX_FILES = 200
MAX_FAILURES = 10  # failed commands waiting for a later success of the same command
MAX_STATEMENTS = 200  # keys of decisions already captured this session
STALE_AFTER_S = 14 * 86400


def _session_file(spool_dir: Path, session_id: str) -> Path:
    safe = re.sub(r"[^A-Za-z0-9_.-]", "_", session_id)[:80] or "unknown"
    if safe != session_id:
        import hashlib  # rarely needed: Claude Code's session ids are safe already

        safe += "-" + hashlib.sha256(session_id.encode()).hexdigest()[:8]
    return spool_dir / "sessions" / f"{safe}.json"


def new_state() -> dict[str, Any]:
    return {"seq": 0, "prompts": 0, "firstPrompt": None, "lastPrompt": None,
            "session": _activity(), "turn": _activity(), "noise": {}, "summaries": 0,
            "failures": [], "statements": [], "lessons": []}


def _activity() -> dict[str, Any]:
    return {"files": {}, "commands": [], "tools": {}}


@contextlib.contextmanager
def session_state(spool_dir: Path, session_id: str) -> Iterator[dict[str, Any]]:
    """Yield the session's state dict; changes made inside the block are saved atomically."""
    path = _session_file(spool_dir, session_id)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    except OSError as exc:  # an unwritable spool dir costs the summary, not the capture
        print(f"memoray hook: no session state ({exc})", file=sys.stderr)
        yield new_state()
        return
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        raw = b""
        while chunk := os.read(fd, 1 << 16):
            raw += chunk
        try:
            state = json.loads(raw) if raw.strip() else new_state()
        except ValueError:
            state = new_state()
        if not isinstance(state, dict):
            state = new_state()
        for key, value in new_state().items():
            state.setdefault(key, value)
        before = json.dumps(state, sort_keys=True)
        yield state
        after = json.dumps(state, sort_keys=True)
        if after != before:
            os.lseek(fd, 0, os.SEEK_SET)
            os.ftruncate(fd, 0)
            os.write(fd, after.encode("utf-8"))
    finally:
        os.close(fd)


def next_seq(state: dict[str, Any]) -> int:
    state["seq"] = int(state.get("seq", 0)) + 1
    return state["seq"]


def record_file(state: dict[str, Any], path: str, added: int, removed: int, created: bool) -> None:
    for scope in ("session", "turn"):
        files = state[scope]["files"]
        entry = files.get(path)
        if entry is None:
            if len(files) >= MAX_FILES:
                continue
            entry = files[path] = {"edits": 0, "added": 0, "removed": 0, "created": False}
        entry["edits"] += 1
        entry["added"] += added
        entry["removed"] += removed
        entry["created"] = entry["created"] or created


def record_command(state: dict[str, Any], command: str, ok: bool, status: str) -> None:
    entry = {"cmd": command[:200], "ok": ok, "status": status}
    for scope in ("session", "turn"):
        commands = state[scope]["commands"]
        commands.append(entry)
        del commands[:-MAX_COMMANDS]


def record_failure(state: dict[str, Any], key: list[Any], command: str, error: str,
                   failure_id: str) -> None:
    """Remember a failed command until the same command or test passes (or it ages out)."""
    failures = [f for f in state["failures"] if f["key"] != key]
    failures.append({"key": key, "cmd": command[:500], "error": error[-1500:], "id": failure_id,
                     "fix": {"files": {}, "commands": []}})
    state["failures"] = failures[-MAX_FAILURES:]


def note_fix_edit(state: dict[str, Any], path: str, added: int, removed: int,
                  sample: list[str]) -> None:
    """An edit made while failures are pending: a candidate fix for each of them."""
    for f in state["failures"]:
        files = f["fix"]["files"]
        entry = files.get(path)
        if entry is None:
            if len(files) >= 20:
                continue
            entry = files[path] = {"added": 0, "removed": 0, "sample": []}
        entry["added"] += added
        entry["removed"] += removed
        entry["sample"] = (entry["sample"] + sample)[:4]


def note_fix_command(state: dict[str, Any], command: str) -> None:
    for f in state["failures"]:
        cmds = f["fix"]["commands"]
        if command not in cmds and len(cmds) < 10:
            cmds.append(command[:200])


def take_fixed(state: dict[str, Any], matches: Any) -> list[dict[str, Any]]:
    """Remove and return the pending failures that ``matches(key)`` says this success re-ran."""
    fixed = [f for f in state["failures"] if matches(f["key"])]
    if fixed:
        state["failures"] = [f for f in state["failures"] if f not in fixed]
        for f in fixed:
            state["lessons"] = (state["lessons"] + [f"`{f['cmd'][:120]}`"])[-20:]
    return fixed


def remember_statement(state: dict[str, Any], key: str) -> bool:
    """True the first time this session states ``key``."""
    if key in state["statements"]:
        return False
    state["statements"] = (state["statements"] + [key])[-MAX_STATEMENTS:]
    return True


def record_tool(state: dict[str, Any], tool: str) -> None:
    for scope in ("session", "turn"):
        tools = state[scope]["tools"]
        tools[tool] = tools.get(tool, 0) + 1


def record_noise(state: dict[str, Any], tool: str) -> None:
    state["noise"][tool] = state["noise"].get(tool, 0) + 1


def reset_turn(state: dict[str, Any]) -> None:
    state["turn"] = _activity()


def prune_stale(spool_dir: Path, now: float | None = None) -> int:
    """Delete state files of sessions idle for two weeks; returns how many went."""
    now = time.time() if now is None else now
    removed = 0
    try:
        entries = list((spool_dir / "sessions").iterdir())
    except OSError:
        return 0
    for p in entries:
        try:
            if p.suffix == ".json" and now - p.stat().st_mtime > STALE_AFTER_S:
                p.unlink()
                removed += 1
        except OSError:
            continue
    return removed

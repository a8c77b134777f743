"""Turn Claude Code hook payloads into compact memory records (pure functions, no I/O).

A record is what is worth finding again later: which file changed and how, which command ran
and how it ended, which plan was accepted, how a session ended. Reads, searches and to-do
bookkeeping are noise: they are only counted.
"""

from __future__ import annotations

import json
import os
import re
from collections import namedtuple

TYPE_CHECKING = False
if TYPE_CHECKING:  # not at run time: typing's import costs every hook ~5 ms
    from typing import Any

# Tools that only look around: counted per session, never stored.
NOISE_TOOLS = frozenset({
    "Read", "Glob", "Grep", "LS", "TodoWrite", "TodoRead", "NotebookRead", "BashOutput",
    "KillShell", "KillBash", "ListMcpResourcesTool", "ReadMcpResourceTool", "TaskOutput",
    "TaskList", "TaskGet", "TaskCreate", "TaskUpdate", "TaskStop", "AskUserQuestion",
})
EDIT_TOOLS = frozenset({"Edit", "Write", "MultiEdit", "NotebookEdit"})
OWN_MCP_PREFIX = "mcp__memoray__"  # the agent calling memoray itself: already stored server-side

# Shell commands that only read: folded into the noise counter like Read/Grep.
_READ_ONLY_CMDS = frozenset({
    "ls", "ll", "pwd", "cat", "head", "tail", "less", "more", "wc", "echo", "printf", "which",
    "type", "tree", "file", "stat", "find", "grep", "egrep", "rg", "ag", "fd", "du", "df", "env",
    "printenv", "whoami", "date", "true", "cd", "sort", "uniq", "jq", "realpath", "dirname",
    "basename", "nl", "diff", "cmp",
})
_READ_ONLY_GIT = frozenset({"status", "diff", "log", "show", "branch", "remote", "rev-parse",
                            "ls-files", "blame", "describe", "shortlog", "reflog"})

MAX_STREAM_CHARS = 600
MAX_PROMPT_CHARS = 16000
MAX_CONTENT_CHARS = 32000
SAMPLE_LINES = 6
SAMPLE_LINE_CHARS = 120


class ToolRecord:
    """What one PostToolUse contributes: a record to store and/or facts for the summary.
    (A plain class: importing dataclasses costs a hook process several ms.)"""

    __slots__ = ("noise", "content", "event_type", "metadata", "file", "command")

    def __init__(self, noise: bool = False, content: str | None = None,
                 event_type: str = "tool_event", metadata: dict[str, Any] | None = None,
                 file: tuple[str, int, int, bool] | None = None,  # (path, added, removed, new)
                 command: tuple[str, bool, str] | None = None):  # (command, ok, status)
        self.noise = noise
        self.content = content
        self.event_type = event_type
        self.metadata = {} if metadata is None else metadata
        self.file = file
        self.command = command

    def __repr__(self) -> str:
        return (f"ToolRecord(noise={self.noise!r}, content={self.content!r}, "
                f"event_type={self.event_type!r}, metadata={self.metadata!r}, "
                f"file={self.file!r}, command={self.command!r})")


def trim(text: str, limit: int) -> str:
    """Head and tail of text within about `limit` characters (the middle is what gets cut)."""
    text = text.strip()
    if len(text) <= limit:
        return text
    head = limit * 2 // 3
    tail = limit - head
    return f"{text[:head].rstrip()}\n… [{len(text) - limit} chars cut] …\n{text[-tail:].lstrip()}"


def one_line(value: Any, limit: int = 200) -> str:
    text = value if isinstance(value, str) else json.dumps(value, ensure_ascii=False,
                                                           sort_keys=True, default=str)
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 1] + "…"


def rel_path(path: str, root: str | None) -> str:
    if root and path:
        try:
            rel = os.path.relpath(path, root)
        except ValueError:
            return path
        if not rel.startswith(".."):
            return rel
    return path


def summarize_tool(payload: dict[str, Any], root: str | None) -> ToolRecord | None:
    """The record for one tool call, or None for calls that leave no trace at all."""
    tool = str(payload.get("tool_name") or "")
    tool_input = payload.get("tool_input")
    tool_input = tool_input if isinstance(tool_input, dict) else {}
    response = payload.get("tool_response")
    if not tool or tool.startswith(OWN_MCP_PREFIX):
        return None
    if tool in NOISE_TOOLS:
        return ToolRecord(noise=True)
    if tool in EDIT_TOOLS:
        return _edit_record(tool, tool_input, response, root)
    if tool == "Bash":
        return _bash_record(tool_input, response)
    if tool == "ExitPlanMode":
        plan = str(tool_input.get("plan") or "").strip()
        if plan:
            return ToolRecord(content="Plan accepted:\n" + trim(plan, 4000),
                              event_type="decision", metadata={"tool": tool})
        return None
    if tool == "WebFetch":
        text = f"Fetched {tool_input.get('url', '?')}"
        if tool_input.get("prompt"):
            text += f" to learn: {one_line(tool_input['prompt'])}"
        return ToolRecord(content=text, metadata={"tool": tool, "url": tool_input.get("url")})
    if tool == "WebSearch":
        return ToolRecord(content=f"Searched the web for: {one_line(tool_input.get('query', ''))}",
                          metadata={"tool": tool})
    if tool in ("Task", "Agent"):
        kind = tool_input.get("subagent_type") or "general"
        text = f"Subagent ({kind}): {one_line(tool_input.get('description', ''))}"
        result = _response_text(response)
        if result:
            text += "\nResult: " + trim(result, 800)
        return ToolRecord(content=text, metadata={"tool": tool, "subagent": kind})
    if tool.startswith("mcp__"):
        _, _, rest = tool.partition("mcp__")
        server, _, name = rest.partition("__")
        return ToolRecord(content=f"Called MCP tool {server}.{name or '?'} with "
                                  f"{one_line(tool_input)}",
                          metadata={"tool": tool, "mcpServer": server})
    return ToolRecord(content=f"Used {tool}: {one_line(tool_input)}", metadata={"tool": tool})


def _response_text(response: Any) -> str:
    if isinstance(response, str):
        return response
    if isinstance(response, dict):
        content = response.get("content", response.get("result"))
        if isinstance(content, str):
            return content
        response = content
    if isinstance(response, list):
        return "\n".join(str(b.get("text", "")) for b in response
                         if isinstance(b, dict) and b.get("type") == "text")
    return ""


# -- edits ------------------------------------------------------------------------------------

def _patch_lines(response: Any) -> list[str] | None:
    """The +/- lines of Claude Code's structuredPatch, when the response carries one."""
    if not isinstance(response, dict) or not isinstance(response.get("structuredPatch"), list):
        return None
    lines: list[str] = []
    for hunk in response["structuredPatch"]:
        if isinstance(hunk, dict) and isinstance(hunk.get("lines"), list):
            lines.extend(str(x) for x in hunk["lines"])
    return lines


def _diff_lines(old: str, new: str) -> list[str]:
    """+/- lines between two strings, in structuredPatch's form ("+line", "-line")."""
    old_lines, new_lines = old.splitlines(), new.splitlines()
    if len(old) + len(new) > 50_000:  # too big to diff inside a hook: count lines instead
        return [f"-{x}" for x in old_lines] + [f"+{x}" for x in new_lines]
    import difflib  # only when the response has no structuredPatch

    diff = list(difflib.unified_diff(old_lines, new_lines, n=0, lineterm=""))[2:]  # no ---/+++
    return [x for x in diff if not x.startswith("@@")]


def _edit_record(tool: str, tool_input: dict[str, Any], response: Any,
                 root: str | None) -> ToolRecord:
    path = str(tool_input.get("file_path") or tool_input.get("notebook_path")
               or (response.get("filePath") if isinstance(response, dict) else "") or "?")
    shown = rel_path(path, root)
    created = isinstance(response, dict) and response.get("type") == "create"
    lines = _patch_lines(response)
    if not lines:  # no patch (older Claude Code), or an empty one as for a created file
        if tool == "Write":
            lines = [f"+{x}" for x in str(tool_input.get("content") or "").splitlines()]
            created = not (isinstance(response, dict) and response.get("type") == "update")
        elif tool == "MultiEdit":
            lines = []
            for edit in tool_input.get("edits") or []:
                if isinstance(edit, dict):
                    lines += _diff_lines(str(edit.get("old_string", "")),
                                         str(edit.get("new_string", "")))
        elif tool == "NotebookEdit":
            lines = [f"+{x}" for x in str(tool_input.get("new_source") or "").splitlines()]
        else:
            lines = _diff_lines(str(tool_input.get("old_string", "")),
                                str(tool_input.get("new_string", "")))
    added = sum(1 for x in lines if x.startswith("+"))
    removed = sum(1 for x in lines if x.startswith("-"))
    verb = {"Write": "Created" if created else "Rewrote", "NotebookEdit": "Edited notebook"}.get(
        tool, "Edited")
    head = f"{verb} {shown} (+{added} -{removed})"
    if tool == "MultiEdit":
        head += f" in {len(tool_input.get('edits') or [])} edits"
    changed = [x for x in lines if x[:1] in "+-" and x[1:].strip()]
    sample = [x if len(x) <= SAMPLE_LINE_CHARS else x[:SAMPLE_LINE_CHARS] + "…"
              for x in changed[:SAMPLE_LINES]]
    if len(changed) > SAMPLE_LINES:
        sample.append(f"… {len(changed) - SAMPLE_LINES} more changed lines")
    content = head + (":\n" + "\n".join(sample) if sample else "")
    metadata = {"tool": tool, "filePath": shown, "linesAdded": added, "linesRemoved": removed}
    return ToolRecord(content=content, event_type="code_change", metadata=metadata,
                      file=(shown, added, removed, created))


# -- shell ------------------------------------------------------------------------------------

def is_read_only(command: str) -> bool:
    """True when every step of a shell command only reads (ls, cat, git status...)."""
    import shlex  # Bash calls only

    steps = [s.strip() for s in re.split(r"&&|\|\||;|\||\n", command) if s.strip()]
    if not steps:
        return True
    for step in steps:
        try:
            words = shlex.split(step)
        except ValueError:
            words = step.split()
        while words and re.match(r"^[A-Za-z_][A-Za-z0-9_]*=", words[0]):
            words = words[1:]  # FOO=bar cmd
        if not words:
            continue
        name = os.path.basename(words[0])
        if name == "git":
            sub = next((w for w in words[1:] if not w.startswith("-")), "")
            if sub not in _READ_ONLY_GIT:
                return False
        elif name == "sed" and "-i" not in words:
            continue
        elif name not in _READ_ONLY_CMDS:
            return False
    return True


def bash_outcome(response: Any) -> tuple[bool, str, str, str]:
    """(ok, status, stdout, stderr) from a Bash tool_response in any of its shapes."""
    if isinstance(response, str):
        m = re.search(r"[Ee]xit code:? (-?\d+)", response)
        code = int(m.group(1)) if m else None
        ok = code in (None, 0) and not response.lower().startswith("error")
        return ok, ("ok" if ok else f"exit {code}" if code is not None else "error"), response, ""
    if not isinstance(response, dict):
        return True, "ok", "", ""
    stdout = str(response.get("stdout") or "")
    stderr = str(response.get("stderr") or "")
    code = next((response[k] for k in ("exitCode", "exit_code", "returnCode", "code")
                 if isinstance(response.get(k), int)), None)
    if response.get("interrupted"):
        return False, "interrupted", stdout, stderr
    if code not in (None, 0):
        return False, f"exit {code}", stdout, stderr
    if response.get("is_error") or response.get("isError"):
        return False, "error", stdout, stderr
    if response.get("backgroundTaskId"):
        return True, "started in background", stdout, stderr
    return True, "ok", stdout, stderr


def _bash_record(tool_input: dict[str, Any], response: Any) -> ToolRecord:
    command = str(tool_input.get("command") or "").strip()
    ok, status, stdout, stderr = bash_outcome(response)
    if not command or is_read_only(command):
        return ToolRecord(noise=True)
    lines = [f"$ {trim(command, 1000)}", f"→ {status}"]
    if tool_input.get("description"):
        lines.insert(0, f"Ran: {one_line(tool_input['description'])}")
    if stdout.strip():
        lines.append("stdout:\n" + trim(stdout, MAX_STREAM_CHARS))
    if stderr.strip():
        lines.append("stderr:\n" + trim(stderr, MAX_STREAM_CHARS))
    metadata = {"tool": "Bash", "command": one_line(command, 500), "ok": ok, "status": status}
    return ToolRecord(content="\n".join(lines), event_type="tool_event" if ok else "error",
                      metadata=metadata, command=(one_line(command, 200), ok, status))


# -- summaries --------------------------------------------------------------------------------

def session_summary(activity: dict[str, Any], *, first_prompt: str | None,
                    last_message: str | None, noise: dict[str, int] | None = None,
                    lessons: list[str] | None = None) -> str | None:
    """A few readable lines on what a session (or a turn) did; None when there is nothing."""
    files: dict[str, dict[str, Any]] = activity.get("files") or {}
    commands: list[dict[str, Any]] = activity.get("commands") or []
    tools: dict[str, int] = activity.get("tools") or {}
    if not (files or commands or tools or last_message):
        return None
    out: list[str] = []
    if first_prompt:
        out.append(f"Asked: {one_line(first_prompt, 300)}")
    if files:
        listed = sorted(files.items(), key=lambda kv: -kv[1]["added"] - kv[1]["removed"])
        parts = [f"{p} ({'new, ' if f['created'] else ''}+{f['added']} -{f['removed']})"
                 for p, f in listed[:15]]
        more = f", and {len(files) - 15} more" if len(files) > 15 else ""
        out.append(f"Files changed ({len(files)}): " + ", ".join(parts) + more)
    if commands:
        failed = sum(1 for c in commands if not c["ok"])
        out.append(f"Commands ({len(commands)}, {failed} failed):")
        out.extend(f"- `{c['cmd']}` → {c['status']}" for c in commands[-12:])
    if lessons:
        out.append("Failed, then fixed: " + ", ".join(lessons[-8:]))
    if tools:
        out.append("Other tools: " + ", ".join(f"{k} ×{v}" for k, v in sorted(tools.items())))
    if noise:
        out.append("Looked around: " + ", ".join(f"{k} ×{v}" for k, v in sorted(noise.items())))
    if last_message:
        out.append("Outcome (last assistant message):\n" + trim(last_message, 1500))
    return "\n".join(out)


# -- failures and their fixes -----------------------------------------------------------------

MAX_ERROR_CHARS = 800
# Edits that miss ("String to replace not found") and failed reads are the agent's own slips:
# counted, never stored.
SLIP_TOOLS = EDIT_TOOLS | NOISE_TOOLS
_TEST_RUNNERS = ("pytest", "py.test", "jest", "vitest", "mocha", "rspec", "phpunit", "tox",
                 "nox", "ctest")
_TEST_SUBCOMMANDS = {"go": "test", "cargo": "test", "npm": "test", "pnpm": "test",
                     "yarn": "test", "bun": "test", "dotnet": "test", "mvn": "test",
                     "gradle": "test", "make": "test"}


def trim_tail(text: str, limit: int) -> str:
    """The end of an error text within about ``limit`` characters: the cause is at the end."""
    text = text.strip()
    if len(text) <= limit:
        return text
    head = min(160, limit // 4)
    return (f"{text[:head].rstrip()}\n… [{len(text) - limit} chars cut] …\n"
            f"{text[-(limit - head):].lstrip()}")


def _steps(command: str) -> list[list[str]]:
    """The words of each step of a shell command, env assignments and `cd`/`source` dropped."""
    import shlex

    out = []
    for step in re.split(r"&&|\|\||;|\n", command):
        try:
            words = shlex.split(step)
        except ValueError:
            words = step.split()
        while words and re.match(r"^[A-Za-z_][A-Za-z0-9_]*=", words[0]):
            words = words[1:]
        if words and os.path.basename(words[0]) not in ("cd", "source", ".", "export", "set"):
            out.append(words)
    return out


def command_key(command: str) -> tuple[str, tuple[str, ...]] | None:
    """What makes two runs "the same command or test": (runner, targets).

    For a test runner the runner is e.g. ``pytest`` or ``go test`` and the targets are the paths
    or test ids named (flags dropped), so ``pytest tests/a.py::t -x`` and ``pytest tests/a.py -q``
    are the same test. Any other command is keyed by its words without flags.
    """
    steps = _steps(command)
    for words in steps:
        names = [os.path.basename(w) for w in words]
        if names[0] in ("python", "python3", "uv", "poetry") and "pytest" in names[:4]:
            words = words[names.index("pytest"):]
            names = names[names.index("pytest"):]
        runner = None
        if names[0] in _TEST_RUNNERS or (names[0] in ("npx", "pnpx") and len(names) > 1
                                         and names[1] in _TEST_RUNNERS):
            runner = names[1] if names[0] in ("npx", "pnpx") else names[0]
            rest = words[2:] if names[0] in ("npx", "pnpx") else words[1:]
        elif len(names) > 1 and _TEST_SUBCOMMANDS.get(names[0]) and (
                names[1] == "test" or names[1].startswith("test") and names[0] == "make"
                or names[1] == "run" and len(names) > 2 and names[2].startswith("test")):
            runner = f"{names[0]} {names[1]}"
            rest = words[2:]
        if runner:
            targets = tuple(w for w in rest if not w.startswith("-") and not w.isdigit())
            return f"test:{runner}", targets
    if not steps:
        return None
    words = [w for w in steps[-1] if not w.startswith("-")]
    return (f"cmd:{' '.join(words[:12])}", ()) if words else None


def same_run(failed: tuple[str, tuple[str, ...]], passed: tuple[str, tuple[str, ...]]) -> bool:
    """True when ``passed`` re-ran what ``failed`` ran (the whole suite covers any part of it)."""
    if failed[0] != passed[0]:
        return False
    if not failed[0].startswith("test:") or not passed[1]:
        return failed[1] == passed[1] or not passed[1]

    def covers(a: str, b: str) -> bool:
        return b == a or b.startswith(a.rstrip("/") + "/") or b.startswith(a + "::")

    return any(covers(p, f) or covers(f, p) for p in passed[1] for f in failed[1] or ("",))


class Failure(namedtuple("Failure", (
    "content",  # str | None; None: a slip or an interrupt, counted only
    "metadata",  # dict[str, Any]
    "command",  # str | None
    "error",  # str
))):
    """What a PostToolUseFailure contributes."""

    __slots__ = ()


def summarize_failure(payload: dict[str, Any], root: str | None) -> Failure | None:
    """The `error` record of a failed tool call: the command, the error text (its end, where the
    cause is) and the tool input."""
    tool = str(payload.get("tool_name") or "")
    if not tool or tool.startswith(OWN_MCP_PREFIX):
        return None
    tool_input = payload.get("tool_input")
    tool_input = tool_input if isinstance(tool_input, dict) else {}
    error = payload.get("error")
    error = error if isinstance(error, str) else one_line(error or "", 2000)
    error = error.strip() or "(no error text)"
    interrupted = bool(payload.get("is_interrupt"))
    meta: dict[str, Any] = {"tool": tool, "ok": False, "failed": True,
                            "status": "interrupted" if interrupted else "failed"}
    if tool == "Bash":
        command = str(tool_input.get("command") or "").strip()
        if not command:
            return None
        meta["command"] = one_line(command, 500)
        m = re.search(r"[Ee]xit code:? (-?\d+)", error)
        if m:
            meta["exitCode"] = int(m.group(1))
        lines = [f"Failed: $ {trim(command, 1000)}"]
        if tool_input.get("description"):
            lines.insert(0, f"Ran: {one_line(tool_input['description'])}")
        lines.append("error:\n" + trim_tail(error, MAX_ERROR_CHARS))
        content = None if interrupted else "\n".join(lines)
        return Failure(content, meta, command, error)
    shown = {k: (rel_path(v, root) if k.endswith("path") and isinstance(v, str) else v)
             for k, v in tool_input.items()}
    meta["toolInput"] = one_line(shown, 500)
    if tool in SLIP_TOOLS or interrupted:
        return Failure(None, meta, None, error)
    content = (f"Failed: {tool} {one_line(shown, 300)}\nerror:\n"
               f"{trim_tail(error, MAX_ERROR_CHARS)}")
    return Failure(content, meta, None, error)


def lesson_text(command: str, error: str, fix: dict[str, Any]) -> str:
    """"`cmd` failed (error), then passed after: edits / commands" as one readable record."""
    first = next((ln.strip() for ln in reversed(error.strip().splitlines())
                  if ln.strip() and not ln.strip().startswith(("…", "at ", "File "))), error)
    out = [f"Lesson: `{one_line(command, 200)}` failed with: {one_line(first, 240)}"]
    files = fix.get("files") or {}
    if files:
        parts = [f"{p} (+{f['added']} -{f['removed']})" for p, f in list(files.items())[:8]]
        out.append("Fixed by editing " + ", ".join(parts))
        samples = [s for f in files.values() for s in f.get("sample", [])][:6]
        if samples:
            out.append("\n".join(samples))
    cmds = [c for c in fix.get("commands") or [] if c != command][:4]
    if cmds:
        out.append("After running: " + "; ".join(f"`{c}`" for c in cmds))
    if not files and not cmds:
        out.append("It passed when re-run with no change in between (flaky or environmental).")
    out.append(f"Then `{one_line(command, 200)}` passed.")
    return "\n".join(out)

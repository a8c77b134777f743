"""The `memoray hook` processes against a real MCP server (streamable HTTP, stateless, JSON).

Each test runs the real command (`python -m memoray.cli hook <Event>`) with a JSON payload on
stdin, the way Claude Code does, against an MCPServer with `capture-memories` and
`build-context` tools served by uvicorn on a free loopback port, or against a closed port.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import uvicorn
from mcp.server.mcpserver import MCPServer
from mcp_types import CallToolResult, TextContent

from memoray.hooks import events, transcript
from memoray.hooks.client import McpClient
from memoray.hooks.spool import Spool
from tests.gitutil import git, isolate_git
from tests.hook_process import log_size, settle

HEAVY = ("ray", "torch", "numpy", "pydantic", "httpx", "mcp", "anyio", "starlette", "uvicorn")
REMOTE = "https://github.com/Acme/Widget.git"
WORKSPACE = "github.com/acme/widget"


# -- the test server --------------------------------------------------------------------------

@dataclass
class Recorder:
    """What the server received, and how it should answer next."""

    log: list[tuple[str, Any]] = field(default_factory=list)  # (tool, arguments) in order
    stored: dict[str, dict[str, Any]] = field(default_factory=dict)  # idempotencyKey -> item
    headers: list[dict[str, str]] = field(default_factory=list)
    context: str = "## Relevant memories\n- use pnpm, not npm (decision)"
    capture_error: dict[str, Any] | str | None = None
    poison: str | None = None  # items whose content contains this are INVALID_INPUT
    capture_delay: float = 0.0  # seconds capture-memories takes to answer
    lock: threading.Lock = field(default_factory=threading.Lock)

    def reset(self) -> None:
        with self.lock:
            self.log.clear()
            self.stored.clear()
            self.headers.clear()
        self.context = "## Relevant memories\n- use pnpm, not npm (decision)"
        self.capture_error = None
        self.poison = None
        self.capture_delay = 0.0

    def items(self) -> list[dict[str, Any]]:
        """Every item received by capture-memories, in arrival order (duplicates included)."""
        return [it for tool, args in self.log if tool == "capture-memories"
                for it in args["items"]]

    def calls(self, tool: str) -> list[dict[str, Any]]:
        return [args for t, args in self.log if t == tool]


def _result(payload: dict[str, Any], error: bool = False) -> CallToolResult:
    text = json.dumps(payload)
    if error:
        return CallToolResult(content=[TextContent(type="text", text=text)], is_error=True)
    return CallToolResult(content=[TextContent(type="text", text=text)],
                          structured_content=payload)


def make_app(rec: Recorder):
    server = MCPServer("memoray-test")

    @server.tool(name="capture-memories")
    async def capture(items: list[dict[str, Any]]) -> CallToolResult:
        with rec.lock:
            rec.log.append(("capture-memories", {"items": items}))
        if rec.capture_delay:  # received, not yet answered
            await asyncio.sleep(rec.capture_delay)
        with rec.lock:
            if isinstance(rec.capture_error, str):  # an uncoded failure, as a bug would give
                return CallToolResult(content=[TextContent(type="text", text=rec.capture_error)],
                                      is_error=True)
            if rec.capture_error:
                return _result(rec.capture_error, error=True)
            if rec.poison and any(rec.poison in str(it.get("content")) for it in items):
                return _result({"code": "INVALID_INPUT", "message": "items.1.content: bad"}, True)
            ids = []
            for n, it in enumerate(items):
                rec.stored.setdefault(it["idempotencyKey"], it)
                ids.append([f"id-{len(rec.stored)}-{n}"])
        return _result({"ids": ids, "count": len(items)})

    @server.tool(name="build-context")
    def build_context(query: str | None = None, tokenBudget: int = 1000,
                      workspaceId: str = "default", gitBranch: str | None = None,
                      sessionId: str | None = None, filters: dict[str, Any] | None = None,
                      style: str | None = None, limit: int | None = None) -> CallToolResult:
        args = {"query": query, "tokenBudget": tokenBudget, "workspaceId": workspaceId,
                "gitBranch": gitBranch, "sessionId": sessionId, "filters": filters}
        if style is not None:
            args["style"] = style
        if limit is not None:
            args["limit"] = limit
        with rec.lock:
            rec.log.append(("build-context", args))
        text = rec.context
        return _result({"context": text, "tokens": len(text) // 4, "included": 1 if text else 0,
                        "omitted": 0})

    app = server.streamable_http_app(stateless_http=True, json_response=True)

    async def recording(scope, receive, send):  # ASGI middleware: keep request headers
        if scope["type"] == "http":
            with rec.lock:
                rec.headers.append({k.decode(): v.decode() for k, v in scope["headers"]})
        await app(scope, receive, send)

    return recording


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def server() -> Iterator[tuple[str, Recorder]]:
    rec = Recorder()
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    srv = uvicorn.Server(uvicorn.Config(make_app(rec), log_level="error", lifespan="on"))
    thread = threading.Thread(target=srv.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not srv.started:
        assert time.monotonic() < deadline, "test server did not start"
        time.sleep(0.01)
    yield f"http://127.0.0.1:{port}", rec
    srv.should_exit = True
    thread.join(timeout=5)
    sock.close()


@pytest.fixture()
def live(server) -> tuple[str, Recorder]:
    server[1].reset()
    return server


# -- a project and a way to run hooks in it ---------------------------------------------------



@pytest.fixture()
def project(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A repo with origin=Acme/Widget, main, a merged branch `fix`, on branch `feature`."""
    isolate_git(tmp_path, monkeypatch)
    repo = tmp_path / "widget"
    repo.mkdir()
    git(repo, "init", "-q", "-b", "main")
    git(repo, "remote", "add", "origin", REMOTE)
    (repo / "src").mkdir()
    (repo / "src" / "app.py").write_text("a = 1\n")
    git(repo, "add", ".")
    git(repo, "commit", "-qm", "init")
    git(repo, "checkout", "-qb", "fix")
    (repo / "fix.txt").write_text("x\n")
    git(repo, "add", ".")
    git(repo, "commit", "-qm", "fix")
    git(repo, "checkout", "-q", "main")
    git(repo, "merge", "-q", "fix")
    git(repo, "checkout", "-qb", "feature")
    git(repo, "branch", "unmerged", "HEAD")
    git(repo, "checkout", "-q", "unmerged")
    (repo / "u.txt").write_text("u\n")
    git(repo, "add", ".")
    git(repo, "commit", "-qm", "u")
    git(repo, "checkout", "-q", "feature")
    return repo


@dataclass
class Run:
    rc: int
    stdout: str
    stderr: str
    seconds: float

    def json(self) -> dict[str, Any]:
        return json.loads(self.stdout)


def hook(event: str, payload: Any, *, url: str, spool: Path, env: dict[str, str] | None = None,
         raw: str | None = None, extra: list[str] | None = None) -> Run:
    """Run the real `memoray hook <event>` process, payload on stdin."""
    full_env = {k: v for k, v in os.environ.items() if not k.startswith("MEMORAY_")}
    full_env.update({"MEMORAY_URL": url, "MEMORAY_SPOOL_DIR": str(spool), **(env or {})})
    data = raw if raw is not None else json.dumps(payload)
    logged = log_size(spool)
    start = time.perf_counter()
    proc = subprocess.run([sys.executable, *(extra or []), "-m", "memoray.cli", "hook", event],
                          check=False, input=data, capture_output=True, text=True, env=full_env,
                          timeout=30, cwd=payload.get("cwd") if isinstance(payload, dict) else None)
    seconds = time.perf_counter() - start  # the hook itself: what the agent waits for
    # then its detached flusher, whose log lines read as the hook's own
    return Run(proc.returncode, proc.stdout, proc.stderr + settle(spool, logged), seconds)


def base(project: Path, **fields: Any) -> dict[str, Any]:
    return {"session_id": "sess-1", "transcript_path": str(project / "t.jsonl"),
            "cwd": str(project), "permission_mode": "default", **fields}


def edit_payload(project: Path, n: int = 1) -> dict[str, Any]:
    path = str(project / "src" / "app.py")
    return base(project, hook_event_name="PostToolUse", tool_name="Edit", tool_use_id=f"toolu_{n}",
                tool_input={"file_path": path, "old_string": "a = 1", "new_string": "a = 2\nb = 3"},
                tool_response={"filePath": path, "oldString": "a = 1", "newString": "a = 2\nb = 3",
                               "structuredPatch": [{"oldStart": 1, "oldLines": 1, "newStart": 1,
                                                    "newLines": 2,
                                                    "lines": ["-a = 1", "+a = 2", "+b = 3"]}],
                               "userModified": False, "replaceAll": False})


def bash_payload(project: Path, command: str, n: int, **response: Any) -> dict[str, Any]:
    resp = {"stdout": "", "stderr": "", "interrupted": False, "isImage": False, **response}
    return base(project, hook_event_name="PostToolUse", tool_name="Bash", tool_use_id=f"toolu_b{n}",
                tool_input={"command": command, "description": "run it"}, tool_response=resp)


def closed_url() -> str:
    return f"http://127.0.0.1:{free_port()}"


# -- the hard rule: light and harmless ---------------------------------------------------------

def test_hook_imports_only_the_standard_library(project: Path, tmp_path: Path) -> None:
    run = hook("PostToolUse", edit_payload(project), url=closed_url(), spool=tmp_path / "spool",
               extra=["-X", "importtime"])
    assert run.rc == 0
    imported = {line.split("|")[-1].strip() for line in run.stderr.splitlines()
                if line.startswith("import time:")}
    assert "memoray.hooks.runner" in imported
    heavy = sorted(m for m in imported if m.split(".")[0] in HEAVY)
    assert heavy == [], f"hook imported heavy modules: {heavy}"
    assert "typing" not in imported  # ~5 ms of every hook: annotations only (TYPE_CHECKING)


@pytest.mark.parametrize("raw", ["not json", "[1, 2]", "", '{"tool_name": 5, "tool_input": "x"}',
                                 '{"session_id": null, "cwd": 42}'])
@pytest.mark.parametrize("event", ["PostToolUse", "UserPromptSubmit", "SessionStart", "Stop"])
def test_malformed_stdin_exits_zero(live, tmp_path: Path, raw: str, event: str) -> None:
    url, _ = live
    run = hook(event, None, url=url, spool=tmp_path / "spool", raw=raw)
    assert run.rc == 0
    assert run.stdout == "" or "hookSpecificOutput" in run.json()
    assert "Traceback" not in run.stderr


def test_server_down_is_fast_and_spools(project: Path, tmp_path: Path) -> None:
    url, spool = closed_url(), tmp_path / "spool"
    runs = [hook("SessionStart", base(project, hook_event_name="SessionStart", source="startup"),
                 url=url, spool=spool),
            hook("PostToolUse", edit_payload(project), url=url, spool=spool),
            hook("UserPromptSubmit", base(project, prompt="how do we deploy the widget service?"),
                 url=url, spool=spool)]
    for run in runs:
        assert run.rc == 0 and run.stdout == ""
        assert run.seconds < 1.0, run.seconds
    pending = Spool(spool).pending_items()
    assert [it["eventType"] for it in pending] == ["code_change", "prompt"]


def test_a_capturing_hook_answers_before_the_server_does(live, project: Path,
                                                         tmp_path: Path) -> None:
    """The agent waits for the hook, not for the capture: a detached child sends it. With
    MEMORAY_HOOK_BACKGROUND=0 the hook sends it itself and waits for the answer."""
    url, rec = live
    rec.capture_delay = 1.5
    spool = tmp_path / "spool"
    run = hook("PostToolUse", edit_payload(project, 1), url=url, spool=spool)
    assert run.rc == 0 and run.stdout == "" and run.stderr == "", run.stderr
    assert run.seconds < 1.2, run.seconds  # hook() timed the hook, then waited for its child
    assert [it["eventType"] for it in rec.items()] == ["code_change"]
    assert Spool(spool).pending_items() == []
    run = hook("PostToolUse", edit_payload(project, 2), url=url, spool=spool,
               env={"MEMORAY_HOOK_BACKGROUND": "0"})
    assert run.rc == 0 and run.seconds >= 1.5, run.seconds
    assert len(rec.items()) == 2 and Spool(spool).pending_items() == []


def _hook_processes(event: str) -> list[int]:
    pids = []
    for entry in os.listdir("/proc"):
        try:
            cmd = open(f"/proc/{entry}/cmdline", "rb").read().split(b"\0")
        except OSError:
            continue
        if b"memoray.cli" in cmd and b"hook" in cmd and event.encode() in cmd:
            pids.append(int(entry))
    return pids


def test_a_killed_background_sender_loses_nothing(live, project: Path, tmp_path: Path) -> None:
    """SIGKILL the detached child while the server is still answering: the item stays in the
    spool, and the next hook's child sends it (once: idempotency keys)."""
    url, rec = live
    rec.capture_delay = 3.0
    spool = tmp_path / "spool"
    env = {k: v for k, v in os.environ.items() if not k.startswith("MEMORAY_")}
    env.update({"MEMORAY_URL": url, "MEMORAY_SPOOL_DIR": str(spool)})
    proc = subprocess.run([sys.executable, "-m", "memoray.cli", "hook", "PostToolUse"],
                          input=json.dumps(edit_payload(project, 1)), capture_output=True,
                          text=True, env=env, timeout=30, cwd=project)
    assert proc.returncode == 0, proc.stderr
    children = _hook_processes("PostToolUse")
    assert len(children) == 1, children  # the hook has exited; its sender has not
    deadline = time.monotonic() + 10
    while not rec.items():  # the sender's request reached the server, which is still on it
        assert time.monotonic() < deadline, "the detached sender never called the server"
        time.sleep(0.02)
    os.kill(children[0], signal.SIGKILL)
    while _hook_processes("PostToolUse"):
        time.sleep(0.02)
    assert [it["eventType"] for it in Spool(spool).pending_items()] == ["code_change"]
    rec.capture_delay = 0.0
    run = hook("PostToolUse", edit_payload(project, 2), url=url, spool=spool)
    assert run.rc == 0 and Spool(spool).pending_items() == []
    assert len(rec.stored) == 2  # the first item arrived twice and was stored once
    assert [it["idempotencyKey"] for it in rec.items()][0] == rec.items()[1]["idempotencyKey"]


def test_hanging_server_is_cut_off_by_the_timeout(project: Path, tmp_path: Path) -> None:
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(8)  # accepts connections, never answers
    url = f"http://127.0.0.1:{listener.getsockname()[1]}"
    try:
        run = hook("UserPromptSubmit", base(project, prompt="what did we decide about caching?"),
                   url=url, spool=tmp_path / "spool", env={"MEMORAY_HOOK_TIMEOUT": "0.5"})
        assert run.rc == 0 and run.stdout == ""
        assert run.seconds < 2.0, run.seconds  # 0.5 s budget, not the 30 s test timeout
        assert "TIMEOUT" in run.stderr
        assert Spool(tmp_path / "spool").backoff_remaining() > 0  # next hooks skip the wait
        again = hook("PostToolUse", edit_payload(project), url=url, spool=tmp_path / "spool",
                     env={"MEMORAY_HOOK_TIMEOUT": "0.5"})
        assert again.rc == 0 and again.seconds < 1.0
    finally:
        listener.close()
    assert len(Spool(tmp_path / "spool").pending_items()) == 2


# -- what gets stored per event ---------------------------------------------------------------

def test_post_tool_use_edit_is_a_code_change(live, project: Path, tmp_path: Path) -> None:
    url, rec = live
    run = hook("PostToolUse", edit_payload(project), url=url, spool=tmp_path / "spool")
    assert run.rc == 0 and run.stdout == "", run.stderr
    [item] = rec.items()
    assert item["eventType"] == "code_change" and item["tier"] == "session"
    assert item["content"] == "Edited src/app.py (+2 -1):\n-a = 1\n+a = 2\n+b = 3"
    assert item["metadata"] == {"hook": "PostToolUse", "tool": "Edit", "filePath": "src/app.py",
                                "linesAdded": 2, "linesRemoved": 1}
    assert item["workspaceId"] == WORKSPACE
    assert item["gitBranch"] == "feature"
    assert item["gitCommit"] == git(project, "rev-parse", "HEAD")
    assert item["sessionId"] == "sess-1" and item["agentId"] == "claude-code"
    assert len(item["idempotencyKey"]) == 64 and item["timestamp"].endswith("Z")
    assert Spool(tmp_path / "spool").pending_items() == []
    headers = rec.headers[-1]
    assert headers["mcp-protocol-version"] == "2025-06-18"
    assert "authorization" not in headers


def test_bash_records_outcome_and_trims_output(live, project: Path, tmp_path: Path) -> None:
    url, rec = live
    spool = tmp_path / "spool"
    long_out = "\n".join(f"line {i}" for i in range(2000))
    hook("PostToolUse", bash_payload(project, "pytest -q", 1, stdout=long_out), url=url,
         spool=spool)
    hook("PostToolUse", bash_payload(project, "make build", 2, stderr="boom", interrupted=True),
         url=url, spool=spool)
    hook("PostToolUse", bash_payload(project, "ls -la && git status", 3, stdout="x"), url=url,
         spool=spool)
    ok, bad = rec.items()
    assert ok["eventType"] == "tool_event" and ok["metadata"]["ok"] is True
    assert ok["content"].startswith("Ran: run it\n$ pytest -q\n→ ok\nstdout:\nline 0\n")
    assert "chars cut" in ok["content"] and ok["content"].endswith("line 1999")
    assert len(ok["content"]) < 1000
    assert bad["eventType"] == "error" and bad["metadata"]["status"] == "interrupted"
    assert "stderr:\nboom" in bad["content"]


def test_noise_tools_are_counted_not_sent(live, project: Path, tmp_path: Path) -> None:
    url, rec = live
    spool = tmp_path / "spool"
    for n, tool in enumerate(["Read", "Grep", "Glob", "TodoWrite", "mcp__memoray__build-context"]):
        run = hook("PostToolUse", base(project, tool_name=tool, tool_use_id=f"t{n}",
                                       tool_input={"file_path": "x"}, tool_response={}),
                   url=url, spool=spool)
        assert run.rc == 0
    assert rec.log == []
    state = json.loads(next((spool / "sessions").iterdir()).read_text())
    assert state["noise"] == {"Read": 1, "Grep": 1, "Glob": 1, "TodoWrite": 1}


def test_user_prompt_gets_context_and_is_stored(live, project: Path, tmp_path: Path) -> None:
    url, rec = live
    prompt = "How do we install dependencies for the widget?"
    run = hook("UserPromptSubmit", base(project, hook_event_name="UserPromptSubmit", prompt=prompt),
               url=url, spool=tmp_path / "spool")
    assert run.rc == 0, run.stderr
    assert run.json() == {"hookSpecificOutput": {"hookEventName": "UserPromptSubmit",
                                                 "additionalContext": rec.context}}
    assert [t for t, _ in rec.log] == ["build-context", "capture-memories"]  # context first
    [ctx] = rec.calls("build-context")
    assert ctx["query"] == prompt and ctx["tokenBudget"] == 600
    assert ctx["workspaceId"] == WORKSPACE and ctx["gitBranch"] == "feature"
    assert ctx["sessionId"] == "sess-1"
    branch_scope, not_own = ctx["filters"]["$and"]
    fix_tip = git(project, "rev-parse", "fix")
    assert branch_scope == {"$or": [
        {"gitBranch": {"$exists": False}}, {"gitBranch": {"$in": ["feature", "main"]}},
        {"gitBranch": {"$in": ["fix"]}, "metadata.committed": True},
        {"gitBranch": "fix", "gitCommit": {"$ne": fix_tip}}]}
    # nothing of this session comes back: it is all in the agent's window already
    assert not_own == {"$or": [{"sessionId": {"$ne": "sess-1"}},
                               {"sessionId": {"$exists": False}}]}
    [item] = rec.items()
    assert item["eventType"] == "prompt" and item["tier"] == "session"
    assert item["content"] == prompt and item["metadata"]["promptIndex"] == 1


def test_user_prompt_budget_env_and_empty_context(live, project: Path, tmp_path: Path) -> None:
    url, rec = live
    rec.context = ""
    run = hook("UserPromptSubmit", base(project, prompt="refactor the cache layer please"),
               url=url, spool=tmp_path / "spool", env={"MEMORAY_PROMPT_BUDGET": "250"})
    assert run.rc == 0 and run.stdout == ""
    assert rec.calls("build-context")[0]["tokenBudget"] == 250
    short = hook("UserPromptSubmit", base(project, prompt="yes"), url=url,
                 spool=tmp_path / "spool")
    assert short.stdout == "" and len(rec.calls("build-context")) == 1  # no search for "yes"
    assert [it["content"] for it in rec.items()] == ["refactor the cache layer please", "yes"]


def test_session_start_prints_context(live, project: Path, tmp_path: Path) -> None:
    url, rec = live
    run = hook("SessionStart", base(project, hook_event_name="SessionStart", source="startup"),
               url=url, spool=tmp_path / "spool", env={"MEMORAY_SESSION_BUDGET": "900"})
    assert run.rc == 0, run.stderr
    out = run.json()["hookSpecificOutput"]
    assert out["hookEventName"] == "SessionStart"
    assert out["additionalContext"].startswith(f"memoray: memories of workspace `{WORKSPACE}` "
                                               "(branch `feature`)")
    assert "get-memory" in out["additionalContext"]  # how to expand an index entry
    assert out["additionalContext"].endswith(rec.context)
    [ctx] = rec.calls("build-context")
    assert ctx["tokenBudget"] == 900 and ctx["query"] == "work on branch feature"
    assert ctx["style"] == "index" and ctx["limit"] == 80
    scope, lasting = ctx["filters"]["$and"]
    assert scope["$or"][1]["gitBranch"]["$in"] == ["feature", "main"]
    assert {"gitBranch": "fix", "gitCommit": {"$ne": git(project, "rev-parse", "fix")}} in (
        scope["$or"])
    # an index of what lasts: single edits, commands and prompts live in the summaries
    assert lasting == {"eventType": {"$nin": ["code_change", "tool_event", "prompt"]}}
    rec.context = ""
    again = hook("SessionStart", base(project, source="resume"), url=url, spool=tmp_path / "sp")
    assert again.rc == 0 and again.stdout == ""


def test_the_trace_splits_a_hooks_time(live, project: Path, tmp_path: Path) -> None:
    """MEMORAY_HOOK_TRACE: one line per hook, marks in order, git and server time counted;
    nothing written without it. Run as installed hooks run it (memoray.entry)."""
    url, rec = live
    trace = tmp_path / "trace.jsonl"
    env = {k: v for k, v in os.environ.items() if not k.startswith("MEMORAY_")}
    env.update({"MEMORAY_URL": url, "MEMORAY_SPOOL_DIR": str(tmp_path / "spool")})
    payload = json.dumps(base(project, hook_event_name="SessionStart", source="startup"))
    cmd = [sys.executable, "-m", "memoray.entry", "hook", "SessionStart"]
    before = time.time()
    for traced in (True, False):
        proc = subprocess.run(cmd, input=payload, capture_output=True, text=True, timeout=30,
                              cwd=project, env={**env, "MEMORAY_HOOK_TRACE": str(trace)}
                              if traced else env)
        assert proc.returncode == 0 and "additionalContext" in proc.stdout, proc.stderr
    [line] = [json.loads(x) for x in trace.read_text().splitlines()]
    m = line["marks"]
    assert line["event"] == "SessionStart"
    assert before < m["entry"] <= m["runner"] <= m["handled"] <= m["end"] < time.time()
    handler = m["handled"] - m["runner"]
    assert 0 < line["spent"]["git"] < handler and 0 < line["spent"]["server"] < handler
    assert len(rec.calls("build-context")) == 2


def test_token_is_sent_as_bearer(live, project: Path, tmp_path: Path) -> None:
    url, rec = live
    hook("PostToolUse", edit_payload(project), url=url, spool=tmp_path / "spool",
         env={"MEMORAY_TOKEN": "mr_secret"})
    assert rec.headers[-1]["authorization"] == "Bearer mr_secret"


def write_transcript(path: Path, final: str, pad_bytes: int = 0) -> None:
    lines = [{"type": "user", "message": {"role": "user", "content": "fix it"}},
             {"type": "assistant", "message": {"role": "assistant", "content": [
                 {"type": "text", "text": final}]}}]
    lines += [{"type": "assistant", "message": {"role": "assistant", "content": [
        {"type": "tool_use", "id": f"t{i}", "name": "Read", "input": {"pad": "p" * 500}}]}}
        for i in range(pad_bytes // 600)]
    with path.open("w") as f:
        for line in lines:
            f.write(json.dumps(line) + "\n")
        f.write('{"type": "assistant", "message": {"content": [{"type": "te')  # partial line


def test_stop_and_session_end_summaries(live, project: Path, tmp_path: Path) -> None:
    url, rec = live
    spool = tmp_path / "spool"
    write_transcript(project / "t.jsonl", "Fixed the parser; all tests pass.", pad_bytes=200_000)
    hook("UserPromptSubmit", base(project, prompt="fix the parser bug in app"), url=url,
         spool=spool)
    hook("PostToolUse", edit_payload(project), url=url, spool=spool)
    hook("PostToolUse", bash_payload(project, "pytest -q", 1, exitCode=1, stderr="1 failed"),
         url=url, spool=spool)
    hook("PostToolUse", bash_payload(project, "pytest -q", 2, stdout="3 passed"), url=url,
         spool=spool)
    hook("PostToolUse", base(project, tool_name="Read", tool_input={}, tool_response={}),
         url=url, spool=spool)
    assert hook("Stop", base(project, hook_event_name="Stop", stop_hook_active=False), url=url,
                spool=spool).rc == 0
    turn = rec.items()[-1]
    assert turn["eventType"] == "session_summary" and turn["tier"] == "project"
    assert turn["metadata"]["scope"] == "turn" and turn["metadata"]["commandsFailed"] == 1
    assert turn["content"].splitlines()[:6] == [
        "Turn summary on feature: Fixed the parser; all tests pass.",
        "Asked: fix the parser bug in app",
        "Files changed (1): src/app.py (+2 -1)",
        "Commands (2, 1 failed):",
        "- `pytest -q` → exit 1",
        "- `pytest -q` → ok",
    ]
    assert turn["content"].endswith("Fixed the parser; all tests pass.")

    before = len(rec.items())
    hook("Stop", base(project), url=url, spool=spool)  # nothing new in this turn
    assert len(rec.items()) == before

    end = hook("SessionEnd", base(project, hook_event_name="SessionEnd",
                                  reason="prompt_input_exit"), url=url, spool=spool)
    assert end.rc == 0
    summary = rec.items()[-1]
    assert summary["metadata"]["scope"] == "session"
    assert summary["metadata"]["reason"] == "prompt_input_exit"
    assert summary["metadata"]["filesChanged"] == ["src/app.py"]
    assert summary["content"].startswith("Session summary (SessionEnd: prompt_input_exit) on "
                                         "feature @ ")
    assert "Looked around: Read \u00d71" in summary["content"]
    hook("PreCompact", base(project, trigger="manual"), url=url, spool=spool)
    assert len(rec.items()) == before + 1  # same session, nothing new: not stored twice


def test_stop_uses_last_assistant_message_from_payload(live, project: Path,
                                                       tmp_path: Path) -> None:
    url, rec = live
    spool = tmp_path / "spool"
    hook("PostToolUse", edit_payload(project), url=url, spool=spool)
    hook("Stop", base(project, transcript_path=str(tmp_path / "missing.jsonl"),
                      last_assistant_message="Renamed a to b."), url=url, spool=spool)
    assert rec.items()[-1]["content"].endswith("Outcome (last assistant message):\nRenamed a to b.")


def test_unusable_spool_dir_still_delivers(live, project: Path, tmp_path: Path) -> None:
    url, rec = live
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    run = hook("PostToolUse", edit_payload(project), url=url, spool=blocker / "spool")
    assert run.rc == 0 and "cannot write the spool" in run.stderr
    assert [it["eventType"] for it in rec.items()] == ["code_change"]


# -- the spool --------------------------------------------------------------------------------

def test_spool_flushes_in_order_once_when_server_returns(live, project: Path,
                                                         tmp_path: Path) -> None:
    url, rec = live
    spool, down = tmp_path / "spool", closed_url()
    for n in range(1, 4):
        assert hook("PostToolUse", edit_payload(project, n), url=down, spool=spool).rc == 0
    assert len(Spool(spool).pending_items()) == 3 and rec.log == []
    hook("PostToolUse", edit_payload(project, 4), url=url, spool=spool)
    hook("PostToolUse", edit_payload(project, 5), url=url, spool=spool)
    keys = [it["idempotencyKey"] for it in rec.items()]
    assert len(keys) == len(set(keys)) == 5  # nothing sent twice
    assert [len(args["items"]) for args in rec.calls("capture-memories")] == [4, 1]
    spooled = [json.loads(line) for line in (spool / "spool.jsonl").read_text().splitlines()]
    assert spooled == [] and Spool(spool).pending_items() == []
    # order kept: the three spooled items first, as they were captured
    payload_keys = [hook_key(project, n) for n in range(1, 6)]
    assert keys == payload_keys


def hook_key(project: Path, n: int) -> str:
    import hashlib

    return hashlib.sha256(f"sess-1\x1ftool:toolu_{n}".encode()).hexdigest()


def test_transient_errors_keep_items_and_respect_retry_after(live, project: Path,
                                                             tmp_path: Path) -> None:
    url, rec = live
    spool = tmp_path / "spool"
    rec.capture_error = {"code": "UNAVAILABLE", "message": "shard restarting"}
    run = hook("PostToolUse", edit_payload(project, 1), url=url, spool=spool)
    assert run.rc == 0 and "UNAVAILABLE" in run.stderr
    assert len(Spool(spool).pending_items()) == 1
    rec.capture_error = {"code": "RATE_LIMIT_EXCEEDED", "message": "slow down", "retryAfter": 60}
    hook("PostToolUse", edit_payload(project, 2), url=url, spool=spool)
    assert 0 < Spool(spool).backoff_remaining() <= 60
    rec.capture_error = None
    sent = len(rec.log)
    hook("PostToolUse", edit_payload(project, 3), url=url, spool=spool)
    assert len(rec.log) == sent  # backing off: not even tried
    meta = json.loads((spool / "spool.meta").read_text())
    meta["backoffUntil"] = time.time() - 1
    (spool / "spool.meta").write_text(json.dumps(meta))
    hook("PostToolUse", edit_payload(project, 4), url=url, spool=spool)
    assert list(rec.stored) == [hook_key(project, n) for n in range(1, 5)]
    assert Spool(spool).pending_items() == []


def test_invalid_item_is_dropped_the_rest_delivered(live, project: Path, tmp_path: Path) -> None:
    url, rec = live
    spool, down = tmp_path / "spool", closed_url()
    hook("PostToolUse", edit_payload(project, 1), url=down, spool=spool)
    hook("PostToolUse", bash_payload(project, "make POISON", 2), url=down, spool=spool)
    hook("PostToolUse", edit_payload(project, 3), url=down, spool=spool)
    rec.poison = "POISON"
    run = hook("Stop", base(project), url=url, spool=spool)
    assert run.rc == 0
    assert "INVALID_INPUT" in run.stderr and "dropped" in run.stderr
    stored = list(rec.stored.values())
    assert [it["eventType"] for it in stored][:2] == ["code_change", "code_change"]
    assert not any("POISON" in it["content"] for it in stored)
    assert Spool(spool).pending_items() == []


def test_uncoded_errors_are_retried_then_cost_one_item(live, project: Path,
                                                     tmp_path: Path) -> None:
    url, rec = live
    spool = tmp_path / "spool"
    rec.capture_error = "Error executing tool capture-memories: KeyError('shard')"
    for n in range(1, 5):
        assert hook("PostToolUse", edit_payload(project, n), url=url, spool=spool).rc == 0
        assert len(Spool(spool).pending_items()) == n  # kept: maybe the server recovers
    run = hook("PostToolUse", edit_payload(project, 5), url=url, spool=spool)
    assert "dropped" in run.stderr
    assert len(Spool(spool).pending_items()) == 4  # the head alone went, after 5 tries
    rec.capture_error = None
    hook("Stop", base(project), url=url, spool=spool)
    edits = [k for k, it in rec.stored.items() if it["eventType"] == "code_change"]
    assert edits == [hook_key(project, n) for n in range(2, 6)]


def test_large_spool_flushes_in_batches_and_compacts(live, tmp_path: Path) -> None:
    url, rec = live
    spool = Spool(tmp_path / "spool")
    items = [{"content": f"item {n} " + "x" * 1000, "eventType": "note",
              "idempotencyKey": f"k{n}"} for n in range(3000)]
    assert spool.append(items) == 3000
    client = McpClient(url + "/mcp")
    result = spool.flush(client, time.monotonic() + 60)
    assert (result.sent, result.dropped, result.pending) == (3000, 0, False)
    assert [it["idempotencyKey"] for it in rec.items()] == [f"k{n}" for n in range(3000)]
    assert max(len(a["items"]) for a in rec.calls("capture-memories")) == 100
    assert (tmp_path / "spool" / "spool.jsonl").stat().st_size == 0
    assert spool.pending_items() == []


def test_concurrent_hooks_lose_nothing(live, project: Path, tmp_path: Path) -> None:
    url, rec = live
    spool, down = tmp_path / "spool", closed_url()
    with ThreadPoolExecutor(8) as pool:
        runs = list(pool.map(lambda n: hook("PostToolUse", edit_payload(project, n), url=down,
                                            spool=spool), range(8)))
        assert all(r.rc == 0 for r in runs)
        assert len(Spool(spool).pending_items()) == 8
        runs = list(pool.map(lambda n: hook("PostToolUse", edit_payload(project, n), url=url,
                                            spool=spool), range(8, 16)))
    assert all(r.rc == 0 for r in runs)
    hook("Stop", base(project, stop_hook_active=True), url=url, spool=spool)  # flushes leftovers
    assert set(rec.stored) >= {hook_key(project, n) for n in range(16)}
    keys = [it["idempotencyKey"] for it in rec.items() if it["eventType"] == "code_change"]
    assert len(keys) == len(set(keys)) == 16
    state = json.loads(next((spool / "sessions").iterdir()).read_text())
    assert state["seq"] == 16 and state["session"]["files"]["src/app.py"]["edits"] == 16


def test_spool_is_bounded(project: Path, tmp_path: Path) -> None:
    spool, down = tmp_path / "spool", closed_url()
    for n in range(6):
        run = hook("PostToolUse", edit_payload(project, n), url=down, spool=spool,
                   env={"MEMORAY_SPOOL_MAX_BYTES": "2000"})
        assert run.rc == 0
    assert "spool full" in run.stderr
    assert (spool / "spool.jsonl").stat().st_size <= 2000
    assert 1 <= len(Spool(spool).pending_items()) < 6


def test_items_and_filters_meet_the_server_contract(live, project: Path,
                                                    tmp_path: Path) -> None:
    """What the hooks send passes the server's own validation and filter semantics."""
    from memoray.filters import matches, parse_filter
    from memoray.models import CaptureItem
    from memoray.timeutil import parse_iso

    url, rec = live
    spool = tmp_path / "spool"
    write_transcript(project / "t.jsonl", "All done.")
    hook("UserPromptSubmit", base(project, prompt="why does the login flow retry twice?"),
         url=url, spool=spool)
    hook("PostToolUse", edit_payload(project), url=url, spool=spool)
    hook("PostToolUse", bash_payload(project, "npm test", 1, exitCode=1), url=url, spool=spool)
    hook("PostToolUse", base(project, tool_name="WebFetch", tool_input={"url": "https://x.io",
                                                                        "prompt": "API"}),
         url=url, spool=spool)
    hook("Stop", base(project), url=url, spool=spool)
    hook("SessionEnd", base(project, reason="clear"), url=url, spool=spool)
    items = rec.items()
    assert {it["eventType"] for it in items} == {"prompt", "code_change", "error", "tool_event",
                                                 "session_summary"}
    for item in items:
        CaptureItem.model_validate(item)
        parse_iso(item["timestamp"])
    [ctx] = rec.calls("build-context")
    node = parse_filter(ctx["filters"])

    def record(**kw: Any) -> dict[str, Any]:
        return {"workspace_id": WORKSPACE, "session_id": "other", "event_type": "decision",
                "git_branch": None, "metadata": {}, **kw}

    assert matches(node, record(git_branch="fix"))  # merged into feature
    assert matches(node, record(git_branch="main"))  # the default branch
    assert matches(node, record())  # no branch: visible everywhere
    assert not matches(node, record(git_branch="unmerged"))
    # nothing of this session comes back: it is all in the agent's window already
    assert not matches(node, record(session_id="sess-1", event_type="prompt"))
    assert not matches(node, record(session_id="sess-1", event_type="code_change"))


# -- pieces, in process -----------------------------------------------------------------------

def test_transcript_reading_is_robust(tmp_path: Path) -> None:
    path = tmp_path / "t.jsonl"
    assert transcript.last_assistant_text(str(path)) is None
    assert transcript.last_assistant_text(None) is None
    write_transcript(path, "Done: tests green.", pad_bytes=3_000_000)  # beyond the first window
    assert transcript.last_assistant_text(str(path)) == "Done: tests green."
    path.write_text("garbage\n{\"type\": \"assistant\"}\n")
    assert transcript.last_assistant_text(str(path)) is None


def test_tool_summaries() -> None:
    root = "/repo"
    write = events.summarize_tool({"tool_name": "Write", "tool_input": {
        "file_path": "/repo/a.py", "content": "x = 1\ny = 2\n"}, "tool_response": {
        "type": "create", "filePath": "/repo/a.py", "structuredPatch": []}}, root)
    assert write.content == "Created a.py (+2 -0):\n+x = 1\n+y = 2"
    assert write.file == ("a.py", 2, 0, True)
    bare_edit = events.summarize_tool({"tool_name": "Edit", "tool_input": {
        "file_path": "/elsewhere/c.py", "old_string": "x = 1\ny = 2", "new_string": "x = 1\ny = 3"},
        "tool_response": "ok"}, root)  # an older response without structuredPatch
    assert bare_edit.content == "Edited /elsewhere/c.py (+1 -1):\n-y = 2\n+y = 3"
    multi = events.summarize_tool({"tool_name": "MultiEdit", "tool_input": {
        "file_path": "/repo/b.py", "edits": [{"old_string": "a", "new_string": "b"},
                                             {"old_string": "c\nd", "new_string": "c"}]}}, root)
    assert multi.content.startswith("Edited b.py (+1 -2) in 2 edits")
    assert multi.file == ("b.py", 1, 2, False)
    plan = events.summarize_tool({"tool_name": "ExitPlanMode", "tool_input": {"plan": "1. x"}},
                                 root)
    assert plan.event_type == "decision" and plan.content == "Plan accepted:\n1. x"
    task = events.summarize_tool({"tool_name": "Task", "tool_input": {
        "description": "find callers", "subagent_type": "Explore"}, "tool_response": {
        "content": [{"type": "text", "text": "3 callers"}]}}, root)
    assert task.content == "Subagent (Explore): find callers\nResult: 3 callers"
    mcp = events.summarize_tool({"tool_name": "mcp__github__create_issue",
                                 "tool_input": {"title": "bug"}}, root)
    assert mcp.content == 'Called MCP tool github.create_issue with {"title": "bug"}'
    assert events.summarize_tool({"tool_name": "mcp__memoray__capture-memory"}, root) is None
    assert events.summarize_tool({"tool_name": "Read"}, root).noise


@pytest.mark.parametrize("command,read_only", [
    ("ls -la", True), ("git status && git diff HEAD~1", True), ("cat a | grep b | wc -l", True),
    ("FOO=1 pytest", False), ("git commit -m x", False), ("sed -i s/a/b/ f", False),
    ("sed -n 1,5p f", True), ("cd src && make", False), ("rm -rf build", False),
])
def test_read_only_commands(command: str, read_only: bool) -> None:
    assert events.is_read_only(command) is read_only


def test_bash_outcome_shapes() -> None:
    assert events.bash_outcome({"stdout": "x", "stderr": "", "interrupted": False})[:2] == (
        True, "ok")
    assert events.bash_outcome({"exit_code": 2})[:2] == (False, "exit 2")
    assert events.bash_outcome("Error: Exit code 127\nnot found")[:2] == (False, "exit 127")
    assert events.bash_outcome(None)[:2] == (True, "ok")


def test_trim_keeps_head_and_tail() -> None:
    text = "a" * 1000 + "b" * 1000
    out = events.trim(text, 300)
    assert out.startswith("a" * 200) and out.endswith("b" * 100) and "1700 chars cut" in out


# -- failures, lessons, statements ---------------------------------------------------------------

def failure_payload(project: Path, command: str, n: int, error: str,
                    interrupt: bool = False) -> dict[str, Any]:
    """Claude Code's PostToolUseFailure payload for a failed Bash call."""
    return base(project, hook_event_name="PostToolUseFailure", tool_name="Bash",
                tool_use_id=f"toolu_f{n}", tool_input={"command": command, "description": "test"},
                error=error, is_interrupt=interrupt)


def test_failure_is_an_error_record_and_its_fix_a_lesson(live, project: Path,
                                                         tmp_path: Path) -> None:
    url, rec = live
    spool = tmp_path / "spool"
    error = ("Command failed with exit code 1\n" + "noise line\n" * 300 +
             "E   KeyError: 'tenant_id'\nFAILED tests/test_app.py::test_tenant - KeyError")
    run = hook("PostToolUseFailure", failure_payload(
        project, "cd src && python -m pytest tests/test_app.py::test_tenant -x", 1, error),
        url=url, spool=spool)
    assert run.rc == 0 and run.stdout == "", run.stderr
    [err] = rec.items()
    assert err["eventType"] == "error" and err["tier"] == "session"
    assert err["metadata"]["exitCode"] == 1 and err["metadata"]["failed"] is True
    assert err["metadata"]["hook"] == "PostToolUseFailure"
    assert "KeyError: 'tenant_id'" in err["content"]  # the end of the error, where the cause is
    assert "python -m pytest tests/test_app.py::test_tenant -x" in err["content"]
    assert len(err["content"]) < 1500
    # an edit that misses is a slip: counted, not stored
    hook("PostToolUseFailure", base(project, hook_event_name="PostToolUseFailure",
                                    tool_name="Edit", tool_use_id="toolu_e",
                                    tool_input={"file_path": str(project / "src" / "app.py")},
                                    error="String to replace not found in file.",
                                    is_interrupt=False), url=url, spool=spool)
    assert len(rec.items()) == 1
    hook("PostToolUse", edit_payload(project), url=url, spool=spool)
    # the same test, run more widely, passes: one lesson
    hook("PostToolUse", bash_payload(project, "python -m pytest tests/test_app.py -q", 2,
                                     stdout="5 passed"), url=url, spool=spool)
    lesson = rec.items()[-1]
    assert lesson["eventType"] == "lesson" and lesson["tier"] == "project"
    assert lesson["metadata"]["fixes"] == err["metadata"]["failureId"]
    assert lesson["metadata"]["filesChanged"] == ["src/app.py"]
    assert "committed" in lesson["metadata"]
    text = lesson["content"]
    assert text.startswith("Lesson: `cd src && python -m pytest tests/test_app.py::test_tenant -x`"
                           " failed with: FAILED tests/test_app.py::test_tenant - KeyError")
    assert "Fixed by editing src/app.py (+2 -1)" in text and "+b = 3" in text
    # passing again teaches nothing new
    hook("PostToolUse", bash_payload(project, "python -m pytest tests/test_app.py -q", 3,
                                     stdout="5 passed"), url=url, spool=spool)
    assert sum(it["eventType"] == "lesson" for it in rec.items()) == 1
    hook("SessionEnd", base(project, hook_event_name="SessionEnd", reason="exit"), url=url,
         spool=spool)
    summary = rec.items()[-1]["content"]
    assert "failed" in summary and "Failed, then fixed: `cd src && python -m pytest" in summary
    assert rec.items()[-1]["metadata"]["commandsFailed"] == 1


def test_other_command_success_is_no_lesson(live, project: Path, tmp_path: Path) -> None:
    url, rec = live
    spool = tmp_path / "spool"
    hook("PostToolUseFailure", failure_payload(project, "npm test -- auth", 1, "exit code 1"),
         url=url, spool=spool)
    hook("PostToolUse", bash_payload(project, "npm run build", 2), url=url, spool=spool)
    hook("PostToolUseFailure", failure_payload(project, "npm test", 3, "x", interrupt=True),
         url=url, spool=spool)  # interrupted by the user: not an error of the code
    assert [it["eventType"] for it in rec.items()] == ["error", "tool_event"]
    hook("PostToolUse", bash_payload(project, "npm test", 4, stdout="ok"), url=url, spool=spool)
    lesson = rec.items()[-1]
    assert lesson["eventType"] == "lesson"
    assert "After running: `npm run build`" in lesson["content"]


def test_stated_decisions_become_long_lived_records(live, project: Path, tmp_path: Path) -> None:
    url, rec = live
    spool = tmp_path / "spool"
    prompt = ("The limiter drops requests under load. We keep the limiter in-process, never add "
              "Redis for it. Can you look at the refill rate?")
    hook("UserPromptSubmit", base(project, prompt=prompt), url=url, spool=spool)
    decision, stored_prompt = rec.items()
    assert decision["eventType"] == "decision" and decision["tier"] == "project"
    assert decision["content"] == "We keep the limiter in-process, never add Redis for it."
    assert decision["metadata"]["source"] == "prompt" and decision["metadata"]["kind"] == "decision"
    assert stored_prompt["eventType"] == "prompt" and stored_prompt["tier"] == "session"
    hook("UserPromptSubmit", base(project, prompt=prompt), url=url, spool=spool)
    assert [it["eventType"] for it in rec.items()] == ["decision", "prompt", "prompt"]  # once
    hook("PostToolUse", edit_payload(project), url=url, spool=spool)
    hook("Stop", base(project, last_assistant_message=(
        "Done. I went with a token bucket per tenant because a global bucket let one tenant "
        "starve the rest. Tests pass.")), url=url, spool=spool)
    kinds = [(it["eventType"], it["tier"]) for it in rec.items()[-2:]]
    assert kinds == [("decision", "project"), ("session_summary", "project")]
    assert rec.items()[-2]["content"].startswith("I went with a token bucket per tenant")


def test_post_compact_keeps_the_compact_summary(live, project: Path, tmp_path: Path) -> None:
    url, rec = live
    hook("PostCompact", base(project, hook_event_name="PostCompact", trigger="auto",
                             compact_summary="The user asked to speed up imports. All config "
                             "values come from environment variables prefixed with APP_. "
                             "Imports now lazy."), url=url, spool=tmp_path / "spool")
    convention, summary = rec.items()
    assert convention["eventType"] == "convention" and convention["tier"] == "pattern"
    assert summary["eventType"] == "session_summary"
    assert summary["content"].startswith("Conversation summary (compacted, auto) on feature")


def test_default_spool_is_one_per_server(tmp_path: Path) -> None:
    """Issue 13: undelivered items wait for their own server, and a spool left by an earlier
    version (shared by every server) moves into the first server's directory."""
    from memoray.hooks.config import server_spool_dir

    base = tmp_path / "spool"
    base.mkdir()
    (base / "spool.jsonl").write_text('{"content": "old"}\n')
    a = server_spool_dir(base, "http://127.0.0.1:8000")
    b = server_spool_dir(base, "http://127.0.0.1:9000/")
    assert a != b and a.parent == b.parent == base
    assert (a / "spool.jsonl").read_text() == '{"content": "old"}\n'
    assert not (base / "spool.jsonl").exists() and not (b / "spool.jsonl").exists()

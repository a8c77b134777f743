"""`memoray hook <Event>`: read the Claude Code payload on stdin, capture, print context.

The contract with the agent: exit 0 always, print only valid hook JSON on stdout, finish within
MEMORAY_HOOK_TIMEOUT (default 2 s) even when the server hangs, and right away when it is down.
Captured items go through the spool (see spool.py), so an outage loses nothing.
"""

from __future__ import annotations

import json
import os
import sys
import time
from collections.abc import Callable

from memoray.gitfacts import GitFacts, git_facts, work_committed
from memoray.hooks import events, state
from memoray.hooks.client import CallError, McpClient
from memoray.hooks.config import HookConfig
from memoray.hooks.spool import FlushResult, Spool, log
from memoray.hooks.trace import Trace
from memoray.hooks.transcript import last_assistant_text

TYPE_CHECKING = False
if TYPE_CHECKING:  # not at run time: typing's import costs every hook ~5 ms
    from typing import Any

PER_TOOL_TYPES = ("code_change", "tool_event", "prompt")
INDEX_CANDIDATES = 80
MIN_QUERY_WORDS = 3  # "yes", "go on": no point searching memories for these
MAX_QUERY_CHARS = 2000
LOG_MAX_BYTES = 1 << 20  # hook.log, the detached flusher's stderr


def _sha(*parts: str) -> str:
    import hashlib  # here: its OpenSSL import costs ~3 ms, and SessionStart needs none

    return hashlib.sha256("\x1f".join(parts).encode("utf-8", "surrogatepass")).hexdigest()


def _now_iso() -> str:
    """UTC ISO 8601 with milliseconds (time, not datetime: one import less per hook)."""
    now = time.time()
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(now)) + f".{int(now % 1 * 1000):03d}Z"


class Hook:
    """One hook invocation: its payload, git facts, deadline, server client and spool."""

    def __init__(self, event: str, payload: dict[str, Any], cfg: HookConfig, started: float,
                 trace: Trace | None = None):
        self.event = event
        self.trace = trace
        self.payload = payload
        self.cfg = cfg
        self.deadline = started + cfg.timeout_s
        self.session_id = str(payload.get("session_id") or "unknown")
        self.cwd = str(payload.get("cwd") or os.environ.get("CLAUDE_PROJECT_DIR") or os.getcwd())
        self.spool = Spool(cfg.spool_dir, cfg.spool_max_bytes)
        self.server_down = False
        self.flush_later = False  # the spool has items for the detached flusher (run_hook)
        self._client: McpClient | None = None
        self._facts: GitFacts | None = None
        self._detailed = False
        self._committed: bool | None | str = "unknown"

    def facts(self, detailed: bool = False) -> GitFacts:
        """Git facts for the payload's cwd; the detailed form runs `git`, so only on demand
        (with squash-merge verdicts, and the git work until a branch moves, cached next to the
        spool)."""
        if self._facts is None or (detailed and not self._detailed):
            t0 = time.perf_counter()
            if detailed:
                from memoray import gitfacts

                gitfacts.DETAIL_CACHE = self.cfg.spool_dir / "git-facts.json"
                cache = self.cfg.spool_dir / "squash-cache.json"
                gitfacts.load_squash_cache(cache)
                before = dict(gitfacts.SQUASH_CACHE)
                self._facts = git_facts(self.cwd, detailed=True)
                if gitfacts.SQUASH_CACHE != before:
                    gitfacts.save_squash_cache(cache)
            else:
                self._facts = git_facts(self.cwd, detailed=False)
            self._detailed = detailed
            if self.trace is not None:
                self.trace.add("git", time.perf_counter() - t0)
        return self._facts

    def committed(self) -> bool | None:
        """Whether the work described now is in HEAD's commit (see gitfacts.work_committed)."""
        if self._committed == "unknown":
            t0 = time.perf_counter()
            self._committed = work_committed(self.cwd)
            if self.trace is not None:
                self.trace.add("git", time.perf_counter() - t0)
        return self._committed  # type: ignore[return-value]

    def outcome_item(self, content: str, event_type: str, tier: str, metadata: dict[str, Any],
                     key: str) -> dict[str, Any]:
        """An item that may describe a branch's outcome: tagged with `committed`, which lets a
        merged branch's tip-time records (summaries, decisions) show once it is merged."""
        return self.item(content, event_type, tier, {**metadata, "committed": self.committed()},
                         key)

    def statements(self, text: str, source: str) -> list[dict[str, Any]]:
        """Decision / convention / preference records for what ``text`` states (once per
        session each)."""
        from memoray.classify import RECORD, extract

        found = extract(text, source)  # type: ignore[arg-type]
        if not found:
            return []
        items = []
        with state.session_state(self.cfg.spool_dir, self.session_id) as st:
            fresh = [f for f in found
                     if state.remember_statement(st, _sha(" ".join(f.text.lower().split())))]
        for f in fresh:
            event_type, tier = RECORD[f.kind]
            items.append(self.outcome_item(
                f.text, event_type, tier, {"kind": f.kind, "source": source},
                "stmt:" + _sha(" ".join(f.text.lower().split()))))
        return items

    @property
    def client(self) -> McpClient:
        if self._client is None:
            self._client = McpClient(self.cfg.mcp_url, self.cfg.token,
                                     connect_timeout=self.cfg.connect_timeout_s,
                                     timed=self.trace is not None)
        return self._client

    def remaining(self) -> float:
        return self.deadline - time.monotonic()

    def item(self, content: str, event_type: str, tier: str, metadata: dict[str, Any],
             key: str) -> dict[str, Any]:
        """A CaptureItem (wire form), tagged with workspace, session, branch and commit."""
        facts = self.facts()
        item: dict[str, Any] = {
            "content": events.trim(content, events.MAX_CONTENT_CHARS),
            "eventType": event_type,
            "metadata": {"hook": self.event, **{k: v for k, v in metadata.items()
                                                if v is not None}},
            "workspaceId": facts.workspace_id,
            "sessionId": self.session_id,
            "agentId": self.cfg.agent_id,
            "tier": tier,
            "timestamp": _now_iso(),
            "idempotencyKey": _sha(self.session_id, key),
        }
        if facts.branch:
            item["gitBranch"] = facts.branch
        if facts.commit:
            item["gitCommit"] = facts.commit
        return item

    def capture(self, items: list[dict[str, Any]]) -> FlushResult | None:
        """Spool the items, then (server permitting) flush the spool, oldest first."""
        try:
            self.spool.append(items)
        except OSError as exc:  # no usable spool: send directly, best effort
            log(f"cannot write the spool ({exc}); sending without it")
            if not self.server_down and self.remaining() > 0.05:
                try:
                    self.client.call_tool("capture-memories", {"items": items},
                                          timeout=self.remaining())
                except CallError as err:
                    log(f"items lost: {err}")
            return None
        if self.server_down or self.remaining() <= 0.05:
            return None
        if self.cfg.background:
            self.flush_later = True
            return None
        result = self.spool.flush(self.client, self.deadline)
        if result.error is not None and result.error.transient:
            self.server_down = result.error.code in ("NETWORK", "TIMEOUT")
            log(f"server unavailable ({result.error.code}: {result.error.message[:200]}); "
                f"items kept in {self.spool.data}")
        return result

    def flush(self) -> FlushResult | None:
        if self.server_down or self.remaining() <= 0.05 or self.spool.pending_bytes() == 0:
            return None
        if self.cfg.background:
            self.flush_later = True
            return None
        return self.spool.flush(self.client, self.deadline)

    def flush_detached(self) -> None:
        """Send the spool from a forked child once this hook has answered: the agent waits for
        the hook's exit, not for the server's embedding and commit. The items are in the
        spool already (appended and fsynced), so a child that dies loses nothing: the next
        hook sends them. The child takes the flush lock before the fork when it is free, so
        whoever waits on that lock (`memoray hook` tests, a next flush) waits for the child;
        when another flusher holds it, the child waits its turn. Its stderr goes to
        `hook.log` in the spool directory. Without fork (or when it fails), flush here."""
        fd = self.spool.take_flush_lock()
        try:
            pid = os.fork()
        except (AttributeError, OSError):
            if fd is not None:
                os.close(fd)
            self.cfg = self.cfg._replace(background=False)
            self.flush()
            return
        if pid:  # the hook: done
            if fd is not None:
                os.close(fd)  # the child's copy keeps the lock
            return
        code = 0
        try:
            _detach_stdio(self.cfg.spool_dir / "hook.log")
            try:
                os.setsid()  # out of the agent's process group and terminal
            except OSError:
                pass
            deadline = time.monotonic() + self.cfg.flush_timeout_s
            if fd is None:
                fd = self.spool.take_flush_lock(wait_until=deadline)
            if fd is not None:
                result = self.spool.flush_holding_lock(self.client, deadline)
                if result.error is not None and result.error.transient:
                    log(f"{self.event}: server unavailable ({result.error.code}: "
                        f"{result.error.message[:200]}); items kept in {self.spool.data}")
        except BaseException as exc:  # noqa: BLE001 - a detached child reports to its log
            log(f"{self.event}: background flush failed: {type(exc).__name__}: {exc}")
            code = 1
        finally:
            sys.stderr.flush()
            os._exit(code)

    def context(self, query: str | None, budget: int,
                extra_filter: dict[str, Any] | None = None,
                style: str | None = None, limit: int | None = None) -> str | None:
        """Markdown context from build-context, scoped to the branches visible from here."""
        if self.spool.backoff_remaining() > 0 or self.remaining() <= 0.05:
            return None
        if self.server_down or not self.client.reachable(self.remaining()):
            self.server_down = True  # down: skip git's merged-branch work, answer at once
            return None
        facts = self.facts(detailed=True)
        clauses: list[dict[str, Any]] = []
        if facts.root is not None and (facts.branch or facts.default_branch):
            clauses.append(facts.branch_filter())
        if extra_filter:
            clauses.append(extra_filter)
        args: dict[str, Any] = {"query": query, "tokenBudget": budget,
                                "workspaceId": facts.workspace_id, "gitBranch": facts.branch,
                                "sessionId": self.session_id}
        if style:
            args["style"] = style
        if limit:
            args["limit"] = limit
        if clauses:
            args["filters"] = clauses[0] if len(clauses) == 1 else {"$and": clauses}
        try:
            result = self.client.call_tool("build-context", args, timeout=self.remaining())
        except CallError as exc:
            if exc.code in ("NETWORK", "TIMEOUT"):
                self.server_down = True
                if exc.code == "TIMEOUT":
                    self.spool.set_backoff(30.0)
            elif exc.retry_after:
                self.spool.set_backoff(min(exc.retry_after, 300.0))
            log(f"no context ({exc.code}: {exc.message[:200]})")
            return None
        text = result.get("context")
        return text.strip() if isinstance(text, str) and text.strip() else None


def _detach_stdio(log_path: Any) -> None:
    """The detached flusher's stdin and stdout on /dev/null, stderr appended to `log_path`
    (or /dev/null): the agent reading the hook's pipes sees them close when the hook exits."""
    null = os.open(os.devnull, os.O_RDWR)
    try:  # one old generation kept: a server down for days logs a line per hook
        if os.path.getsize(log_path) > LOG_MAX_BYTES:
            os.replace(log_path, str(log_path) + ".1")
    except OSError:
        pass
    try:
        err = os.open(log_path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
    except OSError:
        err = null
    os.dup2(null, 0)
    os.dup2(null, 1)
    os.dup2(err, 2)
    for fd in {null, err}:
        if fd > 2:
            os.close(fd)


def _output(event: str, context: str) -> dict[str, Any]:
    return {"hookSpecificOutput": {"hookEventName": event, "additionalContext": context}}


# -- events -----------------------------------------------------------------------------------

def on_session_start(hook: Hook) -> dict[str, Any] | None:
    state.prune_stale(hook.cfg.spool_dir)
    facts = hook.facts()  # cheap; context() adds git's merged branches once the server answers
    query = None
    if facts.branch and facts.branch != facts.default_branch:
        query = f"work on branch {facts.branch}"
    # An index of what lasts: decisions, lessons, problems, session outcomes. Single edits,
    # commands and prompts are in those summaries already; prompts find them when they matter.
    lasting = {"eventType": {"$nin": list(PER_TOOL_TYPES)}}
    # an index line is short, so it pays to look at more candidates than a prompt does
    context = hook.context(query, hook.cfg.session_budget, lasting, style="index",
                           limit=INDEX_CANDIDATES)
    hook.flush()
    if not context:
        return None  # nothing to show: not even a header
    facts = hook.facts(detailed=True)  # computed by context() already: ahead/behind
    where = f"branch `{facts.branch}`" if facts.branch else (
        f"detached HEAD {facts.commit[:10]}" if facts.commit else None)
    if where and facts.upstream and facts.ahead is not None and facts.behind is not None:
        where += f", {facts.ahead} ahead / {facts.behind} behind {facts.upstream}"
    ws = facts.workspace_id
    header = (f"memoray: memories of workspace `{ws}`" + (f" ({where})" if where else "")
              + ". One line per memory: expand one with the memoray `get-memory` tool "
              "(`id`); search with `retrieve-memories`; record a decision or convention with "
              "`capture-memory` (`eventType` decision|convention). Pass "
              f"`workspaceId: \"{ws}\"`" + (f" and `gitBranch: \"{facts.branch}\"`"
                                              if facts.branch else "") + ".")
    return _output("SessionStart", f"{header}\n\n{context}")


def on_user_prompt(hook: Hook) -> dict[str, Any] | None:
    prompt = str(hook.payload.get("prompt") or "")
    if not prompt.strip():
        return None
    with state.session_state(hook.cfg.spool_dir, hook.session_id) as st:
        st["prompts"] = index = int(st.get("prompts", 0)) + 1
        st["firstPrompt"] = st.get("firstPrompt") or events.one_line(prompt, 500)
        st["lastPrompt"] = events.one_line(prompt, 500)
    context = None
    if len(prompt.split()) >= MIN_QUERY_WORDS:
        # Everything this session captured is already in the agent's window: never echo it.
        not_this_session = {"$or": [{"sessionId": {"$ne": hook.session_id}},
                                    {"sessionId": {"$exists": False}}]}
        context = hook.context(prompt[:MAX_QUERY_CHARS], hook.cfg.prompt_budget,
                               not_this_session)
    key = "prompt:" + str(hook.payload.get("prompt_id") or f"{index}:{_sha(prompt)[:16]}")
    items = hook.statements(prompt, "prompt")
    items.append(hook.item(events.trim(prompt, events.MAX_PROMPT_CHARS), "prompt", "session",
                           {"promptIndex": index}, key))
    hook.capture(items)
    return _output("UserPromptSubmit", context) if context else None


def on_post_tool_use(hook: Hook) -> dict[str, Any] | None:
    root = hook.facts().root or hook.cwd
    record = events.summarize_tool(hook.payload, root)
    if record is None:
        return None
    tool = str(hook.payload.get("tool_name"))
    fixed: list[dict[str, Any]] = []
    with state.session_state(hook.cfg.spool_dir, hook.session_id) as st:
        if record.noise:
            state.record_noise(st, tool)
            return None
        seq = state.next_seq(st)
        if record.file:
            state.record_file(st, *record.file)
            sample = (record.content or "").split("\n")[1:4]
            state.note_fix_edit(st, record.file[0], record.file[1], record.file[2], sample)
        elif record.command:
            state.record_command(st, *record.command)
            full = str((hook.payload.get("tool_input") or {}).get("command") or "")
            key = events.command_key(full)
            if key is not None and record.command[1]:
                fixed = state.take_fixed(
                    st, lambda k: events.same_run((k[0], tuple(k[1])), key))
                state.note_fix_command(st, record.command[0])
            elif key is not None:  # a failure reported as PostToolUse (exit code in response)
                state.record_failure(st, [key[0], list(key[1])], record.command[0],
                                     record.content or "", _sha(hook.session_id, "fail", full))
        else:
            state.record_tool(st, tool)
    key = "tool:" + str(hook.payload.get("tool_use_id") or seq)
    items = []
    if record.content:
        items.append(hook.item(record.content, record.event_type, "session", record.metadata,
                               key))
    for f in fixed:
        items.append(_lesson_item(hook, f))
    if items:
        hook.capture(items)
    return None


def _lesson_item(hook: Hook, failure: dict[str, Any]) -> dict[str, Any]:
    files = failure["fix"]["files"]
    return hook.outcome_item(
        events.lesson_text(failure["cmd"], failure["error"], failure["fix"]), "lesson",
        "project", {"command": failure["cmd"], "fixes": failure["id"],
                    "filesChanged": sorted(files)[:20]}, "lesson:" + failure["id"])


def on_post_tool_failure(hook: Hook) -> dict[str, Any] | None:
    """A failed tool call: an `error` record (command, error text, tool input), and for a
    command, a pending failure that its next success turns into a lesson."""
    root = hook.facts().root or hook.cwd
    failure = events.summarize_failure(hook.payload, root)
    if failure is None:
        return None
    tool = str(hook.payload.get("tool_name"))
    fid = _sha(hook.session_id, "fail", failure.command or str(hook.payload.get("tool_use_id")))
    with state.session_state(hook.cfg.spool_dir, hook.session_id) as st:
        seq = state.next_seq(st)
        if failure.content is None:
            state.record_noise(st, f"{tool} failed")
            return None
        if failure.command:
            state.record_command(st, events.one_line(failure.command, 200), False,
                                 failure.metadata.get("exitCode") and
                                 f"exit {failure.metadata['exitCode']}" or "failed")
            key = events.command_key(failure.command)
            if key is not None:
                state.record_failure(st, [key[0], list(key[1])],
                                     events.one_line(failure.command, 500), failure.error, fid)
        else:
            state.record_tool(st, f"{tool} (failed)")
    failure.metadata["failureId"] = fid
    key = "fail:" + str(hook.payload.get("tool_use_id") or seq)
    hook.capture([hook.item(failure.content, "error", "session", failure.metadata, key)])
    return None


def _last_message(hook: Hook) -> str | None:
    text = hook.payload.get("last_assistant_message")
    if isinstance(text, str) and text.strip():
        return text.strip()
    return last_assistant_text(hook.payload.get("transcript_path"))


def _headline(last: str | None, asked: str | None) -> str:
    """": <what came of it>" for a summary's first line, which is what an index shows: the first
    sentence of the last assistant message, else what was asked."""
    import re

    text = " ".join((last or "").split())
    if text:
        sentences = re.split(r"(?<=[.!?])\s", text)
        text = next((x for x in sentences if len(x.split()) >= 4), sentences[0])
    elif asked:
        text = "asked: " + " ".join(asked.split())
    return ": " + events.one_line(text, 160) if text else ""


def _summary_metadata(activity: dict[str, Any], scope: str) -> dict[str, Any]:
    commands = activity.get("commands") or []
    return {"scope": scope, "filesChanged": sorted(activity.get("files") or {})[:50],
            "commandsRun": len(commands),
            "commandsFailed": sum(1 for c in commands if not c.get("ok"))}


def on_stop(hook: Hook) -> dict[str, Any] | None:
    """End of a turn: summarize it when it changed files, ran commands or used tools."""
    with state.session_state(hook.cfg.spool_dir, hook.session_id) as st:
        turn = st["turn"]
        if not (turn["files"] or turn["commands"] or turn["tools"]):
            hook.flush()
            return None
        asked = st.get("lastPrompt")
        state.reset_turn(st)
    facts = hook.facts()
    last = _last_message(hook)
    body = events.session_summary(turn, first_prompt=asked, last_message=last)
    items = hook.statements(last, "assistant") if last else []
    if body:
        title = f"Turn summary on {facts.branch or 'detached HEAD'}" + _headline(last, asked)
        items.append(hook.outcome_item(f"{title}\n{body}", "session_summary", "project",
                                       _summary_metadata(turn, "turn"), f"turn:{_sha(body)}"))
    if items:
        hook.capture(items)
    return None


def on_session_summary(hook: Hook) -> dict[str, Any] | None:
    """SessionEnd and PreCompact: the whole session so far, in one record."""
    last = _last_message(hook)
    with state.session_state(hook.cfg.spool_dir, hook.session_id) as st:
        activity = st["session"]
        st_first = st.get("firstPrompt")
        body = events.session_summary(activity, first_prompt=st.get("firstPrompt"),
                                      last_message=last, noise=dict(st.get("noise") or {}),
                                      lessons=list(st.get("lessons") or []))
        # Keyed on the body: a SessionEnd right after a PreCompact with nothing new is skipped
        # here, and the server would store it once anyway.
        key = f"summary:{_sha(body or '')}"
        fresh = bool(body) and st.get("lastSummaryKey") != key
        if fresh:
            st["lastSummaryKey"] = key
            st["summaries"] = int(st.get("summaries", 0)) + 1
    if not fresh or not body:
        hook.flush()
        return None
    facts = hook.facts()
    why = hook.payload.get("reason") or hook.payload.get("trigger")
    where = facts.branch or "detached HEAD"
    if facts.commit:
        where += f" @ {facts.commit[:10]}"
    title = (f"Session summary ({hook.event}{': ' + str(why) if why else ''}) on {where}"
             + _headline(last, st_first))
    metadata = _summary_metadata(activity, "session")
    metadata["reason"] = why
    hook.capture([hook.outcome_item(f"{title}\n{body}", "session_summary", "project", metadata,
                                    key)])
    return None


def on_post_compact(hook: Hook) -> dict[str, Any] | None:
    """PostCompact carries Claude Code's own summary of the conversation so far: kept as a
    session summary, and mined for the decisions it states."""
    summary = hook.payload.get("compact_summary")
    if not isinstance(summary, str) or not summary.strip():
        hook.flush()
        return None
    facts = hook.facts()
    where = facts.branch or "detached HEAD"
    items = hook.statements(summary, "assistant")
    items.append(hook.outcome_item(
        f"Conversation summary (compacted, {hook.payload.get('trigger') or 'auto'}) on {where}\n"
        + events.trim(summary, 6000), "session_summary", "project",
        {"scope": "compact", "reason": hook.payload.get("trigger")},
        f"compact:{_sha(summary)}"))
    hook.capture(items)
    return None


HANDLERS: dict[str, Callable[[Hook], dict[str, Any] | None]] = {
    "SessionStart": on_session_start,
    "UserPromptSubmit": on_user_prompt,
    "PostToolUse": on_post_tool_use,
    "PostToolUseFailure": on_post_tool_failure,
    "PostCompact": on_post_compact,
    "Stop": on_stop,
    "SessionEnd": on_session_summary,
    "PreCompact": on_session_summary,
}


def _read_payload() -> dict[str, Any] | None:
    if sys.stdin is None or sys.stdin.isatty():
        return {}
    raw = sys.stdin.read()
    if not raw.strip():
        return {}
    try:
        payload = json.loads(raw)
    except ValueError as exc:
        log(f"stdin is not JSON ({exc}); nothing done")
        return None
    if not isinstance(payload, dict):
        log("stdin JSON is not an object; nothing done")
        return None
    return payload


def run_hook(event: str, entry: float | None = None) -> int:
    """Run one hook; always returns 0 so a memory problem never stops the agent. `entry`:
    when memoray's first line ran (memoray.entry), for the trace (MEMORAY_HOOK_TRACE)."""
    started = time.monotonic()
    trace = Trace.from_env(entry)
    hook: Hook | None = None
    try:
        handler = HANDLERS.get(event)
        if handler is None:
            log(f"unknown hook event {event!r}")
            return 0
        payload = _read_payload()
        if payload is None:
            return 0
        hook = Hook(event, payload, HookConfig.from_env(), started, trace)
        output = handler(hook)
        if trace is not None:
            trace.mark("handled")
        if output:
            sys.stdout.write(json.dumps(output, ensure_ascii=False))
        sys.stdout.flush()
        sys.stderr.flush()  # before a fork: the child must not write this process's buffers
        if hook.flush_later and not hook.server_down:
            hook.flush_detached()
    except Exception as exc:  # noqa: BLE001 - the agent must never see a hook crash
        log(f"{event} failed: {type(exc).__name__}: {exc}")
    from memoray import gitfacts

    if gitfacts.TIMEOUTS:  # fewer merged branches were seen than exist: say so
        log(f"git timed out ({', '.join(sorted(set(gitfacts.TIMEOUTS)))}) after "
            f"{gitfacts.GIT_TIMEOUT_S}s; merged branches may be missing from the context "
            "(MEMORAY_GIT_TIMEOUT raises the limit)")
    if trace is not None:
        if hook is not None and hook._client is not None:
            trace.add("server", hook._client.seconds)
        trace.write(event)
    return 0

"""`memoray hooks install`: write memoray's hook entries and MCP server entry for Claude Code.

Project scope: the hook commands and the server URL are machine-specific (an interpreter path, a
host), so they go to `<project>/.claude/settings.local.json` (not committed), the URL as
`env.MEMORAY_URL` there, which Claude Code passes to hook commands; an older install's entries
in the committed `.claude/settings.json` are moved out. The MCP entry goes to `<project>/.mcp.json`
(shared) in a portable form: `${MEMORAY_URL:-<default>}` for the URL, which Claude Code expands,
and an `X-Memoray-Workspace` header naming the project's workspace (computed from git).
`--user` writes `~/.claude/settings.json` and the `mcpServers` of `~/.claude.json`.
Hook commands use no POSIX `VAR=value cmd` syntax, and quote paths with double quotes, so they
run in sh, cmd.exe and PowerShell alike.
Existing content is merged, never replaced: other hooks, servers and keys stay as they are.
memoray's own entries are recognised by their command, so running install twice changes
nothing, an older install is updated in place, and `--uninstall` removes only what is ours.
"""

from __future__ import annotations

import copy
import json
import os
import re
import shutil
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from memoray.gitfacts import find_repo
from memoray.hooks.config import DEFAULT_URL

SERVER_NAME = "memoray"
HOOK_TIMEOUT_S = 10  # a ceiling for Claude Code; the hook itself gives up after ~2 s
# Reads, searches and to-do updates are noise: not spawning a hook for them keeps the agent fast.
POST_TOOL_MATCHER = ("Edit|Write|MultiEdit|NotebookEdit|Bash|WebFetch|WebSearch|Task|Agent|"
                     "ExitPlanMode|mcp__.*")
# Failed edits and reads are the agent's own slips, not worth a process.
FAILURE_MATCHER = "Bash|WebFetch|WebSearch|Task|Agent|mcp__.*"
EVENTS: dict[str, str | None] = {  # event -> matcher (None: the event takes no matcher)
    "SessionStart": None,
    "UserPromptSubmit": None,
    "PostToolUse": POST_TOOL_MATCHER,
    "PostToolUseFailure": FAILURE_MATCHER,
    "Stop": None,
    "SessionEnd": None,
    "PreCompact": None,
    "PostCompact": None,
}
WORKSPACE_HEADER = "X-Memoray-Workspace"
_MARKERS = ("memoray hook ", "memoray.cli hook ", "memoray.entry hook ")


class InstallError(Exception):
    pass


@dataclass
class JsonFile:
    """A JSON object on disk, loaded once, written only if changed (atomically, mode kept)."""

    path: Path
    data: dict[str, Any] = field(default_factory=dict)
    original: dict[str, Any] = field(default_factory=dict)
    existed: bool = False

    @classmethod
    def load(cls, path: Path) -> JsonFile:
        if not path.exists():
            return cls(path)
        try:
            text = path.read_text(encoding="utf-8")
            data = json.loads(text) if text.strip() else {}
        except (OSError, ValueError) as exc:
            raise InstallError(f"{path} is not valid JSON ({exc}); fix or move it and retry") \
                from None
        if not isinstance(data, dict):
            raise InstallError(f"{path} does not hold a JSON object; fix or move it and retry")
        return cls(path, data, copy.deepcopy(data), True)

    @property
    def changed(self) -> bool:
        return self.data != self.original

    def save(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_name(self.path.name + ".memoray.tmp")
        tmp.write_text(json.dumps(self.data, indent=2, ensure_ascii=False) + "\n",
                       encoding="utf-8")
        if self.existed:
            shutil.copymode(self.path, tmp)
        os.replace(tmp, self.path)


def is_memoray_command(command: Any) -> bool:
    return isinstance(command, str) and any(m in command for m in _MARKERS)


def _quote(path: str) -> str:
    """Double quotes where needed: understood by sh, cmd.exe and PowerShell alike."""
    return path if re.fullmatch(r"[\w@%+=:,./\\-]+", path) else f'"{path}"'


def hook_command(event: str, url: str | None = None) -> str:
    """`memoray hook <Event>`; the absolute interpreter when `memoray` is not on PATH. The URL
    travels in the settings' `env`, never in the command."""
    base = "memoray" if shutil.which("memoray") else f"{_quote(sys.executable)} -m memoray.entry"
    return f"{base} hook {event}"


def server_entry(url: str, workspace: str | None = None, portable: bool = False
                 ) -> dict[str, Any]:
    """The MCP entry. ``portable`` (a committed .mcp.json): the URL comes from MEMORAY_URL,
    with this URL as the default; the workspace header scopes tool calls to this project."""
    base = url.rstrip("/")
    if portable:
        base = "${MEMORAY_URL:-" + base + "}"
    entry: dict[str, Any] = {"type": "http", "url": base + "/mcp"}
    headers = {}
    if os.environ.get("MEMORAY_TOKEN"):
        # Claude Code expands ${VAR} in MCP entries: the token itself never lands in the file.
        headers["Authorization"] = "Bearer ${MEMORAY_TOKEN}"
    if workspace:
        headers[WORKSPACE_HEADER] = workspace
    if headers:
        entry["headers"] = headers
    return entry


def _remove_ours(groups: list[Any]) -> list[Any]:
    """The event's matcher groups without memoray's commands (emptied groups dropped)."""
    kept = []
    for group in groups:
        if not isinstance(group, dict) or not isinstance(group.get("hooks"), list):
            kept.append(group)
            continue
        hooks = [h for h in group["hooks"]
                 if not (isinstance(h, dict) and is_memoray_command(h.get("command")))]
        if hooks:
            kept.append({**group, "hooks": hooks})
        elif not group["hooks"]:
            kept.append(group)  # someone else's empty group: not ours to remove
    return kept


def apply_env(settings: dict[str, Any], url: str, uninstall: bool) -> list[str]:
    """MEMORAY_URL in the settings' env (hooks read it), only when it is not the default."""
    env = settings.get("env")
    if env is not None and not isinstance(env, dict):
        raise InstallError('"env" in the settings file is not an object; fix it and retry')
    want = None if uninstall or url.rstrip("/") == DEFAULT_URL else url
    have = (env or {}).get("MEMORAY_URL")
    if have == want:
        return []
    if want is None:
        env.pop("MEMORAY_URL", None)  # type: ignore[union-attr]
        if not env:
            settings.pop("env", None)
        return ["- env.MEMORAY_URL"]
    settings.setdefault("env", {})["MEMORAY_URL"] = want
    return [f"{'~' if have else '+'} env.MEMORAY_URL: {want}"]


def apply_hooks(settings: dict[str, Any], url: str, uninstall: bool) -> list[str]:
    """Edit settings["hooks"] (and env.MEMORAY_URL) in place; returns one line per change."""
    changes: list[str] = apply_env(settings, url, uninstall)
    hooks = settings.get("hooks")
    if hooks is None:
        if uninstall:
            return changes
        hooks = settings["hooks"] = {}
    if not isinstance(hooks, dict):
        raise InstallError('"hooks" in the settings file is not an object; fix it and retry')
    for event, matcher in EVENTS.items():
        groups = hooks.get(event, [])
        if not isinstance(groups, list):
            raise InstallError(f'"hooks.{event}" is not a list; fix it and retry')
        others = _remove_ours(groups)
        had_ours = others != groups
        if uninstall:
            if had_ours:
                changes.append(f"- hooks.{event}")
                if others:
                    hooks[event] = others
                else:
                    hooks.pop(event, None)
            continue
        group: dict[str, Any] = {"matcher": matcher} if matcher is not None else {}
        group["hooks"] = [{"type": "command", "command": hook_command(event, url),
                           "timeout": HOOK_TIMEOUT_S}]
        if group in groups and len(groups) - len(others) == 1:
            continue  # already installed exactly like this
        hooks[event] = [*others, group]
        changes.append(f"{'~' if had_ours else '+'} hooks.{event}: {group['hooks'][0]['command']}")
    if uninstall and not hooks:
        settings.pop("hooks", None)
    return changes


def apply_server(config: dict[str, Any], url: str, uninstall: bool,
                 entry: dict[str, Any] | None = None) -> list[str]:
    """Edit config["mcpServers"] in place; returns one line per change."""
    servers = config.get("mcpServers")
    if servers is None:
        if uninstall:
            return []
        servers = config["mcpServers"] = {}
    if not isinstance(servers, dict):
        raise InstallError('"mcpServers" is not an object; fix it and retry')
    if uninstall:
        return [f"- mcpServers.{SERVER_NAME}"] if servers.pop(SERVER_NAME, None) is not None else []
    entry = entry or server_entry(url)
    if servers.get(SERVER_NAME) == entry:
        return []
    verb = "~" if SERVER_NAME in servers else "+"
    servers[SERVER_NAME] = entry
    return [f"{verb} mcpServers.{SERVER_NAME}: {entry['url']}"]


def _project_root(project_dir: Path | None) -> Path:
    if project_dir is not None:
        return project_dir.expanduser().resolve()
    found = find_repo(os.getcwd())
    return found[0] if found else Path.cwd().resolve()


def _exclude_locally(root: Path, path: Path) -> None:
    """Keep the machine-specific settings file out of commits (`.git/info/exclude`, which is
    itself never committed), as Claude Code does for the files it creates."""
    found = find_repo(str(root))
    if found is None:
        return
    try:
        rel = "/" + path.resolve().relative_to(found[0]).as_posix()
    except ValueError:
        return
    exclude = found[2] / "info" / "exclude"
    try:
        text = exclude.read_text(encoding="utf-8") if exclude.exists() else ""
        if rel not in text.splitlines():
            exclude.parent.mkdir(parents=True, exist_ok=True)
            exclude.write_text(text + ("" if not text or text.endswith("\n") else "\n")
                               + rel + "\n", encoding="utf-8")
    except OSError:
        pass


def check_url(url: str, timeout: float = 1.5) -> str | None:
    """None when `<url>/healthz` answers; else why not, in a few words."""
    import urllib.error
    import urllib.request

    try:
        with urllib.request.urlopen(url.rstrip("/") + "/healthz", timeout=timeout) as resp:
            return None if resp.status < 500 else f"HTTP {resp.status}"
    except urllib.error.HTTPError as exc:
        return None if exc.code < 500 else f"HTTP {exc.code}"
    except (OSError, ValueError) as exc:
        return f"{type(exc).__name__}: {getattr(exc, 'reason', exc)}"


def main_install(project_dir: Path | None, user: bool, uninstall: bool, url: str | None,
                 check: bool = True) -> int:
    """Install (or uninstall) memoray's Claude Code entries; prints what changed."""
    url = (url or os.environ.get("MEMORAY_URL") or DEFAULT_URL).strip()
    if not url.startswith(("http://", "https://")):
        print(f"memoray hooks install: --url must be http(s)://..., got {url!r}", file=sys.stderr)
        return 2
    legacy_path: Path | None = None
    if user:
        home = Path.home()
        settings_path, server_path = home / ".claude" / "settings.json", home / ".claude.json"
        entry = server_entry(url)
    else:
        root = _project_root(project_dir)
        if not root.is_dir():
            print(f"memoray hooks install: {root} is not a directory", file=sys.stderr)
            return 2
        settings_path = root / ".claude" / "settings.local.json"
        legacy_path = root / ".claude" / "settings.json"
        server_path = root / ".mcp.json"
        from memoray.gitfacts import git_facts

        entry = server_entry(url, git_facts(str(root), detailed=False).workspace_id,
                             portable=True)
    try:
        settings, servers = JsonFile.load(settings_path), JsonFile.load(server_path)
        legacy = JsonFile.load(legacy_path) if legacy_path and legacy_path.exists() else None
        hook_changes = apply_hooks(settings.data, url, uninstall)
        server_changes = apply_server(servers.data, url, uninstall, entry)
        legacy_changes = apply_hooks(legacy.data, url, True) if legacy else []
    except InstallError as exc:
        print(f"memoray hooks install: {exc}", file=sys.stderr)
        return 1
    docs = [(settings, hook_changes), (servers, server_changes)]
    if legacy is not None:
        docs.append((legacy, legacy_changes))
    if not user and not uninstall and settings.changed:
        _exclude_locally(root, settings_path)
    for doc, changes in docs:
        if doc.changed:
            doc.save()
            print(f"{doc.path}:")
            for line in changes:
                print(f"  {line}")
    if not any(doc.changed for doc, _ in docs):
        print(f"memoray: nothing to change in {settings_path} and {server_path}")
    elif not uninstall and not user:
        print("Claude Code asks once to approve the project's MCP server (.mcp.json).")
    if not uninstall and not user and url.rstrip("/") != DEFAULT_URL:
        print(f"note: .mcp.json reads the URL from MEMORAY_URL (default {url.rstrip('/')}); "
              "hooks get it from .claude/settings.local.json.")
    if not uninstall and "memoray hook" not in hook_command("Stop"):
        print("note: `memoray` is not on PATH; the hooks call this interpreter directly.")
    if not uninstall and check:
        problem = check_url(url)
        if problem:
            print(f"warning: {url} does not answer ({problem}); start the server with "
                  "`memoray serve` (hooks skip it quietly until it does)", file=sys.stderr)
        else:
            print(f"checked: {url} answers")
    return 0

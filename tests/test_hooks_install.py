"""`memoray hooks install`: merge into Claude Code settings, idempotence, uninstall."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from memoray.hooks.install import EVENTS, is_memoray_command, main_install

OTHER_HOOK = {"matcher": "Bash", "hooks": [{"type": "command", "command": "./audit.sh"}]}


@pytest.fixture(autouse=True)
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    h = tmp_path / "home"
    h.mkdir()
    monkeypatch.setenv("HOME", str(h))
    monkeypatch.delenv("MEMORAY_URL", raising=False)
    monkeypatch.delenv("MEMORAY_TOKEN", raising=False)
    return h


@pytest.fixture()
def project(tmp_path: Path) -> Path:
    p = tmp_path / "proj"
    p.mkdir()
    return p


def read(path: Path) -> dict[str, Any]:
    return json.loads(path.read_text())


def ours(settings: dict[str, Any], event: str) -> list[dict[str, Any]]:
    return [h for g in settings["hooks"].get(event, []) for h in g["hooks"]
            if is_memoray_command(h["command"])]


LOCAL = Path(".claude") / "settings.local.json"


def test_project_install_writes_hooks_and_mcp_server(project: Path, capsys) -> None:
    assert main_install(project, user=False, uninstall=False, url=None) == 0
    assert not (project / ".claude" / "settings.json").exists()  # the committed file: untouched
    settings = read(project / LOCAL)
    assert set(settings["hooks"]) == set(EVENTS)
    for event in EVENTS:
        [entry] = ours(settings, event)
        assert entry["type"] == "command" and entry["command"].endswith(f"hook {event}")
        assert entry["timeout"] == 10
    [group] = settings["hooks"]["PostToolUse"]
    assert "Edit" in group["matcher"] and "Bash" in group["matcher"]
    assert "matcher" not in settings["hooks"]["SessionStart"][0]
    assert "Bash" in settings["hooks"]["PostToolUseFailure"][0]["matcher"]
    assert "env" not in settings  # the default URL needs no setting
    assert read(project / ".mcp.json") == {"mcpServers": {"memoray": {
        "type": "http", "url": "${MEMORAY_URL:-http://127.0.0.1:8000}/mcp",
        "headers": {"X-Memoray-Workspace": f"local:{project.resolve()}"}}}}
    captured = capsys.readouterr()
    assert "+ hooks.SessionStart" in captured.out and "+ mcpServers.memoray" in captured.out


def test_commands_carry_no_posix_env_syntax_and_quote_for_every_shell(
        project: Path, monkeypatch) -> None:
    from memoray.hooks import install

    monkeypatch.setattr(install.shutil, "which", lambda _: None)
    monkeypatch.setattr(install.sys, "executable", "C:\\Program Files\\Python\\python.exe")
    main_install(project, user=False, uninstall=False, url="http://10.0.0.5:9000")
    settings = read(project / LOCAL)
    for event in EVENTS:
        [entry] = ours(settings, event)
        assert entry["command"] == (
            f'"C:\\Program Files\\Python\\python.exe" -m memoray.entry hook {event}')
        assert "=" not in entry["command"].split()[0]
    assert settings["env"] == {"MEMORAY_URL": "http://10.0.0.5:9000"}


def test_install_moves_an_older_install_out_of_the_committed_settings(project: Path) -> None:
    (project / ".claude").mkdir()
    old = {"model": "opus", "hooks": {"Stop": [{"hooks": [
        {"type": "command", "command": "MEMORAY_URL=http://x:1 memoray hook Stop"}]}]}}
    (project / ".claude" / "settings.json").write_text(json.dumps(old))
    main_install(project, user=False, uninstall=False, url=None)
    assert read(project / ".claude" / "settings.json") == {"model": "opus"}
    assert len(ours(read(project / LOCAL), "Stop")) == 1


def test_install_checks_that_the_url_answers(project: Path, capsys) -> None:
    import http.server
    import threading

    class Health(http.server.BaseHTTPRequestHandler):
        def do_GET(self):  # noqa: N802
            self.send_response(200 if self.path == "/healthz" else 404)
            self.end_headers()
            self.wfile.write(b"{}")

        def log_message(self, *a):
            pass

    srv = http.server.HTTPServer(("127.0.0.1", 0), Health)
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    try:
        url = f"http://127.0.0.1:{srv.server_address[1]}"
        assert main_install(project, user=False, uninstall=False, url=url) == 0
    finally:
        srv.shutdown()
    captured = capsys.readouterr()
    assert f"checked: {url} answers" in captured.out and "does not answer" not in captured.err
    # now nothing listens there: install still succeeds, and says so
    assert main_install(project, user=False, uninstall=False, url=url) == 0
    assert f"warning: {url} does not answer" in capsys.readouterr().err


def test_merges_with_existing_content(project: Path) -> None:
    (project / ".claude").mkdir()
    (project / ".claude" / "settings.json").write_text(json.dumps({
        "permissions": {"allow": ["Bash(npm test)"]},
        "hooks": {"PostToolUse": [OTHER_HOOK], "Notification": [{"hooks": [
            {"type": "command", "command": "notify-send hi"}]}]}}))
    (project / ".mcp.json").write_text(json.dumps(
        {"mcpServers": {"github": {"type": "http", "url": "https://api.github.com/mcp"}}}))
    (project / LOCAL).write_text((project / ".claude" / "settings.json").read_text())
    main_install(project, user=False, uninstall=False, url=None)
    settings = read(project / LOCAL)
    assert settings["permissions"] == {"allow": ["Bash(npm test)"]}
    assert settings["hooks"]["Notification"][0]["hooks"][0]["command"] == "notify-send hi"
    assert settings["hooks"]["PostToolUse"][0] == OTHER_HOOK
    assert len(ours(settings, "PostToolUse")) == 1
    servers = read(project / ".mcp.json")["mcpServers"]
    assert set(servers) == {"github", "memoray"}


def test_install_is_idempotent(project: Path, capsys) -> None:
    main_install(project, user=False, uninstall=False, url=None)
    files = [project / LOCAL, project / ".mcp.json"]
    before = [(p.read_bytes(), p.stat().st_mtime_ns) for p in files]
    capsys.readouterr()
    assert main_install(project, user=False, uninstall=False, url=None) == 0
    assert [(p.read_bytes(), p.stat().st_mtime_ns) for p in files] == before
    assert "nothing to change" in capsys.readouterr().out


def test_reinstall_with_new_url_updates_in_place(project: Path, monkeypatch) -> None:
    main_install(project, user=False, uninstall=False, url=None)
    monkeypatch.setenv("MEMORAY_TOKEN", "mr_x")
    main_install(project, user=False, uninstall=False, url="http://10.0.0.5:9000/")
    settings = read(project / LOCAL)
    for event in EVENTS:
        [entry] = ours(settings, event)
        assert entry["command"].endswith(f"hook {event}") and "MEMORAY_URL" not in entry["command"]
    assert settings["env"] == {"MEMORAY_URL": "http://10.0.0.5:9000/"}
    assert read(project / ".mcp.json")["mcpServers"]["memoray"] == {
        "type": "http", "url": "${MEMORAY_URL:-http://10.0.0.5:9000}/mcp",
        "headers": {"Authorization": "Bearer ${MEMORAY_TOKEN}",
                    "X-Memoray-Workspace": f"local:{project.resolve()}"}}


def test_uninstall_removes_only_memoray(project: Path, capsys) -> None:
    (project / ".claude").mkdir()
    (project / LOCAL).write_text(json.dumps(
        {"model": "opus", "hooks": {"PostToolUse": [OTHER_HOOK]}}))
    (project / ".mcp.json").write_text(json.dumps({"mcpServers": {"other": {"command": "x"}}}))
    main_install(project, user=False, uninstall=False, url=None)
    capsys.readouterr()
    assert main_install(project, user=False, uninstall=True, url=None) == 0
    assert read(project / LOCAL) == {
        "model": "opus", "hooks": {"PostToolUse": [OTHER_HOOK]}}
    assert read(project / ".mcp.json") == {"mcpServers": {"other": {"command": "x"}}}
    assert "- hooks.Stop" in capsys.readouterr().out
    assert main_install(project, user=False, uninstall=True, url=None) == 0  # again: no-op


def test_uninstall_of_a_shared_group_keeps_the_other_command(project: Path) -> None:
    (project / ".claude").mkdir()
    shared = {"hooks": {"Stop": [{"hooks": [{"type": "command", "command": "memoray hook Stop"},
                                            {"type": "command", "command": "say done"}]}]}}
    (project / LOCAL).write_text(json.dumps(shared))
    main_install(project, user=False, uninstall=True, url=None)
    assert read(project / LOCAL) == {
        "hooks": {"Stop": [{"hooks": [{"type": "command", "command": "say done"}]}]}}


def test_user_scope_uses_home(home: Path) -> None:
    (home / ".claude.json").write_text(json.dumps({"numStartups": 3, "projects": {"/x": {}}}))
    assert main_install(None, user=True, uninstall=False, url=None) == 0
    assert set(read(home / ".claude" / "settings.json")["hooks"]) == set(EVENTS)
    claude = read(home / ".claude.json")
    assert claude["numStartups"] == 3 and claude["projects"] == {"/x": {}}
    assert claude["mcpServers"]["memoray"]["url"] == "http://127.0.0.1:8000/mcp"
    main_install(None, user=True, uninstall=True, url=None)
    assert read(home / ".claude.json") == {"numStartups": 3, "projects": {"/x": {}},
                                           "mcpServers": {}}
    assert read(home / ".claude" / "settings.json") == {}


def test_invalid_settings_are_left_alone(project: Path, capsys) -> None:
    (project / ".claude").mkdir()
    bad = project / LOCAL
    bad.write_text("{not json")
    assert main_install(project, user=False, uninstall=False, url=None) == 1
    assert bad.read_text() == "{not json"
    assert not (project / ".mcp.json").exists()
    assert "not valid JSON" in capsys.readouterr().err
    assert main_install(project, user=False, uninstall=False, url="ftp://x") == 2


def test_cli_wiring(project: Path, home: Path) -> None:
    env = {**os.environ, "HOME": str(home)}
    proc = subprocess.run([sys.executable, "-m", "memoray.cli", "hooks", "install", "--project",
                           str(project)], check=False, capture_output=True, text=True, env=env,
                          timeout=30)
    assert proc.returncode == 0, proc.stderr
    assert (project / LOCAL).exists()
    assert "mcpServers.memoray" in proc.stdout


def test_local_settings_stay_out_of_commits(project: Path, monkeypatch) -> None:
    for k, v in {"GIT_CONFIG_NOSYSTEM": "1", "GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@x",
                 "GIT_COMMITTER_NAME": "t", "GIT_COMMITTER_EMAIL": "t@x"}.items():
        monkeypatch.setenv(k, v)
    subprocess.run(["git", "init", "-q", str(project)], check=True)
    main_install(project, user=False, uninstall=False, url=None, check=False)
    status = subprocess.run(["git", "status", "--porcelain"], cwd=project, check=True,
                            capture_output=True, text=True).stdout
    assert "settings.local.json" not in status and ".mcp.json" in status
    main_install(project, user=False, uninstall=False, url="http://10.0.0.5:9000", check=False)
    exclude = (project / ".git" / "info" / "exclude").read_text()
    assert exclude.count("/.claude/settings.local.json") == 1

"""Claude Code hooks against the real server, in real git repositories: branch-aware
visibility (feature memories hidden on main until merged), workspace ids stable across clones,
and the token budget of what SessionStart / UserPromptSubmit print."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from memoray.tokens import count_tokens
from tests.gitutil import git, isolate_git


@pytest.fixture()
def repos(tmp_path, monkeypatch):
    isolate_git(tmp_path, monkeypatch)
    remote = tmp_path / "remote.git"
    git(tmp_path, "init", "-q", "--bare", "-b", "main", str(remote))
    a = tmp_path / "clone-a"
    git(tmp_path, "clone", "-q", str(remote), str(a))
    git(a, "checkout", "-q", "-b", "main")
    (a / "app.py").write_text("print('hi')\n")
    git(a, "add", ".")
    git(a, "commit", "-qm", "init")
    git(a, "push", "-q", "origin", "main")
    b = tmp_path / "clone-b"
    git(tmp_path, "clone", "-q", str(remote), str(b))
    return a, b, tmp_path / "spool"


def hook(server, event: str, payload: dict, spool: Path) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if not k.startswith("MEMORAY_")}
    env.update({"MEMORAY_URL": server.url, "MEMORAY_SPOOL_DIR": str(spool),
                "MEMORAY_HOOK_TIMEOUT": "20"})
    proc = subprocess.run([sys.executable, "-m", "memoray.cli", "hook", event],
                          input=json.dumps(payload), capture_output=True, text=True, env=env,
                          timeout=60, cwd=payload["cwd"])
    assert proc.returncode == 0, proc.stderr
    return proc


def base(repo: Path, session: str, **fields) -> dict:
    return {"session_id": session, "transcript_path": str(repo / "t.jsonl"), "cwd": str(repo),
            "permission_mode": "default", **fields}


def edit(repo: Path, session: str, n: int, text: str) -> dict:
    path = str(repo / "app.py")
    return base(repo, session, hook_event_name="PostToolUse", tool_name="Edit",
                tool_use_id=f"toolu_{session}_{n}",
                tool_input={"file_path": path, "old_string": "print('hi')", "new_string": text},
                tool_response={"filePath": path, "structuredPatch": [
                    {"oldStart": 1, "oldLines": 1, "newStart": 1, "newLines": 1,
                     "lines": ["-print('hi')", f"+{text}"]}]})


def context_of(proc: subprocess.CompletedProcess) -> str:
    if not proc.stdout.strip():
        return ""
    return json.loads(proc.stdout)["hookSpecificOutput"]["additionalContext"]


def test_feature_branch_memory_hidden_on_main_until_merged(minilm_server, repos):
    a, b, spool = repos
    marker = "quetzalcoatl_rate_limit_bucket"
    git(a, "checkout", "-q", "-b", "feature/limits")
    hook(minilm_server, "PostToolUse", edit(a, "s-feat", 1, f"{marker} = TokenBucket(10)"), spool)
    prompt = f"how is the {marker} configured?"
    code = "TokenBucket(10)"  # in the feature edit only, never in a prompt
    on_feature = hook(minilm_server, "UserPromptSubmit",
                      base(a, "s-feat2", hook_event_name="UserPromptSubmit", prompt=prompt), spool)
    assert code in context_of(on_feature)

    git(a, "checkout", "-q", "main")
    on_main = hook(minilm_server, "UserPromptSubmit",
                   base(a, "s-main", hook_event_name="UserPromptSubmit", prompt=prompt), spool)
    assert code not in context_of(on_main), "an unmerged feature branch leaked into main"
    start_main = hook(minilm_server, "SessionStart",
                      base(a, "s-main2", hook_event_name="SessionStart", source="startup"), spool)
    assert code not in context_of(start_main)

    git(a, "checkout", "-q", "feature/limits")
    (a / "app.py").write_text(f"{marker} = TokenBucket(10)\n")
    git(a, "commit", "-qam", "limits")
    git(a, "checkout", "-q", "main")
    git(a, "merge", "-q", "--no-ff", "-m", "merge limits", "feature/limits")
    after = hook(minilm_server, "UserPromptSubmit",
                 base(a, "s-main3", hook_event_name="UserPromptSubmit", prompt=prompt), spool)
    assert code in context_of(after), "merged branch memory should be visible on main"

    # Another clone of the same remote is the same workspace: once it has the merge, it sees it.
    git(a, "push", "-q", "origin", "main", "feature/limits")
    git(b, "pull", "-q", "origin", "main")
    git(b, "fetch", "-q", "origin", "feature/limits:feature/limits")
    other = hook(minilm_server, "UserPromptSubmit",
                 base(b, "s-b", hook_event_name="UserPromptSubmit", prompt=prompt), spool)
    assert code in context_of(other)


def test_main_memory_visible_everywhere_and_budgets_hold(minilm_server, repos):
    a, _, spool = repos
    marker = "axolotl_migration_order"
    hook(minilm_server, "PostToolUse", edit(a, "s-m", 1, f"{marker} = ['users', 'orders']"), spool)
    git(a, "checkout", "-q", "-b", "feature/other")
    start = hook(minilm_server, "SessionStart",
                 base(a, "s-o", hook_event_name="SessionStart", source="startup"), spool)
    prompt = hook(minilm_server, "UserPromptSubmit",
                  base(a, "s-o", hook_event_name="UserPromptSubmit",
                       prompt=f"what is the {marker}?"), spool)
    assert marker in context_of(prompt)
    assert count_tokens(context_of(start)) <= 1500
    assert count_tokens(context_of(prompt)) <= 600
    out = json.loads(prompt.stdout)
    assert out["hookSpecificOutput"]["hookEventName"] == "UserPromptSubmit"

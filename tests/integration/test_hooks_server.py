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
from tests.hook_process import settle


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
    settle(spool)  # the hook's detached flusher has sent what it captured
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


# -- issue 12: what reaches the agent ------------------------------------------------------------

def bash_ok(repo: Path, session: str, n: int, command: str, stdout: str = "ok") -> dict:
    return base(repo, session, hook_event_name="PostToolUse", tool_name="Bash",
                tool_use_id=f"toolu_{session}_b{n}", tool_input={"command": command},
                tool_response={"stdout": stdout, "stderr": "", "interrupted": False,
                               "isImage": False})


def bash_failed(repo: Path, session: str, n: int, command: str, error: str) -> dict:
    return base(repo, session, hook_event_name="PostToolUseFailure", tool_name="Bash",
                tool_use_id=f"toolu_{session}_f{n}", tool_input={"command": command},
                error=error, is_interrupt=False)


def start(server, repo: Path, session: str, spool: Path) -> str:
    return context_of(hook(server, "SessionStart",
                           base(repo, session, hook_event_name="SessionStart", source="startup"),
                           spool))


def test_empty_store_injects_nothing(minilm_server, repos):
    a, _, spool = repos
    assert hook(minilm_server, "SessionStart", base(a, "s0", source="startup"), spool).stdout == ""
    out = hook(minilm_server, "UserPromptSubmit",
               base(a, "s0", prompt="how do we deploy the widget service?"), spool)
    assert out.stdout == ""


def test_failure_then_fix_is_one_lesson_the_next_session_sees(minilm_server, repos):
    a, _, spool = repos
    error = ("Command failed with exit code 1\n============ FAILURES ============\n"
             "E   zanzibar_quota_exceeded: tenant bucket empty\n"
             "FAILED tests/test_quota.py::test_refill - zanzibar_quota_exceeded")
    hook(minilm_server, "PostToolUseFailure",
         bash_failed(a, "s1", 1, "pytest tests/test_quota.py::test_refill -x", error), spool)
    hook(minilm_server, "PostToolUse", edit(a, "s1", 2, "refill_per_second = 10"), spool)
    hook(minilm_server, "PostToolUse", bash_ok(a, "s1", 3, "pytest tests/test_quota.py -q",
                                               "4 passed"), spool)
    hook(minilm_server, "SessionEnd", base(a, "s1", hook_event_name="SessionEnd", reason="exit"),
         spool)
    text = start(minilm_server, a, "s2", spool)
    assert "## Lessons: failed, then fixed" in text
    lesson = [ln for ln in text.splitlines() if "Lesson:" in ln]
    assert len(lesson) == 1 and "pytest tests/test_quota.py::test_refill" in lesson[0]
    assert "Failed: $ pytest" not in text  # the failure is told once, by its lesson
    ask = hook(minilm_server, "UserPromptSubmit",
               base(a, "s3", prompt="why did test_refill fail with zanzibar_quota_exceeded?"),
               spool)
    assert "refill_per_second = 10" in context_of(ask) or "app.py" in context_of(ask)


def test_decision_stated_in_a_prompt_reaches_later_sessions(minilm_server, repos):
    a, _, spool = repos
    hook(minilm_server, "UserPromptSubmit", base(
        a, "s1", prompt="The quokka limiter drops requests. We keep the quokka limiter "
                        "in-process, never add Redis for it. Can you check the refill?"), spool)
    text = start(minilm_server, a, "s2", spool)
    section = text.split("## Decisions and conventions", 1)[1].split("## ", 1)[0]
    assert "We keep the quokka limiter in-process, never add Redis for it." in section
    # an index line: the id first, expandable with get-memory
    line = next(ln for ln in section.splitlines() if "quokka" in ln)
    assert line.startswith("- `") and "decision" in line
    assert "get-memory" in text and "workspace `file://" in text


def test_no_same_session_echo_in_user_prompt_context(minilm_server, repos):
    a, _, spool = repos
    marker = "wombat_retry_schedule"
    hook(minilm_server, "PostToolUse", edit(a, "s1", 1, f"{marker} = [1, 2, 4]"), spool)
    same = hook(minilm_server, "UserPromptSubmit",
                base(a, "s1", prompt=f"what is the {marker} now?"), spool)
    assert marker not in context_of(same), "the session's own edit came back to it"
    other = hook(minilm_server, "UserPromptSubmit",
                 base(a, "s2", prompt=f"what is the {marker} now?"), spool)
    assert f"{marker} = [1, 2, 4]" in context_of(other)
    # the same question asked twice in s2 shows once in a third session
    hook(minilm_server, "UserPromptSubmit", base(a, "s2", prompt=f"what is the {marker} now"),
         spool)
    third = context_of(hook(minilm_server, "UserPromptSubmit",
                            base(a, "s3", prompt=f"tell me about {marker}"), spool))
    assert third.count(f"what is the {marker} now") <= 1


def test_merged_branch_outcome_visible_unmerged_work_never(minilm_server, repos):
    a, _, spool = repos
    git(a, "checkout", "-q", "-b", "feature/tapir")
    hook(minilm_server, "PostToolUse", edit(a, "s1", 1, "tapir_pool = Pool(8)"), spool)
    (a / "app.py").write_text("tapir_pool = Pool(8)\n")
    git(a, "commit", "-qam", "tapir pool")
    # the outcome: a summary captured at the tip, work committed
    hook(minilm_server, "SessionEnd", base(a, "s1", hook_event_name="SessionEnd", reason="exit",
                                           last_assistant_message="tapir outcome: pool of 8 "
                                           "workers, all tests pass."), spool)
    git(a, "checkout", "-q", "main")
    assert "tapir outcome" not in start(minilm_server, a, "s2", spool)  # not merged yet
    git(a, "merge", "-q", "--no-ff", "-m", "Merge branch 'feature/tapir'", "feature/tapir")
    text = start(minilm_server, a, "s3", spool)
    assert "tapir outcome" in text, "the merged branch's outcome must be visible"
    assert "on `feature/tapir`" in text  # another branch's item names its branch
    # uncommitted work on the merged branch, and a fresh branch's: never visible
    git(a, "checkout", "-q", "feature/tapir")
    hook(minilm_server, "PostToolUse", edit(a, "s4", 1, "tapir_uncommitted_after_merge = 1"),
         spool)
    hook(minilm_server, "SessionEnd", base(a, "s4", hook_event_name="SessionEnd", reason="exit",
                                           last_assistant_message="tapir after-merge wip"), spool)
    git(a, "checkout", "-q", "-b", "spike/tapir2", "main")
    hook(minilm_server, "PostToolUse", edit(a, "s5", 1, "tapir_fresh_branch_wip = 1"), spool)
    git(a, "checkout", "-q", "main")
    text = start(minilm_server, a, "s6", spool)
    ask = context_of(hook(minilm_server, "UserPromptSubmit",
                          base(a, "s6", prompt="what changed about tapir?"), spool))
    for leak in ("tapir_uncommitted_after_merge", "tapir after-merge wip",
                 "tapir_fresh_branch_wip"):
        assert leak not in text and leak not in ask, leak

"""Agent replay (issue 12): scripted multi-session scenarios in real git repositories, played
through the real `memoray hook` processes against a real server, the way Claude Code calls them.

Each scenario plants distinctive facts (decisions, failures and fixes, refactors, reverted work,
merges, rebases, squash merges, two clones), then asks, from a later session, through SessionStart
and UserPromptSubmit. Per probe it counts:
- needed-fact recall: the share of the facts a later session needs found in what was injected;
- leaks: facts of unmerged work found (must be 0);
- echoes: facts of the asking session itself found in its UserPromptSubmit context (must be 0);
- tokens injected (WordPiece, as build-context counts) and the share of injected items (the
  `- ` lines) that are relevant: that mention the scenario's facts or its topic words (the
  module or feature it is about), rather than noise or unmerged work.

Run: python -m benchmarks.bench_agent [--embedder minilm|hash] [--only NAME]
Writes benchmarks/results/agent.json and agent.png.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from benchmarks.common import environment, fmt_table, log, result_path, save_json

ROOT = Path(__file__).resolve().parents[1]


# -- driving hooks in a repository --------------------------------------------------------------

@dataclass
class Probe:
    scenario: str
    kind: str  # "start" or "prompt"
    need: list[str]
    forbid: list[str]
    echo: list[str]
    text: str
    tokens: int
    items: int
    relevant_items: int
    tags: tuple[str, ...]

    @property
    def found(self) -> list[str]:
        return [f for f in self.need if f in self.text]

    @property
    def leaks(self) -> list[str]:
        return [f for f in self.forbid if f in self.text]

    @property
    def echoes(self) -> list[str]:
        return [f for f in self.echo if f in self.text]


class Sim:
    """One scenario's world: a git remote, clones, a spool, the server URL, probes taken."""

    def __init__(self, name: str, tmp: Path, url: str, tags: tuple[str, ...] = (),
                 world: Sim | None = None, prefix: str = ""):
        """A new project in ``tmp``; or, with ``world``, the next scenario in that project."""
        self.name = name
        self.prefix = prefix
        if world is not None:
            self.__dict__.update({k: v for k, v in world.__dict__.items()
                                  if k in ("tmp", "url", "spool", "remote", "repo", "env", "n")})
            self.tags, self.probes, self.facts = tags, [], set()
            self.git_timeouts = 0
            self.git(self.repo, "checkout", "-q", "-f", "main")
            self.git(self.repo, "clean", "-fdq")
            return
        self.tmp = tmp
        self.url = url
        self.tags = tags
        self.spool = tmp / "spool"
        self.remote = tmp / "remote.git"
        self.probes: list[Probe] = []
        self.facts: set[str] = set()  # every fact the scenario planted (for relevance)
        self.n = 0
        self.git_timeouts = 0  # hooks whose git calls timed out (a loaded machine)
        self.env = {k: v for k, v in os.environ.items() if not k.startswith("MEMORAY_")}
        home = tmp / "home"
        home.mkdir(parents=True, exist_ok=True)
        self.env.update({"MEMORAY_URL": url, "MEMORAY_SPOOL_DIR": str(self.spool),
                         "MEMORAY_HOOK_TIMEOUT": "20", "HOME": str(home),
                         "GIT_CONFIG_NOSYSTEM": "1", "GIT_AUTHOR_NAME": "bench",
                         "GIT_AUTHOR_EMAIL": "b@example.com", "GIT_COMMITTER_NAME": "bench",
                         "GIT_COMMITTER_EMAIL": "b@example.com", "PYTHONPATH": str(ROOT)})
        self.git(tmp, "init", "-q", "--bare", "-b", "main", str(self.remote))
        self.repo = self.clone("a")
        self.write(self.repo, "README.md", f"# {name}\n")
        self.git(self.repo, "add", ".")
        self.git(self.repo, "commit", "-qm", "init")
        self.git(self.repo, "push", "-q", "origin", "main")

    # git
    def git(self, cwd: Path, *args: str) -> str:
        return subprocess.run(["git", *args], cwd=cwd, check=True, capture_output=True,
                              text=True, env=self.env).stdout.strip()

    def clone(self, name: str) -> Path:
        path = self.tmp / (self.prefix + name)
        self.git(self.tmp, "clone", "-q", str(self.remote), str(path))
        if not (path / ".git" / "refs" / "heads" / "main").exists():
            self.git(path, "checkout", "-q", "-B", "main")
        return path

    def write(self, repo: Path, rel: str, text: str) -> None:
        p = repo / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_text(text)

    def commit(self, repo: Path, rel: str, text: str, msg: str) -> None:
        self.write(repo, rel, text)
        self.git(repo, "add", rel)
        self.git(repo, "commit", "-qm", msg)

    # hooks
    def hook(self, event: str, repo: Path, session: str, **fields: Any) -> str:
        session = self.prefix + session
        payload = {"session_id": session, "transcript_path": str(self.tmp / f"{session}.jsonl"),
                   "cwd": str(repo), "permission_mode": "default", "hook_event_name": event,
                   **fields}
        proc = subprocess.run([sys.executable, "-m", "memoray.cli", "hook", event],
                              input=json.dumps(payload), capture_output=True, text=True,
                              env=self.env, cwd=repo, timeout=120)
        if proc.returncode != 0:
            raise RuntimeError(f"{event} exited {proc.returncode}: {proc.stderr}")
        # The hook's detached child sends what it captured; the next step may search for it.
        from tests.hook_process import settle

        settle(self.spool)
        if "git timed out" in proc.stderr:
            self.git_timeouts += 1
        if not proc.stdout.strip():
            return ""
        return json.loads(proc.stdout)["hookSpecificOutput"]["additionalContext"]

    def edit(self, repo: Path, session: str, rel: str, new: str, old: str = "") -> None:
        self.n += 1
        path = str(repo / rel)
        lines = ([f"-{x}" for x in old.splitlines()] + [f"+{x}" for x in new.splitlines()])
        self.hook("PostToolUse", repo, session, tool_name="Edit", tool_use_id=f"t{self.n}",
                  tool_input={"file_path": path, "old_string": old, "new_string": new},
                  tool_response={"filePath": path, "structuredPatch": [
                      {"oldStart": 1, "oldLines": 1, "newStart": 1, "newLines": 1,
                       "lines": lines}]})
        self.write(repo, rel, new + "\n")

    def bash(self, repo: Path, session: str, command: str, stdout: str = "") -> None:
        self.n += 1
        self.hook("PostToolUse", repo, session, tool_name="Bash", tool_use_id=f"t{self.n}",
                  tool_input={"command": command},
                  tool_response={"stdout": stdout, "stderr": "", "interrupted": False,
                                 "isImage": False})

    def fail(self, repo: Path, session: str, command: str, error: str) -> None:
        self.n += 1
        self.hook("PostToolUseFailure", repo, session, tool_name="Bash",
                  tool_use_id=f"t{self.n}", tool_input={"command": command},
                  error=f"Command failed with exit code 1\n{error}", is_interrupt=False)

    def say(self, repo: Path, session: str, prompt: str) -> str:
        return self.hook("UserPromptSubmit", repo, session, prompt=prompt)

    def stop(self, repo: Path, session: str, message: str) -> None:
        self.hook("Stop", repo, session, stop_hook_active=False, last_assistant_message=message)

    def end(self, repo: Path, session: str, message: str | None = None) -> None:
        fields = {"last_assistant_message": message} if message else {}
        self.hook("SessionEnd", repo, session, reason="prompt_input_exit", **fields)

    def plant(self, *facts: str) -> None:
        self.facts.update(facts)

    # probes
    def probe_start(self, repo: Path, session: str, need: list[str],
                    forbid: list[str] = ()) -> Probe:
        text = self.hook("SessionStart", repo, session, source="startup")
        return self._probe("start", text, need, list(forbid), [])

    def probe_prompt(self, repo: Path, session: str, prompt: str, need: list[str],
                     forbid: list[str] = (), echo: list[str] = ()) -> Probe:
        text = self.say(repo, session, prompt)
        return self._probe("prompt", text, need, list(forbid), list(echo))

    def _probe(self, kind: str, text: str, need: list[str], forbid: list[str],
               echo: list[str]) -> Probe:
        from memoray.tokens import count_tokens

        items = [ln for ln in text.splitlines() if ln.startswith("- ")]
        useful = (self.facts | set(need)) - set(forbid) - set(echo)
        relevant = sum(1 for ln in items if any(f in ln for f in useful))
        p = Probe(self.name, kind, need, forbid, echo, text, count_tokens(text) if text else 0,
                  len(items), relevant, self.tags)
        self.probes.append(p)
        return p


# -- the scenarios ------------------------------------------------------------------------------
# Each takes a Sim and plays sessions. Facts are distinctive words so a substring check is exact.

def s_decision_in_prompt(s: Sim) -> None:
    r = s.repo
    s.plant(*['login', 'Argon2'])  # topic words
    s.plant("argon2id")
    s.say(r, "s1", "Login is slow. We use argon2id for password hashing, never bcrypt. "
                   "Can you profile the login handler?")
    s.edit(r, "s1", "auth.py", "hasher = Argon2Hasher(time_cost=2)")
    s.end(r, "s1", "Profiled login; hashing dominates.")
    s.probe_start(r, "s2", ["argon2id"])
    s.probe_prompt(r, "s2", "which password hashing do we use for new accounts?", ["argon2id"])


def s_preference(s: Sim) -> None:
    r = s.repo
    s.plant(*['ruff'])  # topic words
    s.plant("ruff check")
    s.say(r, "s1", "Please always run ruff check before telling me you're done.")
    s.bash(r, "s1", "ruff check .", "All checks passed!")
    s.probe_start(r, "s2", ["ruff check"])


def s_convention(s: Sim) -> None:
    r = s.repo
    s.plant(*['orders', 'refunds'])  # topic words
    s.plant("validate_payload")
    s.say(r, "s1", "All HTTP handlers must call validate_payload before the service layer. "
                   "Add the orders endpoint.")
    s.edit(r, "s1", "orders.py", "def create(req):\n    validate_payload(req)")
    s.probe_start(r, "s2", ["validate_payload"])
    s.probe_prompt(r, "s2", "add a refunds endpoint to the HTTP handlers", ["validate_payload"])


def s_assistant_decision(s: Sim) -> None:
    r = s.repo
    s.plant(*['ingest', 'Queue(maxsize=512)'])  # topic words
    s.plant("bounded queue of 512")
    s.say(r, "s1", "The ingest worker runs out of memory under bursts, fix it.")
    s.edit(r, "s1", "ingest.py", "queue = Queue(maxsize=512)")
    s.stop(r, "s1", "Fixed. I went with a bounded queue of 512 because the producer can "
                    "outrun the writer during bursts.")
    s.probe_start(r, "s2", ["bounded queue of 512"])


def s_failure_fixed(s: Sim) -> None:
    r = s.repo
    s.plant(*['gannet'])  # topic words
    s.plant("test_gannet_refill", "gannet_refill_rate")
    s.say(r, "s1", "the gannet limiter test fails, fix it")
    s.fail(r, "s1", "pytest tests/test_gannet.py::test_gannet_refill -x",
           "E   AssertionError: expected 10 tokens, got 0\n"
           "FAILED tests/test_gannet.py::test_gannet_refill")
    s.edit(r, "s1", "gannet.py", "gannet_refill_rate = 10.0", "gannet_refill_rate = 0")
    s.bash(r, "s1", "pytest tests/test_gannet.py -q", "6 passed")
    s.end(r, "s1", "The refill rate was zero; set it to 10 per second.")
    s.probe_start(r, "s2", ["test_gannet_refill"])
    s.probe_prompt(r, "s2", "test_gannet_refill is failing again with 0 tokens, what fixed it "
                            "last time?", ["gannet_refill_rate"])


def s_failure_open(s: Sim) -> None:
    r = s.repo
    s.plant(*['ibis', 'native'])  # topic words
    s.plant("ibis_link_error")
    s.say(r, "s1", "build the native extension")
    s.fail(r, "s1", "make native", "ld: ibis_link_error: undefined symbol png_read_info")
    s.end(r, "s1", "The native build fails to link; libpng is missing on this machine.")
    s.probe_start(r, "s2", ["ibis_link_error"])


def s_refactor(s: Sim) -> None:
    r = s.repo
    s.plant(*['pelican'])  # topic words
    s.plant("pelican_core")
    s.say(r, "s1", "split the pelican module into smaller parts")
    s.edit(r, "s1", "pelican_core/router.py", "from pelican_core.routes import table")
    s.bash(r, "s1", "git mv pelican.py pelican_core/__init__.py")
    s.end(r, "s1", "Moved pelican.py into the pelican_core package (router, routes).")
    s.probe_prompt(r, "s2", "where does the pelican router live now?", ["pelican_core"])


def s_reverted(s: Sim) -> None:
    r = s.repo
    s.plant(*['kestrel'])  # topic words
    s.plant("kestrel_flag")
    s.edit(r, "s1", "flags.py", "kestrel_flag = True")
    s.commit(r, "flags.py", "kestrel_flag = True\n", "add kestrel_flag")
    s.bash(r, "s1", "git revert --no-edit HEAD",
           '[main 1a2b3c4] Revert "add kestrel_flag"\n 1 file changed')
    s.end(r, "s1", "Reverted kestrel_flag: it broke the nightly export.")
    s.probe_prompt(r, "s2", "can we turn on kestrel_flag?", ['Revert "add kestrel_flag"'])


def _feature(s: Sim, repo: Path, branch: str, session: str, fact: str, outcome: str) -> None:
    s.git(repo, "checkout", "-q", "-b", branch)
    s.edit(repo, session, f"{branch.replace('/', '_')}.py", f"{fact} = enabled()")
    s.commit(repo, f"{branch.replace('/', '_')}.py", f"{fact} = enabled()\n", f"add {fact}")
    s.end(repo, session, outcome)


def s_merge_no_ff(s: Sim) -> None:
    r = s.repo
    s.plant(*['osprey'])  # topic words
    s.plant("osprey_pool", "osprey outcome")
    _feature(s, r, "feature/osprey", "s1", "osprey_pool", "osprey outcome: pool of 8 workers.")
    s.git(r, "checkout", "-q", "main")
    s.probe_start(r, "s2", [], ["osprey_pool", "osprey outcome"])
    s.probe_prompt(r, "s2", "how big is the osprey pool?", [], ["osprey_pool", "osprey outcome"])
    s.git(r, "merge", "-q", "--no-ff", "-m", "Merge branch 'feature/osprey'", "feature/osprey")
    s.probe_start(r, "s3", ["osprey outcome"])
    s.probe_prompt(r, "s4", "how big is the osprey pool?", ["osprey_pool"])


def s_merge_ff(s: Sim) -> None:
    r = s.repo
    s.plant(*['heron'])  # topic words
    s.plant("heron_cache_ttl", "heron outcome")
    _feature(s, r, "feature/heron", "s1", "heron_cache_ttl", "heron outcome: TTL of 300 s.")
    s.git(r, "checkout", "-q", "main")
    s.git(r, "merge", "-q", "--ff-only", "feature/heron")
    s.probe_start(r, "s2", ["heron outcome"])
    s.probe_prompt(r, "s3", "what is the heron cache TTL?", ["heron_cache_ttl"])


def s_squash(s: Sim) -> None:
    r = s.repo
    s.plant(*['puffin'])  # topic words
    s.plant("puffin_retry", "puffin outcome")
    _feature(s, r, "feature/puffin", "s1", "puffin_retry", "puffin outcome: 3 retries.")
    s.git(r, "checkout", "-q", "main")
    s.commit(r, "other.txt", "x\n", "unrelated")
    s.git(r, "merge", "-q", "--squash", "feature/puffin")
    s.git(r, "commit", "-qm", "Puffin retries (#7)")
    s.probe_start(r, "s2", ["puffin outcome"])
    s.probe_prompt(r, "s3", "how does puffin retry?", ["puffin_retry"])


def s_rebase(s: Sim) -> None:
    r = s.repo
    s.plant(*['tern'])  # topic words
    s.plant("tern_batch_size", "tern outcome")
    _feature(s, r, "feature/tern", "s1", "tern_batch_size", "tern outcome: batches of 64.")
    s.git(r, "checkout", "-q", "main")
    s.commit(r, "main.txt", "m\n", "main moves on")
    s.git(r, "checkout", "-q", "feature/tern")
    s.git(r, "rebase", "-q", "main")
    s.git(r, "checkout", "-q", "main")
    s.git(r, "merge", "-q", "--ff-only", "feature/tern")
    s.probe_start(r, "s2", ["tern outcome"])
    s.probe_prompt(r, "s3", "what tern batch size did we pick?", ["tern_batch_size"])


def s_unmerged(s: Sim) -> None:
    r = s.repo
    s.plant(*['lemur'])  # topic words
    s.plant("main_fact_lemur")
    s.say(r, "s0", "We decided to keep main_fact_lemur as the public entry point.")
    _feature(s, r, "feature/lynx", "s1", "lynx_experiment", "lynx outcome: half done.")
    s.git(r, "checkout", "-q", "main")
    s.probe_start(r, "s2", ["main_fact_lemur"], ["lynx_experiment", "lynx outcome"])
    s.probe_prompt(r, "s2", "what is the state of the lynx experiment?", [],
                   ["lynx_experiment", "lynx outcome"])


def s_fresh_branch(s: Sim) -> None:
    r = s.repo
    s.plant(*['jay_public'])  # topic words
    s.plant("jay_public_fact")
    s.say(r, "s0", "We decided that jay_public_fact is the default exporter.")
    s.git(r, "checkout", "-q", "-b", "spike/jay")
    s.edit(r, "s1", "jay.py", "jay_uncommitted_spike = 1")
    s.end(r, "s1", "jay spike wip, nothing committed")
    s.git(r, "checkout", "-q", "main")
    s.probe_start(r, "s2", ["jay_public_fact"], ["jay_uncommitted_spike", "jay spike wip"])
    s.probe_prompt(r, "s2", "what did the jay spike change?", [],
                   ["jay_uncommitted_spike", "jay spike wip"])


def s_after_merge_uncommitted(s: Sim) -> None:
    r = s.repo
    s.plant(*['wren_router', 'wren outcome'])  # topic words
    s.plant("wren_router", "wren outcome")
    _feature(s, r, "feature/wren", "s1", "wren_router", "wren outcome: router merged.")
    s.git(r, "checkout", "-q", "main")
    s.git(r, "merge", "-q", "--no-ff", "-m", "Merge branch 'feature/wren'", "feature/wren")
    s.git(r, "checkout", "-q", "feature/wren")
    s.edit(r, "s2", "wren2.py", "wren_after_merge_wip = 1")
    s.end(r, "s2", "wren after-merge wip")
    s.git(r, "checkout", "-q", "main")
    s.probe_start(r, "s3", ["wren outcome"], ["wren_after_merge_wip", "wren after-merge wip"])
    s.probe_prompt(r, "s3", "what is new in the wren router?", ["wren_router"],
                   ["wren_after_merge_wip", "wren after-merge wip"])


def s_two_clones(s: Sim) -> None:
    a = s.repo
    s.plant(*['crane'])  # topic words
    s.plant("crane_endpoint")
    s.say(a, "s1", "Let's go with /v2/crane_endpoint for the public API, not /api/crane.")
    s.git(a, "push", "-q", "origin", "main")
    b = s.clone("b")
    s.probe_start(b, "s2", ["crane_endpoint"])


def s_two_clones_branch(s: Sim) -> None:
    a = s.repo
    s.plant(*['ibex'])  # topic words
    s.plant("ibex_index", "ibex outcome")
    _feature(s, a, "feature/ibex", "s1", "ibex_index", "ibex outcome: index on tenant_id.")
    s.git(a, "push", "-q", "origin", "feature/ibex")
    b = s.clone("b")
    s.probe_start(b, "s2", [], ["ibex_index", "ibex outcome"])  # not merged anywhere yet
    s.probe_prompt(b, "s2", "which ibex index did we add?", [], ["ibex_index", "ibex outcome"])
    s.git(a, "checkout", "-q", "main")
    s.git(a, "merge", "-q", "--no-ff", "-m", "Merge branch 'feature/ibex'", "feature/ibex")
    s.git(a, "push", "-q", "origin", "main")
    s.git(b, "pull", "-q", "origin", "main")
    s.probe_start(b, "s3", ["ibex outcome"])
    s.probe_prompt(b, "s4", "which ibex index did we add?", ["ibex_index"])


def s_echo(s: Sim) -> None:
    r = s.repo
    s.plant(*['wombat'])  # topic words
    s.plant("wombat_schedule")
    s.edit(r, "s1", "retry.py", "wombat_schedule = [1, 2, 4]")
    s.probe_prompt(r, "s1", "is the wombat_schedule exponential?", [], [], ["wombat_schedule"])
    s.probe_prompt(r, "s2", "is the wombat_schedule exponential?", ["wombat_schedule"])


def s_duplicate_prompts(s: Sim) -> None:
    r = s.repo
    s.plant(*['vole'])  # topic words
    s.plant("vole_timeout", "vole question")
    for i, q in enumerate(["vole question: how long is the vole_timeout?",
                           "vole question: how long is the vole_timeout",
                           "vole question: how long is the vole_timeout again?"]):
        s.say(r, f"s{i}", q)
    s.say(r, "s9", "We decided the vole_timeout stays at 30 seconds.")
    s.probe_prompt(r, "s10", "what is the vole_timeout?", ["vole_timeout"])


def s_noise_budget(s: Sim) -> None:
    r = s.repo
    s.plant(*['otter'])  # topic words
    s.plant("otter_shard_count")
    s.say(r, "s0", "We decided that otter_shard_count stays at 16 for every deployment.")
    for i in range(30):
        s.edit(r, f"n{i % 3}", f"noise/module_{i}.py", f"value_{i} = compute({i})")
    s.probe_start(r, "s9", ["otter_shard_count"])


def s_compact(s: Sim) -> None:
    r = s.repo
    s.plant(*['HERON_', 'configuration'])  # topic words
    s.plant("HERON_")
    s.hook("PostCompact", r, "s1", trigger="auto", compact_summary=(
        "The user asked to speed up configuration loading. All config values come from "
        "environment variables prefixed with HERON_. Loading is now lazy."))
    s.probe_start(r, "s2", ["HERON_"])


def s_branch_lesson_merged(s: Sim) -> None:
    r = s.repo
    s.plant(*['magpie'])  # topic words
    s.plant("test_magpie_parse", "magpie_parser")
    s.git(r, "checkout", "-q", "-b", "fix/magpie")
    s.fail(r, "s1", "pytest tests/test_magpie.py::test_magpie_parse",
           "E   ValueError: magpie date without zone\nFAILED tests/test_magpie.py::"
           "test_magpie_parse")
    s.edit(r, "s1", "magpie_parser.py", "magpie_parser = parse_with_zone")
    s.bash(r, "s1", "pytest tests/test_magpie.py", "3 passed")
    s.commit(r, "magpie_parser.py", "magpie_parser = parse_with_zone\n", "fix magpie")
    s.git(r, "checkout", "-q", "main")
    s.git(r, "merge", "-q", "--no-ff", "-m", "Merge branch 'fix/magpie'", "fix/magpie")
    s.probe_start(r, "s2", ["test_magpie_parse"])


def s_empty(s: Sim) -> None:
    s.probe_start(s.repo, "s1", [])
    s.probe_prompt(s.repo, "s1", "how do we deploy the service to staging?", [])


SCENARIOS: list[tuple[str, Callable[[Sim], None], tuple[str, ...]]] = [
    ("decision in a prompt", s_decision_in_prompt, ("decision",)),
    ("preference", s_preference, ("decision",)),
    ("convention", s_convention, ("decision",)),
    ("assistant's decision", s_assistant_decision, ("decision",)),
    ("failure, then fix", s_failure_fixed, ("failure",)),
    ("open failure", s_failure_open, ("failure",)),
    ("refactor", s_refactor, ("refactor",)),
    ("reverted work", s_reverted, ("revert",)),
    ("merge --no-ff", s_merge_no_ff, ("merge",)),
    ("fast-forward merge", s_merge_ff, ("merge",)),
    ("squash merge", s_squash, ("merge",)),
    ("rebase, then merge", s_rebase, ("merge",)),
    ("unmerged branch", s_unmerged, ("leak",)),
    ("fresh branch, uncommitted", s_fresh_branch, ("leak",)),
    ("new work after a merge", s_after_merge_uncommitted, ("merge", "leak")),
    ("two clones", s_two_clones, ("clones",)),
    ("two clones, merged branch", s_two_clones_branch, ("clones", "merge")),
    ("same-session echo", s_echo, ("echo",)),
    ("near-identical prompts", s_duplicate_prompts, ("dedup",)),
    ("decision among noise", s_noise_budget, ("budget",)),
    ("compaction summary", s_compact, ("decision",)),
    ("lesson on a merged branch", s_branch_lesson_merged, ("failure", "merge")),
    ("empty store", s_empty, ("empty",)),
]


# -- running and reporting ----------------------------------------------------------------------

def _ratio(a: int, b: int) -> float | None:
    return round(a / b, 4) if b else None


def summarize(probes: list[Probe], kind: str | None = None,
              tag: str | None = None) -> dict[str, Any]:
    ps = [p for p in probes if (kind is None or p.kind == kind) and (tag is None or tag in p.tags)]
    need = sum(len(p.need) for p in ps)
    items = sum(p.items for p in ps)
    return {"probes": len(ps), "needed": need, "found": sum(len(p.found) for p in ps),
            "recall": _ratio(sum(len(p.found) for p in ps), need),
            "leaks": sum(len(p.leaks) for p in ps), "echoes": sum(len(p.echoes) for p in ps),
            "tokens": sum(p.tokens for p in ps),
            "tokensPerProbe": _ratio(sum(p.tokens for p in ps), len(ps)),
            "items": items, "relevantShare": _ratio(sum(p.relevant_items for p in ps), items)}


def run(embedder: str = "minilm", only: str | None = None, show: bool = False,
        shared: bool = False) -> dict[str, Any]:
    """Every scenario in its own repository (workspace), or with ``shared`` all of them one
    after the other in one repository, where each probe competes with every other scenario's
    memories for the budget (the empty-store scenario still gets its own)."""
    from tests.server_process import ServerProcess

    chosen = [sc for sc in SCENARIOS if only is None or only in sc[0]]
    t0 = time.time()
    with tempfile.TemporaryDirectory(prefix="memoray-bench-agent-") as tmp_s:
        tmp = Path(tmp_s)
        server = ServerProcess(tmp / "data", embedder=embedder, env={
            "MEMORAY_RATE_LIMIT_ENABLED": "false"}).start()
        probes: list[Probe] = []
        duplicates: list[int] = []
        git_timeouts: dict[str, int] = {}
        try:
            world = Sim("shared", tmp / "shared", server.url) if shared else None
            for i, (name, play, tags) in enumerate(chosen):
                log(f"[{i + 1}/{len(chosen)}] {name}")
                if world is not None and play is not s_empty:
                    sim = Sim(name, tmp, server.url, tags, world=world, prefix=f"x{i}-")
                else:
                    sim = Sim(name, tmp / f"sc{i}", server.url, tags)
                play(sim)
                probes.extend(sim.probes)
                git_timeouts[name] = sim.git_timeouts
                for p in sim.probes if show else []:
                    print(f"--- {name} / {p.kind}: need {p.need}, forbid {p.forbid}\n{p.text}\n")
                if play is s_duplicate_prompts:
                    duplicates.append(sim.probes[-1].text.count("vole question"))
        finally:
            server.stop()
    scenarios = []
    for name, _, tags in chosen:
        mine = [p for p in probes if p.scenario == name]
        scenarios.append({"scenario": name, "tags": list(tags),
                          "start": summarize(mine, "start"), "prompt": summarize(mine, "prompt"),
                          "missing": sorted({f for p in mine for f in p.need if f not in p.found}),
                          "leaked": sorted({f for p in mine for f in p.leaks}),
                          "echoed": sorted({f for p in mine for f in p.echoes})})
    empty = [p for p in probes if "empty" in p.tags]
    out = {
        "embedder": embedder, "sharedRepository": shared, "scenarios": len(chosen),
        "seconds": round(time.time() - t0, 1),
        "overall": {"start": summarize(probes, "start"), "prompt": summarize(probes, "prompt"),
                    "all": summarize(probes)},
        "startAfterMerge": summarize(probes, "start", "merge"),
        "emptyStoreTokens": sum(p.tokens for p in empty),
        "nearIdenticalPromptCopies": duplicates,
        "hooksWithGitTimeouts": {k: v for k, v in git_timeouts.items() if v},
        "gitTimeoutS": float(os.environ.get("MEMORAY_GIT_TIMEOUT") or 0.3),
        "perScenario": scenarios, "environment": environment(),
        "classification": classification(),
    }
    return out


def classification() -> dict[str, Any]:
    """Precision and recall of the LLM-free statement classifier (memoray.classify) on the
    labelled sentences: the dev part the rules were written against, and the held-out part."""
    from memoray.classify_eval import evaluate, load, split

    rows = load()
    return {"dev": evaluate(split(rows, "dev")), "heldout": evaluate(split(rows, "heldout"))}


def plot(out: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = [s["scenario"] for s in out["perScenario"]]
    start = [s["start"]["recall"] for s in out["perScenario"]]
    prompt = [s["prompt"]["recall"] for s in out["perScenario"]]
    tokens = [s["start"]["tokensPerProbe"] or 0 for s in out["perScenario"]]
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(14, 7), sharey=True)
    y = range(len(names))
    ax1.barh([i - 0.2 for i in y], [v if v is not None else 0 for v in start], 0.4,
             label="SessionStart")
    ax1.barh([i + 0.2 for i in y], [v if v is not None else 0 for v in prompt], 0.4,
             label="UserPromptSubmit")
    ax1.set_yticks(list(y), names)
    ax1.invert_yaxis()
    ax1.set_xlim(0, 1.05)
    ax1.set_xlabel("needed-fact recall (no bar: nothing needed there)")
    ax1.legend(loc="lower right")
    ax2.barh(list(y), tokens, color="gray")
    ax2.set_xlabel("tokens injected per SessionStart")
    o = out["overall"]
    fig.suptitle(f"Agent replay ({out['embedder']}): recall start {o['start']['recall']}, "
                 f"prompt {o['prompt']['recall']}, leaks {o['all']['leaks']}, "
                 f"echoes {o['all']['echoes']}")
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--embedder", default="minilm", choices=["minilm", "hash"])
    ap.add_argument("--only", default=None, help="run the scenarios whose name contains this")
    ap.add_argument("--show", action="store_true", help="print every injected context")
    ap.add_argument("--shared", action="store_true",
                    help="play every scenario in one repository (memories compete)")
    a = ap.parse_args()
    out = run(a.embedder, a.only, a.show, a.shared)
    rows = []
    for s in out["perScenario"]:
        rows.append([s["scenario"], s["start"]["recall"], s["prompt"]["recall"],
                     s["start"]["leaks"] + s["prompt"]["leaks"], s["prompt"]["echoes"],
                     s["start"]["tokensPerProbe"], s["prompt"]["tokensPerProbe"],
                     s["start"]["relevantShare"], ", ".join(s["missing"])])
    print(fmt_table(["scenario", "recall start", "recall prompt", "leaks", "echoes",
                     "tok start", "tok prompt", "relevant", "missing"], rows))
    o = out["overall"]
    print(f"overall: recall at SessionStart {o['start']['recall']} "
          f"({o['start']['found']}/{o['start']['needed']}), at UserPromptSubmit "
          f"{o['prompt']['recall']} ({o['prompt']['found']}/{o['prompt']['needed']}); "
          f"after a merge at SessionStart {out['startAfterMerge']['recall']}; "
          f"leaks {o['all']['leaks']}, echoes {o['all']['echoes']}; "
          f"tokens per probe: start {o['start']['tokensPerProbe']}, prompt "
          f"{o['prompt']['tokensPerProbe']}; relevant share of injected items "
          f"{o['all']['relevantShare']}; empty store injected {out['emptyStoreTokens']} tokens; "
          f"near-identical prompt copies shown {out['nearIdenticalPromptCopies']}")
    print(f"hooks whose git calls timed out (limit {out['gitTimeoutS']} s): "
          f"{out['hooksWithGitTimeouts'] or 'none'}")
    c = out["classification"]["heldout"]
    print(f"classification (held-out, {c['sentences']} sentences): precision {c['precision']}, "
          f"recall {c['recall']}; with the right kind: precision {c['strictPrecision']}, "
          f"recall {c['strictRecall']}")
    name = ("agent_shared.json" if a.shared else "agent.json") if a.only is None else (
        "agent_partial.json")
    path = save_json(name, out)
    png = result_path(Path(name).with_suffix(".png").name)
    plot(out, png)
    load = out["environment"]["loadavg_at_save"]
    print(f"saved {path} and {png}; {out['seconds']} s; load {load}")


if __name__ == "__main__":
    main()

"""Wall time of `memoray hook` processes, the latency Claude Code waits on for each hook.

Measures process start to exit for SessionStart (a build-context call) and PostToolUse (one
capture) with real-shaped payloads, against a running server and against a closed port (the
server down). Each run gets its own spool directory and a throwaway git repository as cwd, so
nothing touches the user's spool and the stored memories land in a throwaway workspace.

    python -m benchmarks.bench_hooks --url http://127.0.0.1:8000 --samples 50
"""

from __future__ import annotations

import argparse
import fcntl
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

EVENTS = ("SessionStart", "PostToolUse")


BENCH_REMOTE = "https://github.com/memoray/bench-project.git"
BENCH_WORKSPACE = "github.com/memoray/bench-project"  # what gitfacts makes of BENCH_REMOTE


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _repo(root: Path) -> Path:
    repo = root / "project"
    (repo / "src").mkdir(parents=True)
    (repo / "src" / "app.py").write_text("def handler(event):\n    return event\n")
    env = {**os.environ, "GIT_AUTHOR_NAME": "bench", "GIT_AUTHOR_EMAIL": "bench@example.com",
           "GIT_COMMITTER_NAME": "bench", "GIT_COMMITTER_EMAIL": "bench@example.com"}
    for args in (["init", "-q", "-b", "main"], ["remote", "add", "origin", BENCH_REMOTE],
                 ["add", "."], ["commit", "-qm", "init"], ["checkout", "-qb", "feature/bench"]):
        try:
            subprocess.run(["git", *args], cwd=repo, env=env, check=True, capture_output=True,
                           timeout=10)
        except (OSError, subprocess.SubprocessError):
            break  # without git the hook still runs (workspace local:<dir>)
    return repo


def _payload(event: str, repo: Path, n: int) -> dict[str, Any]:
    common = {"session_id": "bench-session", "transcript_path": str(repo / "transcript.jsonl"),
              "cwd": str(repo), "permission_mode": "default", "hook_event_name": event}
    if event == "SessionStart":
        return {**common, "source": "startup"}
    path = str(repo / "src" / "app.py")
    return {**common, "tool_name": "Edit", "tool_use_id": f"toolu_bench_{n}_{time.time_ns()}",
            "tool_input": {"file_path": path, "old_string": "    return event",
                           "new_string": f"    log(event)\n    return event  # {n}"},
            "tool_response": {"filePath": path, "oldString": "    return event",
                              "newString": f"    log(event)\n    return event  # {n}",
                              "structuredPatch": [{"oldStart": 2, "oldLines": 1, "newStart": 2,
                                                   "newLines": 2, "lines": [
                                                       "-    return event", "+    log(event)",
                                                       f"+    return event  # {n}"]}],
                              "userModified": False, "replaceAll": False}}


def _percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q * (len(ordered) - 1))))]


def _stats(seconds: list[float]) -> dict[str, float | int]:
    ms = [s * 1000 for s in seconds]
    return {"n": len(ms), "p50_ms": round(_percentile(ms, 0.50), 2),
            "p95_ms": round(_percentile(ms, 0.95), 2), "max_ms": round(max(ms), 2),
            "mean_ms": round(sum(ms) / len(ms), 2)}


# A hook's wall time split by its trace (memoray/hooks/trace.py), in the order they happen:
# the interpreter's start, memoray's imports, git, the server calls, the rest of the
# handler, the output, and the exit until the benchmark sees the process gone.
PHASES = ("start", "imports", "git", "server", "handler_other", "output", "exit")


def _phases(spawned: float, exited: float, line: dict[str, Any]) -> dict[str, float]:
    m, spent = line["marks"], line["spent"]
    handler = m.get("handled", m["end"]) - m["runner"]
    return {"start": m["entry"] - spawned, "imports": m["runner"] - m["entry"],
            "git": spent.get("git", 0.0), "server": spent.get("server", 0.0),
            "handler_other": handler - spent.get("git", 0.0) - spent.get("server", 0.0),
            "output": m["end"] - m.get("handled", m["end"]), "exit": exited - m["end"]}


def _measure(cmd: list[str], inputs: list[str], env: dict[str, str], cwd: Path,
             delivered: list[float] | None = None,
             phases: dict[str, list[float]] | None = None) -> list[float]:
    """Each hook's wall time (what the agent waits for). A hook that captured leaves a
    detached child sending its items (memoray/hooks/runner.py flush_detached); the next hook
    starts once it is done, as an agent's next tool call comes seconds later, and with
    `delivered` the time from the hook's start until its items were sent is kept there.
    With `phases`, each hook writes its trace and the split of its time is kept there."""
    times = []
    spool = env.get("MEMORAY_SPOOL_DIR")
    lock = Path(spool) / "flush.lock" if spool else None
    # beside the spool, not in it: a hook that spools nothing may never create the spool
    trace = Path(spool).parent / f"{Path(spool).name}.trace" if spool else Path(
        tempfile.gettempdir()) / "memoray-bench-hooks.trace"
    if phases is not None:
        env = {**env, "MEMORAY_HOOK_TRACE": str(trace)}
    for data in inputs:
        trace.unlink(missing_ok=True)
        spawned = time.time()
        start = time.perf_counter()
        subprocess.run(cmd, check=False, input=data, capture_output=True, text=True, env=env,
                       cwd=cwd, timeout=60)
        times.append(time.perf_counter() - start)
        exited = time.time()
        if phases is not None and trace.exists():
            lines = trace.read_text().splitlines()
            if lines:
                for name, sec in _phases(spawned, exited, json.loads(lines[0])).items():
                    phases.setdefault(name, []).append(sec)
        if lock is not None and lock.exists():
            fd = os.open(lock, os.O_RDWR)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX)  # the child holds it until it has sent
            finally:
                os.close(fd)
            if delivered is not None:
                delivered.append(time.perf_counter() - start)
    return times


def run(url: str, samples: int = 50,
        on_phase: Callable[[str, str, str], None] | None = None) -> dict[str, Any]:
    """p50/p95 wall time of hook processes with the server at `url` up, and with it down.
    `on_phase("before"|"after", state, hook)` is called around each timed series."""
    samples = max(1, samples)
    base_env = {k: v for k, v in os.environ.items() if not k.startswith("MEMORAY_")}
    if os.environ.get("MEMORAY_TOKEN"):
        base_env["MEMORAY_TOKEN"] = os.environ["MEMORAY_TOKEN"]
    results: dict[str, Any] = {"url": url, "samples": samples}
    # An installed memoray has its bytecode compiled (pip does it at install); a checkout run
    # with PYTHONDONTWRITEBYTECODE=1 would recompile the hook's modules in every process (about
    # 22 ms here). Compile them once, as an install would.
    import compileall

    import memoray

    results["bytecode_compiled"] = bool(compileall.compile_dir(
        os.path.dirname(memoray.__file__), quiet=1))
    with tempfile.TemporaryDirectory(prefix="memoray-bench-hooks-") as tmp:
        root = Path(tmp)
        repo = _repo(root)
        baseline = _measure([sys.executable, "-c", "pass"], [""] * min(samples, 20), base_env,
                            repo)
        results["python_startup"] = _stats(baseline)
        down_url = f"http://127.0.0.1:{_free_port()}"
        for label, target in (("up", url), ("down", down_url)):
            env = {**base_env, "MEMORAY_URL": target,
                   "MEMORAY_SPOOL_DIR": str(root / f"spool-{label}")}
            results[label] = {}
            for event in EVENTS:
                inputs = [json.dumps(_payload(event, repo, n)) for n in range(samples)]
                for name, cmd in hook_commands(event):
                    sent: list[float] = []
                    split: dict[str, list[float]] = {}
                    if on_phase is not None:
                        on_phase("before", label, name)
                    results[label][name] = _stats(_measure(cmd, inputs, env, repo, sent, split))
                    if on_phase is not None:
                        on_phase("after", label, name)
                    if split:  # per phase: p50 and mean ms (their p50s need not add up)
                        results[label][name]["phases"] = {
                            k: {"p50_ms": round(_percentile(v, 0.5) * 1000, 2),
                                "mean_ms": round(sum(v) / len(v) * 1000, 2)}
                            for k, v in ((k, split[k]) for k in PHASES if k in split)}
                    if label == "up" and name == "PostToolUse" and sent:
                        # a capture is searchable once sent: hook start to the server's answer
                        results[label]["PostToolUse sent"] = _stats(sent)
    return results


def hook_commands(event: str) -> list[tuple[str, list[str]]]:
    """The commands `memoray hooks install` writes (memoray/hooks/install.py hook_command): the
    `memoray` console script where it is installed beside this interpreter (on PATH, as pip
    and pipx put it), timed under the event's name; and `python -m memoray.entry`, the one
    written when `memoray` is not on PATH (it also imports runpy), as "<event> (-m)"."""
    module = [sys.executable, "-m", "memoray.entry", "hook", event]
    script = os.path.join(os.path.dirname(sys.executable), "memoray")
    if not os.access(script, os.X_OK):
        return [(event, module)]
    return [(event, [script, "hook", event]), (f"{event} (-m)", module)]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--url", default=os.environ.get("MEMORAY_URL", "http://127.0.0.1:8000"))
    parser.add_argument("--samples", type=int, default=50)
    args = parser.parse_args(argv)
    print(json.dumps(run(args.url, args.samples), indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())

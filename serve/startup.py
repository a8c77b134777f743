"""What `memoray serve` says and picks while it starts: free ports for Ray's dashboard and its
agent (so a second server on the machine needs no extra flags), Ray's own log lines kept quiet,
and one line per start-up step (Ray, each shard with its records, the model, ready)."""

from __future__ import annotations

import json
import logging
import socket
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

RAY_DASHBOARD_PORT = 8265
RAY_AGENT_PORT = 52365


def port_free(port: int, host: str = "127.0.0.1") -> bool:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family) as s:
        try:
            s.bind((host, port))
        except OSError:
            return False
    return True


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def check_port(host: str, port: int) -> None:
    """The HTTP port must be free before Ray starts (Serve would fail later, less clearly)."""
    from memoray.errors import ErrorCode, MemorayError

    bind_host = "0.0.0.0" if host in ("", "0.0.0.0") else host.strip("[]")
    if port and not port_free(port, bind_host):
        raise MemorayError(ErrorCode.UNAVAILABLE,
                           f"port {port} is in use on {host} (another memoray, or another "
                           "program): pick a free one with --port")


def choose_port(wanted: int | None, default: int) -> int:
    """`wanted` when given (the user asked for it: a clash is then an error Ray reports), else
    Ray's default port if it is free, else any free port."""
    if wanted:
        return wanted
    return default if port_free(default) and port_free(default, "0.0.0.0") else free_port()


class Steps:
    """Numbered start-up lines on stdout, timed from the first."""

    def __init__(self, out: Any = None):
        self.out = out or sys.stdout
        self.t0 = time.time()

    def say(self, text: str) -> None:
        print(f"memoray: {text} [{time.time() - self.t0:.1f}s]", file=self.out, flush=True)


def quiet_ray_logs() -> None:
    """Ray and Serve log at INFO to the driver's stderr; a user wants the steps instead."""
    for name in ("ray", "ray.serve", "ray.data", "ray.dashboard", "filelock"):
        logging.getLogger(name).setLevel(logging.WARNING)
    # Ray 2.60 announces its (local, automatic) token auth at WARNING on every start.
    logging.getLogger("ray._private.authentication").setLevel(logging.ERROR)


def wait_for_actors(shards: list, embedders: list, others: list, say: Callable[[str], None],
                    ray: Any, timeout: float = 600) -> None:
    """Wait for every actor's health (Ray actor handles), reporting each shard as it finishes
    loading (with its records) and each embedding worker once its model is loaded."""
    pending: dict[Any, tuple[str, int]] = {}
    for i, s in enumerate(shards):
        pending[s.health.remote()] = ("shard", i)
    for i, e in enumerate(embedders):
        pending[e.health.remote()] = ("embedder", i)
    for a in others:
        pending[a.health.remote()] = ("other", 0)
    loaded = 0
    deadline = time.time() + timeout
    while pending:
        ready, _ = ray.wait(list(pending), num_returns=1,
                            timeout=max(0.1, deadline - time.time()))
        if not ready:
            raise TimeoutError(f"start-up took longer than {timeout:.0f}s")
        ref = ready[0]
        kind, i = pending.pop(ref)
        health = ray.get(ref)
        if kind == "shard":
            loaded += 1
            records = health.get("records", "?") if isinstance(health, dict) else "?"
            say(f"loaded shard {loaded}/{len(shards)} ({records} records)")
        elif kind == "embedder":
            model = health.get("embedder", "?") if isinstance(health, dict) else "?"
            say(f"loaded the {model} embedding model (worker {i + 1}/{len(embedders)})")


def write_run_file(path: Path, **fields: Any) -> None:
    """DATA_DIR/run.json: how jobs and `make backup` / `make reindex` find this server."""
    path.write_text(json.dumps(fields))


def dashboard_url(data_dir: str) -> str:
    """The running server's dashboard (job API) URL, from its run.json. Used by the Makefile:
    `python -m memoray.serve.startup DATA_DIR`."""
    run = Path(data_dir).expanduser() / "run.json"
    try:
        info = json.loads(run.read_text())
    except (OSError, ValueError):
        raise SystemExit(f"no running memoray server recorded in {run}: start one with "
                         "`make run` (or pass the server's --data-dir as DATA_DIR=...)") from None
    url = info.get("dashboard_url")
    if not url:
        raise SystemExit(f"the server recorded in {run} runs without Ray's dashboard (start it "
                         "with MEMORAY_DASHBOARD=true) or predates dashboard discovery")
    return url


if __name__ == "__main__":
    print(dashboard_url(sys.argv[1] if len(sys.argv) > 1 else "~/.memoray"))

"""Hook wall time as Claude Code experiences it (process start to exit), against a real server
holding N memories, and with the server down (issue 4). Goal: p95 < 150 ms up, < 1 s down.

Run: python -m benchmarks.bench_hooks_server [--n 10000] [--samples 50] [--embedder minilm]
"""

from __future__ import annotations

import argparse
import asyncio
import tempfile
from pathlib import Path

from benchmarks import bench_hooks, stages
from benchmarks.common import Progress, fmt_table, log, save_json
from benchmarks.corpus import corpus

BATCH = 200


async def _fill(url: str, n: int, workspace: str) -> None:
    from tests.server_process import mcp_client

    texts = corpus(n, seed=5)
    async with mcp_client(url) as c:
        await stages.wait_query_model(c)
        prog = Progress("filling the server", n, "memories")
        for i in range(0, n, BATCH):
            await c.call("capture-memories", items=[
                {"content": t["content"], "eventType": t["eventType"], "workspaceId": workspace,
                 "gitBranch": "main"} for t in texts[i:i + BATCH]])
            prog.update(min(BATCH, n - i))
        prog.close()
        # time the hooks on a settled server, not beside the shards' insert threads
        await stages.wait_indexed(c)


class _ServerSplit:
    """The server's stage breakdown of one timed hook series (SessionStart with the server
    up: its build-context call, three searches), from snapshots taken around it."""

    def __init__(self, base_url: str, mcp_url: str, samples: int):
        self.base_url, self.mcp_url, self.samples = base_url, mcp_url, samples
        self.before: dict | None = None
        self.rows: dict[str, dict] = {}

    async def _snapshot(self) -> dict:
        from tests.server_process import mcp_client

        async with mcp_client(self.mcp_url) as c:
            return await stages.snapshot(c, self.base_url)

    def __call__(self, when: str, state: str, hook: str) -> None:
        if state != "up" or hook != "SessionStart":
            return
        snap = asyncio.run(self._snapshot())
        if when == "before":
            self.before = snap
        elif self.before is not None:
            rows = stages.breakdown(self.before, snap, "retrieve", self.samples,
                                    tool="build-context")
            rows.pop("mcp layer (derived)", None)  # per search there, per hook here
            self.rows = rows


def run(n: int = 10000, samples: int = 50, embedder: str = "minilm") -> dict:
    from tests.server_process import ServerProcess

    with tempfile.TemporaryDirectory() as tmp:
        server = ServerProcess(Path(tmp) / "data", embedder=embedder, env={
            # the benchmark's own hooks must not be rate limited
            "MEMORAY_RATE_LIMIT_ENABLED": "false"}).start()
        try:
            # the hooks run in a repo whose origin makes this their workspace
            asyncio.run(_fill(server.mcp_url, n, bench_hooks.BENCH_WORKSPACE))
            log("timing hook processes ...")
            split = _ServerSplit(server.url, server.mcp_url, samples)
            res = bench_hooks.run(server.url, samples=samples, on_phase=split)
            res["session_start_server"] = split.rows
        finally:
            server.stop()
    out = {"memories": n, "embedder": embedder, "samples": samples, **res}
    path = save_json("hooks.json", out)
    rows = []
    for state in ("up", "down"):
        for event, st in res.get(state, {}).items():
            rows.append([f"{event} (server {state})", st["p50_ms"], st["p95_ms"], st["max_ms"]])
    print(fmt_table(["hook", "p50 ms", "p95 ms", "max ms"], rows))
    names = bench_hooks.PHASES
    split = [[f"{event} (server {state})"] + [st["phases"][k]["mean_ms"] if k in st["phases"]
                                               else "" for k in names]
             for state in ("up", "down") for event, st in res.get(state, {}).items()
             if st.get("phases")]
    if split:
        print("where each hook's time goes, mean ms (memoray/hooks/trace.py):")
        print(fmt_table(["hook", *names], split))
    if res.get("session_start_server"):
        print("SessionStart's build-context in the server, per hook (memoray_stage_seconds, "
              "path retrieve): three searches, planned and embedded at once and sent in one "
              "call per shard, so their stages overlap and may sum past the tool's time:")
        print(stages.table(res["session_start_server"]))
    print(f"python startup alone: {res.get('python_startup')}")
    print(f"saved {path}")
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=10000)
    ap.add_argument("--samples", type=int, default=50)
    ap.add_argument("--embedder", default="minilm", choices=["minilm", "hash"])
    a = ap.parse_args()
    run(a.n, a.samples, a.embedder)


if __name__ == "__main__":
    main()

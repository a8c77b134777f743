"""Reindex rate with 1 and 2 embedding workers, and retrieve p95 during each against normal.

For each worker count: a real server (MiniLM by default), N seeded memories, a stream of
retrieves through the real MCP client, first alone (normal), then while the reindex job runs
(`ray job submit`), paced (the default adaptive throttle) and, for comparison, unpaced
(--no-adaptive). Saves benchmarks/results/reindex.json and reindex.png with the machine's load.

    python -m benchmarks.bench_reindex [--records 1500] [--seconds 20] [--embedder minilm]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from benchmarks.common import fmt_table, latency_summary, log, result_path, save_json
from tests.server_process import ROOT, ServerProcess, free_port, mcp_client


async def seed(url: str, n: int) -> None:
    async with mcp_client(url) as c:
        for start in range(0, n, 100):
            await c.call("capture-memories", items=[
                {"content": f"memory {i}: service {i % 41} deploys through queue {i % 13} "
                            f"after the {['canary', 'schema', 'cache'][i % 3]} check",
                 "workspaceId": "bench"} for i in range(start, min(n, start + 100))])


async def retrieve_stream(url: str, stop: asyncio.Event, out: list[float]) -> None:
    async with mcp_client(url) as c:
        i = 0
        while not stop.is_set():
            i += 1
            t0 = time.perf_counter()
            await c.call("retrieve-memories", query=f"which queue does service {i % 41} use",
                         limit=5)
            out.append(time.perf_counter() - t0)
            await asyncio.sleep(0.05)


async def retrieves_for(url: str, seconds: float) -> list[float]:
    stop, out = asyncio.Event(), []
    task = asyncio.create_task(retrieve_stream(url, stop, out))
    await asyncio.sleep(seconds)
    stop.set()
    await task
    return out


# Transient on a machine shared with other Ray clusters under heavy load: the job agent not up
# yet, a job landing on another cluster's agent (it refuses to run there), the job's driver
# timing out on the GCS.
RETRY_ON = ("No available agent", "this job runs on the Ray cluster at",
            "Failed to connect to Ray cluster")


def submit(dashboard: str, *args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "RAY_AUTH_MODE": "token",
           "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}"}
    deadline = time.time() + 120
    while True:
        res = subprocess.run([str(Path(sys.executable).parent / "ray"), "job", "submit",
                              "--address", dashboard, "--working-dir", str(ROOT), "--",
                              "python", "-m", *args],
                             capture_output=True, text=True, env=env, timeout=3600, cwd=ROOT)
        out = res.stdout + res.stderr
        if (not any(m in out for m in RETRY_ON) or res.returncode == 0
                or time.time() > deadline):
            return res
        time.sleep(2)


async def reindex_under_load(url: str, dashboard: str, data_dir: Path,
                             extra: list[str]) -> tuple[dict, list[float]]:
    stop, lat = asyncio.Event(), []
    task = asyncio.create_task(retrieve_stream(url, stop, lat))
    res = await asyncio.to_thread(submit, dashboard, "memoray.cluster.jobs.reindex",
                                  "--data-dir", str(data_dir), "--quiet", *extra)
    stop.set()
    await task
    if res.returncode != 0:
        raise RuntimeError(res.stdout[-3000:] + res.stderr[-3000:])
    report = json.loads([x for x in res.stdout.splitlines() if x.startswith("{")][-1])
    return report, lat


def plot(res: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = res["runs"]
    labels = [f"{r['workers']} worker{'s' if r['workers'] > 1 else ''}\n{r['mode']}"
              for r in rows]
    fig, ax = plt.subplots(1, 2, figsize=(12, 4))
    ax[0].bar(labels, [r["reindex"]["rate"] for r in rows], color="tab:blue")
    ax[0].set(title="reindex rate", ylabel="records/s")
    x = range(len(rows))
    ax[1].bar([i - 0.2 for i in x], [r["normal"]["p95_ms"] for r in rows], 0.4,
              label="normal")
    ax[1].bar([i + 0.2 for i in x], [r["during"]["p95_ms"] for r in rows], 0.4,
              label="during the reindex")
    ax[1].set_xticks(list(x), labels)
    ax[1].set(title="retrieve p95", ylabel="ms")
    ax[1].legend()
    fig.suptitle(f"memoray reindex, {res['config']['records']} records, "
                 f"{res['config']['embedder']}, one {os.cpu_count()}-core machine "
                 f"(load {res['load_at_end'][0]:.1f} at the end)", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--records", type=int, default=1500)
    ap.add_argument("--seconds", type=float, default=20.0, help="normal retrieve window")
    ap.add_argument("--embedder", default="minilm", choices=["minilm", "hash"])
    ap.add_argument("--workers", default="1,2")
    ap.add_argument("--modes", default="paced,unpaced")
    args = ap.parse_args(argv)
    res: dict[str, Any] = {"config": vars(args), "load_at_start": os.getloadavg(), "runs": []}
    root = Path(tempfile.mkdtemp(prefix="memoray-bench-reindex-"))
    for workers in [int(w) for w in args.workers.split(",")]:
        port = free_port()
        (root / f"w{workers}").mkdir(parents=True)
        srv = ServerProcess(root / f"w{workers}" / "data", embedder=args.embedder, env={
            "MEMORAY_DASHBOARD": "true", "MEMORAY_DASHBOARD_PORT": str(port),
            "MEMORAY_EMBEDDING_WORKERS": str(workers)})
        srv.start(timeout=300)
        dashboard = srv.run_info()["dashboard_url"]  # Ray moves it if the port was taken
        try:
            log(f"{workers} worker(s): seeding {args.records} memories")
            asyncio.run(seed(srv.mcp_url, args.records))
            for mode in args.modes.split(","):
                normal = asyncio.run(retrieves_for(srv.mcp_url, args.seconds))
                log(f"{workers} worker(s), {mode}: normal retrieve p95 "
                    f"{latency_summary(normal)['p95_ms']:.0f} ms; reindexing")
                extra = [] if mode == "paced" else ["--no-adaptive"]
                report, during = asyncio.run(reindex_under_load(
                    srv.mcp_url, dashboard, srv.data_dir, extra))
                row = {"workers": workers, "mode": mode, "reindex": report,
                       "normal": latency_summary(normal), "during": latency_summary(during),
                       "loadavg": os.getloadavg()}
                row["p95_ratio"] = round(row["during"]["p95_ms"] / row["normal"]["p95_ms"], 2)
                res["runs"].append(row)
                log(f"  {report['rate']} records/s; retrieve p95 {row['during']['p95_ms']:.0f} "
                    f"ms during vs {row['normal']['p95_ms']:.0f} ms normal "
                    f"({row['p95_ratio']}x), load {row['loadavg'][0]:.1f}")
        finally:
            srv.stop()
    res["load_at_end"] = os.getloadavg()
    path = save_json("reindex.json", res)
    plot(res, result_path("reindex.png"))
    print(fmt_table(["workers", "mode", "records/s", "retrieve p95 normal ms",
                     "p95 during ms", "ratio", "backoffs", "load"],
                    [[r["workers"], r["mode"], r["reindex"]["rate"], r["normal"]["p95_ms"],
                      r["during"]["p95_ms"], r["p95_ratio"], r["reindex"]["throttle"]["backoffs"],
                      round(r["loadavg"][0], 1)] for r in res["runs"]]))
    print(f"saved {path} and reindex.png")
    return 0


if __name__ == "__main__":
    sys.exit(main())

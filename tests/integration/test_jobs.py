"""Batch jobs through `ray job submit` against a running server: reindex and backup."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.server_process import ROOT, ServerProcess, free_port, mcp_client


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    port = free_port()
    srv = ServerProcess(tmp_path_factory.mktemp("jobs") / "data", embedder="hash",
                        env={"MEMORAY_DASHBOARD": "true", "MEMORAY_DASHBOARD_PORT": str(port),
                             "MEMORAY_EMBEDDING_WORKERS": "2"})
    srv.start()
    # The URL the server recorded: Ray moves the dashboard when the asked-for port was taken
    # meanwhile (by another Ray on this machine), and a job sent there would run on that one.
    srv.dashboard = srv.run_info()["dashboard_url"]
    yield srv
    srv.stop()


# Transient on a machine shared with other Ray clusters under heavy load: the job agent not up
# yet, a job landing on another cluster's agent (it refuses to run there), the job's driver
# timing out on the GCS.
RETRY_ON = ("No available agent", "this job runs on the Ray cluster at",
            "Failed to connect to Ray cluster")


def submit(server, *args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "RAY_AUTH_MODE": "token",
           "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}"}
    deadline = time.time() + 120
    while True:
        res = subprocess.run(
            [str(Path(sys.executable).parent / "ray"), "job", "submit", "--address",
             server.dashboard, "--working-dir", str(ROOT), "--", "python", "-m", *args],
            capture_output=True, text=True, env=env, timeout=300, cwd=ROOT)
        out = res.stdout + res.stderr
        if not any(m in out for m in RETRY_ON) or res.returncode == 0:
            return res
        if time.time() > deadline:
            break
        time.sleep(2)
    if "this job runs on the Ray cluster at" not in out:
        return res
    # The job API kept handing the job to another Ray cluster on this shared machine (its agent
    # port was taken by another Ray after the server chose it); the job refused to run there.
    # Run the same entrypoint as a plain driver on the server's own cluster instead.
    print("ray job submit kept landing on another Ray cluster; running as a plain driver",
          flush=True)
    return subprocess.run([sys.executable, "-m", args[0], "--address",
                           server.run_info()["ray_address"], *args[1:]],
                          capture_output=True, text=True, env=env, timeout=600, cwd=ROOT)


def last_json(out: str) -> dict:
    return json.loads([line for line in out.splitlines() if line.startswith("{")][-1])


def test_reindex_and_backup_jobs(server, tmp_path):
    async def seed():
        async with mcp_client(server.mcp_url) as c:
            await c.call("capture-memories", items=[
                {"content": f"job test memory {i} about the otter deploy", "workspaceId": "jobs"}
                for i in range(120)])
    asyncio.run(seed())

    res = submit(server, "memoray.cluster.jobs.reindex", "--data-dir", str(server.data_dir),
                 "--embed-batch", "50")
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    report = last_json(res.stdout)
    assert report["records"] == 120 and report["reembedded"] == 120 and report["rebuilt"] == 2

    async def search():
        async with mcp_client(server.mcp_url) as c:
            return await c.call("retrieve-memories", query="otter deploy", limit=100,
                                filters={"workspaceId": "jobs"})
    assert asyncio.run(search())["count"] == 100  # nothing duplicated, nothing lost

    dest = tmp_path / "backup"
    res = submit(server, "memoray.cluster.jobs.backup", "--data-dir", str(server.data_dir),
                 "--dest", str(dest))
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    manifest = json.loads((dest / "manifest.json").read_text())
    assert manifest["records"] == 120
    assert all((dest / "shards" / f"{i:03d}" / "data.mdb").exists() for i in range(2))
    again = submit(server, "memoray.cluster.jobs.backup", "--data-dir", str(server.data_dir),
                   "--dest", str(dest))
    assert again.returncode != 0 and "not empty" in again.stdout + again.stderr


async def _retrieve_stream(url: str, stop: asyncio.Event, latencies: list[float],
                           errors: list[str]) -> None:
    async with mcp_client(url) as c:
        i = 0
        while not stop.is_set():
            i += 1
            t0 = time.perf_counter()
            try:
                await c.call("retrieve-memories", query=f"kestrel queue {i % 50}", limit=5)
                latencies.append(time.perf_counter() - t0)
            except Exception as exc:  # counted, and the test fails on any
                errors.append(repr(exc))
            await asyncio.sleep(0.05)


def _p95(xs: list[float]) -> float:
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(0.95 * len(xs)))]


def test_reindex_under_a_stream_of_retrieves(server):
    """Every embedding worker is used, retrieves keep answering throughout, and the pacing
    works mechanically (probes taken; --max-rate holds). Retrieve p95 before and during is
    printed; the 2x goal is checked by `make bench-reindex`, not here (timing)."""
    async def seed():
        async with mcp_client(server.mcp_url) as c:
            for start in range(0, 400, 100):
                await c.call("capture-memories", items=[
                    {"content": f"reindex load fact {i} about the kestrel queue",
                     "workspaceId": "rx"} for i in range(start, start + 100)])
    asyncio.run(seed())

    async def measure(seconds: float) -> tuple[list[float], list[str]]:
        stop, lat, errs = asyncio.Event(), [], []
        task = asyncio.create_task(_retrieve_stream(server.mcp_url, stop, lat, errs))
        await asyncio.sleep(seconds)
        stop.set()
        await task
        return lat, errs

    before, errors = asyncio.run(measure(4))  # a baseline for the printed p95 only

    async def during() -> tuple[subprocess.CompletedProcess, list[float], list[str]]:
        stop, lat, errs = asyncio.Event(), [], []
        task = asyncio.create_task(_retrieve_stream(server.mcp_url, stop, lat, errs))
        res = await asyncio.to_thread(submit, server, "memoray.cluster.jobs.reindex",
                                      "--data-dir", str(server.data_dir))
        stop.set()
        await task
        return res, lat, errs

    res, lat, errs = asyncio.run(during())
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    report = last_json(res.stdout)
    print(f"retrieve p95 before {_p95(before) * 1000:.0f} ms ({len(before)} calls), during the "
          f"reindex {_p95(lat) * 1000:.0f} ms ({len(lat)} calls); reindex {report['rate']} "
          f"records/s, throttle {report['throttle']}")
    assert errors == [] and errs == [] and len(lat) > 0
    assert report["embedders"] == 2 and all(n > 0 for n in report["per_embedder"])
    assert report["reembedded"] + report["skipped_changed"] == report["records"]
    assert report["throttle"]["adaptive"] and report["throttle"]["probe_p50_ms"] is not None
    assert "reindex: " in res.stdout + res.stderr  # progress lines

    capped = submit(server, "memoray.cluster.jobs.reindex", "--data-dir", str(server.data_dir),
                    "--no-adaptive", "--max-rate", "200", "--quiet")
    assert capped.returncode == 0, capped.stdout[-3000:] + capped.stderr[-3000:]
    rep = last_json(capped.stdout)
    assert rep["embed_seconds"] >= (rep["records"] - 32) / 200  # the cap held

    async def count():
        async with mcp_client(server.mcp_url) as c:
            return (await c.call("memory-stats"))["total"]
    assert asyncio.run(count()) == report["records"]  # nothing duplicated, nothing lost

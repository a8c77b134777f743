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
                        env={"MEMORAY_DASHBOARD": "true", "MEMORAY_DASHBOARD_PORT": str(port)})
    srv.dashboard = f"http://127.0.0.1:{port}"
    yield srv.start()
    srv.stop()


def submit(server, *args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "RAY_AUTH_MODE": "token",
           "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}"}
    deadline = time.time() + 120
    while True:
        res = subprocess.run(
            [str(Path(sys.executable).parent / "ray"), "job", "submit", "--address",
             server.dashboard, "--working-dir", str(ROOT), "--", "python", "-m", *args],
            capture_output=True, text=True, env=env, timeout=300, cwd=ROOT)
        # The dashboard answers before its job agent is up, and says to try again later.
        if "No available agent" not in res.stderr + res.stdout or time.time() > deadline:
            return res
        time.sleep(2)


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
                 "--batch", "50")
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

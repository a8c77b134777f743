"""Two `memoray serve --port P --data-dir D` on one machine, with no other flag and Ray's
dashboard on (the default): each picks free dashboard and agent ports when Ray's defaults are
taken, records its dashboard in run.json (where `make backup` finds it), prints its start-up
steps instead of Ray's log lines, and both serve their own data at once."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys

import httpx
import pytest

from tests.server_process import ROOT, ServerProcess, free_port, mcp_client


def run(coro):
    return asyncio.run(coro)


@pytest.fixture(scope="module")
def pair(tmp_path_factory):
    base = tmp_path_factory.mktemp("pair")
    # Started as a user would: ServerProcess otherwise pins MEMORAY_DASHBOARD=false and an agent
    # port; None drops those variables, so only --port and --data-dir (and the test embedder) set.
    env = {"MEMORAY_DASHBOARD": None, "MEMORAY_DASHBOARD_AGENT_PORT": None,
           "MEMORAY_DASHBOARD_PORT": None}
    a = ServerProcess(base / "a", embedder="hash", env=env).start()
    try:
        b = ServerProcess(base / "b", embedder="hash", env=env).start()
    except Exception:
        a.stop()
        raise
    yield a, b
    b.stop()
    a.stop()


def test_two_servers_side_by_side(pair):
    a, b = pair
    ra, rb = a.run_info(), b.run_info()
    assert ra["dashboard_url"] != rb["dashboard_url"]
    for info in (ra, rb):  # each answers (Ray 2.60's dashboard wants its auth token: 401)
        res = httpx.get(info["dashboard_url"] + "/api/version", timeout=30)
        assert res.status_code in (200, 401), res

    async def fill(url, text):
        async with mcp_client(url) as c:
            return (await c.call("capture-memory", content=text, workspaceId="w"))["id"]

    ida = run(fill(a.mcp_url, "alpha lives on server a"))
    idb = run(fill(b.mcp_url, "beta lives on server b"))
    assert httpx.get(f"{a.url}/api/memories/{ida}").status_code == 200
    assert httpx.get(f"{a.url}/api/memories/{idb}").status_code == 404
    assert httpx.get(f"{b.url}/api/memories/{idb}").status_code == 200
    assert httpx.get(f"{b.url}/api/stats").json()["total"] == 1

    # Start-up printed its steps, not Ray's INFO lines or per-request access logs.
    log = a.tail(20000)
    for step in ("starting Ray", "loaded shard 1/2", "loaded shard 2/2", "embedding model",
                 "memoray ready at"):
        assert step in log, log
    assert "INFO" not in log and "GET /api" not in log, log

    # `make backup`'s discovery: the dashboard of the server that owns this data dir.
    out = subprocess.run([sys.executable, "-m", "memoray.serve.startup", str(b.data_dir)],
                         capture_output=True, text=True, cwd=ROOT,
                         env={**os.environ, "PYTHONPATH": str(ROOT)}, timeout=60)
    assert out.returncode == 0 and out.stdout.strip() == rb["dashboard_url"]


def test_port_clash_is_one_line(pair, tmp_path):
    a, _ = pair
    out = subprocess.run([sys.executable, "-m", "memoray.cli", "serve", "--port", str(a.port),
                          "--data-dir", str(tmp_path / "c"), "--embedder", "hash"],
                         capture_output=True, text=True, cwd=ROOT, timeout=120,
                         env={**os.environ, "PYTHONPATH": str(ROOT),
                              "MEMORAY_DASHBOARD": "false",
                              "MEMORAY_DASHBOARD_AGENT_PORT": str(free_port())})
    assert out.returncode == 2
    assert f"port {a.port} is in use" in out.stderr and "Traceback" not in out.stderr

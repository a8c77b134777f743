"""A real three-node Ray cluster on this machine (tests/cluster_harness.py: every node has its own
disk), `memoray serve --address ... --replication 2`, the real MCP client over HTTP.

Node loss is SIGKILL of every process of a worker node; node return is a fresh `ray start` over
the same private disk.
"""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import time
import uuid

import pytest

from tests.cluster_harness import LocalCluster, can_run
from tests.server_process import ROOT, ServerProcess, ToolError, mcp_client

pytestmark = [pytest.mark.integration, pytest.mark.cluster,
              pytest.mark.skipif(can_run() is not None, reason=str(can_run()))]

NODES = {"head": {"memoray_node_head": 1000.0}, "w1": {"memoray_node_w1": 1000.0},
         "w2": {"memoray_node_w2": 1000.0}}


def controller_status(cluster: LocalCluster) -> dict:
    """The store controller's view (configs, unreachable replicas), read in a separate driver."""
    store = json.loads((cluster.data_path / "memoray.json").read_text())["store_id"]
    code = ("import ray,sys,json; ray.init(address=sys.argv[1], logging_level='ERROR');"
            "from actors.replication import namespace_for;"
            "c=ray.get_actor('controller', namespace=namespace_for(sys.argv[2]));"
            "print(json.dumps(ray.get(c.status.remote(), timeout=30)))")
    out = subprocess.run([sys.executable, "-c", code, cluster.address, store],
                         env=cluster._env(), cwd=ROOT, capture_output=True, text=True,
                         timeout=120)
    return json.loads(out.stdout.strip().splitlines()[-1])


def wait_in_sync(cluster: LocalCluster, n: int, timeout: float = 120) -> dict:
    deadline = time.time() + timeout
    status = {}
    while time.time() < deadline:
        status = controller_status(cluster)
        if all(len(c["isr"]) >= n for c in status["configs"].values()):
            return status
        time.sleep(1.0)
    raise AssertionError(f"replicas did not get back in sync: {status}")


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    root = tmp_path_factory.mktemp("cluster")
    c = LocalCluster(root, num_cpus=1)
    try:
        c.start_head(NODES["head"])
        c.add_worker("w1", NODES["w1"])
        c.add_worker("w2", NODES["w2"])
        yield c
    finally:
        c.shutdown()


@pytest.fixture(scope="module")
def server(cluster):
    token_out = subprocess.run(
        [sys.executable, "-m", "memoray.cli", "token", "create", "--data-dir",
         str(cluster.data_path), "--principal", "ci", "--workspaces", "*", "--scopes",
         "read,write,admin"], cwd=ROOT, capture_output=True, text=True, check=True)
    srv = ServerProcess(cluster.data_path, shards=2, extra_args=[
        "--address", cluster.address, "--replication", "2", "--replicas", "3"],
        env={**cluster.client_env(), "MEMORAY_PROXY_LOCATION": "HeadOnly", "MEMORAY_MAX_REPLICAS_PER_NODE": "1",
             "MEMORAY_RATE_LIMIT_ENABLED": "false", "MEMORAY_REPLACE_AFTER_S": "600",
             "MEMORAY_DURABLE": "true"})
    srv.token = token_out.stdout.strip().splitlines()[-1]
    srv.start(timeout=300)
    try:
        yield srv
    finally:
        srv.stop()


async def capture_stream(url: str, token: str, acked: list, stop: asyncio.Event,
                         errors: list, prefix: str) -> None:
    async with mcp_client(url, token) as c:
        i = 0
        while not stop.is_set():
            i += 1
            try:
                res = await c.call("capture-memory", content=f"{prefix} event {i} {uuid.uuid4()}",
                                   workspaceId="ws", eventType="note")
                acked.append(res["ids"][0] if "ids" in res else res["id"])
            except ToolError as err:
                errors.append(err.code)
                await asyncio.sleep(0.2)


async def all_found(url: str, token: str, ids: list[str]) -> list[str]:
    missing = []
    async with mcp_client(url, token) as c:
        for mid in ids:
            try:
                await c.call("get-memory", id=mid)
            except ToolError as err:
                missing.append(f"{mid}:{err.code}")
    return missing


def test_node_loss_and_return_with_replication_2(cluster, server):
    url, token = server.mcp_url, server.token

    async def phase1():
        acked: list[str] = []
        errors: list[str] = []
        stop = asyncio.Event()
        task = asyncio.create_task(capture_stream(url, token, acked, stop, errors, "before"))
        while len(acked) < 30:
            await asyncio.sleep(0.2)
        assert task.done() is False
        cluster.kill_node("w1")          # holds a replica of every shard, a primary of one
        killed_at = len(acked)
        deadline = time.time() + 120
        while len(acked) < killed_at + 30 and time.time() < deadline:
            await asyncio.sleep(0.2)
        stop.set()
        await task
        assert len(acked) >= killed_at + 30, f"writes did not continue: {errors[-5:]}"
        return acked

    acked = asyncio.run(phase1())
    assert asyncio.run(all_found(url, token, acked)) == []

    async def while_down():
        # Acknowledged deletes and writes while w1 is away: w1's old store must never show the
        # deleted records again, nor lack the new ones.
        async with mcp_client(url, token) as c:
            for mid in acked[:10]:
                await c.call("delete-memory", id=mid)
            new = []
            for i in range(20):
                res = await c.call("capture-memory", content=f"while w1 is down {i}",
                                   workspaceId="ws")
                new.append(res["ids"][0] if "ids" in res else res["id"])
            return new

    new = asyncio.run(while_down())
    cluster.add_worker("w1")             # the node returns with its old disk
    wait_in_sync(cluster, 2)
    cluster.kill_node("w2")              # now only head and the returned w1 hold data
    deleted, kept = acked[:10], acked[10:] + new

    async def after():
        missing = await all_found(url, token, kept)
        gone = []
        async with mcp_client(url, token) as c:
            for mid in deleted:
                try:
                    await c.call("get-memory", id=mid)
                    gone.append(mid)          # a stale record reappeared
                except ToolError as err:
                    assert err.code == "NOT_FOUND"
            stats = await c.call("memory-stats")
        return missing, gone, stats

    missing, reappeared, stats = asyncio.run(after())
    assert missing == []
    assert reappeared == []
    total = stats.get("total", stats.get("totalMemories"))
    assert total == len(kept), stats
    cluster.add_worker("w2")
    wait_in_sync(cluster, 2)

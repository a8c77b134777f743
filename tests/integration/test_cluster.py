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

from tests.cluster_harness import LocalCluster, can_run, controller_status
from tests.server_process import ROOT, ServerProcess, ToolError, mcp_client

# Node starts and failure detection on a loaded 2-core machine take minutes, not seconds.
pytestmark = [pytest.mark.integration, pytest.mark.cluster, pytest.mark.timeout(1200),
              pytest.mark.skipif(can_run() is not None, reason=str(can_run()))]

NODES = {"head": {"memoray_node_head": 1000.0}, "w1": {"memoray_node_w1": 1000.0},
         "w2": {"memoray_node_w2": 1000.0}}


def wait_in_sync(cluster: LocalCluster, n: int, timeout: float = 120) -> dict:
    deadline = time.time() + timeout
    status = {}
    while time.time() < deadline:
        status = controller_status(cluster, cluster.data_path / "a")
        if all(len(c["isr"]) >= n for c in status["configs"].values()):
            return status
        time.sleep(1.0)
    raise AssertionError(f"replicas did not get back in sync: {status}")


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    root = tmp_path_factory.mktemp("cluster")
    c = LocalCluster(root, num_cpus=1)
    try:
        c.start_head(NODES["head"], dashboard=True)
        c.add_worker("w1", NODES["w1"])
        c.add_worker("w2", NODES["w2"])
        yield c
    finally:
        c.shutdown()


@pytest.fixture(scope="module")
def server(cluster):
    token_out = subprocess.run(
        [sys.executable, "-m", "memoray.cli", "token", "create", "--data-dir",
         str(cluster.data_path / "a"), "--principal", "ci", "--workspaces", "*", "--scopes",
         "read,write,admin"], cwd=ROOT, capture_output=True, text=True, check=True)
    srv = ServerProcess(cluster.data_path / "a", shards=2, extra_args=[
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
    async with mcp_client(url, token) as c:
        return [f"{mid}:{code}" for mid, code in (await c.unreadable(ids)).items()]


def cluster_query(cluster: LocalCluster, code: str) -> object:
    """Run `code` (which prints one JSON line) in a fresh driver joined to the cluster."""
    prog = ("import ray,sys,json; ray.init(address=sys.argv[1], logging_level='ERROR')\n"
            + code)
    out = subprocess.run([sys.executable, "-c", prog, cluster.address], env=cluster._env(),
                         cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    return json.loads(out.stdout.strip().splitlines()[-1])


def token_cli(cluster: LocalCluster, *args: str) -> str:
    out = subprocess.run([sys.executable, "-m", "memoray.cli", "token", *args, "--data-dir",
                          str(cluster.data_path / "a")], cwd=ROOT, capture_output=True, text=True,
                         check=True)
    return out.stdout.strip().splitlines()[-1] if out.stdout.strip() else ""


async def outcome(url: str, token: str | None) -> str:
    """'ok', or how the call was refused: UNAUTHORIZED (HTTP 401 at the transport, or the tool
    error), another tool error code, or the HTTP status."""
    import httpx2

    headers = {"Accept": "application/json, text/event-stream",
               "Content-Type": "application/json"}
    if token:
        headers["Authorization"] = f"Bearer {token}"
    hello = {"jsonrpc": "2.0", "id": 1, "method": "initialize",
             "params": {"protocolVersion": "2025-06-18", "capabilities": {},
                        "clientInfo": {"name": "cluster-test", "version": "1"}}}
    async with httpx2.AsyncClient(timeout=60) as http:
        status = (await http.post(url, json=hello, headers=headers)).status_code
    if status == 401:
        return "UNAUTHORIZED"
    if status != 200:
        return f"http {status}"
    try:
        async with mcp_client(url, token) as c:
            await c.call("memory-stats")
            return "ok"
    except ToolError as err:
        return err.code


async def outcomes(url: str, token: str | None, n: int = 12) -> list[str]:
    return [await outcome(url, token) for _ in range(n)]


def test_tokens_are_enforced_by_replicas_on_every_node(cluster, server):
    url = server.mcp_url
    nodes = cluster_query(cluster, (
        "from ray.util.state import list_actors\n"
        "a=list_actors(address=sys.argv[1], filters=[('state','=','ALIVE')], limit=1000)\n"
        "print(json.dumps(sorted({x.node_id for x in a "
        "if x.class_name.startswith('ServeReplica:memoray')})))"))
    assert len(nodes) == 3, nodes   # one MCP replica on each node, each must enforce tokens
    assert set(asyncio.run(outcomes(url, None))) == {"UNAUTHORIZED"}
    assert set(asyncio.run(outcomes(url, server.token))) == {"ok"}
    # A token created while running works everywhere within the documented 2 s...
    fresh = token_cli(cluster, "create", "--principal", "late", "--workspaces", "*",
                      "--scopes", "read")
    time.sleep(3.0)
    assert set(asyncio.run(outcomes(url, fresh))) == {"ok"}
    # ...and once revoked it is refused everywhere within the same time.
    token_cli(cluster, "revoke", fresh)
    time.sleep(3.0)
    assert set(asyncio.run(outcomes(url, fresh))) == {"UNAUTHORIZED"}
    assert set(asyncio.run(outcomes(url, server.token, 4))) == {"ok"}


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

    async def shard_health() -> dict:
        async with mcp_client(url, token) as c:
            health = await c.call("health-check")
        return {k: v["status"] for k, v in health["components"].items()
                if k.startswith("shard-")}

    # Both shards lost their replica on w1: they serve, and say they are degraded.
    assert asyncio.run(shard_health()) == {"shard-0": "degraded", "shard-1": "degraded"}

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

    async def context_while_down() -> dict:
        # build-context sends its three searches to each replicated shard in one call
        async with mcp_client(url, token) as c:
            return await c.call("build-context", query="while w1 is down", workspaceId="ws",
                                gitBranch="main", style="index", tokenBudget=2000)

    ctx = asyncio.run(context_while_down())
    assert ctx["included"] > 0 and "while w1 is down" in ctx["context"], ctx
    cluster.add_worker("w1")             # the node returns with its old disk
    wait_in_sync(cluster, 2)
    assert asyncio.run(shard_health()) == {"shard-0": "ok", "shard-1": "ok"}
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


def test_serve_deploy_of_the_repo_config_and_two_stores_never_share_an_actor(cluster, server):
    """`serve deploy cluster/serve-config.yaml` (what KubeRay's serveConfigV2 takes), changed only
    where this machine differs (paths, ports, no GPU, the hash embedder), for a second store on
    the same cluster as the first."""
    import yaml

    config = yaml.safe_load((ROOT / "cluster" / "serve-config.yaml").read_text())
    app = config["applications"][0]
    assert app["import_path"] == "memoray.serve.deployment:build_app"
    config["proxy_location"] = "HeadOnly"   # every node shares this host's ports
    config["http_options"] = {"host": "127.0.0.1", "port": server.port}
    app["args"].update(data_dir=str(cluster.data_path / "b"), shards=2, embedder="hash",
                       embedding_gpus=0, embedding_workers=1, rate_limit_enabled=False)
    assert app["args"]["replication"] == 2
    app["deployments"][0]["autoscaling_config"].update(min_replicas=1, max_replicas=2)
    path = cluster.root / "serve-config.yaml"
    path.write_text(yaml.safe_dump(config))
    env = {**__import__("os").environ, **cluster.client_env()}
    res = subprocess.run([str(ROOT / ".venv" / "bin" / "serve"), "deploy", str(path), "-a",
                          cluster.dashboard_url], cwd=ROOT, env=env, capture_output=True,
                         text=True, timeout=180)
    assert res.returncode == 0, res.stdout[-2000:] + res.stderr[-2000:]
    deadline = time.time() + 300
    status = ""
    while time.time() < deadline:
        status = subprocess.run([str(ROOT / ".venv" / "bin" / "serve"), "status", "-a",
                                 cluster.dashboard_url], env=env, capture_output=True,
                                text=True, timeout=60).stdout
        if "status: RUNNING" in status and "DEPLOY_FAILED" not in status:
            break
        assert "DEPLOY_FAILED" not in status, status
        time.sleep(2)
    assert "status: RUNNING" in status, status

    async def use_b():
        async with mcp_client(server.mcp_url) as c:   # store b has no tokens: open on loopback
            ids = [(await c.call("capture-memory", content=f"store b memory {i}",
                                 workspaceId="b"))["ids"][0] for i in range(5)]
            found = [(await c.call("get-memory", id=i))["id"] for i in ids]
            stats = await c.call("memory-stats")
            return ids, found, stats

    ids, found, stats = asyncio.run(use_b())
    assert found == ids
    assert stats["total"] == 5, stats      # store a's records are not here: no shared shard
    layouts = {s: json.loads((cluster.data_path / s / "memoray.json").read_text())
               for s in ("a", "b")}
    assert layouts["a"]["store_id"] != layouts["b"]["store_id"]
    alive = cluster_query(cluster, (
        "from ray.util.state import list_actors\n"
        "a=list_actors(address=sys.argv[1], filters=[('state','=','ALIVE')], limit=2000)\n"
        "print(json.dumps([[x.actor_id, x.name] for x in a if x.name]))"))
    from memoray.actors.names import ActorNames

    na, nb = (ActorNames(layouts[s]["store_id"]) for s in ("a", "b"))
    a_ids = {i for i, name in alive if name.startswith(na.prefix + "-")}
    b_ids = {i for i, name in alive if name.startswith(nb.prefix + "-")}
    b_names = {name for _, name in alive if name.startswith(nb.prefix + "-")}
    assert {nb.controller, nb.replica(0, "head"), nb.planner, nb.expiry} <= b_names, b_names
    assert a_ids and b_ids and not (a_ids & b_ids)

    # The app's health follows the store's actors: with store b's controller gone, Serve no
    # longer reports the app healthy (before, it stayed RUNNING/HEALTHY over dead actors).
    cluster_query(cluster, (
        "from memoray.actors.names import NAMESPACE\n"
        f"ray.kill(ray.get_actor({nb.controller!r}, namespace=NAMESPACE), no_restart=True)\n"
        "print(json.dumps(True))"))
    deadline = time.time() + 180
    while time.time() < deadline:
        status = subprocess.run([str(ROOT / ".venv" / "bin" / "serve"), "status", "-a",
                                 cluster.dashboard_url], env=env, capture_output=True,
                                text=True, timeout=60).stdout
        if "UNHEALTHY" in status or "DEPLOY_FAILED" in status:
            break
        time.sleep(3)
    assert "UNHEALTHY" in status or "DEPLOY_FAILED" in status, status


def test_a_clean_stop_stops_every_actor_the_store_started(cluster, server):
    from memoray.actors.names import ActorNames

    store = json.loads((cluster.data_path / "a" / "memoray.json").read_text())["store_id"]
    prefix = ActorNames(store).prefix + "-"
    server.stop()
    alive = cluster_query(cluster, (
        "from ray.util.state import list_actors\n"
        "a=list_actors(address=sys.argv[1], filters=[('state','=','ALIVE')], limit=2000)\n"
        "print(json.dumps([x.name for x in a if x.name]))"))
    assert [n for n in alive if n.startswith(prefix)] == []
    # The data stays: every shard's store is still on its nodes' disks.
    assert (cluster.data_path / "a" / "shards" / "000" / "lmdb").exists()

"""Online resharding of a replicated store (cluster mode) on a real three-node Ray cluster
(tests/cluster_harness.py: every node has its own disk), `memoray serve --address ...
--replication 2`, the real MCP client over HTTP: 2 -> 3 shards under a stream of captures,
retrieves and reads; every acknowledged record is found afterwards, the new shard's replicas sit
on distinct nodes and every replica of every shard holds the same log; then a worker node is
SIGKILLed while a 3 -> 4 reshard moves records, and the job rerun completes with nothing lost.
"""

from __future__ import annotations

import asyncio
import json
import os
import random
import signal
import subprocess
import sys
import time

import pytest

from tests.cluster_harness import LocalCluster, can_run, controller_status
from tests.server_process import ROOT, ServerProcess, mcp_client

pytestmark = [pytest.mark.integration, pytest.mark.cluster, pytest.mark.timeout(1500),
              pytest.mark.skipif(can_run() is not None, reason=str(can_run()))]

NODES = {"head": {"memoray_node_head": 1000.0}, "w1": {"memoray_node_w1": 1000.0},
         "w2": {"memoray_node_w2": 1000.0}}


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    c = LocalCluster(tmp_path_factory.mktemp("reshard-cluster"), num_cpus=1)
    try:
        c.start_head(NODES["head"])
        c.add_worker("w1", NODES["w1"])
        c.add_worker("w2", NODES["w2"])
        yield c
    finally:
        c.shutdown()


@pytest.fixture(scope="module")
def server(cluster):
    data = cluster.data_path / "a"
    token = subprocess.run(
        [sys.executable, "-m", "memoray.cli", "token", "create", "--data-dir", str(data),
         "--principal", "ci", "--workspaces", "*", "--scopes", "read,write,admin"], cwd=ROOT,
        capture_output=True, text=True, check=True).stdout.strip().splitlines()[-1]
    srv = ServerProcess(data, shards=2, extra_args=[
        "--address", cluster.address, "--replication", "2", "--replicas", "2"],
        env={**cluster.client_env(), "MEMORAY_PROXY_LOCATION": "HeadOnly",
             "MEMORAY_MAX_REPLICAS_PER_NODE": "1", "MEMORAY_RATE_LIMIT_ENABLED": "false",
             "MEMORAY_REPLACE_AFTER_S": "600", "MEMORAY_DURABLE": "true"})
    srv.token = token
    srv.start(timeout=300)
    try:
        yield srv
    finally:
        srv.stop()


class Load:
    """Captures (every other batch keyed), retrieves and gets; every acknowledged id kept."""

    def __init__(self, url: str, token: str, tag: str):
        self.url, self.token, self.tag = url, token, tag
        self.acked: dict[str, str] = {}
        self.errors: list[str] = []
        self.retrieves = 0
        self.stop = asyncio.Event()

    async def seed(self, n: int) -> None:
        async with mcp_client(self.url, self.token) as c:
            for b in range(0, n, 50):
                await self._capture(c, [f"{self.tag} seed memory {i} about shard routing"
                                        for i in range(b, min(b + 50, n))], keyed=b % 100 == 0)

    async def _capture(self, c, texts: list[str], keyed: bool) -> None:
        items = [{"content": t, "workspaceId": "rs", "eventType": "decision",
                  **({"idempotencyKey": f"{self.tag}-{t}"} if keyed else {})} for t in texts]
        res = await c.call("capture-memories", items=items)
        failed = {e["index"]: e for e in res.get("errors", [])}
        for n, (t, ids) in enumerate(zip(texts, res["ids"])):
            if n in failed:
                self.errors.append(f"capture: {failed[n]}")
            else:
                self.acked[ids[0]] = t

    async def run(self) -> None:
        rnd = random.Random(7)
        i = 0
        async with mcp_client(self.url, self.token) as c:
            while not self.stop.is_set():
                try:
                    await self._capture(c, [f"{self.tag} live memory {i + k} during the move"
                                            for k in range(5)], keyed=i % 10 == 0)
                    i += 5
                    hits = await c.call("retrieve-memories", query=f"{self.tag} seed memory",
                                        limit=10, filters={"workspaceId": "rs"})
                    self.retrieves += 1
                    assert hits["count"] == 10, hits["count"]
                    mid = rnd.choice(list(self.acked))
                    got = await c.call("get-memory", id=mid)
                    assert got["content"] == self.acked[mid]
                except Exception as exc:  # noqa: BLE001 - every failure is reported below
                    self.errors.append(f"{type(exc).__name__}: {exc}")
                await asyncio.sleep(0.1)

    async def check_all(self) -> dict:
        missing = []
        async with mcp_client(self.url, self.token) as c:
            ids = list(self.acked)
            got = await c.call_many("get-memory", [{"id": mid} for mid in ids],
                                    return_exceptions=True)
            for mid, g in zip(ids, got):
                if isinstance(g, BaseException):
                    missing.append(f"{mid}: {g}")
                elif g["content"] != self.acked[mid]:
                    missing.append(f"{mid}: changed")
            assert missing == [], missing[:10]
            return await c.call("memory-stats")


def job_cmd(cluster: LocalCluster, shards: int) -> list[str]:
    """The job as a plain driver on the head (where `ray job submit` runs it)."""
    return [sys.executable, "-m", "memoray.cluster.jobs.reshard", "--address", cluster.address,
            "--data-dir", str(cluster.data_path / "a"), "--shards", str(shards), "--batch", "32"]


async def during(cluster: LocalCluster, load: Load, shards: int,
                 kill_node_after_moved: int | None = None) -> tuple[int, str, str, bool]:
    """Runs the reshard job while `load` runs; with kill_node_after_moved, SIGKILLs worker w1
    (every process of that node) once the job has reported that many records moved."""
    task = asyncio.create_task(load.run())
    proc = await asyncio.create_subprocess_exec(
        *job_cmd(cluster, shards), cwd=ROOT, env=cluster._env(), stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE, start_new_session=True)
    err: list[str] = []
    killed = False

    async def read_err():
        nonlocal killed
        async for raw in proc.stderr:
            line = raw.decode(errors="replace")
            err.append(line)
            if kill_node_after_moved is not None and not killed and "records moved" in line:
                moved = int(line.split(";")[1].split("records moved")[0].strip())
                if moved >= kill_node_after_moved:
                    await asyncio.to_thread(cluster.kill_node, "w1")
                    killed = True

    try:
        out, _ = await asyncio.wait_for(asyncio.gather(proc.stdout.read(), read_err()), 900)
    except TimeoutError:
        os.killpg(proc.pid, signal.SIGKILL)
        raise
    rc = await proc.wait()
    await asyncio.sleep(2.0)  # the load keeps going across the end of the job
    load.stop.set()
    await task
    return rc, out.decode(), "".join(err), killed


def last_json(out: str) -> dict:
    return json.loads([line for line in out.splitlines() if line.startswith("{")][-1])


def replica_positions(cluster: LocalCluster, configs: dict) -> dict:
    """(seq, records) of every replica of every shard, asked of the replicas themselves."""
    store = json.loads((cluster.data_path / "a" / "memoray.json").read_text())["store_id"]
    pairs = [[int(s), n] for s, cfg in configs.items() for n in cfg["members"]]
    code = ("import ray,sys,json; ray.init(address=sys.argv[1], logging_level='ERROR')\n"
            "from memoray.actors.names import NAMESPACE, ActorNames\n"
            "names = ActorNames(sys.argv[2]); out = {}\n"
            "for s, n in json.loads(sys.argv[3]):\n"
            "    h = ray.get_actor(names.replica(s, n), namespace=NAMESPACE)\n"
            "    p = ray.get(h.position.remote(), timeout=60)\n"
            "    out[f'{s}@{n}'] = [p['seq'], p['records']]\n"
            "print(json.dumps(out))")
    res = subprocess.run([sys.executable, "-c", code, cluster.address, store, json.dumps(pairs)],
                         env=cluster._env(), cwd=ROOT, capture_output=True, text=True,
                         timeout=180)
    assert res.returncode == 0, res.stderr[-2000:]
    return json.loads(res.stdout.strip().splitlines()[-1])


def wait_in_sync(cluster: LocalCluster, timeout: float = 180) -> dict:
    deadline = time.time() + timeout
    status: dict = {}
    while time.time() < deadline:
        status = controller_status(cluster, cluster.data_path / "a")
        if all(len(c["isr"]) == len(c["members"]) for c in status["configs"].values()):
            return status
        time.sleep(1.0)
    raise AssertionError(f"replicas did not get back in sync: {status}")


def test_grow_2_to_3_replicated_under_load(cluster, server):
    load = Load(server.mcp_url, server.token, "g")
    asyncio.run(load.seed(300))
    rc, out, err, _ = asyncio.run(during(cluster, load, 3))
    assert rc == 0, err[-3000:]
    report = last_json(out)
    assert report["changed"] and report["left"] == 0 and report["moved"] > 0, report
    assert load.errors == [], load.errors[:5]
    assert load.retrieves > 0
    layout = json.loads((cluster.data_path / "a" / "memoray.json").read_text())
    assert layout["shards"] == 3 and layout["placement"]["target"] is None
    stats = asyncio.run(load.check_all())
    assert stats["total"] == len(load.acked), stats
    status = wait_in_sync(cluster)
    assert sorted(status["configs"]) == ["0", "1", "2"], status
    members = status["configs"]["2"]["members"]
    assert len(members) == 2 and len(set(members)) == 2, members
    # Every replica of a shard holds the same log and records (the moved copies were
    # replicated, the drops too), and the new shard holds about a third of the records.
    pos = replica_positions(cluster, status["configs"])
    for s, cfg in status["configs"].items():
        assert len({tuple(pos[f"{s}@{n}"]) for n in cfg["members"]}) == 1, pos
    assert sum(pos[f"{s}@{cfg['primary']}"][1] for s, cfg in status["configs"].items()) \
        == len(load.acked), pos
    assert pos[f"2@{members[0]}"][1] > len(load.acked) // 6, pos
    print(f"cluster reshard 2->3 under load: {len(load.acked)} acknowledged, "
          f"{load.retrieves} retrieves, report {report}")


def test_node_killed_mid_reshard_then_rerun_and_shrink(cluster, server):
    """w1 (a replica of most shards, the primary of some, one of the new shard's two) is
    SIGKILLed while the 3 -> 4 mover runs. The job either rides through (failover, the in-sync
    set shrinks) or stops; rerun after the node returns, it completes with every acknowledged
    record found and every replica in sync. Then 4 -> 3 stops the emptied shard's replicas."""
    load = Load(server.mcp_url, server.token, "k")
    asyncio.run(load.seed(200))
    rc, out, err, killed = asyncio.run(during(cluster, load, 4, kill_node_after_moved=40))
    assert killed, err[-3000:]
    cluster.add_worker("w1", NODES["w1"])
    if rc != 0:  # stopped by the node loss: rerun, it continues from its cursor
        rerun = subprocess.run(job_cmd(cluster, 4), cwd=ROOT, env=cluster._env(),
                               capture_output=True, text=True, timeout=900)
        assert rerun.returncode == 0, rerun.stderr[-3000:]
        out = rerun.stdout
    report = last_json(out)
    assert report["shards"] == 4 and report.get("left", 0) == 0, report
    status = wait_in_sync(cluster)
    assert sorted(status["configs"]) == ["0", "1", "2", "3"], status
    stats = asyncio.run(load.check_all())
    assert stats["total"] >= len(load.acked), stats
    pos = replica_positions(cluster, status["configs"])
    for s, cfg in status["configs"].items():
        assert len({pos[f"{s}@{n}"][1] for n in cfg["members"]}) == 1, pos

    # Shrink: shard 3 is emptied onto the others, then its replicas are stopped and deleted.
    gone = status["configs"]["3"]["members"]
    shrink = subprocess.run(job_cmd(cluster, 3), cwd=ROOT, env=cluster._env(),
                            capture_output=True, text=True, timeout=900)
    assert shrink.returncode == 0, shrink.stderr[-3000:]
    assert last_json(shrink.stdout)["shards"] == 3
    status = controller_status(cluster, cluster.data_path / "a")
    assert sorted(status["configs"]) == ["0", "1", "2"], status
    if "head" in gone:  # the head's copy is on this machine's view of the data path
        assert not (cluster.data_path / "a" / "shards" / "003").exists()
    stats = asyncio.run(load.check_all())
    assert stats["total"] >= len(load.acked), stats
    print(f"node killed mid-reshard: {len(load.acked)} acknowledged, job rc {rc}, "
          f"{len(load.errors)} load errors while w1 was down")

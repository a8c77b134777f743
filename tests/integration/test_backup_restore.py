"""Backup a running server with the backup job (`ray job submit`), restore it with `memoray
restore` into a fresh data dir, start a server on it: identical records, tokens and audit log.
The multi-node case backs up a replicated store whose shards live on different nodes' private
disks (tests/cluster_harness.py) into one directory."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import uuid

import httpx2
import pytest

from memoray.client import ApiClient
from tests.cluster_harness import LocalCluster, can_run
from tests.integration.test_jobs import last_json, submit
from tests.server_process import ROOT, ServerProcess, ToolError, free_port, mcp_client


def cli(*args: str, check: bool = True) -> subprocess.CompletedProcess:
    out = subprocess.run([sys.executable, "-m", "memoray.cli", *args], cwd=ROOT,
                         capture_output=True, text=True, timeout=300)
    if check:
        assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-2000:]
    return out


def export(url: str, token: str) -> list[dict]:
    with ApiClient(url, token) as api:
        lines = list(api.export_lines())
    return sorted((json.loads(line) for line in lines[1:]), key=lambda r: r["id"])


async def seed(url: str, token: str, n: int = 120) -> tuple[list[str], list[str]]:
    """Captures n memories and deletes two: (kept ids, deleted ids)."""
    ids: list[str] = []
    async with mcp_client(url + "/mcp", token) as c:
        for start in range(0, n, 40):
            res = await c.call("capture-memories", items=[
                {"content": f"backup fact {i}: the heron pipeline uses queue {uuid.uuid4().hex[:6]}",
                 "workspaceId": "bk", "eventType": "decision" if i % 3 == 0 else "note"}
                for i in range(start, start + 40)])
            ids += [one[0] for one in res["ids"]]
        await c.call("delete-memory", id=ids[0])
        await c.call("delete-memory", id=ids[1])
    return ids[2:], ids[:2]


async def retrieve(url: str, token: str, query: str) -> list[str]:
    async with mcp_client(url + "/mcp", token) as c:
        res = await c.call("retrieve-memories", query=query, limit=10,
                           filters={"workspaceId": "bk"})
    return [m["id"] for m in res["memories"]]


def status_of(url: str, token: str | None) -> int:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    body = {"jsonrpc": "2.0", "id": 1, "method": "tools/list", "params": {}}
    res = httpx2.post(url + "/mcp", json=body, headers={
        **headers, "Accept": "application/json, text/event-stream"}, timeout=30)
    return res.status_code


@pytest.fixture(scope="module")
def source(tmp_path_factory):
    data = tmp_path_factory.mktemp("bk-src") / "data"
    token = cli("token", "create", "--data-dir", str(data), "--principal", "ops",
                "--workspaces", "*", "--scopes", "read,write,admin").stdout.strip().splitlines()[-1]
    port = free_port()
    srv = ServerProcess(data, embedder="hash", env={
        "MEMORAY_DASHBOARD": "true", "MEMORAY_DASHBOARD_PORT": str(port),
        "MEMORAY_RATE_LIMIT_ENABLED": "false"})
    srv.token = token
    srv.start()
    srv.dashboard = srv.run_info()["dashboard_url"]  # where Ray really put it (see test_jobs)
    yield srv
    srv.stop()


def test_backup_then_restore_gives_identical_records_tokens_and_audit(source, tmp_path):
    token = source.token
    kept, deleted = asyncio.run(seed(source.url, token))
    before = export(source.url, token)
    assert {r["id"] for r in before} == set(kept)
    hits_before = asyncio.run(retrieve(source.url, token, "heron pipeline queue"))

    dest = tmp_path / "backup"
    res = submit(source, "memoray.cluster.jobs.backup", "--data-dir", str(source.data_dir),
                 "--dest", str(dest))
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    summary = last_json(res.stdout)
    assert summary["records"] == len(kept) and summary["shards"] == 2
    manifest = json.loads((dest / "manifest.json").read_text())
    assert manifest["format"] == "memoray-backup" and manifest["version"] == 1
    assert {"memoray.json", "tokens.json", "audit/audit.log", "shards/000/data.mdb",
            "shards/001/data.mdb"} <= {f["path"] for f in manifest["files"]}
    audit_at_backup = (dest / "audit" / "audit.log").read_bytes()
    assert (source.data_dir / "audit" / "audit.log").read_bytes().startswith(audit_at_backup)

    # A corrupted copy of the backup is refused and leaves the target as it was.
    bad = tmp_path / "bad"
    subprocess.run(["cp", "-r", str(dest), str(bad)], check=True)
    blob = bytearray((bad / "shards" / "001" / "data.mdb").read_bytes())
    blob[len(blob) // 2] ^= 0xFF
    (bad / "shards" / "001" / "data.mdb").write_bytes(bytes(blob))
    target = tmp_path / "restored"
    out = cli("restore", str(bad), "--data-dir", str(target), check=False)
    assert out.returncode == 1 and "checksum" in out.stderr and not target.exists()

    cli("restore", str(dest), "--data-dir", str(target))
    again = cli("restore", str(dest), "--data-dir", str(target), check=False)
    assert again.returncode == 1 and "not empty" in again.stderr

    restored = ServerProcess(target, embedder="hash",
                             env={"MEMORAY_RATE_LIMIT_ENABLED": "false"}).start()
    try:
        assert export(restored.url, token) == before            # records, every field
        assert asyncio.run(retrieve(restored.url, token, "heron pipeline queue")) == hits_before
        assert status_of(restored.url, None) == 401              # tokens came along
        assert status_of(restored.url, token) == 200
        assert (target / "tokens.json").read_bytes() == (dest / "tokens.json").read_bytes()
        assert (target / "audit" / "audit.log").read_bytes().startswith(audit_at_backup)

        async def audit() -> list[dict]:
            async with mcp_client(restored.mcp_url, token) as c:
                return (await c.call("audit-log", limit=1000))["entries"]
        entries = asyncio.run(audit())
        audited = {i for e in entries if e["action"] == "capture-batch" for i in e.get("ids", [])}
        assert set(kept) <= audited
        assert sum(e["action"] == "delete" for e in entries) >= 2

        async def gone() -> list[str]:
            codes = []
            async with mcp_client(restored.mcp_url, token) as c:
                for mid in deleted:
                    try:
                        await c.call("get-memory", id=mid)
                        codes.append("found")
                    except ToolError as err:
                        codes.append(err.code)
            return codes
        assert asyncio.run(gone()) == ["NOT_FOUND", "NOT_FOUND"]  # deletes stay deleted
    finally:
        restored.stop()


# -- multi-node: shards on different nodes' private disks ----------------------------------------

NODES = {"head": {"memoray_node_head": 1000.0}, "w1": {"memoray_node_w1": 1000.0}}


@pytest.mark.cluster
@pytest.mark.timeout(1200)
@pytest.mark.skipif(can_run() is not None, reason=str(can_run()))
def test_backup_of_a_multi_node_store_lands_in_one_place(tmp_path_factory, tmp_path):
    root = tmp_path_factory.mktemp("bk-cluster")
    cluster = LocalCluster(root, num_cpus=1)
    srv = None
    try:
        cluster.start_head(NODES["head"], dashboard=True)
        cluster.add_worker("w1", NODES["w1"])
        store = cluster.data_path / "a"
        token = cli("token", "create", "--data-dir", str(store), "--principal", "ops",
                    "--workspaces", "*", "--scopes", "read,write,admin"
                    ).stdout.strip().splitlines()[-1]
        # R=1 over two storage nodes: shard 0 on the head's disk, shard 1 on w1's private disk.
        srv = ServerProcess(store, shards=2, extra_args=[
            "--address", cluster.address, "--replication", "1"],
            env={**cluster.client_env(), "MEMORAY_PROXY_LOCATION": "HeadOnly",
                 "MEMORAY_RATE_LIMIT_ENABLED": "false"})
        srv.start(timeout=300)
        kept, _ = asyncio.run(seed(srv.url, token, n=80))
        before = export(srv.url, token)
        # The head's view of the data path holds only shard 0: shard 1 is on w1's own disk.
        assert not (store / "shards" / "001" / "lmdb" / "data.mdb").exists()
        assert (cluster.nodes["w1"].disk / "a" / "shards" / "001" / "lmdb" / "data.mdb").exists()

        srv.dashboard = cluster.dashboard_url
        dest = tmp_path / "backup"
        res = submit_cluster(cluster, "memoray.cluster.jobs.backup", "--data-dir", str(store),
                             "--dest", str(dest))
        assert res.returncode == 0, res.stdout[-12000:] + res.stderr[-3000:]
        manifest = json.loads((dest / "manifest.json").read_text())
        assert manifest["records"] == len(kept)
        assert {s["node"] for s in manifest["shards"]} == {"head", "w1"}
        assert manifest["cluster"]["configs"]
    finally:
        if srv is not None:
            srv.stop()
        cluster.shutdown()
    target = tmp_path / "restored"
    cli("restore", str(dest), "--data-dir", str(target))
    restored = ServerProcess(target, embedder="hash",
                             env={"MEMORAY_RATE_LIMIT_ENABLED": "false"}).start()
    try:
        assert export(restored.url, token) == before
    finally:
        restored.stop()


def submit_cluster(cluster: LocalCluster, *args: str) -> subprocess.CompletedProcess:
    """The job as a plain driver joined to the cluster (the documented alternative to `ray job
    submit`). Not `ray job submit` here: this harness's nodes share one /tmp, so every node's
    runtime-env agent manages the same working_dir cache, and a worker node's agent deletes the
    job's unpacked working dir while it runs (on real machines each node has its own)."""
    return subprocess.run([sys.executable, "-m", *args[:1], "--address", cluster.address,
                           *args[1:]], capture_output=True, text=True, env=cluster._env(),
                          timeout=600, cwd=ROOT)

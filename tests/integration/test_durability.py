"""Faults for real: a killed shard actor, a kill -9 of the server, a restart. No acknowledged
write may be lost."""

from __future__ import annotations

import asyncio
import os
import signal
import time

import pytest

from tests.server_process import ServerProcess, descendants, mcp_client


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    srv = ServerProcess(tmp_path_factory.mktemp("durable") / "data", embedder="hash").start()
    yield srv
    srv.stop()


async def _all_present(url: str, ids: list[str]) -> list[str]:
    async with mcp_client(url) as c:
        return list(await c.unreadable(ids))


def _seed(server, text: str, workspace: str, n: int) -> list[str]:
    async def go():
        async with mcp_client(server.mcp_url) as c:
            res = await c.call("capture-memories", items=[
                {"content": f"{text} {i}", "workspaceId": workspace} for i in range(n)])
            return [ids[0] for ids in res["ids"]]
    return asyncio.run(go())


def _ray_pids(server, prefix: bytes) -> list[int]:
    pids = []
    for pid in descendants(server.proc.pid):
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                if f.read().startswith(prefix):
                    pids.append(pid)
        except OSError:
            pass
    return sorted(pids)


def _shard_pids(server) -> list[int]:
    return _ray_pids(server, b"ray::ShardCore")


def test_the_server_starts_no_idle_ray_workers(server):
    """serve/launcher.py turns off Ray's prestarted workers: no memoray actor would take them."""
    assert len(_shard_pids(server)) == 2
    assert _ray_pids(server, b"ray::IDLE") == []


def test_every_shard_actor_mmaps_big_buffers_and_trims_its_heap(server):
    """Ray's worker setup hook (serve/launcher.py) starts memoray/heap.py's trimmer in each
    actor process, and each shard mmaps big buffers: RAM per memory depends on both."""
    async def stats():
        async with mcp_client(server.mcp_url) as c:
            return await c.call("memory-stats")
    shards = asyncio.run(stats())["shards"]
    assert len(shards) == 2, shards
    heaps = [s["heap"] for s in shards]  # the reply leaves out what is None (trimThreshold)
    assert all(h["trim"] is True and h["mmapThreshold"] == 65536
               and h.get("trimThreshold") is None for h in heaps), heaps


def test_killed_shard_actor_recovers_all_its_records(server):
    ids = _seed(server, "shard recovery record", "dur", 40)
    before = _shard_pids(server)
    assert len(before) == 2
    os.kill(before[0], signal.SIGKILL)  # the shard worker process dies mid-life
    deadline = time.time() + 90
    after = before
    while time.time() < deadline:
        after = _shard_pids(server)
        if len(after) == 2 and before[0] not in after:
            break
        time.sleep(0.5)
    assert len(after) == 2 and before[0] not in after, "Ray did not restart the shard"
    assert asyncio.run(_all_present(server.mcp_url, ids)) == []

    async def search():
        async with mcp_client(server.mcp_url) as c:
            return await c.call("retrieve-memories", query="shard recovery record 7", limit=40,
                                filters={"workspaceId": "dur"})
    assert len(asyncio.run(search())["memories"]) == 40


def test_kill9_during_captures_loses_no_acknowledged_write(server):
    acked: list[str] = []

    async def writer(stop_after: int):
        async with mcp_client(server.mcp_url) as c:
            i = 0
            while True:
                items = [{"content": f"kill nine record {i}-{j}", "workspaceId": "k9"}
                         for j in range(5)]
                try:
                    res = await c.call("capture-memories", items=items)
                except Exception:
                    return
                acked.extend(ids[0] for ids in res["ids"])
                i += 1
                if len(acked) >= stop_after:
                    return

    asyncio.run(writer(200))
    assert len(acked) >= 200

    async def writer_until_killed():
        # Keep writing while the server is killed under us: only acks count.
        task = asyncio.create_task(writer(10**9))
        await asyncio.sleep(1.5)
        server.kill9()
        try:
            await asyncio.wait_for(task, 60)
        except Exception:
            pass

    asyncio.run(writer_until_killed())
    server.start()
    missing = asyncio.run(_all_present(server.mcp_url, acked))
    assert missing == [], f"{len(missing)} of {len(acked)} acknowledged writes lost"


def test_graceful_restart_keeps_everything_and_snapshots(server):
    ids = _seed(server, "graceful record", "gr", 25)
    server.stop()
    assert (server.data_dir / "shards" / "000" / "hnsw.bin").exists()
    server.start()
    assert asyncio.run(_all_present(server.mcp_url, ids)) == []

    async def stats():
        async with mcp_client(server.mcp_url) as c:
            return await c.call("memory-stats")
    st = asyncio.run(stats())
    assert all(s["recovery"]["mode"] == "snapshot+replay" for s in st["shards"])

"""`memoray export` then `memoray import` (the real commands) between two real servers running
side by side: every record comes back identical (ids, timestamps, every field), a re-import
changes nothing, the imported store serves retrieval and documents. The source is filled with
5,000 memories through `capture-memories` with no token on loopback: one local user's import is
never rate limited."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys

import pytest

from tests.server_process import ROOT, ServerProcess, mcp_client

WS = "github.com/acme/transfer"
BULK = 5000


def run(coro):
    return asyncio.run(coro)


def memoray(*args: str, timeout: float = 300) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.run([sys.executable, "-m", "memoray.cli", *args], capture_output=True,
                          text=True, env=env, timeout=timeout, cwd=ROOT)


@pytest.fixture(scope="module")
def servers(tmp_path_factory):
    base = tmp_path_factory.mktemp("transfer")
    src = ServerProcess(base / "src", embedder="hash").start()
    try:
        dst = ServerProcess(base / "dst", embedder="hash").start()
    except Exception:
        src.stop()
        raise
    yield src, dst
    dst.stop()
    src.stop()


def _fill(url: str) -> dict:
    async def go():
        async with mcp_client(url) as c:
            for start in range(0, BULK, 1000):  # 5 batches of the maximum size, back to back
                res = await c.call("capture-memories", items=[
                    {"content": f"bulk memory {i}: touched module_{i % 97}.py",
                     "eventType": "tool_event", "workspaceId": WS, "sessionId": f"s{i % 7}",
                     "gitBranch": "main" if i % 2 else "feature/x"}
                    for i in range(start, start + 1000)])
                assert res["count"] == 1000
            decision = await c.call("capture-memory", eventType="decision", workspaceId=WS,
                                    content="We picked LMDB for the zanzibar store.",
                                    metadata={"why": ["crash-safe", "fast"], "n": 1.5},
                                    gitBranch="main", gitCommit="abc1234", tier="project",
                                    timestamp="2025-06-01T12:00:00Z")
            await c.call("capture-memory", eventType="note", workspaceId=WS, agentId="agent-7",
                         visibility="private", content="a private scratch note",
                         ttlSeconds=86400, idempotencyKey="idem-1")
            doc = await c.call("capture-memory", eventType="document", workspaceId="docs/ws",
                               content="\n\n".join(f"Section {i}: " + "lorem ipsum " * 120
                                                   for i in range(12)))
            merged = await c.call("upsert-memory", items=[
                {"content": "Deploys happen on Tuesdays.", "workspaceId": WS},
                {"content": "Deploys happen on Tuesdays!", "workspaceId": WS}],
                similarityThreshold=0.5)
            return {"decision": decision["id"], "parent": doc["parentId"], "merged": merged}
    return run(go())


def _records(path) -> tuple[dict, dict[str, dict]]:
    lines = path.read_text().splitlines()
    header = json.loads(lines[0])
    recs = [json.loads(line) for line in lines[1:]]
    by_id = {r["id"]: r for r in recs}
    assert len(by_id) == len(recs)
    return header, by_id


def test_export_import_identical_and_idempotent(servers, tmp_path):
    src, dst = servers
    ids = _fill(src.mcp_url)
    assert ids["merged"]["merged"] == 1

    out = memoray("export", "--url", src.url, "-o", str(tmp_path / "a.jsonl"))
    assert out.returncode == 0, out.stderr
    header, exported = _records(tmp_path / "a.jsonl")
    assert header["format"] == "memoray-export" and header["version"] == 1
    assert f"exported {len(exported)} memories" in out.stderr
    chunks = sum(1 for r in exported.values() if r.get("parent_id") == ids["parent"])
    assert chunks >= 2 and len(exported) == BULK + 3 + chunks  # + decision, private, merged
    private = [r for r in exported.values() if r.get("visibility") == "private"]
    assert len(private) == 1 and private[0]["expires_at"] and private[0]["idempotency_key"]
    assert any(r.get("merge_count", 1) == 2 and r.get("previous_content")
               for r in exported.values())
    assert exported[ids["decision"]]["timestamp"] == 1748779200.0

    out = memoray("import", str(tmp_path / "a.jsonl"), "--url", dst.url)
    assert out.returncode == 0, out.stderr
    print(out.stderr.strip().splitlines()[-1])  # the summary line, with its rate (pytest -s)
    assert "importing" in out.stderr and "100%" in out.stderr  # the progress bar
    assert (f"imported {len(exported)} memories" in out.stderr
            and f"{len(exported)} created, 0 updated, 0 unchanged" in out.stderr), out.stderr

    out = memoray("export", "--url", dst.url, "-o", str(tmp_path / "b.jsonl"))
    assert out.returncode == 0, out.stderr
    _, imported = _records(tmp_path / "b.jsonl")
    assert imported.keys() == exported.keys()
    diff = [k for k in exported if exported[k] != imported[k]]
    assert not diff, (exported[diff[0]], imported[diff[0]])

    out = memoray("import", str(tmp_path / "a.jsonl"), "--url", dst.url, "--quiet")
    assert out.returncode == 0, out.stderr
    assert f"0 created, 0 updated, {len(exported)} unchanged" in out.stderr
    _, again = _records(tmp_path / "b.jsonl")
    assert again == imported

    async def check():
        async with mcp_client(dst.mcp_url) as c:
            got = await c.call("get-memory", id=ids["decision"])
            assert got["content"] == "We picked LMDB for the zanzibar store."
            assert got["timestamp"].startswith("2025-06-01T12:00:00")
            hits = await c.call("retrieve-memories", query="zanzibar store", limit=3,
                                filters={"workspaceId": WS})
            assert hits["memories"][0]["id"] == ids["decision"]
            doc = await c.call("get-document", id=ids["parent"])
            assert doc["complete"] and doc["content"].startswith("Section 0: lorem")
            stats = await c.call("memory-stats")
            assert stats["total"] == len(exported)
    run(check())

    # The search table and status read the imported server.
    out = memoray("search", "zanzibar store", "--url", dst.url, "--workspace", WS)
    assert out.returncode == 0 and "We picked LMDB" in out.stdout.splitlines()[2]
    out = memoray("status", "--url", dst.url)
    assert out.returncode == 0 and f"memories     {len(exported)}" in out.stdout
    assert str(dst.data_dir) in out.stdout


def test_bad_import_changes_nothing(servers, tmp_path):
    _src, dst = servers
    before = memoray("status", "--url", dst.url, "--json")
    total = json.loads(before.stdout)["stats"]["total"]
    f = tmp_path / "bad.jsonl"
    good = {"id": "01ARZ3NDEKTSV4RRFFQ69G5FAV", "content": "fine", "event_type": "note",
            "workspace_id": "w", "timestamp": 1.0}
    f.write_text(json.dumps({"format": "memoray-export", "version": 1}) + "\n"
                 + json.dumps(good) + "\n" + json.dumps({**good, "id": "bad"}) + "\n")
    out = memoray("import", str(f), "--url", dst.url)
    assert out.returncode == 1 and "records[1].id" in out.stderr
    assert len(out.stderr.strip().splitlines()[-1:]) == 1 and "Traceback" not in out.stderr
    after = json.loads(memoray("status", "--url", dst.url, "--json").stdout)["stats"]["total"]
    assert after == total

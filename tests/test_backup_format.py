"""The backup format and restore without Ray: shards streamed chunk by chunk from in-process
ShardCores (the same code path the backup job runs over Ray), then verified and restored;
every way a backup can be bad is refused with a clear error and changes nothing."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from memoray import backup as bk
from memoray.actors.shard import ShardCore
from memoray.actors.shard_client import ShardSet
from memoray.actors.webhook_store import WebhookStore
from memoray.audit import AuditLog
from memoray.auth import TokenStore
from memoray.cluster.jobs.backup import stream_shard
from memoray.embedding import HashEmbedder
from memoray.layout import open_layout
from memoray.webhooks.models import Subscription
from tests.test_shard import rec

EMB = HashEmbedder()
ROOT = Path(__file__).resolve().parents[1]


def make_store(data: Path, n: int = 40) -> tuple[list[ShardCore], list[dict]]:
    layout = open_layout(data, shards=2, dim=EMB.dim, embedder="hash")
    cores = [ShardCore(i, data / "shards" / f"{i:03d}", EMB.dim, map_size=64 << 20)
             for i in range(layout.shards)]
    shards = ShardSet.of(cores)
    records = [rec(f"backup fact {i} about the heron pipeline") for i in range(n)]
    for r in records:
        shards.for_id(r["id"]).target.put([r], EMB.embed([r["content"]]))
    TokenStore(data / "tokens.json").create("ci", "*", "read,write,admin")
    log = AuditLog(data / "audit" / "audit.log")
    log.append_many([log.entry("ci", "capture", workspace="ws", ids=[r["id"]])
                     for r in records])
    hooks = WebhookStore(data / "webhooks")
    hooks.put_sub(Subscription(id="sub_1", workspace_id="ws", url="https://example.com/h",
                               events=["memory.created"], created_at=1.0), "whsec_test")
    hooks.close()
    (data / "archive").mkdir()
    (data / "archive" / "2026-11.jsonl").write_text('{"id": "x"}\n')
    return cores, records


def take_backup(cores: list[ShardCore], data: Path, dest: Path, chunk: int = 4096) -> dict:
    writer = bk.BackupWriter(dest)
    shards = ShardSet.of(cores)
    async def each():
        return await asyncio.gather(*[stream_shard(i, s, writer, chunk)
                                      for i, s in enumerate(shards.clients)])

    parts = asyncio.run(each())
    files = bk.state_files(data)
    for rel, blob in files.items():
        writer.write_bytes(rel, blob)
    layout = json.loads(files["memoray.json"])
    return writer.finish(bk.Manifest(created="now", store_id=layout["store_id"], layout=layout,
                                     shards=list(parts), records=sum(p["records"] for p in parts)))


@pytest.fixture
def store(tmp_path):
    data = tmp_path / "data"
    cores, records = make_store(data)
    manifest = take_backup(cores, data, tmp_path / "backup")
    return data, cores, records, tmp_path / "backup", manifest


def test_backup_streams_every_shard_and_restore_is_identical(store, tmp_path):
    data, cores, records, backup, manifest = store
    assert manifest["format"] == bk.FORMAT and manifest["version"] == bk.VERSION
    assert manifest["records"] == len(records)
    paths = {f["path"] for f in manifest["files"]}
    assert {"memoray.json", "tokens.json", "audit/audit.log", "archive/2026-11.jsonl",
            "webhooks/data.mdb",
            "shards/000/data.mdb", "shards/001/data.mdb"} <= paths
    # the shard's temporary copies are gone once streamed
    assert not any(list((data / "shards" / f"{i:03d}" / "exports").glob("*/data.mdb"))
                   for i in range(2))

    target = tmp_path / "restored"
    report = bk.restore_backup(backup, target)
    assert report["records"] == len(records) and report["store_id"] != manifest["store_id"]
    restored = [ShardCore(i, target / "shards" / f"{i:03d}", EMB.dim, map_size=64 << 20)
                for i in range(2)]
    for r in records:
        assert ShardSet.of(restored).for_id(r["id"]).target.get([r["id"]])[0] == \
            ShardSet.of(cores).for_id(r["id"]).target.get([r["id"]])[0]
    assert (target / "tokens.json").read_bytes() == (data / "tokens.json").read_bytes()
    assert (target / "audit" / "audit.log").read_bytes() == \
        (data / "audit" / "audit.log").read_bytes()
    assert json.loads((target / "memoray.json").read_text())["shards"] == 2
    assert TokenStore(target / "tokens.json").enabled
    hooks = WebhookStore(target / "webhooks")
    assert list(hooks.subs()) == ["sub_1"] and hooks.secret(hooks.subs()["sub_1"]) == "whsec_test"
    hooks.close()


def test_keep_store_id_on_request(store, tmp_path):
    _, _, _, backup, manifest = store
    report = bk.restore_backup(backup, tmp_path / "same", keep_store_id=True)
    assert report["store_id"] == manifest["store_id"]


def _unchanged(path: Path) -> dict[str, bytes]:
    return {str(p.relative_to(path)): p.read_bytes() for p in path.rglob("*") if p.is_file()}


@pytest.mark.parametrize("damage, message", [
    (lambda b: (b / "shards/001/data.mdb").write_bytes(
        (b / "shards/001/data.mdb").read_bytes()[:-10] + b"0123456789"), "checksum"),
    (lambda b: (b / "tokens.json").unlink(), "missing"),
    (lambda b: (b / "audit/audit.log").write_bytes(b"{}\n"), "bytes"),
    (lambda b: (b / "manifest.json").write_text("{not json"), "not valid JSON"),
    (lambda b: (b / "manifest.json").unlink(), "no manifest.json"),
    (lambda b: _edit_manifest(b, version=bk.VERSION + 1), "upgrade memoray"),
    (lambda b: _edit_manifest(b, files=[f for f in json.loads(
        (b / "manifest.json").read_text())["files"] if f["path"] != "shards/000/data.mdb"]),
     "lacks shard 0"),
    (lambda b: _edit_manifest(b, files=[{"path": "../../etc/passwd", "bytes": 1,
                                         "sha256": "0"}]), "unsafe path"),
])
def test_a_bad_backup_is_refused_and_changes_nothing(store, tmp_path, damage, message):
    _, _, _, backup, _ = store
    damage(backup)
    target = tmp_path / "target"
    target.mkdir()
    with pytest.raises(bk.BadBackup, match=message):
        bk.restore_backup(backup, target)
    assert list(target.iterdir()) == []
    assert not list(tmp_path.glob(".target.restoring-*"))


def _edit_manifest(backup: Path, **changes) -> None:
    m = json.loads((backup / "manifest.json").read_text())
    m.update(changes)
    (backup / "manifest.json").write_text(json.dumps(m))


def test_a_non_empty_target_is_refused_unless_forced(store, tmp_path):
    data, _, records, backup, _ = store
    target = tmp_path / "busy"
    target.mkdir()
    (target / "keep.txt").write_text("mine")
    with pytest.raises(bk.MemorayError, match="not empty"):
        bk.restore_backup(backup, target)
    assert _unchanged(target) == {"keep.txt": b"mine"}
    report = bk.restore_backup(backup, target, force=True)
    assert report["records"] == len(records)
    assert (Path(report["replaced_kept_at"]) / "keep.txt").read_text() == "mine"
    # a live server on the target: refused even with --force
    (target / "run.json").write_text(json.dumps({"pid": os.getpid()}))
    with pytest.raises(bk.MemorayError, match="stop it first"):
        bk.restore_backup(backup, target, force=True)


def test_backup_refuses_a_non_empty_destination(tmp_path):
    (tmp_path / "d").mkdir()
    (tmp_path / "d" / "x").write_text("x")
    with pytest.raises(bk.MemorayError, match="not empty"):
        bk.BackupWriter(tmp_path / "d")


def test_a_torn_stream_fails_the_backup(tmp_path):
    writer = bk.BackupWriter(tmp_path / "b")
    f = writer.open_stream("shards/000/data.mdb")
    f.write(b"half")
    with pytest.raises(bk.MemorayError, match="received 4 bytes"):
        f.close("0" * 64, 8)
    writer.abort()
    assert not (tmp_path / "b").exists()


def test_cli_restore_verifies_and_reports_in_one_line(store, tmp_path):
    _, _, records, backup, _ = store
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    cli = [sys.executable, "-m", "memoray.cli", "restore", str(backup)]
    ok = subprocess.run(cli + ["--verify-only"], capture_output=True, text=True, env=env)
    assert ok.returncode == 0 and "is intact" in ok.stdout
    out = subprocess.run(cli + ["--data-dir", str(tmp_path / "new")], capture_output=True,
                         text=True, env=env)
    assert out.returncode == 0, out.stderr
    assert f"restored {len(records)} records in 2 shards" in out.stdout
    again = subprocess.run(cli + ["--data-dir", str(tmp_path / "new")], capture_output=True,
                           text=True, env=env)
    assert again.returncode == 1
    assert again.stderr.startswith("memoray: ") and "not empty" in again.stderr
    assert len(again.stderr.strip().splitlines()) == 1

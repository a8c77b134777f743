"""Encryption at rest, end to end: a real server with MEMORAY_ENCRYPTION_KEY, its files on disk,
restarts without the key, with it, and a key rotation.

The tests run in order on one data directory (each phase needs the previous one's store):
  control       a server without a key: the plaintext IS in the shard files (the scan works)
  encrypted     a server with key K1: the same kind of plaintext is in no file under the store
  no key        restart without a key: the server refuses to start, saying "store is encrypted"
  rotation      restart with "K2,K1": everything readable, rotate-encryption reseals it; restart
                with K2 alone: everything still readable, and still no plaintext on disk
"""

from __future__ import annotations

import asyncio
import base64
import os
import time
from pathlib import Path

import pytest

from tests.server_process import ServerProcess, mcp_client

K1 = base64.b64encode(os.urandom(32)).decode()
K2 = base64.b64encode(os.urandom(32)).decode()
WS = "enc-ws"

# Distinctive plaintext: content, metadata values, and record fields (branch, session).
CONTENT_WORDS = ["ultramarinepangolin", "quasarmarmalade"]
META_WORDS = ["heliotropebanana", "zeppelinfluorine"]
FIELD_WORDS = ["ocelotbranchname", "narwhalsessionid"]
DOC_WORD = "tangerinecathedral"  # inside a long document that is stored as chunks


def run(coro):
    return asyncio.run(coro)


def _items(tag: str) -> list[dict]:
    return [
        {"content": f"{tag} the {CONTENT_WORDS[0]} decision: cache invoices for {CONTENT_WORDS[1]}",
         "metadata": {"project": META_WORDS[0], "nested": {"note": META_WORDS[1]}},
         "gitBranch": f"feature/{FIELD_WORDS[0]}", "sessionId": FIELD_WORDS[1],
         "workspaceId": WS, "eventType": "decision"},
        {"content": (f"{tag} chapter on the {DOC_WORD}. " + "Nothing else of note here. " * 30
                     + "\n\n") * 12, "workspaceId": WS, "eventType": "document"},
    ]


ALL_WORDS = [*CONTENT_WORDS, *META_WORDS, *FIELD_WORDS, DOC_WORD]


def _scan(root: Path, words: list[str]) -> dict[str, list[str]]:
    """word -> files (relative to root) whose raw bytes contain it."""
    found: dict[str, list[str]] = {}
    for p in sorted(root.rglob("*")):
        if not p.is_file():
            continue
        blob = p.read_bytes()
        for w in words:
            if w.encode() in blob:
                found.setdefault(w, []).append(str(p.relative_to(root)))
    return found


async def _capture(url: str, tag: str) -> list[str]:
    ids = []
    async with mcp_client(url) as c:
        for item in _items(tag):
            res = await c.call("capture-memory", **item)
            ids.extend(res["ids"])
    return ids


async def _read_all(url: str, ids: list[str]) -> list[dict]:
    async with mcp_client(url) as c:
        return await c.call_many("get-memory", [{"id": mid} for mid in ids])


class State:
    data: Path
    ids: list[str]
    contents: dict[str, str]


@pytest.fixture(scope="module")
def state(tmp_path_factory) -> State:
    s = State()
    s.data = tmp_path_factory.mktemp("encryption") / "data"
    s.ids, s.contents = [], {}
    return s


def _server(data: Path, key: str | None) -> ServerProcess:
    assert "MEMORAY_ENCRYPTION_KEY" not in os.environ  # the server must not inherit one
    env = {"MEMORAY_ENCRYPTION_KEY": key} if key else {}
    return ServerProcess(data, embedder="hash", shards=2, env=env)


def _start(data: Path, key: str | None) -> ServerProcess:
    return _server(data, key).start()


def test_control_without_key_plaintext_is_on_disk(tmp_path_factory):
    data = tmp_path_factory.mktemp("plain") / "data"
    srv = _start(data, None)
    try:
        ids = run(_capture(srv.url + "/mcp", "control"))
        got = run(_read_all(srv.url + "/mcp", ids[:1]))
        assert CONTENT_WORDS[0] in got[0]["content"]
    finally:
        srv.stop()
    found = _scan(data / "shards", ALL_WORDS)
    assert set(found) == set(ALL_WORDS), f"the scan should see every word unencrypted: {found}"


def test_encrypted_store_holds_no_plaintext(state):
    srv = _start(state.data, K1)
    try:
        state.ids = run(_capture(srv.mcp_url, "sealed"))
        for rec in run(_read_all(srv.mcp_url, state.ids)):
            state.contents[rec["id"]] = rec["content"]
        first = state.contents[state.ids[0]]
        assert CONTENT_WORDS[0] in first and CONTENT_WORDS[1] in first
        live = _scan(state.data / "shards", ALL_WORDS)  # while running (LMDB pages written)
    finally:
        srv.stop()
    after = _scan(state.data, ALL_WORDS)  # after shutdown: snapshots too, and the whole data dir
    assert not live, f"plaintext in the shard files of an encrypted store: {live}"
    assert not after, f"plaintext in the data dir of an encrypted store: {after}"


def test_restart_without_key_refuses_to_start(state):
    assert state.ids, "needs the encrypted store of the previous test"
    srv = _server(state.data, None)
    t0 = time.monotonic()
    with pytest.raises((RuntimeError, TimeoutError)) as info:
        srv.start(timeout=150)
    took = time.monotonic() - t0
    rc = srv.proc.poll() if srv.proc is not None else None
    srv.kill9()  # reaps whatever Ray left behind
    log = srv.tail(200_000)
    assert "store is encrypted; set MEMORAY_ENCRYPTION_KEY" in log, log[-3000:]
    assert "exited early" in str(info.value), "the server should exit, not hang"
    assert rc not in (None, 0), f"exit status {rc}"
    print(f"\nwithout the key: exit status {rc} after {took:.1f}s")


def test_rotation_then_new_key_alone_reads_everything(state):
    assert state.ids, "needs the encrypted store of the previous tests"
    srv = _start(state.data, f"{K2},{K1}")
    try:
        # with the old key still in the ring, the data is readable
        got = run(_read_all(srv.mcp_url, state.ids))
        assert {r["id"]: r["content"] for r in got} == state.contents

        async def rotate():
            async with mcp_client(srv.mcp_url) as c:
                return await c.call("rotate-encryption")

        report = run(rotate())
        assert report["resealed"] == len(state.ids), report
        assert run(rotate())["resealed"] == 0  # idempotent: nothing left under the old key
    finally:
        srv.stop()
    srv = _start(state.data, K2)
    try:
        got = run(_read_all(srv.mcp_url, state.ids))
        assert {r["id"]: r["content"] for r in got} == state.contents
        got0 = next(r for r in got if r["id"] == state.ids[0])
        assert got0["metadata"]["project"] == META_WORDS[0]
        assert got0["gitBranch"] == f"feature/{FIELD_WORDS[0]}"

        async def search():
            async with mcp_client(srv.mcp_url) as c:
                return await c.call("retrieve-memories", query=CONTENT_WORDS[0],
                                    filters={"workspaceId": WS}, mode="lexical")

        assert run(search())["memories"][0]["id"] == state.ids[0]
    finally:
        srv.stop()
    assert not _scan(state.data, ALL_WORDS)

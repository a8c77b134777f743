"""Issue 13, the holes an adversarial test found, each at the depth where it lives (unit level;
the transport and multi-principal points are in tests/integration/test_hardening_server.py)."""

from __future__ import annotations

import asyncio
import os
import shutil
import subprocess
import uuid

import numpy as np
import pytest

from memoray.actors.shard import ShardCore
from memoray.auth import TokenStore, authenticate
from memoray.embedding import HashEmbedder
from memoray.errors import ErrorCode, MemorayError
from memoray.lifecycle import merged_retention
from memoray.models import CaptureItem
from memoray.prepare import prepare_item
from memoray.redaction import Redactor
from memoray.timeutil import to_iso
from tests.service_harness import caller, item, make_service

SECRET = "ghp_" + "a1B2c3D4e5F6g7H8i9J0k1L2m3N4o5P6q7R8"


def run(coro):
    return asyncio.run(coro)


# 1. Revoking the last token never switches auth off --------------------------------------------
def test_revoking_the_last_token_keeps_the_store_closed(tmp_path):
    store = TokenStore(tmp_path / "tokens.json", reload_interval=0)
    token = store.create("alice", "w1", "read")
    assert store.revoke(token)
    assert store.enabled, "a store that has had tokens stays closed"
    for header in (None, f"Bearer {token}"):
        with pytest.raises(MemorayError) as err:
            authenticate(store, header)
        assert err.value.code == ErrorCode.UNAUTHORIZED
    store.open_store()  # the explicit operator step
    assert not store.enabled
    assert authenticate(store, None).name == "local"


def test_opening_is_refused_while_a_live_token_exists(tmp_path):
    store = TokenStore(tmp_path / "tokens.json", reload_interval=0)
    store.create("alice", "w1", "read")
    with pytest.raises(MemorayError, match="revoke the live tokens first"):
        store.open_store()
    assert store.enabled


# 2. The agent is the token's ---------------------------------------------------------------------
def test_token_binds_an_agent_default_the_principal(tmp_path):
    store = TokenStore(tmp_path / "tokens.json", reload_interval=0)
    a = store.verify(store.create("alice", "w1", "read,write"))
    b = store.verify(store.create("bob", "w1", "read,write", agent="bob-laptop"))
    assert a.agent == "alice" and b.agent == "bob-laptop"


# 6. An anonymized private memory stays private -----------------------------------------------------
def test_private_memory_without_agent_is_visible_to_no_caller(tmp_path):
    svc = make_service(tmp_path)
    rec = {"workspace_id": "ws", "visibility": "private", "agent_id": None}
    assert not svc.can_see(caller(None), rec)
    assert not svc.can_see(caller("someone"), rec)
    assert svc.can_see(caller("owner"), {**rec, "agent_id": "owner"})


# 7. Every stored string is redacted -------------------------------------------------------------
def test_secret_keys_redact_any_value_type():
    red = Redactor()
    meta = {"password": 12345678, "apiKey": [SECRET, "x"], "credentials": {"user": "u"},
            "token": True, "note": "fine"}
    out, counts = red.redact_value(meta)
    assert out["password"] != 12345678 and SECRET not in str(out["apiKey"])
    assert out["credentials"] != {"user": "u"} and out["note"] == "fine"
    assert counts["secret_assignment"] == 3


def test_identifiers_are_redacted():
    it = CaptureItem(content="c", workspace_id="w", session_id=SECRET,
                     git_branch=f"fix/{SECRET}", agent_id=f"agent:{SECRET}")
    prep = prepare_item(it, 1.0, shards=2, redactor=Redactor())
    rec = prep.records[0]
    for field in ("session_id", "git_branch", "agent_id"):
        assert SECRET not in rec[field], field
    assert sum(prep.redactions.values()) >= 3


# 11. Timestamps are range-checked at the edge; a bad stored one never breaks a query ----------
@pytest.mark.parametrize("ts", ["9999-12-31T23:59:59-14:00", "0001-01-01T00:00:00+14:00"])
def test_out_of_range_timestamps_refused(ts):
    with pytest.raises(ValueError, match="outside years 1-9999"):
        CaptureItem(content="c", workspace_id="w", timestamp=ts)


def test_unrenderable_stored_timestamp_does_not_break_rendering():
    assert to_iso(1e300) == "9999-12-31T23:59:59Z" and to_iso(-1e300).startswith("0001")


# 12. A delete wins over a racing merge -----------------------------------------------------------
def test_merge_never_resurrects_a_deleted_record(tmp_path):
    emb = HashEmbedder()
    core = ShardCore(0, tmp_path, emb.dim, map_size=64 << 20, durable=False)
    rec = {"id": "01ARZ3NDEKTSV4RRFFQ69G5FAV", "content": "the old text", "event_type": "note",
           "metadata": {}, "workspace_id": "w", "tier": "project", "timestamp": 1.0}
    vec = emb.embed(["x"])
    core.put([rec], vec)
    core.delete([rec["id"]])
    merged = {**rec, "content": "new", "previous_content": "the old text"}
    assert core.merge(merged, vec[0]) is False
    assert core.get([rec["id"]]) == [None] and len(core.postings) == 0
    core.put([rec], vec)
    assert core.merge(merged, vec[0]) is True and core.get([rec["id"]])[0]["content"] == "new"
    core.close()


def test_upsert_after_delete_creates_instead_of_resurrecting(tmp_path):
    svc = make_service(tmp_path, shards=1)
    first = run(svc.upsert([item("use postgres 16 for the api database")], caller()))
    mid = first["items"][0]["id"]
    run(svc.delete(caller(), mid))

    async def racing_delete(original):
        async def merge(record, vector):  # the delete lands between the search and the write
            await svc.backend.shards[0].delete([record["id"]])
            return await original(record, vector)
        return merge

    shard = svc.backend.shards[0]
    run(svc.upsert([item("use postgres 16 for the api database")], caller()))  # re-created
    again = run(svc.upsert([item("we use postgres 16 for the api database")], caller()))
    target = again["items"][0]["id"]
    shard.merge = run(racing_delete(shard.merge))
    out = run(svc.upsert([item("use postgres 16 for the api database, we decided")], caller()))
    assert out["items"][0]["action"] == "created" and out["items"][0]["id"] != target
    assert run(shard.get([target])) == [None]


# 13. A merge keeps the stronger retention and the more specific type -------------------------------
def test_merged_retention():
    old = {"event_type": "tool_event", "tier": "session", "expires_at": 100.0}
    got = merged_retention(old, "decision", "project", None)
    assert got == {"event_type": "decision", "tier": "project", "expires_at": None}
    old = {"event_type": "decision", "tier": "project", "expires_at": None}
    assert merged_retention(old, "tool_event", "session", 50.0) == old


def test_upsert_merge_of_a_decision_into_a_tool_event_keeps_the_decision(tmp_path):
    svc = make_service(tmp_path, shards=1)
    a = run(svc.upsert([item("ran pytest: the limiter stays in process, no redis",
                             event_type="tool_event")], caller()))
    b = run(svc.upsert([item("the limiter stays in process, no redis: ran pytest",
                             event_type="decision")], caller(), ))
    assert b["items"][0]["action"] == "merged" and b["items"][0]["id"] == a["items"][0]["id"]
    rec = run(svc.backend.shards[0].get([a["items"][0]["id"]]))[0]
    assert rec["event_type"] == "decision" and rec["expires_at"] is None
    assert rec["tier"] == "project"


# 10. A full disk answers STORAGE_FULL, and what was acknowledged stays ----------------------------
def test_full_disk_is_storage_full(tmp_path):
    if os.geteuid() != 0 or shutil.which("mount") is None:
        pytest.skip("mounting a small tmpfs needs root")
    mnt = tmp_path / "small"
    mnt.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=2m", "tmpfs", str(mnt)]).returncode:
        pytest.skip("tmpfs mount refused here")
    try:
        emb = HashEmbedder()
        core = ShardCore(0, mnt / "shard", emb.dim, map_size=256 << 20, durable=True)
        stored, err = [], None
        rng = np.random.default_rng(0)
        for n in range(2000):
            recs = [{"id": str(uuid.uuid4()).replace("-", "")[:26].upper(), "event_type": "note",
                     "content": "x" * 2000 + str(n), "metadata": {}, "workspace_id": "w",
                     "tier": "project", "timestamp": 1.0}]
            try:
                core.put(recs, rng.normal(size=(1, emb.dim)).astype(np.float32))
                stored.append(recs[0]["id"])
            except MemorayError as exc:
                err = exc
                break
        assert err is not None and err.code == ErrorCode.STORAGE_FULL, err
        assert stored and all(r is not None for r in core.get(stored))
    finally:
        subprocess.run(["umount", "-l", str(mnt)])


# 9. A batch across shards: per-item outcomes, and a keyed retry stores nothing twice -----------
def test_batch_reports_per_item_outcomes_and_keyed_retry_stores_nothing_twice(tmp_path):
    svc = make_service(tmp_path, shards=2)
    failing = svc.backend.shards[1]
    original = failing.put

    async def full(records, vectors):
        raise MemorayError(ErrorCode.STORAGE_FULL, "disk is full")

    failing.put = full
    items = [item(f"fact number {n}", idempotency_key=f"k{n}") for n in range(20)]
    out = run(svc.capture(items, caller()))
    ok = [r for r in out if "error" not in r]
    bad = [r for r in out if "error" in r]
    assert ok and bad and all(r["error"]["code"] == "STORAGE_FULL" for r in bad)
    assert sum(len(c.postings) for c in svc.cores) == len(ok)
    failing.put = original  # the disk has room again: the client retries the whole batch
    again = run(svc.capture(items, caller()))
    assert all("error" not in r for r in again)
    assert sum(len(c.postings) for c in svc.cores) == 20  # nothing stored twice
    assert [r["ids"] for r in again if r["deduplicated"]] == [r["ids"] for r in ok]


# 15. Document chunk keys live in their own namespace; a retried document stores nothing --------
def test_chunk_keys_cannot_be_taken_and_a_retried_document_adds_nothing(tmp_path):
    svc = make_service(tmp_path, shards=2)
    doc = "\n\n".join(f"Section {n}. " + "The payments roadmap in detail. " * 60
                      for n in range(6))
    first = run(svc.capture([item(doc, idempotency_key="K")], caller()))[0]
    assert first["chunks"] >= 3
    other = run(svc.capture([item("an unrelated note", idempotency_key="K#0")], caller()))[0]
    assert other["ids"][0] not in first["ids"] and not other["deduplicated"]
    total = sum(len(c.postings) for c in svc.cores)
    longer = run(svc.capture([item(doc + "\n\nSection 99. " + "More text. " * 400,
                                   idempotency_key="K")], caller()))[0]
    assert longer["deduplicated"] and longer["parentId"] == first["parentId"]
    assert longer["ids"] == first["ids"]
    assert sum(len(c.postings) for c in svc.cores) == total
    assert run(svc.get_document(caller(), first["parentId"]))["content"] == doc
    with pytest.raises(ValueError, match="control characters"):
        CaptureItem(content="x", workspace_id="w", idempotency_key="K\x1f1")


# 16. Two replicas upserting the same new fact at once store it once ------------------------------
def test_concurrent_upserts_of_one_new_fact_from_two_replicas_store_it_once(tmp_path):
    from memoray.serve.service import MemoryService

    svc = make_service(tmp_path, shards=2)
    # A second replica over the same shards: its own upsert locks, like another Serve replica.
    other = MemoryService(svc.settings, svc.backend, redactor=svc.redactor)

    async def both():
        fact = "the billing job retries three times with jitter"
        return await asyncio.gather(svc.upsert([item(fact)], caller()),
                                    other.upsert([item(fact)], caller()))

    a, b = run(both())
    assert a["items"][0]["id"] == b["items"][0]["id"]
    assert sorted([a["items"][0]["action"], b["items"][0]["action"]]) == ["created", "unchanged"]
    assert sum(len(c.postings) for c in svc.cores) == 1


# 14. Upserts compare against every wording a memory absorbed ------------------------------------
class TableEmbedder:
    """Fixed vectors per text: three paraphrases with cos(P1,P2)=0.93, cos(P2,P3)=0.85,
    cos(P1,P3)=0.80 (the issue's MiniLM figures), so the test does not depend on a model."""

    name = "table"
    dim = 3

    def __init__(self):
        a = np.array([1.0, 0.0, 0.0])
        b = np.array([0.93, np.sqrt(1 - 0.93 ** 2), 0.0])
        # c: cos(c, b) = 0.85, cos(c, a) = 0.80
        cx = 0.80
        cy = (0.85 - 0.93 * cx) / np.sqrt(1 - 0.93 ** 2)
        c = np.array([cx, cy, np.sqrt(max(0.0, 1 - cx ** 2 - cy ** 2))])
        self.table = {"P1": a, "P2": b, "P3": c}

    def embed(self, texts):
        out = []
        for t in texts:
            key = next((k for k in self.table if t.startswith(k)), None)
            out.append(self.table[key] if key else np.array([0.0, 0.0, 1.0]))
        return np.asarray(out, dtype=np.float32)


def test_a_paraphrase_matching_an_absorbed_wording_merges(tmp_path):
    emb = TableEmbedder()
    assert abs(float(emb.embed(["P1"])[0] @ emb.embed(["P3"])[0]) - 0.80) < 1e-6
    svc = make_service(tmp_path, shards=1, embedder=emb)
    ids = set()
    # P2 first, then P3 merges into it (0.85), then P1: 0.80 to the newest wording (P3), but
    # 0.93 to the absorbed P2; before wordings were kept this made a second memory.
    for text in ("P2 the api pins pandas to 2.2", "P3 pandas stays pinned at 2.2 for the api",
                 "P1 we pin pandas 2.2 in the api"):
        out = run(svc.upsert([item(text)], caller(), threshold=0.85))
        ids.add(out["items"][0]["id"])
    assert len(ids) == 1 and sum(len(c.postings) for c in svc.cores) == 1
    rec = run(svc.backend.shards[0].get(list(ids)))[0]
    assert rec["merge_count"] == 3

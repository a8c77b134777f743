"""Routing (memoray/routing.py): jump consistent hash moves the minimum, deterministically; the
modulo routing of older stores is unchanged; a record's home keeps documents and keys together;
the layout records the placement (version 3) and migrates version 2 in place."""

from __future__ import annotations

import hashlib
import json

import jump
import pytest

from memoray.errors import MemorayError
from memoray.ids import new_id, new_id_on_shard, shard_for
from memoray.layout import LAYOUT_VERSION, open_layout, read_layout, write_placement
from memoray.routing import (
    JUMP,
    MODULO,
    Placement,
    Routing,
    home_key,
    home_keys,
    key_hash,
    moved_fraction,
)

KEYS = [f"key-{i}" for i in range(30000)]


@pytest.mark.parametrize("n", [2, 4, 8])
def test_growing_by_one_moves_about_one_in_n_plus_one_and_only_to_the_new_shard(n):
    before, after = Routing(JUMP, n), Routing(JUMP, n + 1)
    frac = moved_fraction(KEYS, before, after)
    assert abs(frac - 1 / (n + 1)) < 0.015, frac
    for k in KEYS[:5000]:
        if before.owner(k) != after.owner(k):
            assert after.owner(k) == n  # nothing moves between old shards


def test_shrinking_by_one_moves_only_the_last_shards_records():
    before, after = Routing(JUMP, 3), Routing(JUMP, 2)
    for k in KEYS[:5000]:
        if before.owner(k) != after.owner(k):
            assert before.owner(k) == 2
    assert abs(moved_fraction(KEYS, before, after) - 1 / 3) < 0.015


def test_modulo_moves_most_records_which_is_why_new_stores_use_jump():
    assert moved_fraction(KEYS, Routing(MODULO, 2), Routing(MODULO, 3)) > 0.6
    assert moved_fraction(KEYS, Routing(MODULO, 4), Routing(MODULO, 5)) > 0.75


def test_balanced():
    r = Routing(JUMP, 5)
    counts = [0] * 5
    for k in KEYS:
        counts[r.owner(k)] += 1
    assert max(counts) / min(counts) < 1.1, counts


def test_deterministic_across_implementations_and_pinned():
    """The C extension and the pure-Python fallback agree, and the owners are pinned: a change
    here would strand every stored record."""
    for k in KEYS[:2000]:
        h = key_hash(k)
        for n in (1, 2, 3, 7, 100):
            assert jump.py_hash(h, n) == jump.hash(h, n)
    assert [Routing(JUMP, 5).owner(f"pin-{i}") for i in range(8)] == [
        jump.py_hash(key_hash(f"pin-{i}"), 5) for i in range(8)]
    assert key_hash("pin") == int.from_bytes(
        hashlib.blake2b(b"pin", digest_size=8).digest(), "big")
    assert [Routing(JUMP, 5).owner(f"pin-{i}") for i in range(8)] == PINNED_JUMP_5


PINNED_JUMP_5 = [4, 3, 1, 4, 0, 3, 0, 4]


def test_modulo_is_the_old_shard_for():
    for _ in range(200):
        mid = new_id()
        old = int.from_bytes(hashlib.blake2b(mid.encode(), digest_size=8).digest(), "big") % 3
        assert Routing(MODULO, 3).owner(mid) == old == shard_for(mid, 3)


def test_ids_minted_for_a_routing_land_on_their_shard():
    r = Routing(JUMP, 5)
    for shard in range(5):
        assert shard_for(new_id_on_shard(shard, r), r) == shard


def test_bad_routings_refused():
    with pytest.raises(ValueError):
        Routing("ring", 2)
    with pytest.raises(ValueError):
        Routing(JUMP, 0)


def test_home_keys_keep_documents_and_keys_together():
    ws = "ws"
    keyed = {"id": "A", "workspace_id": ws, "idempotency_key": "k1"}
    plain = {"id": "B", "workspace_id": ws}
    assert home_key(keyed) == "ws\x00k1" and home_key(plain) == "B"
    new_doc = [{"id": f"C{i}", "workspace_id": ws, "parent_id": "P", "chunk_index": i,
                "idempotency_key": "doc" if i == 0 else f"doc\x1f{i}"} for i in range(3)]
    old_doc = [{"id": f"D{i}", "workspace_id": ws, "parent_id": "Q", "chunk_index": i,
                "idempotency_key": f"old#{i}"} for i in range(3)]
    unkeyed_doc = [{"id": f"E{i}", "workspace_id": ws, "parent_id": "R", "chunk_index": i}
                   for i in range(2)]
    homes = home_keys([keyed, *new_doc, *old_doc, plain, *unkeyed_doc])
    assert homes == ["ws\x00k1", *["ws\x00doc"] * 3, *["ws\x00old"] * 3, "B", "R", "R"]
    # a chunk alone still finds its document's key
    assert home_key(new_doc[2]) == "ws\x00doc" and home_key(old_doc[1]) == "ws\x00old"


def test_placement_round_trip_and_width():
    p = Placement(3, Routing(MODULO, 2), Routing(JUMP, 3))
    assert Placement.from_dict(json.loads(json.dumps(p.to_dict()))) == p
    assert p.moving and p.width == 3 and p.writes == Routing(JUMP, 3)
    shrink = Placement(4, Routing(JUMP, 3), Routing(JUMP, 2))
    assert shrink.width == 3 and shrink.writes.shards == 2


def test_new_store_routes_by_jump(tmp_path):
    layout = open_layout(tmp_path, shards=2, dim=384, embedder="hash")
    assert layout.version == LAYOUT_VERSION == 3
    assert layout.routing == Placement(0, Routing(JUMP, 2))


def test_version2_store_is_migrated_keeping_modulo(tmp_path):
    # Exactly what the last landed version (main at 2363d95) wrote.
    v2 = {"store_id": "11c664d2", "shards": 2, "dim": 384, "embedder": "hash", "version": 2}
    (tmp_path / "memoray.json").write_text(json.dumps(v2))
    layout = open_layout(tmp_path, shards=2, dim=384, embedder="hash")
    on_disk = json.loads((tmp_path / "memoray.json").read_text())
    assert on_disk["version"] == 3 and on_disk["store_id"] == "11c664d2"
    assert layout.routing == Placement(0, Routing(MODULO, 2))
    assert read_layout(tmp_path) == layout and not list(tmp_path.glob("*.tmp"))


def test_reshard_states_in_the_layout(tmp_path):
    open_layout(tmp_path, shards=2, dim=384, embedder="hash")
    moving = Placement(1, Routing(JUMP, 2), Routing(JUMP, 3))
    write_placement(tmp_path, moving)
    # mid-reshard either count starts the server; the layout says which shards exist
    assert open_layout(tmp_path, shards=3, dim=384, embedder="hash").shards == 3
    assert open_layout(tmp_path, shards=2, dim=384, embedder="hash").routing == moving
    write_placement(tmp_path, Placement(2, Routing(JUMP, 3)))
    with pytest.raises(MemorayError, match="start with --shards 3"):
        open_layout(tmp_path, shards=2, dim=384, embedder="hash")

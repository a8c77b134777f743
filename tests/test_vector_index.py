"""Graph inserts off the write path (actors/vector_index.py): a vector not yet in the graph is
still found, a deleted one never comes back, a snapshot covers only what the graph holds, and a
shard that dies with inserts queued recovers every acknowledged write."""

from __future__ import annotations

import queue

import numpy as np

from memoray.actors.shard import ShardCore
from memoray.actors.vector_index import VectorIndex


def _unit(n: int, dim: int = 32, seed: int = 0) -> np.ndarray:
    x = np.random.default_rng(seed).normal(size=(n, dim)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def _stalled(index: VectorIndex) -> queue.Queue:
    """Queue inserts without a worker, so they stay pending until `_run_worker`."""
    index._queue = queue.Queue()
    index._start_worker = lambda: index._queue  # type: ignore[method-assign]
    return index._queue


def _run_worker(index: VectorIndex) -> None:
    del index._start_worker  # back to the class's method
    index._start_worker()
    index.flush()


def test_pending_vectors_are_found_exactly(tmp_path):
    idx = VectorIndex(32, tmp_path)
    x = _unit(300)
    idx.add(np.arange(200), x[:200])  # in the graph
    _stalled(idx)
    idx.add(np.arange(200, 300), x[200:], background=True)
    assert idx.pending == 100 and idx.count == 300
    for q in (x[250], x[10], x[299]):
        labels, sims = idx.ann(q, 10)
        exact, _ = idx.exact(q, None, 10)
        assert labels[0] == exact[0]
        assert len(set(labels.tolist()) & set(exact.tolist())) >= 9
        assert np.all(np.diff(sims) <= 1e-6)  # best first
    _run_worker(idx)
    assert idx.pending == 0
    assert set(idx.graph.get_ids_list()) == set(range(300))
    assert idx.ann(x[250], 1)[0][0] == 250


def test_a_deleted_pending_vector_never_returns(tmp_path):
    idx = VectorIndex(32, tmp_path)
    x = _unit(50, seed=1)
    idx.add(np.arange(50), x, background=True)
    idx.remove([7])
    idx.flush()
    for _ in range(3):
        assert 7 not in idx.ann(x[7], 20)[0].tolist()
    assert idx.count == 49


def test_a_snapshot_waits_for_the_queue(tmp_path):
    idx = VectorIndex(32, tmp_path)
    x = _unit(120, seed=2)
    idx.add(np.arange(120), x, background=True)
    idx.save_snapshot(seq=120)
    assert idx.pending == 0
    fresh = VectorIndex(32, tmp_path)
    assert fresh.load_snapshot() == 120
    assert set(fresh.graph.get_ids_list()) == set(range(120))


def _record(i: int) -> dict:
    return {"id": f"m{i:04d}", "content": f"memory number {i}", "workspace_id": "w",
            "event_type": "note", "timestamp": 1.7e9 + i, "tier": "episodic",
            "visibility": "shared"}


def test_a_shard_killed_with_inserts_queued_recovers_them(tmp_path):
    """The process dies (no close, no snapshot) while graph inserts are queued: the LMDB log
    has every acknowledged write, so the reopened shard's graph has all of them."""
    x = _unit(400, dim=16, seed=3)
    core = ShardCore(0, tmp_path / "s", 16, map_size=64 << 20, durable=True,
                     snapshot_every=10**9)
    for i in range(0, 200, 50):
        core.put([_record(j) for j in range(i, i + 50)], x[i:i + 50])
    core.snapshot()  # covers the first 200 (it waits for their inserts)
    _stalled(core.index)
    for i in range(200, 400, 50):
        core.put([_record(j) for j in range(i, i + 50)], x[i:i + 50])
    assert core.index.pending == 200  # acknowledged, never inserted: as if killed now
    core.storage.env.close()  # no snapshot, no flush

    again = ShardCore(0, tmp_path / "s", 16, map_size=64 << 20, durable=True)
    assert again.recovery["records"] == 400
    assert again.recovery["mode"] == "snapshot+replay" and again.recovery["replayed"] == 200
    assert set(again.index.graph.get_ids_list()) >= set(range(400))
    for i in (0, 123, 399):
        labels, _ = again.index.ann(x[i], 5)
        assert labels[0] == i
    again.close()

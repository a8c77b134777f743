"""The vector index (actors/vector_index.py). Graph inserts off the write path: a vector not yet
in the graph is still found, a deleted one never comes back, a snapshot covers only what the
graph holds, and a shard that dies with inserts queued recovers every acknowledged write. Exact
scans on int8 rows with float32 rescoring rank and score as a float32 scan does."""

from __future__ import annotations

import queue

import numpy as np

from memoray.actors.shard import ShardCore
from memoray.actors.vector_index import VectorIndex, quantize


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


def _float32_top(x: np.ndarray, q: np.ndarray, cand: np.ndarray, k: int) -> list[int]:
    sims = x[cand] @ q
    return cand[np.argsort(-sims, kind="stable")[:k]].tolist()


class _Store:
    """A stand-in for the shard's LMDB vectors (what ShardCore passes as `fetch`): it holds only
    the labels given to it, and counts what it was asked for."""

    def __init__(self, x: np.ndarray, labels: np.ndarray):
        self.x, self.have, self.asked = x, set(labels.tolist()), 0

    def __call__(self, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        self.asked += len(labels)
        found = np.array([lb in self.have for lb in labels.tolist()], dtype=bool)
        out = np.zeros((len(labels), self.x.shape[1]), np.float32)
        out[found] = self.x[labels[found]]
        return out, found


def test_quantized_rows_are_close_and_small():
    x = _unit(500, dim=384, seed=4)
    codes, scales = quantize(x)
    assert codes.dtype == np.int8 and codes.nbytes + scales.nbytes == 500 * (384 + 4)
    back = codes.astype(np.float32) * scales[:, None]
    q = _unit(20, dim=384, seed=5)
    assert np.abs(back @ q.T - x @ q.T).max() < 0.01  # cosine error well under rank gaps
    zero = quantize(np.zeros((1, 8), np.float32))
    assert not zero[0].any() and zero[1][0] == 1.0


def test_int8_scan_with_rescoring_ranks_like_a_float32_scan(tmp_path):
    """Seeded random set: the top 10 of the quantized scan + rescoring are the float32 scan's
    top 10 in the same order with the same scores, over all labels and under a selective
    filter; a scan rescores only RESCORE*k vectors, not every candidate."""
    n, dim = 3000, 64
    x = _unit(n, dim=dim, seed=6)
    store = _Store(x, np.arange(n))
    idx = VectorIndex(dim, tmp_path, fetch=store)
    idx.add(np.arange(n), x)
    queries = _unit(60, dim=dim, seed=7)
    everyone = np.arange(n)
    selective = np.arange(0, n, 37)  # 82 candidates: a workspace filter
    hits = total = 0
    for q in queries:
        for cand in (None, selective):
            want = _float32_top(x, q, everyone if cand is None else cand, 10)
            store.asked = 0
            got, sims = idx.exact(q, cand, 10)
            assert store.asked <= 40  # RESCORE * k
            np.testing.assert_allclose(sims, x[got] @ q, rtol=0, atol=1e-5)  # exact scores
            assert np.all(np.diff(sims) <= 1e-7)
            hits += len(set(got.tolist()) & set(want))
            total += 10
            assert got.tolist() == want
    assert hits == total
    np.testing.assert_allclose(idx.similarity(queries[0], everyone[:50]),
                               x[:50] @ queries[0], atol=1e-5)


def test_the_int8_error_bound_keeps_every_float32_top_k(tmp_path):
    """`_could_rank` is a bound, not a heuristic: over seeded sets of 384-dimension vectors,
    some in tight clusters (near-ties), the float32 top k is always among what it admits. When
    it admits at most RESCORE*k, a scan returns exactly the float32 top k; beyond that cap
    (clusters of near-duplicates, random vectors at k=1) the scan rescores the cap only, and
    its scores are still exact. On spread-out data the bound mostly admits fewer than
    RESCORE*k, which is what a wide scan saves in LMDB reads."""
    from memoray.actors.vector_index import RESCORE

    rng = np.random.default_rng(11)
    spread = _unit(2000, dim=384, seed=12)
    centres = _unit(20, dim=384, seed=13)
    clustered = centres[rng.integers(0, 20, 2000)] + 0.02 * _unit(2000, dim=384, seed=14)
    clustered /= np.linalg.norm(clustered, axis=1, keepdims=True)
    admitted = []
    for x in (spread, clustered):
        store = _Store(x, np.arange(len(x)))
        idx = VectorIndex(384, tmp_path, fetch=store)
        idx.add(np.arange(len(x)), x, to_graph=False)
        labels = np.arange(len(x))
        for q in np.vstack([_unit(10, dim=384, seed=15), x[:10]]):
            for k in (1, 10, 80):
                rough = idx.approx(q, labels)
                could = set(labels[idx._could_rank(q, labels, rough, k)].tolist())
                want = _float32_top(x, q, labels, k)
                assert set(want) <= could
                if x is spread:
                    admitted.append(len(could) / k)
                store.asked = 0
                got, sims = idx.exact(q, None, k)
                assert store.asked == min(len(could), RESCORE * k)
                np.testing.assert_allclose(sims, x[got] @ q, rtol=0, atol=1e-5)
                if len(could) <= RESCORE * k:
                    assert got.tolist() == want
    assert np.median(admitted) < RESCORE  # 2.3 here: near-orthogonal random vectors


def test_scan_buffers_give_the_allocating_scans_scores(tmp_path):
    """`approx` converts int8 rows through buffers it keeps (SCAN_ROWS at a time); a second
    thread scanning meanwhile allocates its own. Both give the plain formula's scores, over
    more rows than one buffer holds."""
    from memoray.actors import vector_index

    x = _unit(vector_index.SCAN_ROWS * 2 + 37, dim=64, seed=16)
    idx = VectorIndex(64, tmp_path)
    idx.add(np.arange(len(x)), x, to_graph=False)
    labels = np.random.default_rng(17).permutation(len(x))[: len(x) - 5]
    q = _unit(1, dim=64, seed=18)[0]
    want = (idx.codes[labels].astype(np.float32) @ q) * idx.scales[labels]
    np.testing.assert_allclose(idx.approx(q, labels), want, rtol=1e-6, atol=1e-6)
    assert idx._scan_buffers is not None and idx.nbytes() >= sum(
        b.nbytes for b in idx._scan_buffers)
    with idx._scan_lock:  # as if another thread were scanning
        np.testing.assert_allclose(idx.approx(q, labels), want, rtol=1e-6, atol=1e-6)


def test_pending_vectors_rescore_from_their_float32_copy_and_deletes_stay_gone(tmp_path):
    """Vectors not yet in the graph are scored from the pending buffer (the store does not have
    them); once inserted, a deleted label is never returned by ann or exact."""
    n, dim = 600, 32
    x = _unit(n, dim=dim, seed=8)
    store = _Store(x, np.arange(400))  # as if LMDB lagged: the pending ones only in memory
    idx = VectorIndex(dim, tmp_path, fetch=store)
    idx.add(np.arange(400), x[:400])
    _stalled(idx)
    idx.add(np.arange(400, n), x[400:], background=True)
    assert idx.pending == 200
    np.testing.assert_array_equal(idx.vectors(np.array([450, 10])), x[[450, 10]])
    for i in (410, 599, 5):
        q = x[i]
        want = _float32_top(x, q, np.arange(n), 10)
        assert idx.exact(q, None, 10)[0].tolist() == want
        assert idx.ann(q, 10)[0][0] == i
    _run_worker(idx)  # remove() drains the queue first (a deleted label never enters late)
    assert idx.pending == 0
    idx.remove([410, 5])
    for i in (410, 5):
        assert i not in idx.exact(x[i], None, 20)[0].tolist()
        assert i not in idx.ann(x[i], 20)[0].tolist()
        assert i not in idx.exact(x[i], np.array([i, i + 1]), 2)[0].tolist()
    assert idx.count == n - 2 and idx.ann(x[599], 1)[0][0] == 599


def test_without_a_store_vectors_come_back_from_the_graph(tmp_path):
    x = _unit(100, dim=16, seed=9)
    idx = VectorIndex(16, tmp_path)
    idx.add(np.arange(100), x)
    np.testing.assert_allclose(idx.vectors(np.array([3, 99, 0])), x[[3, 99, 0]], atol=1e-6)
    assert idx.exact(x[42], None, 3)[0][0] == 42


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
    # the tail is replayed by the insert worker: found (exactly) while it is still pending
    assert again.recovery["replay_in_background"] == 200
    for i in (0, 123, 399, 250):
        labels, _ = again.index.ann(x[i], 5)
        assert labels[0] == i
    again.index.flush()
    assert again.index.pending == 0
    assert set(again.index.graph.get_ids_list()) >= set(range(400))
    assert again.index.ann(x[399], 1)[0][0] == 399
    again.close()


def test_search_ef_rises_with_the_graph(tmp_path, monkeypatch):
    from memoray.actors import vector_index as vi

    assert vi.search_ef(0) == vi.search_ef(100_000) == vi.EF_SEARCH == 128
    assert vi.search_ef(300_000) == 164
    assert vi.search_ef(500_000) == vi.search_ef(10**7) == vi.EF_SEARCH_LARGE == 200
    # a search sets the graph's ef from its live count (a k above it still wins)
    monkeypatch.setattr(vi, "EF_GROWS", (10, 100))
    idx = VectorIndex(32, tmp_path)
    x = _unit(60, seed=5)
    idx.add(np.arange(60), x)
    idx.ann(x[0], 5)
    assert idx.graph.ef == 128 + round(72 * 50 / 90)
    idx.ann(x[0], 5, ef=20)  # an ef asked for wins, but never below k
    assert idx.graph.ef == 20
    idx.ann(x[0], 40, ef=20)
    assert idx.graph.ef == 40

"""The in-memory vector side of a shard: an hnswlib graph plus a dense matrix for exact scans.

Both are caches of LMDB. The graph is snapshotted to disk with the sequence number it covers
and a checksum; a missing or corrupt snapshot is rebuilt from LMDB, a stale one is replayed.

Graph inserts can run off the write path (`add(..., background=True)`): the vectors go into the
matrix at once (exact scans and scoring see them), and one worker thread inserts them into the
graph (hnswlib releases the GIL while it inserts). Until a vector is in the graph, `ann` scores it
exactly beside the graph's answer, so a search never misses an acknowledged write. Safe across a
crash because the LMDB log already holds the write: a snapshot covers only what the graph has
(it waits for the queue first), and recovery replays the log after it. A lock keeps hnswlib from
being searched, resized or saved while the worker mutates it.
"""

from __future__ import annotations

import atexit
import hashlib
import json
import logging
import os
import queue
import threading
import weakref
from pathlib import Path

import hnswlib
import numpy as np

log = logging.getLogger(__name__)

M = 16
# 100, not 200: recall@10 0.999 against 1.000 on MiniLM vectors at ef_search 64, for about 0.7x
# the insert time (make bench-hnsw, benchmarks/results/hnsw_params.json). A loaded snapshot
# keeps the value it was built with.
EF_CONSTRUCTION = 100
EF_SEARCH = 64
INSERT_CHUNK = 16  # vectors per locked graph insert: bounds how long a search can wait
MAX_PENDING = 8192  # writes wait for the worker beyond this many vectors not yet in the graph


# Indexes with a running insert worker. At exit each worker finishes its queue and stops, so
# no thread is inside hnswlib (GIL released) when the interpreter finalizes: a daemon thread
# taking the GIL back then is ended with pthread_exit, which aborts the process from C++.
_WORKERS: weakref.WeakSet = weakref.WeakSet()


@atexit.register
def _stop_workers() -> None:
    for index in list(_WORKERS):
        index.stop_worker()


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _fsync_write(path: Path, data: bytes) -> None:
    tmp = path.with_suffix(path.suffix + ".tmp")
    with open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


class VectorIndex:
    def __init__(self, dim: int, directory: Path, capacity: int = 1024):
        self.dim = dim
        self.dir = Path(directory)
        self.index_path = self.dir / "hnsw.bin"
        self.meta_path = self.dir / "hnsw.meta.json"
        self.capacity = max(capacity, 16)
        self.matrix = np.zeros((self.capacity, dim), dtype=np.float32)
        self.live = np.zeros(self.capacity, dtype=bool)
        self.graph = self.new_graph(self.capacity)
        self.covered_seq = 0
        self.deleted_in_graph = 0
        self._count = 0  # live labels (kept, not summed over the mask per search)
        self.lock = threading.Lock()  # held while the graph is mutated, searched or saved
        self._pending: dict[int, None] = {}  # labels queued for the graph, in order
        self._queue: queue.Queue | None = None
        self._worker: threading.Thread | None = None
        self.worker_error: str | None = None

    def new_graph(self, capacity: int) -> hnswlib.Index:
        g = hnswlib.Index(space="ip", dim=self.dim)
        g.init_index(max_elements=capacity, ef_construction=EF_CONSTRUCTION, M=M,
                     allow_replace_deleted=False)
        g.set_ef(EF_SEARCH)
        g.set_num_threads(1)
        return g

    # -- growth -----------------------------------------------------------------------------
    def _ensure(self, max_label: int) -> None:
        if max_label < self.capacity:
            return
        new_cap = self.capacity
        while new_cap <= max_label:
            new_cap *= 2
        matrix = np.zeros((new_cap, self.dim), dtype=np.float32)
        matrix[: self.capacity] = self.matrix
        live = np.zeros(new_cap, dtype=bool)
        live[: self.capacity] = self.live
        self.matrix, self.live = matrix, live
        with self.lock:
            self.graph.resize_index(new_cap)
        self.capacity = new_cap

    # -- mutation ---------------------------------------------------------------------------
    def add(self, labels: np.ndarray, vectors: np.ndarray, *, to_graph: bool = True,
            background: bool = False) -> None:
        """Store vectors under labels; `to_graph` also inserts them into the graph, now or
        (`background`) by the worker thread."""
        if len(labels) == 0:
            return
        labels = np.asarray(labels, dtype=np.int64)
        self._ensure(int(labels.max()))
        self.matrix[labels] = vectors
        self._count += int(np.count_nonzero(~self.live[np.unique(labels)]))
        self.live[labels] = True
        if not to_graph:
            return
        if not background:
            self.flush()  # a queued older vector of the same label must not land after this
            with self.lock:
                self.graph.add_items(vectors, labels, num_threads=1)
            return
        if len(self._pending) >= MAX_PENDING:
            self.flush()  # back-pressure: the worker is behind
        vecs = np.ascontiguousarray(vectors, dtype=np.float32).copy()
        with self.lock:
            for label in labels.tolist():
                self._pending[label] = None
        q = self._start_worker()
        for i in range(0, len(labels), INSERT_CHUNK):
            q.put((labels[i:i + INSERT_CHUNK], vecs[i:i + INSERT_CHUNK]))

    def _start_worker(self) -> queue.Queue:
        if self._worker is None or not self._worker.is_alive():
            self._queue = self._queue or queue.Queue()
            self._worker = threading.Thread(target=self._insert_loop, name="hnsw-insert",
                                            daemon=True)
            self._worker.start()
            _WORKERS.add(self)
        return self._queue

    def stop_worker(self, timeout: float = 60.0) -> None:
        """Insert what is queued, then end the worker thread (it restarts on the next add)."""
        worker, q = self._worker, self._queue
        if worker is None or q is None or not worker.is_alive():
            return
        q.put(None)
        worker.join(timeout)
        self._worker = None

    def _insert_loop(self) -> None:
        q = self._queue
        while True:
            job = q.get()
            if job is None:
                q.task_done()
                return
            labels, vecs = job
            try:
                with self.lock:
                    self.graph.add_items(vecs, labels, num_threads=1)
                    for label in labels.tolist():
                        self._pending.pop(label, None)
            except Exception as exc:  # kept in _pending: ann keeps scoring them exactly
                self.worker_error = repr(exc)
                log.error("background graph insert failed: %s", exc)
            finally:
                q.task_done()

    def flush(self) -> None:
        """Wait until every queued vector is in the graph."""
        if self._queue is not None:
            self._queue.join()

    @property
    def pending(self) -> int:
        """Vectors stored but not yet in the graph."""
        return len(self._pending)

    def remove(self, labels: list[int]) -> None:
        self.flush()  # a deleted label must not enter the graph after its mark_deleted
        with self.lock:
            for label in labels:
                self._pending.pop(label, None)
                if label < self.capacity and self.live[label]:
                    self.live[label] = False
                    self._count -= 1
                    try:
                        self.graph.mark_deleted(label)
                        self.deleted_in_graph += 1
                    except RuntimeError:
                        pass  # not in the graph (never indexed); the live mask is what counts

    # -- search -----------------------------------------------------------------------------
    @property
    def count(self) -> int:
        return self._count

    def exact(self, query: np.ndarray, candidates: np.ndarray | None, k: int
              ) -> tuple[np.ndarray, np.ndarray]:
        """Brute-force inner product over candidates (all live labels when None)."""
        if candidates is None:
            candidates = np.flatnonzero(self.live)
        else:
            candidates = candidates[candidates < self.capacity]
            candidates = candidates[self.live[candidates]]
        if len(candidates) == 0:
            return np.empty(0, np.int64), np.empty(0, np.float32)
        sims = self.matrix[candidates] @ query
        if len(candidates) > k:
            top = np.argpartition(-sims, k - 1)[:k]
        else:
            top = np.arange(len(candidates))
        order = top[np.argsort(-sims[top], kind="stable")]
        return candidates[order].astype(np.int64), sims[order]

    def ann(self, query: np.ndarray, k: int, ef: int | None = None
            ) -> tuple[np.ndarray, np.ndarray]:
        """HNSW top-k; falls back to an exact scan when the graph cannot return k."""
        live = self.count
        k = min(k, live)
        if k <= 0:
            return np.empty(0, np.int64), np.empty(0, np.float32)
        with self.lock:
            pending = (np.fromiter(self._pending, dtype=np.int64, count=len(self._pending))
                       if self._pending else None)
            self.graph.set_ef(max(ef or EF_SEARCH, k))
            try:
                labels, dists = self.graph.knn_query(query, k=k, num_threads=1)
            except RuntimeError:  # the graph holds fewer than k (the rest may be pending)
                return self.exact(query, None, k)
        labels, sims = labels[0].astype(np.int64), (1.0 - dists[0]).astype(np.float32)
        if pending is None:
            return labels, sims
        # Not yet in the graph: scored exactly, merged by similarity (a re-put label may be in
        # both; its exact score wins).
        plabels, psims = self.exact(query, pending, k)
        labels = np.concatenate([plabels, labels])
        sims = np.concatenate([psims, sims])
        labels, first = np.unique(labels, return_index=True)
        sims = sims[first]
        order = np.argsort(-sims, kind="stable")[:k]
        return labels[order], sims[order]

    def similarity(self, query: np.ndarray, labels: np.ndarray) -> np.ndarray:
        return self.matrix[labels] @ query

    def vectors(self, labels: np.ndarray) -> np.ndarray:
        return self.matrix[labels]

    # -- snapshots --------------------------------------------------------------------------
    def save_snapshot(self, seq: int) -> None:
        """Save the graph as covering `seq`: every write up to it must be in the graph, so the
        queue is drained first."""
        self.dir.mkdir(parents=True, exist_ok=True)
        tmp = self.index_path.with_suffix(".bin.tmp")
        self.flush()
        with self.lock:
            self.graph.save_index(str(tmp))
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
        os.replace(tmp, self.index_path)
        meta = {"seq": seq, "sha256": _sha256(self.index_path), "dim": self.dim,
                "capacity": self.capacity}
        _fsync_write(self.meta_path, json.dumps(meta).encode())
        self.covered_seq = seq

    def load_snapshot(self) -> int | None:
        """Load the graph snapshot; returns the seq it covers, or None if unusable."""
        try:
            meta = json.loads(self.meta_path.read_text())
            if meta["dim"] != self.dim or _sha256(self.index_path) != meta["sha256"]:
                log.warning("index snapshot %s is corrupt or stale; rebuilding", self.index_path)
                return None
            capacity = max(int(meta["capacity"]), self.capacity)
            graph = hnswlib.Index(space="ip", dim=self.dim)
            graph.load_index(str(self.index_path), max_elements=capacity)
            graph.set_ef(EF_SEARCH)
            graph.set_num_threads(1)
        except (OSError, ValueError, KeyError, RuntimeError) as exc:
            log.info("no usable index snapshot in %s (%s); rebuilding", self.dir, exc)
            return None
        self._ensure(capacity - 1)
        self.graph = graph
        self.covered_seq = int(meta["seq"])
        return self.covered_seq


    def graph_labels(self) -> set[int]:
        return set(self.graph.get_ids_list())

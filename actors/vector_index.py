"""The in-memory vector side of a shard: an hnswlib graph plus a dense matrix for exact scans.

Both are caches of LMDB. The graph is snapshotted to disk with the sequence number it covers
and a checksum; a missing or corrupt snapshot is rebuilt from LMDB, a stale one is replayed.
Callers serialize access: hnswlib must not be searched while it is being mutated.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from pathlib import Path

import hnswlib
import numpy as np

log = logging.getLogger(__name__)

M = 16
EF_CONSTRUCTION = 200
EF_SEARCH = 64


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
        self.graph.resize_index(new_cap)
        self.capacity = new_cap

    # -- mutation ---------------------------------------------------------------------------
    def add(self, labels: np.ndarray, vectors: np.ndarray, *, to_graph: bool = True) -> None:
        if len(labels) == 0:
            return
        labels = np.asarray(labels, dtype=np.int64)
        self._ensure(int(labels.max()))
        self.matrix[labels] = vectors
        self.live[labels] = True
        if to_graph:
            self.graph.add_items(vectors, labels, num_threads=1)

    def remove(self, labels: list[int]) -> None:
        for label in labels:
            if label < self.capacity and self.live[label]:
                self.live[label] = False
                try:
                    self.graph.mark_deleted(label)
                    self.deleted_in_graph += 1
                except RuntimeError:
                    pass  # not in the graph (never indexed); the live mask is what counts

    # -- search -----------------------------------------------------------------------------
    @property
    def count(self) -> int:
        return int(self.live.sum())

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
        self.graph.set_ef(max(ef or EF_SEARCH, k))
        try:
            labels, dists = self.graph.knn_query(query, k=k, num_threads=1)
        except RuntimeError:
            return self.exact(query, None, k)
        return labels[0].astype(np.int64), (1.0 - dists[0]).astype(np.float32)

    def similarity(self, query: np.ndarray, labels: np.ndarray) -> np.ndarray:
        return self.matrix[labels] @ query

    def vectors(self, labels: np.ndarray) -> np.ndarray:
        return self.matrix[labels]

    # -- snapshots --------------------------------------------------------------------------
    def save_snapshot(self, seq: int) -> None:
        self.dir.mkdir(parents=True, exist_ok=True)
        tmp = self.index_path.with_suffix(".bin.tmp")
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

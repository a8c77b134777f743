"""The background HNSW graph rebuild: a fresh graph without deleted nodes, built in a thread.

Reads and writes go on against the old graph meanwhile and are logged as a delta, replayed on the
new graph at the swap. hnswlib releases the GIL while it builds.
"""

from __future__ import annotations

import logging
import threading
import time
from typing import Any

import numpy as np

from memoray.actors.vector_index import VectorIndex

log = logging.getLogger(__name__)

REBUILD_DELETED_FRACTION = 0.2   # rebuild the graph when this share of its nodes is deleted
REBUILD_MIN_DELETED = 500        # ...and at least this many, so small shards don't churn


def worth_rebuilding(index: VectorIndex) -> bool:
    dead = index.deleted_in_graph
    total = dead + index.count
    return dead >= REBUILD_MIN_DELETED and bool(total) and dead / total >= REBUILD_DELETED_FRACTION


class GraphRebuild:
    """One rebuild in flight: started from a copy of the live vectors, swapped in when done."""

    def __init__(self, index: VectorIndex, name: str):
        self.labels = np.flatnonzero(index.live)
        self.vectors = index.vectors(self.labels)
        self.capacity = max(index.capacity, len(self.labels) + 1)
        self.delta: list[tuple[str, int]] = []
        self.graph: Any = None
        self.error: str | None = None
        self.started = time.time()
        self._template = index
        self.thread = threading.Thread(target=self._build, name=name, daemon=True)
        self.thread.start()

    def _build(self) -> None:
        try:
            g = self._template.new_graph(self.capacity)
            if len(self.labels):
                g.add_items(self.vectors, self.labels, num_threads=1)
            self.graph = g
        except Exception as exc:  # keep serving from the old graph
            self.error = repr(exc)

    def record(self, op: str, labels: list[int]) -> None:
        self.delta.extend((op, lb) for lb in labels)

    @property
    def done(self) -> bool:
        return not self.thread.is_alive()

    def swap_into(self, index: VectorIndex) -> bool:
        """Replay the delta on the new graph and make it the index's graph (the thread is done)."""
        if self.error or self.graph is None:
            log.error("rebuild failed: %s", self.error)
            return False
        g = self.graph
        if g.get_max_elements() < index.capacity:
            g.resize_index(index.capacity)
        for op, label in self.delta:
            if op == "put" and index.live[label]:
                g.add_items(index.vectors(np.array([label])), np.array([label]), num_threads=1)
            elif op == "del":
                try:
                    g.mark_deleted(label)
                except RuntimeError:
                    pass
        g.set_ef(index.graph.ef)
        index.graph = g
        index.deleted_in_graph = sum(1 for op, _ in self.delta if op == "del")
        log.info("swapped in a rebuilt graph (%d labels, %d delta ops, %.1fs)",
                 len(self.labels), len(self.delta), time.time() - self.started)
        return True

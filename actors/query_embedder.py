"""Query embedding in the replica's own process.

A retrieve embeds one short query. Sent to the embedding worker, that is one more Ray round trip
(the replica's loop, the worker's loop, its model thread and back): with the hash embedder,
3.0-3.7 ms per retrieve against 0.26-0.36 ms in the replica, on the 2-core machine the
benchmarks run on (README, Performance, sixth session). The replica keeps its own copy of the
model for queries; captures' batches still go to the workers, which own the cores (and the GPU,
when there is one).

The model loads on a background thread when the replica starts, so the replica is ready as soon
as before; until it has loaded, or if it cannot load, queries go to the workers as before.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from typing import Any

import numpy as np

from memoray import gcpause
from memoray.actors.embedding_worker import MicroBatcher
from memoray.embedding import Embedder, make_embedder

log = logging.getLogger(__name__)

WHERE = ("auto", "replica", "worker")


def queries_in_replica(where: str, embedding_gpus: float) -> bool:
    """`auto`: in the replica unless the workers have GPUs (a GPU worker answers a query in
    about the round trip's time and the replica would hold a second model on the CPU)."""
    if where not in WHERE:
        raise ValueError(f"query_embedding: expected one of {', '.join(WHERE)}, got {where!r}")
    return where == "replica" or (where == "auto" and embedding_gpus == 0)


class ReplicaQueryEmbedder:
    """One-thread copy of the store's model, behind a MicroBatcher (concurrent queries share a
    model call; repeated queries hit its cache)."""

    def __init__(self, kind: str, load: Callable[[], Embedder] | None = None,
                 runtime: str = "auto"):
        self.kind = kind
        self._load = load or (lambda: make_embedder(kind, device="cpu", threads=1,
                                                    runtime=runtime))
        self.batcher: MicroBatcher | None = None
        self.error: str | None = None
        self.load_seconds: float | None = None
        self.fallbacks = 0  # queries sent to the workers while not ready
        self._thread: threading.Thread | None = None

    def start(self) -> ReplicaQueryEmbedder:
        """Load in the background (idempotent)."""
        if self._thread is None:
            self._thread = threading.Thread(target=self._run_load, daemon=True,
                                            name="memoray-query-embedder")
            self._thread.start()
        return self

    def load_now(self) -> ReplicaQueryEmbedder:
        """Load on this thread (tests, jobs)."""
        self._run_load()
        return self

    def _run_load(self) -> None:
        t0 = time.perf_counter()
        try:
            embedder = self._load()
            embedder.embed(["warm up"])  # the first call allocates; not a user's query
        except Exception as exc:  # the workers still answer: degrade, say why
            self.error = f"{type(exc).__name__}: {exc}"
            log.warning("query embedding stays on the embedding workers: %s", self.error)
            return
        self.batcher = MicroBatcher(embedder, max_batch=32)
        self.load_seconds = round(time.perf_counter() - t0, 3)
        # the runtime and the model came after Serve froze the replica's startup objects:
        # freeze them too, out of the full collections that stop the replica's loop
        # (memoray/gcpause.py)
        gcpause.settle()

    @property
    def ready(self) -> bool:
        return self.batcher is not None

    async def embed(self, texts: list[str]) -> np.ndarray:
        assert self.batcher is not None, "not loaded: check `ready` first"
        return await self.batcher.embed(texts, query=True)

    def stats(self) -> dict[str, Any]:
        out: dict[str, Any] = {"where": "replica", "ready": self.ready,
                               "loadSeconds": self.load_seconds, "fallbacks": self.fallbacks}
        if self.error:
            out["error"] = self.error
        if self.batcher is not None:
            st = self.batcher.stats()
            out.update(runtime=st["runtime"], embedded=st["texts"], batches=st["batches"],
                       cacheHits=st["cache_hits"], busySeconds=st["busy_seconds"])
        return out

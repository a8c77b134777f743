"""Python's cyclic garbage collector in long-lived actor processes: its pauses timed, and what a
process holds for good kept out of its scans.

A full (generation 2) collection walks every container object the process tracks, holding the
GIL: a shard actor, or the replica's event loop, stops for its length. Measured on two cores
(README, Performance, fifteenth session): in process, a shard of 10,000 or 50,000
hash-embedded memories with memoray's libraries imported (about 40,500 tracked objects) took
12-13 ms per full collection (benchmarks/bench_gc.py), nothing after the freeze; the
replica, whose query model loads after Serve's own freeze (Serve freezes what a replica holds
when its constructor ends; the model loads later, on a thread), held 582,000 objects and its
full collections took up to 210 ms. Such a pause lands on whatever request is in flight.

`freeze()` collects once, then moves every object the process holds to the permanent
generation (`gc.freeze`), which no collection scans: the shards call it when recovery ends,
the replica and the embedding workers when their model has loaded. Objects made afterwards are
collected as before. The cost: cyclic garbage among the frozen objects is never freed (reference
counting still frees everything else), so what is frozen must be what the process holds for
its life; a process that drops such a thing calls `unfreeze()` first (a replica shard wiping
its store for a full copy drops its whole ShardCore, which refers to itself).
MEMORAY_GC_FREEZE=0 turns it off (passed on to the actors with the heap settings).

`watch()` times every collection (gc.callbacks): count, seconds and the longest, per
generation. The shards report theirs in memory-stats, the replica and the embedding workers in
health-check (detailed), and the replica's /metrics has memoray_gc_collections_total and
memoray_gc_pause_seconds_total. The callback only adds numbers: it runs inside the collector,
which can start in any thread at any allocation, so taking a lock there (a metric's) could
deadlock against the thread that holds it; the metrics are brought up to date when scraped.
"""

from __future__ import annotations

import gc
import os
import sys
import threading
import time
from typing import Any


def in_actor() -> bool:
    """Whether this process is a Ray actor's (a shard, the replica, an embedding worker): the
    processes that keep what they load for their life. Never imports ray."""
    ray = sys.modules.get("ray")
    if ray is None or not ray.is_initialized():
        return False
    try:
        return ray.get_runtime_context().get_actor_id() is not None
    except Exception:
        return False


class GcWatch:
    """Per-process collection times; one per process (`WATCH`)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._started: float | None = None
        self.collections = [0, 0, 0]
        self.seconds = [0.0, 0.0, 0.0]
        self.longest = [0.0, 0.0, 0.0]
        self.installed = False
        self.frozen = 0  # objects in the permanent generation after the last freeze
        self.freezes = 0
        self.freeze_seconds = 0.0
        self.freezing = False  # freeze()'s own collection is not a pause a request met

    def install(self) -> GcWatch:
        with self._lock:
            if not self.installed:
                gc.callbacks.append(self._callback)
                self.installed = True
        return self

    def _callback(self, phase: str, info: dict[str, Any]) -> None:
        # Runs inside the collector, with the GIL held: two clock reads and a few additions.
        if phase == "start":
            self._started = time.perf_counter()
            return
        started, self._started = self._started, None
        if started is None or self.freezing:
            return
        took = time.perf_counter() - started
        g = min(int(info.get("generation", 2)), 2)
        self.collections[g] += 1
        self.seconds[g] += took
        if took > self.longest[g]:
            self.longest[g] = took

    def stats(self) -> dict[str, Any]:
        return {"collections": list(self.collections),
                "seconds": [round(s, 6) for s in self.seconds],
                "longestSeconds": [round(s, 6) for s in self.longest],
                "frozen": self.frozen, "freezes": self.freezes,
                "freezeSeconds": round(self.freeze_seconds, 6),
                "freezeEnabled": freeze_enabled()}


WATCH = GcWatch()


def watch() -> GcWatch:
    """Start timing this process's collections (idempotent)."""
    return WATCH.install()


def freeze_enabled() -> bool:
    return os.environ.get("MEMORAY_GC_FREEZE", "1").strip().lower() not in ("0", "false", "no",
                                                                            "off")


def freeze() -> int:
    """Collect what is garbage now, then exclude everything left from later scans. Returns the
    number of objects frozen (0 when MEMORAY_GC_FREEZE turns it off). Safe to call again:
    each call freezes what has been made since."""
    if not freeze_enabled():
        return 0
    t0 = time.perf_counter()
    WATCH.freezing = True
    try:
        gc.collect()
        gc.freeze()
    finally:
        WATCH.freezing = False
    WATCH.freeze_seconds += time.perf_counter() - t0
    WATCH.freezes += 1
    WATCH.frozen = gc.get_freeze_count()
    return WATCH.frozen


def unfreeze() -> None:
    """Give what is frozen back to the collector: before a process drops something it froze
    (a replica shard wiping its store for a full copy), whose cycles would otherwise stay for
    good. The next freeze collects what became garbage and freezes the rest again."""
    gc.unfreeze()
    WATCH.frozen = 0


def settle() -> int:
    """Time this process's collections and, in a Ray actor's process, freeze what it holds now
    (`freeze`). Elsewhere (tests, jobs, the CLI, which make and drop stores) only the timing:
    a freeze there would keep their cyclic garbage for good."""
    watch()
    return freeze() if in_actor() else 0

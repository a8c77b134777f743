"""Giving freed heap back to the OS in long-lived actor processes (glibc's malloc_trim).

glibc gives each thread that allocates an arena of its own and keeps what the thread frees for
that arena's later use. A Ray worker's gRPC threads unpack every request (a capture's vectors
and records) and a shard's insert thread copies vectors, so the shards and the app replica held
hundreds of bytes of freed heap per stored memory (README, Performance: 4,692 B of RAM per
memory at 100,000, about 600 B of it freed heap). Two things give it back: the launcher sets
MALLOC_MMAP_THRESHOLD_ (big buffers are mmapped, so freeing one unmaps it), and a thread here
trims every arena every few seconds. Capping the arenas (MALLOC_ARENA_MAX=2) freed as much but
made retrieve slower (threads queue on two arena locks). On a libc without malloc_trim (musl,
macOS) the trimmer does nothing.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import threading
from collections.abc import Callable

INTERVAL_S = 10.0  # MEMORAY_HEAP_TRIM_S; 0 turns the trimmer off

_started = False
_lock = threading.Lock()


def _malloc_trim() -> Callable[[int], int] | None:
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        fn = libc.malloc_trim
    except (OSError, AttributeError):
        return None
    fn.argtypes = [ctypes.c_size_t]
    fn.restype = ctypes.c_int
    return fn


def trim() -> bool:
    """Return every arena's free pages to the OS now; False where libc cannot."""
    fn = _malloc_trim()
    return bool(fn(0)) if fn is not None else False


def interval() -> float:
    try:
        return max(0.0, float(os.environ.get("MEMORAY_HEAP_TRIM_S", INTERVAL_S)))
    except ValueError:
        return INTERVAL_S


def start_trimmer(every_s: float | None = None) -> bool:
    """A daemon thread trimming this process's heap every `every_s` seconds; once per
    process, idempotent. False when off or unsupported."""
    global _started
    every = interval() if every_s is None else every_s
    fn = _malloc_trim()
    if every <= 0 or fn is None:
        return False
    with _lock:
        if _started:
            return True
        _started = True
    stop = threading.Event()

    def run() -> None:
        while not stop.wait(every):
            fn(0)

    threading.Thread(target=run, name="memoray-heap-trim", daemon=True).start()
    return True


def trimmer_running() -> bool:
    return _started


def setup_worker() -> None:
    """Ray's worker_process_setup_hook for memoray's actors: logging as memoray.logs says,
    and the heap trimmer."""
    from memoray import logs

    logs.configure()
    start_trimmer()

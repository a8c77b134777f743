"""Giving freed heap back to the OS in long-lived actor processes (glibc's malloc_trim).

glibc gives each thread that allocates an arena of its own and keeps what the thread frees for
that arena's later use. A Ray worker's gRPC threads unpack every request (a capture's vectors
and records) and a shard's insert thread copies vectors, so the shards and the app replica held
hundreds of bytes of freed heap per stored memory (README, Performance: 4,692 B of RAM per
memory at 100,000, about 600 B of it freed heap). Two things give it back: the shards and the
app replica mmap buffers of 64 KiB and more (`mmap_big_buffers`: freeing one unmaps it, where
glibc would otherwise raise that threshold as it goes, up to 32 MiB, and leave such buffers in
a heap between live blocks), and a thread in every actor process trims every arena every few
seconds. The cost: every query's temporaries of 64 KiB and more are mapped, page-faulted and
zeroed anew; 1 MiB with a 32 MiB heap top (MEMORAY_HEAP_MMAP_KIB=1024
MEMORAY_HEAP_TOP_KIB=32768) took 119 B more per memory at 100,000 and retrieved no faster
through the server (README, Performance, eighth session), so it is not the default. Not the
embedding worker's mmap threshold: torch's activations would then be mapped and zeroed on every
call (MiniLM 23% slower). Capping the arenas (MALLOC_ARENA_MAX=2) freed as much but made
retrieve slower (threads queue on two arena locks). On a libc without these (musl, macOS) both
do nothing.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import threading
import time
from collections.abc import Callable

INTERVAL_S = 10.0  # MEMORAY_HEAP_TRIM_S; 0 turns the trimmer off
MMAP_THRESHOLD = 64 << 10  # MEMORAY_HEAP_MMAP_KIB
# MEMORAY_HEAP_TOP_KIB: free heap top kept between the trimmer's runs; 0 = glibc's 128 KiB
TRIM_THRESHOLD = 0
_M_TRIM_THRESHOLD = -1  # mallopt's parameter numbers (malloc.h)
_M_MMAP_THRESHOLD = -3

_started = False
_mmap_threshold: int | None = None
_trim_threshold: int | None = None
_lock = threading.Lock()


def _libc() -> ctypes.CDLL | None:
    try:
        return ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
    except OSError:
        return None


def _malloc_trim() -> Callable[[int], int] | None:
    try:
        fn = _libc().malloc_trim  # type: ignore[union-attr]
    except AttributeError:
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
    def run() -> None:
        while True:
            time.sleep(every)
            fn(0)

    threading.Thread(target=run, name="memoray-heap-trim", daemon=True).start()
    return True


def _kib_setting(name: str, default: int) -> int:
    try:
        return max(0, int(os.environ.get(name, default >> 10))) << 10
    except ValueError:
        return default


def mmap_threshold() -> int:
    """MEMORAY_HEAP_MMAP_KIB in bytes (0: leave glibc's own, moving threshold)."""
    return _kib_setting("MEMORAY_HEAP_MMAP_KIB", MMAP_THRESHOLD)


def trim_threshold() -> int:
    """MEMORAY_HEAP_TOP_KIB in bytes (0: glibc's default, 128 KiB)."""
    return _kib_setting("MEMORAY_HEAP_TOP_KIB", TRIM_THRESHOLD)


def _mallopt(param: int, value: int) -> bool:
    try:
        mallopt = _libc().mallopt  # type: ignore[union-attr]
    except AttributeError:
        return False
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    mallopt.restype = ctypes.c_int
    return mallopt(param, value) == 1


def mmap_big_buffers(threshold: int | None = None) -> bool:
    """From now on, this process's allocations of `threshold` bytes and more are mmapped
    (and unmapped when freed). Call it in processes that hold many small long-lived objects
    and see big transient buffers (a shard, the app replica); False where libc cannot, or
    when the threshold is 0 (off).

    A fixed threshold also fixes glibc's trim threshold at 128 KiB: each free that leaves that
    much at the heap's top shrinks the heap, and the next query's temporaries fault their pages
    in again. With MEMORAY_HEAP_TOP_KIB set, and where the trimmer runs (it returns free pages
    every few seconds anyway), the top may keep that much between the trimmer's runs."""
    global _mmap_threshold, _trim_threshold
    threshold = mmap_threshold() if threshold is None else threshold
    if threshold <= 0 or not _mallopt(_M_MMAP_THRESHOLD, threshold):
        return False
    _mmap_threshold = threshold
    top = trim_threshold()
    if top > 0 and interval() > 0 and _mallopt(_M_TRIM_THRESHOLD, top):
        _trim_threshold = top
    return True


def status() -> dict[str, int | bool | None]:
    """What this process does about its heap (shown per shard by memory-stats)."""
    return {"trim": _started, "mmapThreshold": _mmap_threshold,
            "trimThreshold": _trim_threshold}


def trimmer_running() -> bool:
    return _started


def setup_worker() -> None:
    """Ray's worker_process_setup_hook for memoray's actors: logging as memoray.logs says,
    and the heap trimmer."""
    from memoray import logs

    logs.configure()
    start_trimmer()

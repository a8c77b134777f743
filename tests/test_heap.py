"""memoray/heap.py: trimming freed heap with glibc's malloc_trim, in a real process."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from memoray import heap


def test_trim_gives_back_what_a_thread_freed():
    """Blocks allocated and freed in another thread (its own arena, as Ray's gRPC threads
    do) below one that lives on stay in the process until trimmed."""
    code = r"""
import threading
from memoray import heap
def rss():
    return next(int(l.split()[1]) for l in open('/proc/self/status') if l.startswith('RssAnon:'))
held = []
def churn():
    blocks = [bytearray(2000) for _ in range(50_000)]  # ~100 MB, from malloc (> 512 B)
    held.append(blocks[-1])  # the last one stays: the arena cannot shrink past it
    blocks.clear()
t = threading.Thread(target=churn); t.start(); t.join()
before = rss()
assert heap.trim()
print(before, rss())
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         timeout=120)
    assert out.returncode == 0, out.stderr
    before, after = (int(x) for x in out.stdout.split())
    assert before - after > 50_000, (before, after)  # KiB: most of the ~100 MB came back


def test_the_trimmer_starts_once_and_can_be_turned_off(monkeypatch):
    monkeypatch.setenv("MEMORAY_HEAP_TRIM_S", "0")
    assert heap.interval() == 0.0
    assert heap.start_trimmer() is False
    monkeypatch.setenv("MEMORAY_HEAP_TRIM_S", "bogus")
    assert heap.interval() == heap.INTERVAL_S
    assert heap.start_trimmer(60.0) is True and heap.trimmer_running()
    assert heap.start_trimmer(60.0) is True  # idempotent: still one thread
    import threading
    assert sum(t.name == "memoray-heap-trim" for t in threading.enumerate()) == 1


def test_big_buffers_are_mmapped_once_asked():
    """In a fresh process: mallopt takes the threshold, and status() reports it."""
    code = ("from memoray import heap; assert heap.status()['mmapThreshold'] is None; "
            "assert heap.mmap_big_buffers(); print(heap.status()['mmapThreshold'])")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert int(out.stdout) == heap.MMAP_THRESHOLD == 65536


# A fresh process frees a 512 KiB block (under the mmap threshold, so on the heap, at its top)
# and prints what glibc keeps at the top afterwards (mallinfo2's keepcost) and heap.status().
_KEEP_TOP = """
import ctypes, json
from memoray import heap
class Info(ctypes.Structure):
    _fields_ = [(n, ctypes.c_size_t) for n in ("arena", "ordblks", "smblks", "hblks", "hblkhd",
                "usmblks", "fsmblks", "uordblks", "fordblks", "keepcost")]
libc = ctypes.CDLL("libc.so.6")
libc.mallinfo2.restype = Info
libc.malloc.restype = ctypes.c_void_p
libc.free.argtypes = [ctypes.c_void_p]
heap.mmap_big_buffers()
p = libc.malloc(512 << 10)
libc.free(p)
print(json.dumps([libc.mallinfo2().keepcost, heap.status()]))
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's malloc")
def test_freed_heap_top_waits_for_the_trimmer_only_where_it_runs():
    """MEMORAY_HEAP_TOP_KIB: with the trimmer on, a freed block at the heap's top stays for the
    next query's temporaries (the trimmer gives it back); with it off, or by default, glibc
    trims at free."""
    def run(**env: str) -> tuple[int, dict]:
        out = subprocess.run([sys.executable, "-c", _KEEP_TOP], capture_output=True, text=True,
                             timeout=60, env={**os.environ, **env})
        assert out.returncode == 0, out.stderr
        keep, status = json.loads(out.stdout)
        return keep, status

    big = {"MEMORAY_HEAP_MMAP_KIB": "1024", "MEMORAY_HEAP_TOP_KIB": "32768"}
    keep, status = run(MEMORAY_HEAP_TRIM_S="10", **big)
    assert status["trimThreshold"] == 32 << 20 and keep >= 512 << 10
    keep, status = run(MEMORAY_HEAP_TRIM_S="0", **big)
    assert status["trimThreshold"] is None and keep < 256 << 10
    keep, status = run(MEMORAY_HEAP_TRIM_S="10", MEMORAY_HEAP_MMAP_KIB="1024")  # the default
    assert status["trimThreshold"] is None and keep < 256 << 10


def test_a_shard_started_without_rays_setup_hook_trims_its_heap(tmp_path):
    """`serve deploy` starts actors without memoray's worker setup hook:
    the shard starts the trimmer itself (and the app replica, serve/deployment.py)."""
    code = ("import sys; from memoray import heap; from memoray.actors.shard import ShardCore; "
            "assert not heap.trimmer_running(); ShardCore(0, sys.argv[1], 8, map_size=1 << 24); "
            "print(heap.status()['trim'])")
    out = subprocess.run([sys.executable, "-c", code, str(tmp_path / "s0")],
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "True"
    off = subprocess.run([sys.executable, "-c", code, str(tmp_path / "s1")], capture_output=True,
                         text=True, timeout=120, env={**os.environ, "MEMORAY_HEAP_TRIM_S": "0"})
    assert off.returncode == 0, off.stderr
    assert off.stdout.strip() == "False"

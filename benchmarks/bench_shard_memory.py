"""RAM per record of one shard, in process (issue 14): anonymous RSS growth while N records
(hash-embedded corpus texts, every field a capture sets) are put, divided by N; then where it
goes: each in-memory index is dropped in turn (vector index, lexical, postings) and the fall in
anonymous RSS (after malloc_trim) is its share; what is left is Python's and the allocator's.
The figure the README compares before and after the postings, lexical and int8 changes.

Run: python -m benchmarks.bench_shard_memory [--n 20000]
"""

from __future__ import annotations

import argparse
import ctypes
import gc
import os
import tempfile
import time
from pathlib import Path

from benchmarks.common import log, save_json
from benchmarks.corpus import corpus


def rss_anon() -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("RssAnon"):
                return int(line.split()[1]) * 1024
    return 0


def _trim() -> int:
    """Collect, hand freed heap back to the OS, and return anonymous RSS."""
    gc.collect()
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except OSError:
        pass
    return rss_anon()


def breakdown(core, n: int) -> dict[str, float]:
    """Bytes per record freed by dropping each in-memory part of the shard, in turn."""
    from memoray.actors.vector_index import VectorIndex
    from memoray.lexical import LexicalIndex
    from memoray.postings import Postings

    out: dict[str, float] = {}
    before = _trim()
    core.index.stop_worker()
    core.index = core.reader.index = VectorIndex(core.dim, core.path / "dropped")
    after = _trim()
    out["vector_index"] = round((before - after) / n, 1)
    core.lexical = core.reader.lexical = LexicalIndex()
    before, after = after, _trim()
    out["lexical"] = round((before - after) / n, 1)
    core.postings = core.reader.postings = Postings()
    before, after = after, _trim()
    out["postings"] = round((before - after) / n, 1)
    return out


def _record(i: int, text: dict) -> dict:
    t = 1.7e9 + i
    return {"id": f"m{i:08d}", "content": text["content"], "workspace_id": f"ws{i % 20}",
            "event_type": text["eventType"], "timestamp": t, "created_at": t, "updated_at": t,
            "tier": "episodic", "visibility": "shared", "session_id": f"s{i // 50}",
            "agent_id": None, "git_branch": "main", "git_commit": None, "expires_at": None,
            "parent_id": None, "chunk_index": None, "chunk_count": None,
            "content_hash": f"{i:064x}", "metadata": {"file": "src/a.py"},
            "idempotency_key": None}


def run(n: int = 20000) -> dict:
    from memoray.actors.shard import ShardCore
    from memoray.embedding import HashEmbedder

    emb = HashEmbedder()
    texts = corpus(n)
    with tempfile.TemporaryDirectory() as tmp:
        core = ShardCore(0, Path(tmp) / "s", emb.dim, map_size=8 << 30, durable=False,
                         snapshot_every=10**9)
        gc.collect()
        r0 = rss_anon()
        t0 = time.perf_counter()
        for i in range(0, n, 500):
            recs = [_record(j, texts[j]) for j in range(i, min(n, i + 500))]
            core.put(recs, emb.embed([r["content"] for r in recs]))
        getattr(core.index, "flush", lambda: None)()
        gc.collect()
        per = (rss_anon() - r0) / n
        res = {"n": n, "rss_anon_bytes_per_record": round(per, 1),
               "load_seconds": round(time.perf_counter() - t0, 1),
               "lexical": core.lexical.stats(), "index_bytes": core.index.nbytes(),
               "loadavg": os.getloadavg()}
        parts = breakdown(core, n)
        parts["rest"] = round((_trim() - r0) / n, 1)
        res["freed_per_record_by_dropping"] = parts
        core.storage.close()
    path = save_json("shard_memory.json" if n == 20000 else f"shard_memory_{n}.json", res)
    print(f"{n} records in one shard: {per:.0f} bytes of anonymous RSS per record "
          f"(lexical ~{res['lexical']['approx_bytes'] / n:.0f} B); freed per record by dropping "
          f"each part: {parts}; load {res['loadavg'][0]:.1f}; saved {path}")
    return res


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=20000)
    run(ap.parse_args().n)
    log("done")


if __name__ == "__main__":
    main()

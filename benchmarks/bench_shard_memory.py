"""RAM per record of one shard, in process (issue 14): anonymous RSS growth while N records
(hash-embedded corpus texts, every field a capture sets) are put, divided by N; then the index
sizes that explain it. The figure the README compares before and after the postings and lexical
changes.

Run: python -m benchmarks.bench_shard_memory [--n 20000]
"""

from __future__ import annotations

import argparse
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
               "lexical": core.lexical.stats(), "loadavg": os.getloadavg()}
        core.close()
    path = save_json("shard_memory.json", res)
    print(f"{n} records in one shard: {per:.0f} bytes of anonymous RSS per record "
          f"(lexical ~{res['lexical']['approx_bytes'] / n:.0f} B); load {res['loadavg'][0]:.1f}; "
          f"saved {path}")
    return res


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=20000)
    run(ap.parse_args().n)
    log("done")


if __name__ == "__main__":
    main()

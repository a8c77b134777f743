"""Writes tests/data/store-v0: one shard as main (2363d95) writes it: 300 records, an index
snapshot covering the first 200, 100 more and 10 deletes only in the LMDB log (no close, as
after kill -9). Run with that commit's code on PYTHONPATH:

    PYTHONPATH=<checkout of 2363d95> python tests/data/store-v0/make_store.py tests/data/store-v0
"""

import sys
from pathlib import Path

import numpy as np

from memoray.actors.shard import ShardCore

WORDS = ["alpha", "bravo", "charlie", "delta", "echo", "foxtrot"]


def record(i: int) -> dict:
    return {"id": f"mem-{i:04d}", "content": f"record {i} about {WORDS[i % 6]} and "
            f"{WORDS[(i * 7) % 6]}", "workspace_id": f"ws{i % 3}", "event_type": "note",
            "timestamp": 1.7e9 + i, "created_at": 1.7e9 + i, "updated_at": 1.7e9 + i,
            "tier": "episodic", "visibility": "shared", "session_id": f"s{i // 10}",
            "git_branch": "main", "metadata": {"n": i}, "content_hash": f"{i:064x}",
            "idempotency_key": f"k{i}"}


def main(out: Path) -> None:
    rng = np.random.default_rng(5)
    vecs = rng.normal(size=(300, 16)).astype(np.float32)
    vecs /= np.linalg.norm(vecs, axis=1, keepdims=True)
    np.save(out / "vectors.npy", vecs)
    core = ShardCore(0, out / "shard-0", 16, map_size=16 << 20, durable=True,
                     snapshot_every=10**9)
    for i in range(0, 200, 50):
        core.put([record(j) for j in range(i, i + 50)], vecs[i:i + 50])
    core.snapshot()
    for i in range(200, 300, 50):
        core.put([record(j) for j in range(i, i + 50)], vecs[i:i + 50])
    core.delete([f"mem-{i:04d}" for i in range(250, 260)])
    core.storage.env.close()


if __name__ == "__main__":
    main(Path(sys.argv[1]))

"""What the webhook outbox costs a shard commit: ShardCore.put of 50-record batches with the
outbox on and off, alternating, medians printed (no JSON/PNG: a quick check, not `make bench`).

    PYTHONPATH=. HNSWLIB_NO_NATIVE=1 .venv/bin/python benchmarks/outbox_put.py
"""

from __future__ import annotations

import os
import tempfile
import time

import numpy as np

from memoray.actors.shard import ShardCore
from memoray.ids import new_id


def median_put_ms(outbox: bool, n: int = 2000, batch: int = 50) -> float:
    core = ShardCore(0, tempfile.mkdtemp(prefix="outbox-bench-"), 384, map_size=1 << 30,
                     durable=False, snapshot_every=10**9)
    core.storage.outbox_enabled = outbox
    vecs = np.random.rand(batch, 384).astype(np.float32)
    times = []
    for b in range(n // batch):
        now = time.time()
        recs = [{"id": new_id(), "content": f"memory {b} {i} " * 20, "workspace_id": "w",
                 "event_type": "note", "timestamp": now, "created_at": now, "updated_at": now,
                 "visibility": "shared", "tier": "project", "metadata": {}}
                for i in range(batch)]
        t0 = time.perf_counter()
        core.put(recs, vecs)
        times.append(time.perf_counter() - t0)
    core.close()
    return sorted(times)[len(times) // 2] * 1000


if __name__ == "__main__":
    for rep in range(3):
        on, off = median_put_ms(True), median_put_ms(False)
        print(f"rep {rep}: median put of 50 records: outbox on {on:.2f} ms, off {off:.2f} ms "
              f"(load {os.getloadavg()[0]:.1f})")

"""What every batch job needs: connect to the running cluster, find memoray's actors."""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path


def connect(address: str | None, data_dir: str | None = None):
    """Join the cluster that serves `data_dir` (its run.json names the GCS address), else
    `address`, else the job's own cluster (RAY_ADDRESS, set by `ray job submit`)."""
    import ray

    run_file = Path(data_dir).expanduser() / "run.json" if data_dir else None
    if address is None and run_file is not None and run_file.exists():
        address = json.loads(run_file.read_text()).get("ray_address")

    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    # No address: inside `ray job submit` this joins the job's own cluster. ("auto" would pick
    # whichever cluster on the machine it finds first.) Plain drivers pass --address.
    ray.init(address=address, namespace="memoray", logging_level="ERROR", log_to_driver=False)
    return ray


def shard_handles(ray, data_dir: str | None = None) -> list:
    """Shard actors by name: the count comes from the store's layout file when given, else by
    probing names until one is missing."""
    from serve.runtime import NAMESPACE, shard_name

    if data_dir:
        n = json.loads((Path(data_dir).expanduser() / "memoray.json").read_text())["shards"]
        return [ray.get_actor(shard_name(i), namespace=NAMESPACE) for i in range(n)]
    out = []
    while True:
        try:
            out.append(ray.get_actor(shard_name(len(out)), namespace=NAMESPACE))
        except ValueError:
            if not out:
                raise SystemExit("no memoray shards in this Ray cluster: is `memoray serve` "
                                 "running there? (plain drivers: pass --address)") from None
            return out


class Progress:
    def __init__(self, label: str, total: int):
        self.label, self.total, self.done, self.t0 = label, total, 0, time.time()

    def update(self, n: int) -> None:
        self.done += n
        rate = self.done / max(time.time() - self.t0, 1e-9)
        print(f"{self.label}: {self.done}/{self.total} ({rate:.0f}/s)", file=sys.stderr,
              flush=True)

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


def _run_info(data_dir: str) -> dict:
    path = Path(data_dir).expanduser() / "run.json"
    if not path.exists():
        raise SystemExit(f"{path} not found: is `memoray serve --data-dir {data_dir}` running?")
    return json.loads(path.read_text())


def store_embedders(ray, data_dir: str):
    """The running store's embedding workers (an EmbedderPool)."""
    from memoray.actors.embedding_worker import EmbedderPool
    from memoray.actors.names import NAMESPACE, ActorNames

    run = _run_info(data_dir)
    names = ActorNames(run["store_id"])
    handles = []
    while True:
        try:
            handles.append(ray.get_actor(names.embedder(len(handles)), namespace=NAMESPACE))
        except ValueError:
            break
    if not handles:
        raise SystemExit("no memoray embedding worker for this store in the Ray cluster")
    return EmbedderPool.of(handles)


def store_shards(ray, data_dir: str):
    """The running store's shards (a ShardSet), found by the store id and shard count the
    server wrote to DATA_DIR/run.json."""
    from memoray.actors.names import NAMESPACE, ActorNames
    from memoray.actors.shard_client import ShardSet
    from memoray.layout import read_layout

    run = _run_info(data_dir)
    names = ActorNames(run["store_id"])
    layout = read_layout(Path(data_dir).expanduser())  # a reshard may have changed the count
    count = layout.routing.width if layout is not None else int(run["shards"])
    try:
        return ShardSet.of([ray.get_actor(names.shard(i), namespace=NAMESPACE)
                            for i in range(count)])
    except ValueError:
        raise SystemExit("no memoray shards for this store in the Ray cluster: is `memoray "
                         "serve` running there?") from None


class Progress:
    def __init__(self, label: str, total: int):
        self.label, self.total, self.done, self.t0 = label, total, 0, time.time()

    def update(self, n: int) -> None:
        self.done += n
        rate = self.done / max(time.time() - self.t0, 1e-9)
        print(f"{self.label}: {self.done}/{self.total} ({rate:.0f}/s)", file=sys.stderr,
              flush=True)

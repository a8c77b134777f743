"""What every batch job needs: connect to the running cluster, find memoray's actors."""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path

# Imported before ray.init, never lazily: a job's code lives in its runtime env's working dir.
from memoray.actors.embedding_worker import EmbedderPool
from memoray.actors.names import NAMESPACE, ActorNames
from memoray.actors.replication import replicated_shards
from memoray.actors.shard_client import ShardSet
from memoray.layout import read_layout


def connect(address: str | None, data_dir: str | None = None):
    """Join `address`; else, inside `ray job submit` (RAY_ADDRESS set), the job's own cluster,
    keeping the job's runtime environment (its working dir); else the cluster that serves
    `data_dir` (its run.json names the GCS address)."""
    import ray

    run_file = Path(data_dir).expanduser() / "run.json" if data_dir else None
    if (address is None and not os.environ.get("RAY_ADDRESS") and run_file is not None
            and run_file.exists()):
        address = json.loads(run_file.read_text()).get("ray_address")

    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    # No address: inside `ray job submit` this joins the job's own cluster. ("auto" would pick
    # whichever cluster on the machine it finds first.) Plain drivers pass --address.
    ray.init(address=address, namespace="memoray", logging_level="ERROR", log_to_driver=False)
    recorded = (json.loads(run_file.read_text()).get("ray_address")
                if run_file is not None and run_file.exists() else None)
    here = ray.get_runtime_context().gcs_address
    if recorded and here != recorded:  # e.g. `ray job submit` to another server's dashboard
        raise SystemExit(f"this job runs on the Ray cluster at {here}, but the store in "
                         f"{data_dir} is served by the one at {recorded}: submit it to that "
                         "cluster's dashboard (its URL is in run.json), or, if that server has "
                         "stopped, remove the stale run.json")
    return ray


def run_info(data_dir: str) -> dict:
    """What a job needs to find a store: its id and shard count (DATA_DIR/run.json, written by
    `memoray serve`; under `serve deploy` there is none, and the layout file says the same),
    the data dir itself and, when the server recorded it, its tokens file."""
    data = Path(data_dir).expanduser().resolve()
    path = data / "run.json"
    if path.exists():
        info = json.loads(path.read_text())
    else:
        layout = data / "memoray.json"
        if not layout.exists():
            raise SystemExit(f"{path} not found: is `memoray serve --data-dir {data_dir}` "
                             "running?")
        have = json.loads(layout.read_text())
        info = {"store_id": have["store_id"], "shards": have["shards"]}
    return {**info, "data_dir": str(data)}


def _actors(ray, names: list[str], tries: int = 1) -> list | None:
    """The named actors, or None when one is not there (after `tries` lookups a second apart:
    a lookup on a busy GCS can fail for an actor that exists)."""
    for attempt in range(tries):
        try:
            return [ray.get_actor(n, namespace=NAMESPACE) for n in names]
        except ValueError as exc:
            if attempt == tries - 1:
                if tries > 1:
                    print(f"lookup failed: {exc}", file=sys.stderr, flush=True)
                return None
            time.sleep(1.0)
    return None


def store_controller(ray, data_dir: str):
    """The store's controller (cluster mode), or None on a single-machine store."""
    found = _actors(ray, [ActorNames(run_info(data_dir)["store_id"]).controller])
    return found[0] if found else None


def store_embedders(ray, data_dir: str):
    """The running store's embedding workers (an EmbedderPool)."""
    names = ActorNames(run_info(data_dir)["store_id"])
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
    """The running store's shards (a ShardSet), found by the store id and shard count (the
    layout's: a reshard may have changed it): the single-machine shard actors, or, in cluster
    mode (the store has a controller), clients that reach each shard's current primary wherever
    it runs."""
    run = run_info(data_dir)
    names = ActorNames(run["store_id"])
    layout = read_layout(Path(run["data_dir"]))
    count = layout.routing.width if layout is not None else int(run["shards"])
    if store_controller(ray, data_dir) is not None:
        return replicated_shards(run["store_id"], count)
    handles = _actors(ray, [names.shard(i) for i in range(count)], tries=20)
    if handles is None:
        raise SystemExit("no memoray shards for this store in the Ray cluster: is `memoray "
                         "serve` running there?")
    return ShardSet.of(handles)


class Progress:
    def __init__(self, label: str, total: int):
        self.label, self.total, self.done, self.t0 = label, total, 0, time.time()

    def update(self, n: int) -> None:
        self.done += n
        rate = self.done / max(time.time() - self.t0, 1e-9)
        print(f"{self.label}: {self.done}/{self.total} ({rate:.0f}/s)", file=sys.stderr,
              flush=True)

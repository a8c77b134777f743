"""Online reshard: change a running store's shard count, moving as few records as possible.

    ray job submit --working-dir . -- python -m memoray.cluster.jobs.reshard --shards 3
    RAY_AUTH_MODE=token python -m memoray.cluster.jobs.reshard --data-dir DIR --shards 3  # driver

Records keep their ids. Routing becomes jump consistent hash (memoray/routing.py), so 2 -> 3
moves about a third of the records (a store still on the modulo routing of older versions moves
more, once). Reads and writes are served throughout; progress lines go to stderr and a JSON
report to stdout. Killed at any point, rerun it with the same --shards and it continues from its
cursor (DATA_DIR/reshard.json). Shrinking works the same way (3 -> 2 empties shard 2, then stops
it). Steps and guarantees: actors/resharding.py.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import shutil
import sys
import time
from pathlib import Path

from memoray.cluster.jobs.common import connect


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--address", help="Ray cluster address (default: the store's run.json)")
    ap.add_argument("--data-dir", default="~/.memoray",
                    help="the store's data dir (its run.json names the store) [~/.memoray]")
    ap.add_argument("--shards", type=int, required=True, help="the new shard count")
    ap.add_argument("--batch", type=int, default=256, help="records per page moved")
    args = ap.parse_args(argv)
    from memoray.routing import MAX_SHARDS

    if not 1 <= args.shards <= MAX_SHARDS:
        raise SystemExit(f"--shards must be between 1 and {MAX_SHARDS}")
    data = Path(args.data_dir).expanduser().resolve()
    ray = connect(args.address, str(data))
    report = asyncio.run(run(ray, data, args.shards, args.batch))
    print(json.dumps(report), flush=True)
    return report


async def run(ray, data: Path, shards: int, batch: int) -> dict:
    from memoray.actors.names import NAMESPACE, ActorNames
    from memoray.actors.resharding import reshard
    from memoray.actors.shard_client import ShardClient, shard_actor_class
    from memoray.layout import read_layout

    layout = read_layout(data)
    if layout is None:
        raise SystemExit(f"{data}: no store here (no memoray.json)")
    names = ActorNames(layout.store_id)
    try:
        ray.get_actor(names.controller, namespace=NAMESPACE)
        raise SystemExit("this store runs in cluster mode (replicated shards): resharding it "
                         "is not supported yet; see docs/operations.md")
    except ValueError:
        pass
    try:
        clients = [ShardClient(ray.get_actor(names.shard(i), namespace=NAMESPACE))
                   for i in range(layout.routing.width)]
    except ValueError:
        raise SystemExit("the store's shards are not running: start `memoray serve` with this "
                         "data dir first (the reshard runs online)") from None

    def say(line: str) -> None:
        print(line, file=sys.stderr, flush=True)

    def add_shards(width: int) -> list[ShardClient]:
        options = ray.get(clients[0].target.spawn_options.remote())
        options.pop("outbox")
        dim = options.pop("dim")
        cls = shard_actor_class()
        handles = [cls.options(name=names.shard(i), namespace=NAMESPACE, get_if_exists=True,
                               lifetime="detached")
                   .remote(i, str(data / "shards" / f"{i:03d}"), dim, **options)
                   for i in range(len(clients), width)]
        ray.get([h.health.remote() for h in handles], timeout=300)
        return [ShardClient(h) for h in handles]

    def remove_shards(indexes: list[int]) -> None:
        for i in indexes:
            handle = ray.get_actor(names.shard(i), namespace=NAMESPACE)
            deadline = time.time() + 60  # its webhook events reach the dispatcher first
            while (ray.get(handle.spawn_options.remote())["outbox"] and time.time() < deadline
                   and _has_webhooks(ray, names)):
                time.sleep(0.5)
            ray.get(handle.snapshot.remote(), timeout=120)
            ray.kill(handle, no_restart=True)
            shutil.rmtree(data / "shards" / f"{i:03d}", ignore_errors=True)

    return await reshard(clients, data, shards, say=say, batch=batch, add_shards=add_shards,
                         remove_shards=remove_shards)


def _has_webhooks(ray, names) -> bool:
    from memoray.actors.names import NAMESPACE

    try:
        ray.get_actor(names.webhooks, namespace=NAMESPACE)
        return True
    except ValueError:
        return False


if __name__ == "__main__":
    main()

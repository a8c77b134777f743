"""Batch reindex: re-embed every memory and rebuild every shard's vector graph, online.

    ray job submit --working-dir . -- python -m memoray.cluster.jobs.reindex
    python -m memoray.cluster.jobs.reindex --address <gcs address>      # as a plain driver

Records are read from each shard in id order (pages of --batch), embedded by the cluster's
EmbeddingWorkers (micro-batched, on GPUs when they have them), and written back under the same
ids (an update in place: nothing is duplicated, retrieval keeps working). Then each shard builds
a fresh graph in the background and swaps it in. Safe to rerun after a failure: it is idempotent.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import time

from memoray.actors.embedding_worker import EmbedderPool
from memoray.actors.shard_client import ShardSet
from memoray.cluster.jobs.common import Progress, connect, store_embedders, store_shards


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--address", help="Ray cluster address (default: RAY_ADDRESS or auto)")
    ap.add_argument("--data-dir", default="~/.memoray",
                    help="the store's data dir (its run.json names the store) [~/.memoray]")
    ap.add_argument("--batch", type=int, default=256)
    ap.add_argument("--rebuild-only", action="store_true", help="skip re-embedding")
    args = ap.parse_args(argv)
    ray = connect(args.address, args.data_dir)
    report = asyncio.run(reindex(store_shards(ray, args.data_dir),
                                 store_embedders(ray, args.data_dir), args))
    print(json.dumps(report), flush=True)
    return report


async def reindex(shards: ShardSet, embedders: EmbedderPool, args: argparse.Namespace) -> dict:
    totals = await shards.each(lambda s: s.stats())
    total = sum(t["records"] for t in totals)
    t0 = time.time()
    done = 0
    if not args.rebuild_only:
        prog = Progress("reindex", total)
        for shard in shards.clients:
            after = None
            while True:
                page = await shard.scan(after, args.batch)
                if not page:
                    break
                vectors = await embedders.embed([r["content"] for r in page])
                await shard.put(page, vectors)
                after = page[-1]["id"]
                done += len(page)
                prog.update(len(page))
    started = await shards.each(lambda s: s.start_rebuild())
    swapped = await shards.each(lambda s: s.finish_rebuild())
    return {"shards": len(shards), "records": total, "reembedded": done,
            "rebuilt": sum(bool(x) for x in swapped), "started": sum(bool(x) for x in started),
            "seconds": round(time.time() - t0, 2)}


if __name__ == "__main__":
    main()

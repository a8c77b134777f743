"""Batch reindex: re-embed every memory and rebuild every shard's vector graph, online.

    ray job submit --working-dir . -- python -m cluster.jobs.reindex
    python -m cluster.jobs.reindex --address <gcs address>      # as a plain driver

Records are read from each shard in id order (pages of --batch), embedded by the cluster's
EmbeddingWorkers (micro-batched, on GPUs when they have them), and written back under the same
ids (an update in place: nothing is duplicated, retrieval keeps working). Then each shard builds
a fresh graph in the background and swaps it in. Safe to rerun after a failure: it is idempotent.
"""

from __future__ import annotations

import argparse
import json
import time

from cluster.jobs.common import Progress, connect, shard_handles


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--address", help="Ray cluster address (default: RAY_ADDRESS or auto)")
    ap.add_argument("--data-dir", help="the store's data dir, to read its shard count")
    ap.add_argument("--batch", type=int, default=256)
    ap.add_argument("--rebuild-only", action="store_true", help="skip re-embedding")
    args = ap.parse_args(argv)

    ray = connect(args.address, args.data_dir)
    from serve.runtime import NAMESPACE, embedder_name

    shards = shard_handles(ray, args.data_dir)
    embedder = ray.get_actor(embedder_name(0), namespace=NAMESPACE)
    totals = ray.get([s.stats.remote() for s in shards])
    total = sum(t["records"] for t in totals)
    t0 = time.time()
    done = 0
    if not args.rebuild_only:
        prog = Progress("reindex", total)
        for shard in shards:
            after = None
            while True:
                page = ray.get(shard.scan.remote(after, args.batch))
                if not page:
                    break
                vectors = ray.get(embedder.embed.remote([r["content"] for r in page]))
                ray.get(shard.put.remote(page, vectors))
                after = page[-1]["id"]
                done += len(page)
                prog.update(len(page))
    started = ray.get([s.start_rebuild.remote() for s in shards])
    swapped = ray.get([s.finish_rebuild.remote() for s in shards])
    report = {"shards": len(shards), "records": total, "reembedded": done,
              "rebuilt": sum(bool(x) for x in swapped), "started": sum(bool(x) for x in started),
              "seconds": round(time.time() - t0, 2)}
    print(json.dumps(report), flush=True)
    return report


if __name__ == "__main__":
    main()

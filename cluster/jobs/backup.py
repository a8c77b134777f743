"""Hot backup of every shard: LMDB's consistent compacted copy, taken while serving.

    ray job submit --working-dir . -- \
        python -m memoray.cluster.jobs.backup --dest /backups/2026-11-21

Writes DEST/shards/NNN/lmdb/ and DEST/manifest.json. To restore, stop the server and copy each
DEST/shards/NNN/lmdb over DATA_DIR/shards/NNN/lmdb (indexes are rebuilt from LMDB at start).
DEST must be on a filesystem the shard actors can write (on a cluster: shared storage).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import time
from pathlib import Path

from memoray.cluster.jobs.common import connect, store_shards


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--address")
    ap.add_argument("--data-dir", default="~/.memoray",
                    help="the store's data dir (its run.json names the store) [~/.memoray]")
    ap.add_argument("--dest", required=True)
    args = ap.parse_args(argv)
    ray = connect(args.address, args.data_dir)
    dest = Path(args.dest).expanduser().resolve()
    if dest.exists() and any(dest.iterdir()):
        raise SystemExit(f"{dest} exists and is not empty: choose a new backup directory")
    shards = store_shards(ray, args.data_dir)
    t0 = time.time()

    async def each_backup() -> list[dict]:
        return list(await asyncio.gather(*[s.backup(str(dest / "shards" / f"{i:03d}"))
                                           for i, s in enumerate(shards.clients)]))

    parts = asyncio.run(each_backup())
    manifest = {"created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                "shards": parts, "records": sum(p["records"] for p in parts),
                "bytes": sum(p["bytes"] for p in parts), "seconds": round(time.time() - t0, 2)}
    dest.mkdir(parents=True, exist_ok=True)
    (dest / "manifest.json").write_text(json.dumps(manifest, indent=2))
    print(json.dumps(manifest), flush=True)
    return manifest


if __name__ == "__main__":
    main()

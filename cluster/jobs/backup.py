"""Hot backup of a whole store into ONE directory, wherever its shards run.

    ray job submit --working-dir . -- \
        python -m memoray.cluster.jobs.backup --data-dir ~/.memoray --dest /backups/2026-11-21

Each shard takes LMDB's consistent, compacted hot copy on its own node and streams it, in
chunks, to this job (the job's filesystem: on `ray job submit`, the head's), where it is checked
against the SHA-256 the shard computed. Then the layout file, the token store, the audit log
and the retention archives are read on the head (where the cluster-wide state lives, in both
modes) and the manifest is written last, with a format version and every file's size and
SHA-256 (memoray/backup.py). Shards are copied before the audit log, so every record in the
backup has its audit line. Restore with `memoray restore DEST --data-dir NEW_DIR`.

Serving goes on throughout. A replicated shard is copied from its primary; a failover during
the copy fails the backup (rerun it). A failed backup removes what it wrote.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import secrets
import time
from typing import Any

from memoray.actors.cluster_start import on_head
from memoray.actors.shard_client import ShardClient
from memoray.backup import BackupWriter, Manifest, state_files
from memoray.cluster.jobs.common import connect, run_info, store_controller, store_shards


async def stream_shard(i: int, shard: ShardClient, writer: BackupWriter, chunk: int) -> dict:
    t0 = time.perf_counter()
    token = secrets.token_hex(8)
    out = writer.open_stream(f"shards/{i:03d}/data.mdb")
    offset, first = 0, None
    while True:
        part = await shard.export_snapshot(token, offset, chunk)
        first = first or part
        out.write(part["data"])
        offset += len(part["data"])
        if part["done"]:
            break
        if not part["data"]:
            raise RuntimeError(f"shard {i}: snapshot stream ended early at {offset} bytes")
    entry = out.close(part["sha256"], part["total"])
    health: dict[str, Any] = {}
    try:
        health = await shard.health()
    except Exception:  # the node of the copy is a nice-to-have in the manifest
        pass
    return {"shard": i, "records": first["records"], "seq": first["seq"],
            "bytes": entry["bytes"], "sha256": entry["sha256"], "node": health.get("node"),
            "seconds": round(time.perf_counter() - t0, 3)}


def head_state(ray: Any, data_dir: str, tokens_file: str | None) -> dict[str, bytes]:
    """The store's own files, read on the head node (in cluster mode the controller keeps the
    layout, tokens and audit log there; on one machine it is the only node)."""
    task = ray.remote(num_cpus=0)(state_files).options(scheduling_strategy=on_head())
    return ray.get(task.remote(data_dir, tokens_file), timeout=600)


def main(argv: list[str] | None = None) -> Manifest:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--address", help="Ray cluster address (default: the data dir's run.json)")
    ap.add_argument("--data-dir", default="~/.memoray",
                    help="the store's data dir on the head [~/.memoray]")
    ap.add_argument("--dest", required=True, help="a new (or empty) directory on this machine")
    ap.add_argument("--chunk-mb", type=int, default=16, help="snapshot chunk size [16]")
    args = ap.parse_args(argv)
    writer = BackupWriter(args.dest)  # refuses a non-empty destination before anything runs
    t0 = time.time()
    try:
        ray = connect(args.address, args.data_dir)
        run = run_info(args.data_dir)
        shards = store_shards(ray, args.data_dir)

        async def each() -> list[dict]:
            return list(await asyncio.gather(*[
                stream_shard(i, s, writer, args.chunk_mb << 20)
                for i, s in enumerate(shards.clients)]))

        parts = asyncio.run(each())
        files = head_state(ray, str(run["data_dir"]), run.get("tokens_file"))
        for rel, data in files.items():
            writer.write_bytes(rel, data)
        layout = json.loads(files["memoray.json"])
        controller = store_controller(ray, args.data_dir)
        cluster = ray.get(controller.status.remote(), timeout=60) if controller else None
        manifest = writer.finish(Manifest(
            created=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            store_id=layout["store_id"], layout=layout, shards=parts,
            records=sum(p["records"] for p in parts),
            cluster={"configs": cluster["configs"]} if cluster else None,
            seconds=round(time.time() - t0, 2)))
    except BaseException:
        writer.abort()
        raise
    summary = {k: manifest[k] for k in ("created", "store_id", "records", "seconds")}
    summary.update(dest=str(writer.dest), shards=len(parts),
                   bytes=sum(f["bytes"] for f in manifest["files"]), files=len(manifest["files"]))
    print(json.dumps(summary), flush=True)
    return manifest


if __name__ == "__main__":
    main()

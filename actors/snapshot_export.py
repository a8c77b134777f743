"""A shard's LMDB snapshot, read out in chunks by a backup job that may run on another node.

The first chunk (offset 0) takes LMDB's consistent, compacted hot copy (`env.copy`, one read
transaction: writes go on) into a temporary file beside the store, with its SHA-256; later
chunks read that file; the chunk that reaches its end deletes it. A job that dies mid-way
leaves a file that the next export removes once it is older than STALE_S. The shard's own disk
holds the copy meanwhile (about the store's size again), never the job's node.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import time
from pathlib import Path
from typing import Any, TypedDict

CHUNK_MAX = 64 << 20
STALE_S = 6 * 3600.0
EXPORTS_DIR = "exports"


class SnapshotChunk(TypedDict):
    token: str
    offset: int
    total: int           # bytes in the whole snapshot
    sha256: str          # of the whole snapshot, computed by the shard
    records: int         # live records in the snapshot
    seq: int             # the store's sequence number the snapshot covers
    data: bytes
    done: bool           # this chunk reached the end (the temporary copy is gone)


def _token_ok(token: str) -> bool:
    return 8 <= len(token) <= 64 and all(c.isalnum() or c in "-_" for c in token)


def _sweep(root: Path, keep: str) -> None:
    if not root.is_dir():
        return
    for d in root.iterdir():
        if d.name != keep and time.time() - d.stat().st_mtime > STALE_S:
            shutil.rmtree(d, ignore_errors=True)


def export_chunk(storage: Any, shard_path: Path, token: str, offset: int,
                 size: int) -> SnapshotChunk:
    """One chunk of the snapshot named `token` (the caller's fresh random id)."""
    if not _token_ok(token):
        raise ValueError("snapshot token: 8-64 letters, digits, '-' or '_'")
    if offset < 0 or not 0 < size <= CHUNK_MAX:
        raise ValueError(f"offset >= 0 and 0 < size <= {CHUNK_MAX}")
    root = Path(shard_path) / EXPORTS_DIR
    work = root / token
    meta_path = work / "meta.json"
    if offset == 0 and not meta_path.exists():
        _sweep(root, token)
        work.mkdir(parents=True, exist_ok=True)
        storage.env.copy(str(work), compact=True)  # LMDB's hot backup: data.mdb
        digest = hashlib.sha256()
        with open(work / "data.mdb", "rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                digest.update(block)
        meta = {"total": (work / "data.mdb").stat().st_size, "sha256": digest.hexdigest(),
                "records": storage.count(), "seq": storage.seq}
        meta_path.write_text(json.dumps(meta))
    if not meta_path.exists():
        raise FileNotFoundError(f"snapshot {token} is gone (finished, or never started)")
    meta = json.loads(meta_path.read_text())
    with open(work / "data.mdb", "rb") as f:
        f.seek(offset)
        data = f.read(size)
    done = offset + len(data) >= meta["total"]
    if done:
        shutil.rmtree(work, ignore_errors=True)
    return SnapshotChunk(token=token, offset=offset, total=meta["total"], sha256=meta["sha256"],
                         records=meta["records"], seq=meta["seq"], data=data, done=done)

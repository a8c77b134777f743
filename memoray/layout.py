"""A store's layout file (DATA_DIR/memoray.json): what a store was created with and its identity.

Version 2 adds `version` and `store_id` (names the store's Ray actors). A version-1 file (no
version, no store_id, written by the first release) is migrated in place on open: the id is
added, and the file is replaced atomically.
"""

from __future__ import annotations

import json
import os
import secrets
from dataclasses import asdict, dataclass
from pathlib import Path

from memoray.errors import MemorayError

LAYOUT_VERSION = 2
FILE_NAME = "memoray.json"


@dataclass(frozen=True)
class Layout:
    store_id: str
    shards: int
    dim: int
    embedder: str
    version: int = LAYOUT_VERSION


def _write(path: Path, layout: Layout) -> None:
    tmp = path.with_suffix(".json.tmp")
    with open(tmp, "w", encoding="utf-8") as f:
        f.write(json.dumps(asdict(layout)))
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def read_layout(data_dir: Path) -> Layout | None:
    path = Path(data_dir) / FILE_NAME
    if not path.exists():
        return None
    have = json.loads(path.read_text())
    version = int(have.get("version", 1))
    if version > LAYOUT_VERSION:
        raise MemorayError("INVALID_INPUT", f"{path} is layout version {version}; this memoray "
                                            f"reads up to {LAYOUT_VERSION} (upgrade memoray)")
    return Layout(store_id=have.get("store_id") or "", shards=int(have["shards"]),
                  dim=int(have["dim"]), embedder=have["embedder"], version=version)


def open_layout(data_dir: Path, *, shards: int, dim: int, embedder: str) -> Layout:
    """The store's layout, created on first start. A store keeps the shard count and embedder it
    was created with (records are routed by hash mod N; vectors are the embedder's)."""
    data = Path(data_dir)
    data.mkdir(parents=True, exist_ok=True)
    have = read_layout(data)
    if have is None:
        layout = Layout(store_id=secrets.token_hex(4), shards=shards, dim=dim, embedder=embedder)
        _write(data / FILE_NAME, layout)
        return layout
    if have.shards != shards:
        raise MemorayError("INVALID_INPUT",
                           f"{data} was created with {have.shards} shards; start with "
                           f"--shards {have.shards}")
    if have.embedder != embedder:
        raise MemorayError("INVALID_INPUT",
                           f"{data} holds {have.embedder} embeddings; start with "
                           f"--embedder {have.embedder} or reindex")
    if have.version < LAYOUT_VERSION or not have.store_id:  # migrate v1 in place
        have = Layout(store_id=have.store_id or secrets.token_hex(4), shards=have.shards,
                      dim=have.dim, embedder=have.embedder)
        _write(data / FILE_NAME, have)
    return have

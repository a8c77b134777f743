"""A store's layout file (DATA_DIR/memoray.json): what a store was created with, its identity
and how its records are routed to shards.

Version 2 added `version` and `store_id` (names the store's Ray actors). Version 3 adds
`placement` (memoray.routing.Placement: the routing scheme and shard count, an epoch, and the
target routing while a reshard runs); `shards` is the number of shards holding records (both
sets while a reshard runs). New stores route by jump consistent hash. Older files are migrated
in place, atomically: a version-1 file gets a store id, and a version-1 or -2 file gets the
modulo placement its records were written with (epoch 0), which it keeps until a reshard
converts it.
"""

from __future__ import annotations

import json
import os
import secrets
from dataclasses import asdict, dataclass, replace
from pathlib import Path

from memoray.errors import MemorayError
from memoray.routing import JUMP, Placement, Routing

LAYOUT_VERSION = 3
FILE_NAME = "memoray.json"


@dataclass(frozen=True)
class Layout:
    store_id: str
    shards: int
    dim: int
    embedder: str
    version: int = LAYOUT_VERSION
    placement: dict | None = None  # Placement.to_dict(); None only in a file not yet migrated

    @property
    def routing(self) -> Placement:
        return (Placement.from_dict(self.placement) if self.placement
                else Placement.legacy(self.shards))


def _write(path: Path, layout: Layout) -> None:
    tmp = path.with_suffix(".json.tmp")
    with open(tmp, "w", encoding="utf-8") as f:
        f.write(json.dumps(asdict(layout)))
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    dir_fd = os.open(path.parent, os.O_RDONLY)  # the rename itself durable
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


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
                  dim=int(have["dim"]), embedder=have["embedder"], version=version,
                  placement=have.get("placement"))


def open_layout(data_dir: Path, *, shards: int, dim: int, embedder: str) -> Layout:
    """The store's layout, created on first start. A store keeps the embedder it was created
    with (vectors are the embedder's) and its shard count until a reshard changes it."""
    data = Path(data_dir)
    data.mkdir(parents=True, exist_ok=True)
    have = read_layout(data)
    if have is None:
        layout = Layout(store_id=secrets.token_hex(4), shards=shards, dim=dim, embedder=embedder,
                        placement=Placement(0, Routing(JUMP, shards)).to_dict())
        _write(data / FILE_NAME, layout)
        return layout
    placement = have.routing
    counts = {placement.current.shards} | ({placement.target.shards} if placement.target
                                           else set())
    if shards not in counts:
        moving = (f" (a reshard to {placement.target.shards} is under way)"
                  if placement.target else "")
        raise MemorayError("INVALID_INPUT",
                           f"{data} was created with {have.shards} shards{moving}; start with "
                           f"--shards {placement.writes.shards}, or change the count with "
                           f"the reshard job (docs/operations.md)")
    if have.embedder != embedder:
        raise MemorayError("INVALID_INPUT",
                           f"{data} holds {have.embedder} embeddings; start with "
                           f"--embedder {have.embedder} or reindex")
    if have.version < LAYOUT_VERSION or not have.store_id or not have.placement:
        # migrate v1/v2 in place: an identity, and the modulo routing its records were written with
        have = Layout(store_id=have.store_id or secrets.token_hex(4), shards=have.shards,
                      dim=have.dim, embedder=have.embedder,
                      placement=placement.to_dict())
        _write(data / FILE_NAME, have)
    return have


def write_placement(data_dir: Path, placement: Placement) -> Layout:
    """Record a new placement (a reshard's start, its cut-over): one atomic, durable replace of
    the layout file. The layout must exist at version 3 (open_layout migrates older files)."""
    data = Path(data_dir)
    have = read_layout(data)
    if have is None or have.version < LAYOUT_VERSION:
        raise MemorayError("INVALID_INPUT", f"{data}: no layout version {LAYOUT_VERSION} "
                                            f"(start the server once first)")
    layout = replace(have, shards=placement.width, placement=placement.to_dict())
    _write(data / FILE_NAME, layout)
    return layout

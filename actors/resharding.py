"""Online resharding of one store: the steps, the record mover and its durable cursor.

The store's placement (memoray/routing.py) goes through three epochs, each pushed to every shard
before it is written to the layout file (so a shard never accepts a record a newer client would
not look for; clients re-read the layout, actors/placement.py):

1. e   stable on `current`
2. e+1 moving `current` -> `target`: new records go to their target owner; each source shard's
       records whose target owner is another shard are copied there (with their vectors and
       absorbed wordings), then deleted from the source only if unchanged since the copy (a
       change is copied again, a delete made meanwhile is applied to the copy). Reads consult
       every shard; deletes go to every shard.
3. e+2 stable on `target` (the cut-over: one atomic replace of the layout file). Shards the
       target no longer has are empty by then; they are stopped and their directories removed.

The mover's progress (a cursor per source shard, and the batch in flight) is kept in
DATA_DIR/reshard.json, replaced atomically after every page, so a mover killed at any point is
rerun and continues; every step is idempotent.
"""

from __future__ import annotations

import asyncio
import json
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from memoray.actors.shard_client import ShardClient
from memoray.errors import ErrorCode, MemorayError
from memoray.layout import read_layout, write_placement
from memoray.routing import JUMP, Placement, Routing, home_keys

STATE_FILE = "reshard.json"
GRACE_S = 2.0          # > 2 x ShardSet's REFRESH_S: every client has re-read the layout
MAX_ROUNDS = 8         # re-copies of a record changed while it was being moved


@dataclass
class MoveState:
    """The durable cursor: where each source shard's scan stands, and the page in flight."""

    epoch: int
    target: dict
    cursors: dict[str, str | None] = field(default_factory=dict)
    done: list[int] = field(default_factory=list)
    pending: dict[str, dict[str, str]] = field(default_factory=dict)  # source -> {id: fp}
    moved: int = 0
    scanned: int = 0

    @classmethod
    def load(cls, data_dir: Path, epoch: int, target: Routing) -> MoveState:
        path = Path(data_dir) / STATE_FILE
        if path.exists():
            d = json.loads(path.read_text())
            if d.get("epoch") == epoch and d.get("target") == target.to_dict():
                return cls(**d)
        return cls(epoch=epoch, target=target.to_dict())

    def save(self, data_dir: Path) -> None:
        path = Path(data_dir) / STATE_FILE
        tmp = path.with_suffix(".tmp")
        with open(tmp, "w", encoding="utf-8") as f:
            f.write(json.dumps(self.__dict__))
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)

    @staticmethod
    def clear(data_dir: Path) -> None:
        (Path(data_dir) / STATE_FILE).unlink(missing_ok=True)


def plan(placement: Placement, shards: int) -> Placement | None:
    """The moving placement that takes a store to `shards` (jump routing), None when it is
    there already. A reshard under way must be finished with its own target first."""
    target = Routing(JUMP, shards)
    if placement.moving:
        if placement.target != target:
            raise MemorayError(ErrorCode.INVALID_INPUT,
                               f"a reshard to {placement.target.shards} shards is under way: "
                               f"rerun with --shards {placement.target.shards} to finish it")
        return placement
    if placement.current == target:
        return None
    return Placement(placement.epoch + 1, placement.current, target)


class Mover:
    """Moves every record of `clients` (all the shards of the moving placement) to its owner
    under the placement's target, resumably. `say(line)` hears progress."""

    def __init__(self, clients: list[ShardClient], placement: Placement, data_dir: Path,
                 say: Callable[[str], None] = print, batch: int = 256):
        if not placement.moving:
            raise ValueError("the mover needs a moving placement")
        self.clients, self.placement = clients, placement
        self.data_dir, self.say, self.batch = Path(data_dir), say, batch
        self.state = MoveState.load(self.data_dir, placement.epoch, placement.target)
        self.t0 = time.time()
        self.conflicts = 0

    async def run(self) -> dict:
        for s in range(len(self.clients)):
            if s in self.state.done:
                continue
            await self._finish_pending(s)
            after = self.state.cursors.get(str(s))
            while True:
                page = await self.clients[s].export_moving(after, self.batch)
                await self._move(s, page)
                self.state.scanned += page["scanned"]
                after = page["next"]
                self.state.cursors[str(s)] = after
                self.state.save(self.data_dir)
                self._progress(s)
                if after is None:
                    break
            self.state.done.append(s)
            self.state.save(self.data_dir)
        left = await self.remaining()
        return {"moved": self.state.moved, "scanned": self.state.scanned, "left": left,
                "conflicts": self.conflicts, "seconds": round(time.time() - self.t0, 2)}

    async def remaining(self) -> int:
        """Records still on a shard that is not their owner (0 before a cut-over)."""
        total = 0
        for c in self.clients:
            after = None
            while True:
                page = await c.export_moving(after, 1024)
                total += len(page["records"])
                after = page["next"]
                if after is None:
                    break
        return total

    def _progress(self, s: int) -> None:
        rate = self.state.moved / max(time.time() - self.t0, 1e-9)
        self.say(f"reshard: shard {s} scanned to {self.state.cursors.get(str(s)) or 'end'}; "
                 f"{self.state.moved} records moved, {self.state.scanned} scanned "
                 f"({rate:.0f} moved/s)")

    async def _finish_pending(self, s: int) -> None:
        """A page that was in flight when a previous run stopped: settle it by asking the
        source (moved / changed / deleted meanwhile)."""
        pending = self.state.pending.get(str(s))
        if pending:
            await self._drop(s, pending, rounds=0)

    async def _move(self, s: int, page: dict) -> None:
        if not page["records"]:
            return
        self.state.pending[str(s)] = dict(page["fingerprints"])
        self.state.save(self.data_dir)
        ok = await self._import(s, page)
        await self._drop(s, {i: fp for i, fp in page["fingerprints"].items() if i in ok},
                         rounds=0)

    async def _import(self, s: int, page: dict) -> set[str]:
        """Copy a page to the target owners; the ids whose copy is in place."""
        records, vectors = page["records"], np.asarray(page["vectors"], dtype=np.float32)
        owner = self.placement.writes.owner
        groups: dict[int, list[int]] = {}
        for i, home in enumerate(home_keys(records)):
            groups.setdefault(owner(home), []).append(i)
        outs = await asyncio.gather(*[
            self.clients[t].import_moved([records[i] for i in idx], vectors[idx],
                                         {records[i]["id"]: page["wordings"][records[i]["id"]]
                                          for i in idx if records[i]["id"] in page["wordings"]})
            for t, idx in groups.items()])
        ok: set[str] = set()
        for idx, out in zip(groups.values(), outs):
            for i, (mid, _written) in zip(idx, out):
                if mid == records[i]["id"]:
                    ok.add(mid)
                else:  # the key names another record on the target: leave this one, say so
                    self.conflicts += 1
        return ok

    async def _drop(self, s: int, fingerprints: dict[str, str], rounds: int) -> None:
        res = await self.clients[s].drop_moved(fingerprints) if fingerprints else {
            "dropped": [], "changed": [], "gone": []}
        self.state.moved += len(res["dropped"])
        if res["gone"]:  # deleted on the source after the copy was made: delete the copy too
            await asyncio.gather(*[c.delete(res["gone"]) for t, c in enumerate(self.clients)
                                   if t != s])
        self.state.pending.pop(str(s), None)
        self.state.save(self.data_dir)
        if res["changed"] and rounds < MAX_ROUNDS:
            page = await self.clients[s].export_ids(res["changed"])
            self.state.pending[str(s)] = dict(page["fingerprints"])
            self.state.save(self.data_dir)
            ok = await self._import(s, page)
            await self._drop(s, {i: fp for i, fp in page["fingerprints"].items() if i in ok},
                             rounds + 1)


async def push(clients: list[ShardClient], placement: Placement) -> None:
    """Every shard adopts the placement (durably) before any client can read it."""
    await asyncio.gather(*[c.set_placement(placement.to_dict()) for c in clients])


async def reshard(clients: list[ShardClient], data_dir: Path, shards: int, *,
                  say: Callable[[str], None] = print, batch: int = 256,
                  add_shards: Callable[[int], list[ShardClient]] | None = None,
                  remove_shards: Callable[[list[int]], None] | None = None,
                  grace_s: float = GRACE_S) -> dict[str, Any]:
    """Take the store at `data_dir` to `shards` shards, online; resumable (rerun after a crash
    with the same count). `clients`: the store's shards now (the layout's width);
    `add_shards(n)` starts shards len(clients)..n-1 and returns their clients;
    `remove_shards(indexes)` stops emptied ones after the cut-over."""
    t0 = time.time()
    layout = read_layout(Path(data_dir))
    if layout is None or layout.placement is None:
        raise MemorayError(ErrorCode.INVALID_INPUT, f"{data_dir}: no layout version 3 (start "
                                                    f"the server once with this memoray)")
    placement = layout.routing
    # A cut-over pushed to the shards but not yet written to the layout: finish writing it.
    pushed = [await c.placement() for c in clients]
    epochs = [p["epoch"] for p in pushed if p]
    moving = plan(placement, shards)
    if moving is None:
        say(f"reshard: already {shards} shards ({placement.current.scheme} routing), "
            f"nothing to do")
        return {"shards": shards, "moved": 0, "seconds": 0.0, "changed": False}
    before = moving.current
    if len(clients) < moving.width:
        if add_shards is None:
            raise MemorayError(ErrorCode.INVALID_INPUT, "more shards needed and none can start")
        clients = clients + add_shards(moving.width)
        say(f"reshard: started shards {before.shards}..{moving.width - 1}")
    final = Placement(moving.epoch + 1, moving.target)
    report: dict[str, Any] = {"from": before.to_dict(), "to": moving.target.to_dict()}
    if max(epochs, default=-1) < final.epoch:
        await push(clients, moving)
        if not placement.moving:
            write_placement(Path(data_dir), moving)
            say(f"reshard: epoch {moving.epoch}: new records now go to their "
                f"{moving.target.shards}-shard owners; waiting {grace_s:.0f}s for every "
                f"replica to read it")
            await asyncio.sleep(grace_s)
        mover = Mover(clients, moving, Path(data_dir), say=say, batch=batch)
        moved = await mover.run()
        report.update(moved)
        if moved["left"]:
            raise MemorayError(ErrorCode.UNAVAILABLE,
                               f"{moved['left']} records could not be moved (changed on every "
                               f"try, or their idempotency key names another record); nothing "
                               f"cut over: rerun the job")
    await push(clients, final)
    write_placement(Path(data_dir), final)
    say(f"reshard: epoch {final.epoch}: cut over to {shards} shards")
    MoveState.clear(Path(data_dir))
    gone = list(range(shards, len(clients)))
    if gone:
        await asyncio.sleep(grace_s)  # no client still searches the emptied shards
        counts = [(await clients[i].stats())["records"] for i in gone]
        if any(counts):
            raise MemorayError(ErrorCode.UNAVAILABLE, f"emptied shards still hold {counts}")
        if remove_shards is not None:
            remove_shards(gone)
        say(f"reshard: removed shards {gone}")
    report.update({"shards": shards, "epoch": final.epoch, "changed": True,
                   "seconds": round(time.time() - t0, 2)})
    return report

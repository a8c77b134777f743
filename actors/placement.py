"""How a running ShardSet learns its store's placement (memoray/routing.py) without a restart.

On one machine the layout file is the truth: `LayoutSource` re-reads DATA_DIR/memoray.json when
it changed (a stat every refresh), and reaches a shard the reshard job added by its actor name.
Writes never depend on this being fresh: a shard refuses a new record it does not own under its
own placement (pushed by the reshard job before any client sees it), and the client re-reads.

In cluster mode the layout is on the head's disk, which a Serve replica on another node cannot
stat: `ControllerSource` asks the store's controller (which writes the layout file on the head
and keeps it in memory, actors/controller.py) and reaches a shard by its replica set.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from memoray.actors.names import NAMESPACE, ActorNames
from memoray.actors.shard_client import ShardClient
from memoray.layout import FILE_NAME, read_layout
from memoray.routing import Placement


class LayoutSource:
    def __init__(self, data_dir: str, store_id: str):
        self.data_dir = str(data_dir)
        self.store_id = store_id
        self._seen: tuple[int, int, int] | None = None
        self._last: Placement | None = None

    def __reduce__(self):
        return (type(self), (self.data_dir, self.store_id))

    def read(self) -> Placement | None:
        try:
            st = os.stat(Path(self.data_dir) / FILE_NAME)
        except OSError:
            return self._last
        stamp = (st.st_ino, st.st_mtime_ns, st.st_size)
        if stamp != self._seen:
            layout = read_layout(Path(self.data_dir))
            if layout is not None:
                self._last, self._seen = layout.routing, stamp
        return self._last

    def client(self, index: int) -> ShardClient:
        import ray

        handle: Any = ray.get_actor(ActorNames(self.store_id).shard(index), namespace=NAMESPACE)
        return ShardClient(handle)


class ControllerSource:
    """The placement as the store's controller holds it. A ShardSet in use reads every
    REFRESH_S: each read takes the answer to the previous ask and asks again, never blocking the
    caller's event loop. A read after a quiet spell (the last answer older than STALE_S) waits
    for a fresh answer first, so a replica idle through a reshard never routes (or reads from a
    removed shard) on the placement it last saw."""

    STALE_S = 1.0
    WAIT_S = 5.0

    def __init__(self, store_id: str):
        self.store_id = store_id
        self._pending: Any = None
        self._asked = 0.0
        self._fresh = 0.0       # when the placement in _last was asked for
        self._last: Placement | None = None

    def __reduce__(self):
        return (type(self), (self.store_id,))

    def _take(self, got: Any) -> None:
        if got:
            self._last = Placement.from_dict(got)
        self._fresh, self._pending = self._asked, None

    def read(self) -> Placement | None:
        import time

        import ray

        try:
            if self._pending is not None:
                ready, _ = ray.wait([self._pending], timeout=0)
                if ready:
                    self._take(ray.get(self._pending))
            if self._pending is None:
                controller = ray.get_actor(ActorNames(self.store_id).controller,
                                           namespace=NAMESPACE)
                self._pending, self._asked = controller.placement.remote(), time.monotonic()
            if time.monotonic() - self._fresh > self.STALE_S:
                self._take(ray.get(self._pending, timeout=self.WAIT_S))
        except Exception:  # the controller is restarting: keep the last placement, ask later
            self._pending = None
        return self._last

    def client(self, index: int) -> ShardClient:
        from memoray.actors.replication import ReplicatedShard

        return ReplicatedShard(index, self.store_id)

"""How a running ShardSet learns its store's placement (memoray/routing.py) without a restart.

On one machine the layout file is the truth: `LayoutSource` re-reads DATA_DIR/memoray.json when
it changed (a stat every refresh), and reaches a shard the reshard job added by its actor name.
Writes never depend on this being fresh: a shard refuses a new record it does not own under its
own placement (pushed by the reshard job before any client sees it), and the client re-reads.
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

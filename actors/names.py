"""The names of a store's Ray actors, in one place.

Names carry the store's identity (its layout's store_id), so two stores on one Ray cluster never
share an actor, and a replica or a job that knows the store id finds exactly that store's actors.
"""

from __future__ import annotations

from dataclasses import dataclass

NAMESPACE = "memoray"


@dataclass(frozen=True)
class ActorNames:
    store_id: str

    @property
    def prefix(self) -> str:
        return f"memoray-{self.store_id}"

    def shard(self, i: int) -> str:
        return f"{self.prefix}-shard-{i}"

    def embedder(self, i: int) -> str:
        return f"{self.prefix}-embedder-{i}"

    @property
    def planner(self) -> str:
        return f"{self.prefix}-planner"

    @property
    def limiter(self) -> str:
        return f"{self.prefix}-rate-limiter"

    @property
    def expiry(self) -> str:
        return f"{self.prefix}-expiry"

    @property
    def webhooks(self) -> str:
        return f"{self.prefix}-webhooks"

    # Cluster mode (actors/replication.py, actors/controller.py).
    @property
    def controller(self) -> str:
        return f"{self.prefix}-controller"

    def replica(self, shard: int, node: str) -> str:
        """One replica of a shard, on the storage node `node`."""
        return f"{self.prefix}-shard-{shard}@{node}"

"""The central rate limiter as one named Ray actor, and the replica-side adapter to it.

The actor is a thin shell over memoray.ratelimit.SlidingWindow: calls run one at a time (a plain
sync actor), so the window needs no locks. Replicas reach it through RemoteCentral inside a
LeaseClient, which spends small local grants and calls the actor once per grant, not per request.
If the actor restarts (max_restarts=-1) its windows start empty: for up to one window the limits
allow up to one extra capacity per key.
"""

from __future__ import annotations

from typing import Any

import ray

from memoray.ratelimit import (
    LEASE_TTL_S,
    Decision,
    Key,
    Lease,
    Limit,
    SlidingWindow,
    limits_from_settings,
)

DEFAULT_NAME = "memoray-rate-limiter"
DEFAULT_NAMESPACE = "memoray"


@ray.remote(num_cpus=0, max_restarts=-1, max_task_retries=-1)
class RateLimiterActor:
    def __init__(self, limits: dict[str, Limit], lease_ttl_s: float = LEASE_TTL_S):
        self._window = SlidingWindow(limits, lease_ttl_s=lease_ttl_s)

    def grant(self, key: Key, want: int, min_amount: int = 1) -> Lease:
        return self._window.grant(tuple(key), want, min_amount=min_amount)

    def release(self, key: Key, unused: int, lease_id: int | None = None) -> int:
        return self._window.release(tuple(key), unused, lease_id)

    def acquire(self, keys: list[Key], cost: int = 1) -> Decision:
        return self._window.acquire([tuple(k) for k in keys], cost)

    def stats(self) -> dict[str, Any]:
        return self._window.stats()


def create(settings: Any, name: str = DEFAULT_NAME, namespace: str = DEFAULT_NAMESPACE):
    """Get the named limiter, or create it with the limits from settings. An existing actor keeps
    the limits it was created with."""
    return RateLimiterActor.options(
        name=name, namespace=namespace, get_if_exists=True
    ).remote(limits_from_settings(settings))


class RemoteCentral:
    """memoray.ratelimit.Central over an actor handle (ObjectRefs are awaitable in asyncio)."""

    def __init__(self, handle: Any):
        self.handle = handle

    async def grant(self, key: Key, want: int, min_amount: int) -> Lease:
        return await self.handle.grant.remote(key, want, min_amount)

    async def release(self, key: Key, unused: int, lease_id: int | None) -> int:
        return await self.handle.release.remote(key, unused, lease_id)

    async def acquire(self, keys: list[Key], cost: int) -> Decision:
        return await self.handle.acquire.remote(keys, cost)

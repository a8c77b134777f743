"""The central rate limiter: a Ray actor made from memoray.ratelimit.SlidingWindow itself, and
its typed client.

Calls run one at a time (a plain sync actor), so the window needs no locks. Replicas reach it
through LimiterClient inside a LeaseClient, which spends small local grants and calls the actor
once per grant, not per request. If the actor restarts (max_restarts=-1) its windows start empty:
for up to one window the limits allow up to one extra capacity per key.
"""

from __future__ import annotations

from typing import Any

from memoray.actors.client import ActorClient
from memoray.ratelimit import Decision, Key, Lease, SlidingWindow, limits_from_settings

ACTOR_OPTIONS = {"num_cpus": 0, "max_restarts": -1, "max_task_retries": -1}


def create(settings: Any, name: str, namespace: str, **options: Any):
    """Get the named limiter, or create it with the limits from settings. An existing actor keeps
    the limits it was created with. `options`: more actor options (lifetime, placement)."""
    import ray

    cls = ray.remote(**ACTOR_OPTIONS)(SlidingWindow)
    return cls.options(name=name, namespace=namespace, get_if_exists=True, **options).remote(
        limits_from_settings(settings))


class LimiterClient(ActorClient[SlidingWindow]):
    """memoray.ratelimit.Central over the limiter (an actor handle, or a SlidingWindow)."""

    async def grant(self, key: Key, want: int, min_amount: int) -> Lease:
        return await self._call(SlidingWindow.grant, tuple(key), want, min_amount=min_amount)

    async def release(self, key: Key, unused: int, lease_id: int | None) -> int:
        return await self._call(SlidingWindow.release, tuple(key), unused, lease_id)

    async def acquire(self, keys: list[Key], cost: int) -> Decision:
        return await self._call(SlidingWindow.acquire, [tuple(k) for k in keys], cost)

    async def stats(self) -> dict[str, Any]:
        return await self._call(SlidingWindow.stats)

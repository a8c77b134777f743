"""The Ray Serve deployment: one replica = one Runtime + the ASGI app, composed from the
named actor handles (shards, embedders, planner, rate limiter).

The app is built inside the replica (`__serve_build_asgi_app__` runs after the constructor),
since a FastAPI app with the MCP app mounted cannot be pickled.
"""

from __future__ import annotations

import asyncio

from ray import serve

from memoray.settings import Settings
from serve.observability import Metrics


async def make_runtime(settings: Settings, metrics: Metrics):
    import ray

    from actors.backend import RayBackend
    from actors.rate_limiter import RemoteCentral
    from memoray.ratelimit import LeaseClient, limits_from_settings
    from serve.runtime import (
        EXPIRY_NAME,
        LIMITER_NAME,
        NAMESPACE,
        PLANNER_NAME,
        Runtime,
        embedder_name,
        shard_name,
    )

    shards = [ray.get_actor(shard_name(i), namespace=NAMESPACE) for i in range(settings.shards)]
    embedders = [ray.get_actor(embedder_name(i), namespace=NAMESPACE)
                 for i in range(settings.embedding_workers)]
    planner = ray.get_actor(PLANNER_NAME, namespace=NAMESPACE)
    limiter = LeaseClient(RemoteCentral(ray.get_actor(LIMITER_NAME, namespace=NAMESPACE)),
                          limits_from_settings(settings))
    expiry = ray.get_actor(EXPIRY_NAME, namespace=NAMESPACE)
    rt = Runtime(settings, RayBackend(shards, embedders), metrics=metrics,
                 planner_handle=planner, limiter=limiter, expiry=expiry)
    rt.start_background()
    await rt.refresh_planner_now()
    return rt


@serve.deployment(name="memoray", ray_actor_options={"num_cpus": 0},
                  max_ongoing_requests=256, health_check_period_s=10)
@serve.ingress()
class MemorayServer:
    def __init__(self, settings_json: str):
        self.settings = Settings.model_validate_json(settings_json)
        self.metrics = Metrics()
        self._runtime = None
        self._lock = asyncio.Lock()

    async def runtime(self):
        if self._runtime is None:
            async with self._lock:
                if self._runtime is None:
                    self._runtime = await make_runtime(self.settings, self.metrics)
        return self._runtime

    def __serve_build_asgi_app__(self):
        from serve.app import build_app_with

        return build_app_with(self.runtime, self.metrics)


def make_app(settings: Settings):
    return MemorayServer.options(num_replicas=settings.replicas).bind(settings.model_dump_json())


def build_app(args: dict | None = None):
    """Application builder for Serve config files (`serve deploy`, KubeRay RayService):
    import_path serve.deployment:build_app, with `args` holding Settings fields (or MEMORAY_*
    env vars). Creates or joins the named actors, then returns the bound app."""
    from serve.launcher import check_layout, start_actors

    settings = Settings(**(args or {}))
    check_layout(settings)
    start_actors(settings)
    return make_app(settings)

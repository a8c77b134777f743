"""The Ray Serve deployment: one replica = one Runtime + the ASGI app, composed from the
store's actors (serve/topology.py).

The app is built inside the replica (`__serve_build_asgi_app__` runs after the constructor),
since a FastAPI app with the MCP app mounted cannot be pickled.
"""

from __future__ import annotations

import asyncio

from ray import serve

from memoray.serve.observability import Metrics
from memoray.settings import Settings


async def make_runtime(settings: Settings, metrics: Metrics, store_id: str):
    from memoray.ratelimit import LeaseClient, limits_from_settings
    from memoray.serve.runtime import Runtime
    from memoray.serve.topology import lookup

    topo = lookup(settings, store_id)
    limiter = LeaseClient(topo.limiter, limits_from_settings(settings))
    rt = Runtime(settings, topo.backend, metrics=metrics, planner_client=topo.planner,
                 limiter=limiter, expiry=topo.expiry)
    rt.start_background()
    await rt.refresh_planner_now()
    return rt


@serve.deployment(name="memoray", ray_actor_options={"num_cpus": 0},
                  max_ongoing_requests=256, health_check_period_s=10)
@serve.ingress()
class MemorayServer:
    def __init__(self, settings_json: str, store_id: str):
        self.settings = Settings.model_validate_json(settings_json)
        self.store_id = store_id
        self.metrics = Metrics()
        self._runtime = None
        self._lock = asyncio.Lock()

    async def runtime(self):
        if self._runtime is None:
            async with self._lock:
                if self._runtime is None:
                    self._runtime = await make_runtime(self.settings, self.metrics,
                                                       self.store_id)
        return self._runtime

    def __serve_build_asgi_app__(self):
        from memoray.serve.app import build_app_with

        return build_app_with(self.runtime, self.metrics)


def make_app(settings: Settings, store_id: str):
    return MemorayServer.options(num_replicas=settings.replicas).bind(
        settings.model_dump_json(), store_id)


def build_app(args: dict | None = None):
    """Application builder for Serve config files (`serve deploy`, KubeRay RayService):
    import_path memoray.serve.deployment:build_app, with `args` holding Settings fields (or
    MEMORAY_* env vars). Creates or joins the store's actors, then returns the bound app."""
    from memoray.serve.topology import resolve_layout, start_actors

    settings = Settings(**(args or {}))
    layout = resolve_layout(settings)
    start_actors(settings, layout)
    return make_app(settings, layout.store_id)

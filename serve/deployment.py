"""The Ray Serve deployment: one replica = one Runtime + the ASGI app, composed from the
store's actors (serve/topology.py).

The app is built inside the replica (`__serve_build_asgi_app__` runs after the constructor),
since a FastAPI app with the MCP app mounted cannot be pickled.
"""

from __future__ import annotations

import asyncio
import threading

from ray import serve

from memoray.serve.observability import Metrics
from memoray.settings import Settings


async def make_runtime(settings: Settings, metrics: Metrics, store_id: str):
    from memoray.actors.query_embedder import ReplicaQueryEmbedder, queries_in_replica
    from memoray.ratelimit import LeaseClient, limits_from_settings
    from memoray.serve.runtime import Runtime
    from memoray.serve.topology import lookup, lookup_cluster
    from memoray.tokens import tokenizer as load_tokenizer

    extra = {}
    if settings.cluster_mode:  # tokens and audit from the controller, never this node's disk
        import ray

        from memoray.actors.names import NAMESPACE, ActorNames
        from memoray.redaction import Redactor
        from memoray.serve.cluster_state import ClusterAuditLog, ClusterTokenStore

        controller = ray.get_actor(ActorNames(store_id).controller, namespace=NAMESPACE)
        tokens = ClusterTokenStore(controller)
        try:
            await tokens.refresh()
        except Exception:  # refuses requests until its refresh loop reaches the controller
            pass
        tokens.start()
        redactor = Redactor(pii=settings.redact_pii)
        extra = {"tokens": tokens,
                 "audit": ClusterAuditLog(controller, redact=lambda s: redactor.redact(s).text)}
        topo = lookup_cluster(settings, store_id)
    else:
        topo = lookup(settings, store_id)
    if queries_in_replica(settings.query_embedding, settings.embedding_gpus):
        topo.backend.queries = ReplicaQueryEmbedder(settings.embedder,
                                                     runtime=settings.embedding_runtime).start()
    # build-context counts tokens: load the tokenizer now (about 50 ms), not in the first call
    threading.Thread(target=load_tokenizer, name="memoray-tokenizer", daemon=True).start()
    limiter = LeaseClient(topo.limiter, limits_from_settings(settings))
    rt = Runtime(settings, topo.backend, metrics=metrics, planner_client=topo.planner,
                 limiter=limiter, expiry=topo.expiry, webhooks=topo.webhooks, **extra)
    rt.start_background()
    await rt.refresh_planner_now()
    return rt


@serve.deployment(name="memoray", ray_actor_options={"num_cpus": 0},
                  max_ongoing_requests=256, health_check_period_s=10)
@serve.ingress()
class MemorayServer:
    def __init__(self, settings_json: str, store_id: str):
        from memoray import gcpause, heap

        heap.mmap_big_buffers()  # RAM per memory: memoray/heap.py
        heap.start_trimmer()  # also where no setup hook ran (`serve deploy`)
        gcpause.watch()  # the collector's pauses in this replica (health-check, /metrics)
        self.settings = Settings.model_validate_json(settings_json)
        from memoray.logs import configure

        configure(self.settings.log_format, self.settings.log_level)
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

    async def check_health(self) -> None:
        """Serve marks this replica (and the app) unhealthy when the store's controller is gone,
        e.g. released with a builder that did not own it."""
        if not self.settings.cluster_mode:
            return
        import ray

        from memoray.actors.names import NAMESPACE, ActorNames

        controller = ray.get_actor(ActorNames(self.store_id).controller, namespace=NAMESPACE)
        await asyncio.wait_for(asyncio.wrap_future(controller.ping.remote().future()), 10)

    def __serve_build_asgi_app__(self):
        from memoray.serve.app import build_app_with

        return build_app_with(self.runtime, self.metrics)


def make_app(settings: Settings, store_id: str):
    extra = ({"max_replicas_per_node": settings.max_replicas_per_node}
             if settings.max_replicas_per_node else {})
    return MemorayServer.options(num_replicas=settings.replicas, **extra).bind(
        settings.model_dump_json(), store_id)


def build_app(args: dict | None = None):
    """Application builder for Serve config files (`serve deploy`, KubeRay RayService):
    import_path memoray.serve.deployment:build_app, with `args` holding Settings fields (or
    MEMORAY_* env vars). Creates or joins the store's actors, then returns the bound app."""
    from memoray.serve.topology import start_cluster

    settings = Settings(**{"cluster": True, **(args or {})})
    layout, _ = start_cluster(settings)  # detached actors, layout on the head
    return make_app(settings, layout["store_id"])

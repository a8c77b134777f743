"""A store's actors on Ray: created (or joined) by `memoray serve` and the Serve config builder,
looked up by replicas and batch jobs. Configuration is resolved here once (layout, encryption
key) and handed to the actors; names come from actors/names.py."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from memoray.actors.backend import Backend
from memoray.actors.embedding_worker import EmbedderPool, embedder_actor_class
from memoray.actors.expiry import ExpiryClient, expiry_actor_class
from memoray.actors.names import NAMESPACE, ActorNames
from memoray.actors.placement import LayoutSource
from memoray.actors.planner import PlannerClient, planner_actor_class
from memoray.actors.rate_limiter import LimiterClient
from memoray.actors.rate_limiter import create as create_limiter
from memoray.actors.shard_client import ShardSet, shard_actor_class
from memoray.actors.webhook_dispatcher import (
    WebhookClient,
    dispatcher_actor_class,
    dispatcher_options,
)
from memoray.crypto import key_text_from_settings
from memoray.embedding import DIM
from memoray.layout import Layout, open_layout
from memoray.routing import Placement
from memoray.settings import Settings


@dataclass
class Topology:
    """Typed clients for every actor of one store."""

    names: ActorNames
    backend: Backend
    planner: PlannerClient
    limiter: LimiterClient
    expiry: ExpiryClient
    webhooks: WebhookClient | None = None

    @property
    def shards(self) -> ShardSet:
        return self.backend.shards


def resolve_layout(settings: Settings) -> Layout:
    """The store's layout (created on first start); raises MemorayError on a mismatch."""
    return open_layout(settings.resolved_data_dir(), shards=settings.shards, dim=DIM,
                       embedder=settings.embedder)


def start_actors(settings: Settings, layout: Layout, progress: Any = None) -> Topology:
    """Get-or-create every actor of the store; waits until shards have recovered. Safe to call
    twice (get_if_exists). `progress(text)` hears each shard and embedder as it is ready."""
    import ray

    from memoray.redaction import Redactor

    names = ActorNames(layout.store_id)
    data = settings.resolved_data_dir()
    key = key_text_from_settings(settings)
    detached = {"lifetime": "detached"} if settings.address else {}
    shard_cls = shard_actor_class()
    placement = layout.routing  # every shard holding records (both sets mid-reshard)
    shard_handles = [
        shard_cls.options(name=names.shard(i), namespace=NAMESPACE, get_if_exists=True,
                          **detached)
        .remote(i, str(data / "shards" / f"{i:03d}"), DIM, map_size=settings.map_size_bytes,
                durable=settings.durable, snapshot_every=settings.snapshot_every,
                encryption=key[0] if key else None)
        for i in range(placement.width)]
    embed_cls = embedder_actor_class()
    embed_handles = [
        embed_cls.options(name=names.embedder(i), namespace=NAMESPACE, get_if_exists=True,
                          num_gpus=settings.embedding_gpus, num_cpus=0).remote(
                              settings.embedder, settings.embedding_threads,
                              settings.embedding_runtime)
        for i in range(settings.embedding_workers)]
    shards = ShardSet.of(shard_handles, placement, LayoutSource(str(data), layout.store_id))
    planner = planner_actor_class().options(
        name=names.planner, namespace=NAMESPACE, get_if_exists=True).remote(shards)
    limiter = create_limiter(settings, name=names.limiter, namespace=NAMESPACE)
    expiry = expiry_actor_class().options(
        name=names.expiry, namespace=NAMESPACE, get_if_exists=True).remote(
        shards, policies=settings.retention_policies,
        archive_dir=settings.resolved_data_dir() / "archive", redactor=Redactor(pii="redact"),
        interval_s=settings.expiry_interval_s)
    webhooks = dispatcher_actor_class().options(
        name=names.webhooks, namespace=NAMESPACE, get_if_exists=True, **detached).remote(
        shards, str(data / "webhooks"), **dispatcher_options(settings))
    # Wait for recovery: a shard answers health only once its LMDB is replayed.
    if progress is not None:
        from memoray.serve.startup import wait_for_actors

        wait_for_actors(shard_handles, embed_handles, [planner, expiry], progress, ray)
    else:
        ray.get([s.health.remote() for s in shard_handles]
                + [e.health.remote() for e in embed_handles]
                + [planner.health.remote(), expiry.health.remote()], timeout=600)
    ray.get(webhooks.health.remote(), timeout=120)
    return Topology(names, Backend(shards, EmbedderPool.of(embed_handles)),
                    PlannerClient(planner), LimiterClient(limiter), ExpiryClient(expiry),
                    WebhookClient(webhooks))


def lookup(settings: Settings, store_id: str) -> Topology:
    """The running store's actors by name (inside a replica or a job)."""
    import ray

    names = ActorNames(store_id)

    def get(name: str) -> Any:
        return ray.get_actor(name, namespace=NAMESPACE)

    # The layout, not --shards, says how many shards hold records (a reshard may have run), and
    # the ShardSet keeps re-reading it, so a reshard reaches this replica without a restart.
    source = LayoutSource(str(settings.resolved_data_dir()), store_id)
    placement = source.read() or Placement.legacy(settings.shards)
    shards = ShardSet.of([get(names.shard(i)) for i in range(placement.width)], placement,
                         source)
    backend = Backend(shards, EmbedderPool.of(
        [get(names.embedder(i)) for i in range(settings.embedding_workers)]))
    return Topology(names, backend, PlannerClient(get(names.planner)),
                    LimiterClient(get(names.limiter)), ExpiryClient(get(names.expiry)),
                    WebhookClient(get(names.webhooks)))


# -- cluster mode (--address, --replication, serve deploy): replicated shards ------------------

def start_cluster(settings: Settings) -> tuple[dict, Topology]:
    """Layout on the head, the store's controller and replicated shards, and the other actors,
    all detached (actors/cluster_start.py). Returns (layout, topology)."""
    from memoray.actors.cluster_start import resolve_layout_on_head, start_store

    layout = resolve_layout_on_head(settings)
    started = start_store(settings, layout)
    return layout, _cluster_topology(layout["store_id"], started["shards"],
                                     started["embedders"], started["planner"],
                                     started["limiter"], started["expiry"],
                                     started["webhooks"])


def lookup_cluster(settings: Settings, store_id: str) -> Topology:
    """A replica's view of a replicated store."""
    import ray

    from memoray.actors.replication import replicated_shards

    names = ActorNames(store_id)

    def get(name: str) -> Any:
        return ray.get_actor(name, namespace=NAMESPACE)

    placement = ray.get(get(names.controller).placement.remote(), timeout=30)
    shards = replicated_shards(store_id, settings.shards,
                               Placement.from_dict(placement) if placement else None)
    return _cluster_topology(store_id, shards,
                             [get(names.embedder(i)) for i in range(settings.embedding_workers)],
                             get(names.planner), get(names.limiter), get(names.expiry),
                             get(names.webhooks))


def _cluster_topology(store_id: str, shards: ShardSet, embedders: list, planner: Any,
                      limiter: Any, expiry: Any, webhooks: Any) -> Topology:
    from memoray.actors.embedding_worker import EmbedderPool

    return Topology(ActorNames(store_id), Backend(shards, EmbedderPool.of(embedders)),
                    PlannerClient(planner), LimiterClient(limiter), ExpiryClient(expiry),
                    WebhookClient(webhooks))

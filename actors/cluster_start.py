"""Starting a store in cluster mode: the layout on the head, then the store's actors, named by
the store's identity (actors/names.py, so two stores on one cluster never share an actor),
all detached (so they outlive `serve deploy`'s builder) and all stopped by `stop_store`."""

from __future__ import annotations

from typing import Any

from memoray.actors.names import NAMESPACE, ActorNames
from memoray.embedding import DIM
from memoray.errors import ErrorCode, MemorayError
from memoray.settings import Settings


def head_layout(settings_json: str) -> dict:
    """Read (or create, or migrate) the store's layout on this node's disk (the head's)."""
    from dataclasses import asdict

    from memoray.layout import open_layout

    settings = Settings.model_validate_json(settings_json)
    return asdict(open_layout(settings.resolved_data_dir(), shards=settings.shards, dim=DIM,
                              embedder=settings.embedder))


def head_node_id() -> str:
    import ray

    for n in ray.nodes():
        if n.get("Alive") and "node:__internal_head__" in n.get("Resources", {}):
            return n["NodeID"]
    raise MemorayError(ErrorCode.UNAVAILABLE, "no alive head node in this Ray cluster")


def on_head():
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    return NodeAffinitySchedulingStrategy(node_id=head_node_id(), soft=False)


def resolve_layout_on_head(settings: Settings) -> dict:
    """The layout lives with the cluster-wide state on the head, wherever this runs (a Serve
    builder may run on any node)."""
    import ray

    return ray.get(ray.remote(num_cpus=0)(head_layout).options(
        scheduling_strategy=on_head()).remote(settings.model_dump_json()), timeout=120)


def start_store(settings: Settings, layout: dict, timeout: float = 600) -> dict[str, Any]:
    """Get-or-create the store's actors: the controller (which starts the shard replicas), then
    embedders, planner, limiter and expiry worker. Returns their handles."""
    import ray

    from memoray.actors.controller import controller_class
    from memoray.actors.embedding_worker import embedder_actor_class
    from memoray.actors.expiry import expiry_actor_class
    from memoray.actors.planner import planner_actor_class
    from memoray.actors.rate_limiter import create as create_limiter
    from memoray.actors.replication import replicated_shards
    from memoray.actors.webhook_dispatcher import dispatcher_actor_class, dispatcher_options
    from memoray.redaction import Redactor

    names = ActorNames(layout["store_id"])
    detached = {"namespace": NAMESPACE, "get_if_exists": True, "lifetime": "detached"}
    controller = controller_class().options(
        name=names.controller, scheduling_strategy=on_head(), **detached).remote(
        settings.model_dump_json(), layout)
    ray.get(controller.start.remote(), timeout=timeout)
    from memoray.routing import Placement

    shards = replicated_shards(layout["store_id"], settings.shards,
                               Placement.from_dict(layout["placement"])
                               if layout.get("placement") else None)
    embedders = [embedder_actor_class().options(
        name=names.embedder(i), num_gpus=settings.embedding_gpus, num_cpus=0, **detached)
        .remote(settings.embedder, settings.embedding_threads, settings.embedding_runtime)
        for i in range(settings.embedding_workers)]
    planner = planner_actor_class().options(name=names.planner, **detached).remote(shards)
    limiter = create_limiter(settings, name=names.limiter, namespace=NAMESPACE,
                             lifetime="detached")
    expiry = expiry_actor_class().options(
        name=names.expiry, scheduling_strategy=on_head(), **detached).remote(  # archives: head
        shards, policies=settings.retention_policies,
        archive_dir=settings.resolved_data_dir() / "archive", redactor=Redactor(pii="redact"),
        interval_s=settings.expiry_interval_s)
    # Subscriptions and delivery queues are cluster-wide state: on the head, like the tokens.
    webhooks = dispatcher_actor_class().options(
        name=names.webhooks, scheduling_strategy=on_head(), **detached).remote(
        shards, str(settings.resolved_data_dir() / "webhooks"), **dispatcher_options(settings))
    ray.get([e.health.remote() for e in embedders]
            + [planner.health.remote(), expiry.health.remote(), webhooks.health.remote()],
            timeout=timeout)
    return {"controller": controller, "embedders": embedders, "planner": planner,
            "limiter": limiter, "expiry": expiry, "shards": shards, "webhooks": webhooks}


def stop_store(settings: Settings, store_id: str) -> int:
    """Stop every actor the store started (replicas first, after closing their LMDB cleanly);
    the data stays on the nodes' disks. Returns how many actors were stopped."""
    import ray

    names = ActorNames(store_id)
    n = 0
    try:
        controller = ray.get_actor(names.controller, namespace=NAMESPACE)
        n += ray.get(controller.stop_replicas.remote(), timeout=120)
    except ValueError:
        pass
    others = [names.planner, names.limiter, names.expiry, names.webhooks, names.controller,
              *[names.embedder(i) for i in range(settings.embedding_workers)]]
    for name in others:
        try:
            ray.kill(ray.get_actor(name, namespace=NAMESPACE), no_restart=True)
            n += 1
        except ValueError:
            pass
    return n

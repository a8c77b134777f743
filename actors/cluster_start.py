"""Starting a store in cluster mode: the layout on the head, then the store's actors, all in a
namespace scoped by the store's identity (so two stores on one cluster never share an actor),
all detached (so they outlive `serve deploy`'s builder) and all stopped by `stop_store`."""

from __future__ import annotations

import json
import uuid
from typing import Any

from memoray.embedding import DIM
from memoray.errors import ErrorCode, MemorayError
from memoray.settings import Settings

LAYOUT_FILE = "memoray.json"


def ensure_layout(settings_json: str) -> dict:
    """Read (or create) the store's layout on this node's disk; give a pre-cluster layout its
    store id in place. A store keeps its shard count and embedder."""
    settings = Settings.model_validate_json(settings_json)
    data = settings.resolved_data_dir()
    data.mkdir(parents=True, exist_ok=True)
    path = data / LAYOUT_FILE
    if path.exists():
        have = json.loads(path.read_text())
        if have.get("shards") != settings.shards:
            raise MemorayError(ErrorCode.INVALID_INPUT,
                               f"{data} was created with {have.get('shards')} shards; start with "
                               f"--shards {have.get('shards')} (resharding is a reindex job)")
        if have.get("embedder") != settings.embedder:
            raise MemorayError(ErrorCode.INVALID_INPUT,
                               f"{data} holds {have.get('embedder')} embeddings; start with "
                               f"--embedder {have.get('embedder')} or reindex")
        if not have.get("store_id"):
            have["store_id"] = uuid.uuid4().hex
            path.write_text(json.dumps(have))
        return have
    layout = {"shards": settings.shards, "dim": DIM, "embedder": settings.embedder,
              "store_id": uuid.uuid4().hex}
    path.write_text(json.dumps(layout))
    return layout


def head_node_id() -> str:
    import ray

    for n in ray.nodes():
        if n.get("Alive") and "node:__internal_head__" in n.get("Resources", {}):
            return n["NodeID"]
    raise MemorayError(ErrorCode.UNAVAILABLE, "no alive head node in this Ray cluster")


def on_head():
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    return NodeAffinitySchedulingStrategy(node_id=head_node_id(), soft=False)


def start_store(settings: Settings, timeout: float = 600) -> dict[str, Any]:
    """Get-or-create the store's actors; returns settings (with store_id) and handles."""
    import ray

    from actors import embedding_worker, expiry, planner, rate_limiter
    from actors.controller import controller_class
    from actors.replication import namespace_for

    layout = ray.get(ray.remote(num_cpus=0)(ensure_layout).options(
        scheduling_strategy=on_head()).remote(settings.model_dump_json()), timeout=120)
    settings = settings.model_copy(update={"store_id": layout["store_id"], "cluster": True})
    ns = namespace_for(layout["store_id"])
    sj = settings.model_dump_json()
    controller = controller_class().options(
        name="controller", namespace=ns, get_if_exists=True, lifetime="detached",
        scheduling_strategy=on_head()).remote(sj, layout)
    ray.get(controller.start.remote(), timeout=timeout)
    Embedder = embedding_worker.actor_class()
    embedders = [Embedder.options(name=f"embedder-{i}", namespace=ns, get_if_exists=True,
                                  lifetime="detached", num_gpus=settings.embedding_gpus,
                                  num_cpus=0).remote(settings.embedder)
                 for i in range(settings.embedding_workers)]
    plan = planner.actor_class().options(name="planner", namespace=ns, get_if_exists=True,
                                         lifetime="detached").remote(settings.shards, ns)
    limiter = rate_limiter.create(settings, name="rate-limiter", namespace=ns,
                                  lifetime="detached")
    expiry_worker = expiry.actor_class().options(
        name="expiry", namespace=ns, get_if_exists=True, lifetime="detached",
        scheduling_strategy=on_head()).remote(  # archives go to the head's disk
        settings.shards, ns, sj)
    ray.get([e.health.remote() for e in embedders] + [plan.health.remote(),
                                                      expiry_worker.health.remote()],
            timeout=timeout)
    return {"settings": settings, "namespace": ns, "controller": controller,
            "embedders": embedders, "planner": plan, "limiter": limiter,
            "expiry": expiry_worker}


STORE_ACTORS = ("planner", "rate-limiter", "expiry")


def stop_store(settings: Settings) -> int:
    """Stop every actor the store started (replicas first, after closing their LMDB cleanly);
    the data stays on the nodes' disks. Returns how many actors were stopped."""
    import ray

    from actors.replication import namespace_for

    ns = namespace_for(settings.store_id or "")
    n = 0
    try:
        controller = ray.get_actor("controller", namespace=ns)
    except ValueError:
        controller = None
    if controller is not None:
        n += ray.get(controller.stop_replicas.remote(), timeout=120)
    names = [*STORE_ACTORS, *[f"embedder-{i}" for i in range(settings.embedding_workers)]]
    for name in names + ["controller"]:
        try:
            ray.kill(ray.get_actor(name, namespace=ns), no_restart=True)
            n += 1
        except ValueError:
            pass
    return n

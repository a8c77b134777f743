"""`memoray serve`: start (or join) Ray, create the actors, deploy the Serve app, wait.

Actors are named in the "memoray" namespace, so replicas (and `ray job submit` jobs) find them
by name; shards restart on failure and recover from their LMDB files.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import sys
import threading
import time
from pathlib import Path

from memoray.embedding import DIM
from memoray.errors import MemorayError
from memoray.settings import Settings

log = logging.getLogger("memoray")


def check_layout(settings: Settings) -> None:
    """A store keeps the shard count it was created with: records are routed by hash mod N."""
    data = settings.resolved_data_dir()
    data.mkdir(parents=True, exist_ok=True)
    path = data / "memoray.json"
    want = {"shards": settings.shards, "dim": DIM, "embedder": settings.embedder}
    if path.exists():
        have = json.loads(path.read_text())
        if have.get("shards") != settings.shards:
            raise MemorayError("INVALID_INPUT",
                               f"{data} was created with {have.get('shards')} shards; start with "
                               f"--shards {have.get('shards')} (resharding is a reindex job)")
        if have.get("embedder") != settings.embedder:
            raise MemorayError("INVALID_INPUT",
                               f"{data} holds {have.get('embedder')} embeddings; start with "
                               f"--embedder {have.get('embedder')} or reindex")
    else:
        path.write_text(json.dumps(want))


def start_actors(settings: Settings, progress=None) -> dict:
    """Get-or-create every named actor; returns their handles. Safe to call twice.
    `progress(text)` hears each shard and embedding worker as it finishes loading."""
    import ray

    from actors import embedding_worker, expiry, planner, rate_limiter, shard
    from serve.runtime import (
        EXPIRY_NAME,
        LIMITER_NAME,
        NAMESPACE,
        PLANNER_NAME,
        embedder_name,
        shard_name,
    )

    data = settings.resolved_data_dir()
    opts = {"map_size": settings.map_size_bytes, "durable": settings.durable,
            "snapshot_every": settings.snapshot_every}
    key = settings.encryption_key
    if not key and settings.encryption_key_file:
        key = Path(settings.encryption_key_file).expanduser().read_text().strip()
    if key:
        opts["encryption"] = key
    Shard = shard.actor_class()
    shards = [Shard.options(name=shard_name(i), namespace=NAMESPACE, get_if_exists=True,
                            lifetime="detached" if settings.address else None)
              .remote(i, str(data / "shards" / f"{i:03d}"), DIM, opts)
              for i in range(settings.shards)]
    Embedder = embedding_worker.actor_class()
    gpus = settings.embedding_gpus
    embedders = [Embedder.options(name=embedder_name(i), namespace=NAMESPACE, get_if_exists=True,
                                  num_gpus=gpus, num_cpus=0)
                 .remote(settings.embedder) for i in range(settings.embedding_workers)]
    Planner = planner.actor_class()
    plan = Planner.options(name=PLANNER_NAME, namespace=NAMESPACE, get_if_exists=True).remote(
        [shard_name(i) for i in range(settings.shards)], NAMESPACE)
    limiter = rate_limiter.create(settings, name=LIMITER_NAME, namespace=NAMESPACE)
    Expiry = expiry.actor_class()
    expiry_worker = Expiry.options(name=EXPIRY_NAME, namespace=NAMESPACE,
                                   get_if_exists=True).remote(
        [shard_name(i) for i in range(settings.shards)], NAMESPACE, settings.model_dump_json())
    actors = {"shards": shards, "embedders": embedders, "planner": plan, "limiter": limiter,
              "expiry": expiry_worker}
    # Wait for recovery: a shard answers health only once its LMDB is replayed.
    if progress is not None:
        from serve.startup import wait_for_actors

        wait_for_actors(actors, progress, ray, timeout=600)
    else:
        ray.get([s.health.remote() for s in shards] + [e.health.remote() for e in embedders]
                + [plan.health.remote(), expiry_worker.health.remote()], timeout=600)
    return actors


def _use_agent_port(port: int) -> None:
    """ray.init has no parameter for the dashboard agent's port (a RayParams default); set it on
    the parameters ray.init builds, so several local clusters can each run their job API."""
    from ray._private import parameter

    init = parameter.RayParams.__init__

    def patched(self, *args, **kwargs):
        init(self, *args, **kwargs)
        self.dashboard_agent_listen_port = port

    parameter.RayParams.__init__ = patched


def serve_forever(settings: Settings) -> int:
    logging.basicConfig(level=settings.log_level,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    from memoray.auth import TokenStore, check_bind
    from memoray.crypto import key_from_settings
    from serve import startup

    try:
        check_bind(settings.host, TokenStore(settings.resolved_tokens_file()).enabled,
                   settings.insecure)
        key_from_settings(settings)  # a malformed key fails here, not inside a shard
        startup.check_port(settings.host, settings.port)
        check_layout(settings)
    except MemorayError as err:
        print(f"memoray: {err.message}", file=sys.stderr)
        return 2

    import ray
    from ray import serve

    from serve.deployment import make_app
    from serve.runtime import NAMESPACE

    t0 = time.time()
    steps = startup.Steps()
    startup.quiet_ray_logs()
    dashboard_port = None
    if not settings.address:  # Ray's fixed default ports may belong to another Ray here
        _use_agent_port(startup.choose_port(settings.dashboard_agent_port,
                                            startup.RAY_AGENT_PORT))
        if settings.dashboard:
            dashboard_port = startup.choose_port(settings.dashboard_port,
                                                 startup.RAY_DASHBOARD_PORT)
    steps.say(f"starting Ray (joining {settings.address})" if settings.address else
              "starting Ray" + (f" (dashboard and job API on 127.0.0.1:{dashboard_port})"
                                if dashboard_port else ""))
    context = ray.init(address=settings.address, namespace=NAMESPACE,
                       include_dashboard=settings.dashboard if not settings.address else None,
                       dashboard_port=dashboard_port,
                       logging_level=logging.WARNING, log_to_driver=False,
                       runtime_env={"env_vars": {"HF_HUB_OFFLINE": "1",
                                                 "TRANSFORMERS_OFFLINE": "1",
                                                 "RAY_USAGE_STATS_ENABLED": "0"}})
    steps.say(f"loading {settings.shards} shards and the {settings.embedder} embedding model")
    try:
        actors = start_actors(settings, progress=steps.say)
    except Exception as exc:  # an actor failed to start: say why in one line, not a traceback
        text = str(exc)
        reason = next((line.strip() for line in text.splitlines()
                       if "store is encrypted" in line or "encrypted with" in line), None)
        print(f"memoray: failed to start: {reason or type(exc).__name__}", file=sys.stderr)
        if reason is None:
            log.error("start-up failed", exc_info=exc)
        ray.shutdown()
        return 2
    steps.say(f"deploying the server ({settings.replicas} replica"
              f"{'s' if settings.replicas > 1 else ''})")
    logs = {"log_level": "WARNING", "enable_access_log": settings.access_log}
    serve.start(http_options={"host": settings.host, "port": settings.port}, logging_config=logs)
    serve.run(make_app(settings), name="memoray", route_prefix="/", blocking=False,
              logging_config=logs)
    url = f"http://{settings.host}:{settings.port}"
    dash = getattr(context, "dashboard_url", None)
    run_file = settings.resolved_data_dir() / "run.json"
    run_file.write_text(json.dumps({"pid": os.getpid(), "url": url,
                                    "ray_address": ray.get_runtime_context().gcs_address,
                                    "dashboard_url": f"http://{dash}" if dash else None}))
    session = (getattr(context, "address_info", None) or {}).get("session_dir")
    if session:
        steps.say(f"Ray's logs: {session}/logs")
    print(f"memoray ready at {url}/mcp, viewer at {url}/ ({settings.shards} shards, "
          f"{settings.embedder} embedder, data in {settings.resolved_data_dir()}, started in "
          f"{time.time() - t0:.1f}s)", flush=True)

    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    while not stop.is_set():
        stop.wait(1.0)
    print("memoray: shutting down (snapshotting indexes)", flush=True)
    try:
        serve.shutdown()
        ray.get([s.snapshot.remote() for s in actors["shards"]], timeout=120)
    finally:
        if not settings.address:
            ray.shutdown()
    return 0

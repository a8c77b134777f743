"""`memoray serve`: start (or join) Ray, create the actors, deploy the Serve app, wait.

The store's actors are named by its identity (actors/names.py), so replicas (and `ray job submit`
jobs) find them by name; shards restart on failure and recover from their LMDB files.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import sys
import threading
import time
from concurrent.futures import Future, ThreadPoolExecutor

from memoray.errors import MemorayError
from memoray.settings import Settings

log = logging.getLogger("memoray")


def _use_agent_port(port: int) -> None:
    """ray.init has no parameter for the dashboard agent's port (a RayParams default); set it on
    the parameters ray.init builds, so several local clusters can each run their job API.

    A patch of a private Ray class, kept because no public way exists for a driver-started
    cluster: Ray's maintainers declined the ray.init parameter (ray-project/ray#34886) and point
    to `ray start --dashboard-agent-listen-port`, which would make `memoray serve` manage a
    separate `ray start` process tree."""
    from ray._private import parameter

    init = parameter.RayParams.__init__

    def patched(self, *args, **kwargs):
        init(self, *args, **kwargs)
        self.dashboard_agent_listen_port = port

    parameter.RayParams.__init__ = patched


_INGRESS_VARS = ("RAY_SERVE_ENABLE_DIRECT_INGRESS", "RAY_SERVE_DIRECT_INGRESS_MIN_HTTP_PORT",
                 "RAY_SERVE_DIRECT_INGRESS_MAX_HTTP_PORT",
                 "RAY_SERVE_DIRECT_INGRESS_MIN_DRAINING_PERIOD_S")


def _passed_on(names: tuple[str, ...]) -> dict[str, str]:
    """Those of `names` set in this process's environment, for the actors' runtime env."""
    return {k: os.environ[k] for k in names if k in os.environ}


def _ingress_env() -> dict[str, str]:
    return _passed_on(_INGRESS_VARS)


def heap_env() -> dict[str, str]:
    """The actors' process settings, when set here: heap and collector (memoray/heap.py,
    memoray/gcpause.py) and where the model's ONNX export is cached (memoray/onnx_minilm.py)."""
    return _passed_on(("MEMORAY_HEAP_TRIM_S", "MEMORAY_HEAP_MMAP_KIB", "MEMORAY_HEAP_TOP_KIB",
                       "MEMORAY_GC_FREEZE", "MEMORAY_MODEL_CACHE"))


def warm_up(settings: Settings, timeout: float = 60.0) -> bool:
    """One /healthz before saying ready: a replica builds its runtime (the actors' handles, the
    planner's first pull, the query model's background load) on its first request, which took
    262-287 ms against about 30 for the next on the 2-core machine (a hook's first call after a
    start paid it). With several replicas this warms the one it reaches. Never fails the
    start."""
    import urllib.error
    import urllib.request

    host = settings.host
    if host in ("0.0.0.0", "::", ""):
        host = "127.0.0.1"
    if ":" in host:
        host = f"[{host}]"
    try:
        with urllib.request.urlopen(f"http://{host}:{settings.port}/healthz",
                                    timeout=timeout) as resp:
            return resp.status == 200
    except urllib.error.HTTPError as exc:  # 503: answered, a component is down; still warm
        return exc.code == 503
    except OSError as exc:
        log.warning("warm-up request failed: %s", exc)
        return False


def _direct_ingress(settings: Settings) -> int:
    """The port Serve's own proxy listens on. With one replica on a Ray this process starts, the
    replica itself serves HTTP on --port (Ray Serve's direct ingress: no proxy actor hop, no
    call back to the proxy for the request body; measured in benchmarks/bench_core.py), and the
    proxy, which Serve still starts on the head, gets a free port nobody uses. Otherwise (several
    replicas to balance, a cluster, or MEMORAY_DIRECT_INGRESS=false) the proxy is the front
    door."""
    from memoray.serve import startup

    if not (settings.direct_ingress and settings.replicas == 1 and not settings.address
            and not settings.cluster_mode and settings.port):
        return settings.port
    os.environ["RAY_SERVE_ENABLE_DIRECT_INGRESS"] = "1"
    # The replica takes the first port of this range: exactly --port.
    os.environ["RAY_SERVE_DIRECT_INGRESS_MIN_HTTP_PORT"] = str(settings.port)
    os.environ["RAY_SERVE_DIRECT_INGRESS_MAX_HTTP_PORT"] = str(settings.port + 1)
    # Serve holds a direct-ingress replica open for a minimum draining period on shutdown (30 s
    # by default) so an external load balancer can deregister it. Here the replica IS the front
    # door on --port: nothing deregisters it, and a stop (Ctrl-C, SIGTERM) would just sit out
    # 30 s. Without it the replica still finishes every in-flight request before it exits
    # (Serve's drain waits for ongoing requests either way). An operator who does put a load
    # balancer in front sets the variable themselves.
    os.environ.setdefault("RAY_SERVE_DIRECT_INGRESS_MIN_DRAINING_PERIOD_S", "0")
    return startup.free_port()


# Ray settings for the Ray `memoray serve` starts on one machine (an operator's own `ray start`
# takes them from its environment; docs/operations.md). Either can be overridden by setting it.
LOCAL_RAY_ENV = {
    # Ray prestarts one idle worker per CPU for the first driver. No memoray actor takes them:
    # they stay `ray::IDLE` for the server's life, two processes and ~160 MB of RSS on two
    # cores (benchmarks/bench_startup.py; the start itself was no faster, within its noise).
    "RAY_prestart_worker_first_driver": "0",
    # Every worker reports its task events to the GCS each second, for the dashboard's task
    # views and `ray list tasks`; memoray's own metrics, traces and logs do not use them.
    # With both settings an idle server used 26% of one core instead of 29% (bench_startup).
    "RAY_task_events_report_interval_ms": "0",
}


def _settle(pending: Future | None) -> None:
    """Lets a start-up step running beside a failed one finish before Ray shuts down; its own
    error, if any, is not the one to report."""
    if pending is not None:
        pending.exception()


def serve_forever(settings: Settings) -> int:
    logging.basicConfig(level=settings.log_level,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    from memoray.logs import configure

    configure(settings.log_format, settings.log_level)  # memoray's own lines: JSON or text
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    if not settings.address:  # the Ray this process starts: its daemons read the environment
        os.environ.update({k: v for k, v in LOCAL_RAY_ENV.items() if k not in os.environ})
    from memoray.auth import TokenStore, check_bind
    from memoray.crypto import key_text_from_settings
    from memoray.serve import startup
    from memoray.serve.topology import resolve_layout, start_actors, start_cluster

    try:
        check_bind(settings.host, TokenStore(settings.resolved_tokens_file()).enabled,
                   settings.insecure)
        key_text_from_settings(settings)  # a malformed key fails here, not inside a shard
        startup.check_port(settings.host, settings.port)
        # Cluster mode: the layout is read on the head, once Ray is up (serve/topology.py).
        layout = None if settings.cluster_mode else resolve_layout(settings)
    except MemorayError as err:
        print(f"memoray: {err.message}", file=sys.stderr)
        return 2

    serve_port = _direct_ingress(settings)  # before Ray starts: its processes read the env
    import ray
    from ray import serve

    from memoray.actors.names import NAMESPACE
    from memoray.serve.deployment import make_app

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
    # One machine in cluster mode (--replication without --address) is one storage node.
    local_resources = ({"memoray_node_local": 1000.0}
                       if settings.cluster_mode and not settings.address else None)
    context = ray.init(address=settings.address, namespace=NAMESPACE, resources=local_resources,
                       include_dashboard=settings.dashboard if not settings.address else None,
                       dashboard_port=dashboard_port,
                       logging_level=logging.WARNING, log_to_driver=False,
                       runtime_env={"env_vars": {"HF_HUB_OFFLINE": "1",
                                                 "TRANSFORMERS_OFFLINE": "1",
                                                 "RAY_USAGE_STATS_ENABLED": "0",
                                                 "MEMORAY_LOG_FORMAT": settings.log_format,
                                                 "MEMORAY_LOG_LEVEL": settings.log_level,
                                                 **_ingress_env(), **heap_env()},
                                    # every actor process logs as memoray.logs says and
                                    # gives freed heap back (memoray/heap.py)
                                    "worker_process_setup_hook": "memoray.heap.setup_worker"})
    logs = {"log_level": "WARNING", "enable_access_log": settings.access_log}
    # One machine: Serve's controller and proxy start while the shards load (they need none
    # of them), about 9 s off a start of ~38 s on a two-core machine. Cluster mode keeps its
    # old order: not measured there.
    def start_serve() -> None:
        serve.start(http_options={"host": settings.host, "port": serve_port},
                    proxy_location=settings.proxy_location, logging_config=logs)

    serve_started: Future | None = (None if settings.cluster_mode else
                                    ThreadPoolExecutor(1, "serve-start").submit(start_serve))
    steps.say(f"loading {settings.shards} shards and the {settings.embedder} embedding model")
    try:
        if settings.cluster_mode:
            layout_d, topology = start_cluster(settings)
            store_id = layout_d["store_id"]
        else:
            topology = start_actors(settings, layout, progress=steps.say)
            store_id = layout.store_id
    except MemorayError as err:
        print(f"memoray: {err.message}", file=sys.stderr)
        _settle(serve_started)
        ray.shutdown()
        return 2
    except Exception as exc:  # an actor failed to start: say why in one line, not a traceback
        text = str(exc)
        reason = next((line.strip() for line in text.splitlines()
                       if "store is encrypted" in line or "encrypted with" in line), None)
        print(f"memoray: failed to start: {reason or type(exc).__name__}", file=sys.stderr)
        if reason is None:
            log.error("start-up failed", exc_info=exc)
        _settle(serve_started)
        ray.shutdown()
        return 2
    steps.say(f"deploying the server ({settings.replicas} replica"
              f"{'s' if settings.replicas > 1 else ''})")
    if serve_started is None:
        start_serve()
    else:
        serve_started.result()  # Serve's own start-up error, if it had one, surfaces here
    serve.run(make_app(settings, store_id), name="memoray", route_prefix="/",
              blocking=False, logging_config=logs)
    if settings.proxy_location != "Disabled":  # else nothing here serves --port
        steps.say("warming the replica (its runtime, the query model's load)")
        warm_up(settings)
    url = f"http://{settings.host}:{settings.port}"
    dash = getattr(context, "dashboard_url", None)
    run_file = settings.resolved_data_dir() / "run.json"
    run_file.write_text(json.dumps({"pid": os.getpid(), "url": url,
                                    "ray_address": ray.get_runtime_context().gcs_address,
                                    "store_id": store_id,
                                    "shards": len(topology.shards),
                                    "tokens_file": str(settings.resolved_tokens_file()),
                                    "dashboard_url": f"http://{dash}" if dash else None}))
    session = (getattr(context, "address_info", None) or {}).get("session_dir")
    if session:
        steps.say(f"Ray's logs: {session}/logs")
    print(f"memoray ready at {url}/mcp, viewer at {url}/ ({settings.shards} shards"
          f"{f' x{settings.replication}' if settings.cluster_mode else ''}, "
          f"{settings.embedder} embedder, data in {settings.resolved_data_dir()}, started in "
          f"{time.time() - t0:.1f}s)", flush=True)

    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    while not stop.is_set():
        stop.wait(1.0)
    t_stop = time.time()
    print("memoray: shutting down (snapshotting indexes)", flush=True)
    try:
        serve.shutdown()
        if settings.cluster_mode:  # detached actors: stop every one this store started
            from memoray.actors.cluster_start import stop_store

            print(f"memoray: stopped {stop_store(settings, store_id)} actors", flush=True)
        else:
            topology.shards.refresh(force=True)  # the shards a reshard added or removed
            ray.get([s.target.snapshot.remote() for s in topology.shards.clients],
                    timeout=120)
    finally:
        if not settings.address:
            ray.shutdown()
    print(f"memoray: stopped in {time.time() - t_stop:.1f}s", flush=True)
    return 0

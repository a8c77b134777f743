"""The store's controller: the one place for cluster-wide state, and the replicas' configuration
manager.

It runs on the Ray head node (where the GCS, the cluster's own single point of coordination,
already runs) and owns, on the head's disk:
- the system store (LMDB, data_dir/system): the layout and every shard's replica configuration
  {epoch, primary, isr, members}, changed only here, one change at a time, durably;
- the token store (data_dir/tokens.json, so `memoray token create --data-dir DIR` on the head
  works before and while the store runs): Serve replicas on every node pull it from here
  (SystemClient in serve/cluster_state.py) and refuse requests when they cannot;
- the audit log (data_dir/audit), appended to by every replica through here.

It also watches the replicas: members outside the in-sync set are told to catch up; a primary
that stops answering is replaced by an in-sync backup; a member unreachable for longer than
`replace_after_s` is rebuilt on a storage node that holds no replica of that shard.
"""

from __future__ import annotations

import hashlib
import json
import logging
import threading
import time
from pathlib import Path
from typing import Any

import lmdb
import msgpack

from memoray.actors.names import NAMESPACE, ActorNames
from memoray.actors.replication import node_resource, replica_actor_class, storage_nodes
from memoray.errors import ErrorCode, MemorayError

log = logging.getLogger(__name__)

SYSTEM_FORMAT = 1
PROBE_TIMEOUT_S = 2.0


class SystemStore:
    """A small LMDB environment of msgpack values: the layout and replica configurations."""

    def __init__(self, path: Path):
        path.mkdir(parents=True, exist_ok=True)
        self.env = lmdb.open(str(path / "lmdb"), map_size=1 << 30, subdir=True, max_dbs=2)
        fmt = self.get("format")
        if fmt is None:
            self.put("format", SYSTEM_FORMAT)
        elif fmt > SYSTEM_FORMAT:
            raise MemorayError(ErrorCode.UNAVAILABLE, f"system store format {fmt} is newer")

    def get(self, key: str) -> Any:
        with self.env.begin() as txn:
            raw = txn.get(key.encode())
        return None if raw is None else msgpack.unpackb(raw, raw=False)

    def put(self, key: str, value: Any) -> None:
        with self.env.begin(write=True) as txn:
            txn.put(key.encode(), msgpack.packb(value, use_bin_type=True))

    def delete(self, key: str) -> None:
        with self.env.begin(write=True) as txn:
            txn.delete(key.encode())


# The controller's Ray metrics (gauges, one series per shard replica).
REPLICA_GAUGES = {
    "memoray_replica_lag_entries": "Log entries a shard replica is behind its primary",
    "memoray_replica_in_sync": "1 when a shard replica is in the in-sync set",
}


def place(shards: int, replication: int, nodes: list[str]) -> list[list[str]]:
    """R distinct nodes per shard, spread round-robin so primaries spread too."""
    if len(nodes) < replication:
        raise MemorayError(ErrorCode.INVALID_INPUT,
                           f"--replication {replication} needs {replication} storage nodes; the "
                           f"cluster has {len(nodes)} ({', '.join(nodes) or 'none'}). Start "
                           f"nodes with `ray start --resources '{{\"memoray_node_<name>\": 1}}'`")
    return [[nodes[(i + r) % len(nodes)] for r in range(replication)] for i in range(shards)]


def controller_class():
    import ray

    @ray.remote(max_restarts=-1, max_task_retries=0, num_cpus=0, max_concurrency=32)
    class ClusterController:
        def __init__(self, settings_json: str, layout: dict):
            from memoray.audit import AuditLog
            from memoray.auth import TokenStore
            from memoray.settings import Settings

            self.settings = Settings.model_validate_json(settings_json)
            self.names = ActorNames(layout["store_id"])
            data = self.settings.resolved_data_dir()
            # A restarted controller gets its first arguments again: the layout file on this
            # (the head's) disk is newer when a reshard changed the shard count since.
            self.layout = _current_layout(data, layout)
            self.system = SystemStore(data / "system")
            self.token_store = TokenStore(self.settings.resolved_tokens_file())
            self.audit = AuditLog(data / "audit" / "audit.log")
            self.lock = threading.RLock()
            self.configs: dict[int, dict] = {}
            from memoray.routing import MAX_SHARDS

            for i in range(MAX_SHARDS):  # a reshard may have added shards not yet in the layout
                cfg = self.system.get(f"cfg:{i}")
                if cfg is not None:
                    self.configs[i] = cfg
            self.handles: dict[str, Any] = {}
            self.pending: dict[str, Any] = {}     # an outstanding probe per replica
            self.unreachable: dict[str, float] = {}
            self.positions: dict[str, tuple[dict, float]] = {}  # last probe answer, its time
            self._gauges: tuple[Any, Any] | None = None
            self.replaced = 0
            self._stop = threading.Event()
            self._monitor: threading.Thread | None = None

        # -- start -----------------------------------------------------------------------------
        def start(self) -> dict:
            """Place (first start) and create every replica, then wait until every shard has a
            primary that answers. Idempotent."""
            with self.lock:
                if len(self.configs) < self.layout["shards"]:
                    nodes = storage_nodes(ray.nodes())
                    members = place(self.layout["shards"], self.settings.replication, nodes)
                    for i, m in enumerate(members):
                        if i not in self.configs:
                            self._save(i, {"shard": i, "epoch": 1, "primary": m[0],
                                           "isr": list(m), "members": list(m)})
                for i, cfg in self.configs.items():
                    for node in cfg["members"]:
                        self._replica(i, node)
            deadline = time.time() + 600
            for i in range(self.layout["shards"]):
                while True:
                    try:
                        ray.get(self._replica(i, self.configs[i]["primary"]).ping.remote(),
                                timeout=30)
                        break
                    except Exception:
                        if time.time() > deadline:
                            raise
            if self._monitor is None:
                self._monitor = threading.Thread(target=self._watch, daemon=True)
                self._monitor.start()
            return {"shards": len(self.configs), "configs": self.configs}

        def _replica(self, shard: int, node: str):
            name = self.names.replica(shard, node)
            h = self.handles.get(name)
            if h is None:
                if self._stop.is_set():  # a clean stop under way: start nothing again
                    raise RuntimeError(f"store stopping: not starting {name}")
                opts = _shard_options(self.settings)
                h = replica_actor_class().options(
                    name=name, namespace=NAMESPACE, get_if_exists=True,
                    lifetime="detached", resources={node_resource(node): 0.001},
                ).remote(shard, node, str(self.settings.resolved_data_dir() / "shards"
                                         / f"{shard:03d}"), self.layout["dim"], opts,
                         self.layout["store_id"])
                self.handles[name] = h
            return h

        def _save(self, shard: int, cfg: dict) -> dict:
            self.system.put(f"cfg:{shard}", cfg)  # durable before anyone acts on it
            self.configs[shard] = cfg
            return cfg

        # -- configuration ---------------------------------------------------------------------
        def placement(self) -> dict | None:
            """The store's routing (memoray.routing.Placement as a dict) from its layout."""
            return self.layout.get("placement")

        # -- resharding (actors/resharding.py, cluster/jobs/reshard.py) -------------------------
        def set_placement(self, placement: dict) -> dict:
            """Record a reshard step in the layout file on the head (atomic, durable), then
            serve it: Serve replicas re-read it from here (actors/placement.py)."""
            from dataclasses import asdict

            from memoray.layout import write_placement
            from memoray.routing import Placement

            with self.lock:
                new = write_placement(self.settings.resolved_data_dir(),
                                      Placement.from_dict(placement))
                self.layout = asdict(new)
                return self.layout

        def add_shards(self, width: int, timeout: float = 600) -> dict:
            """Replica sets for shards len(configs)..width-1, placed over the storage nodes as
            the first start places them (R distinct nodes per shard), durably configured before
            any replica starts; returns once each new shard's primary answers. Idempotent."""
            with self.lock:
                nodes = storage_nodes(ray.nodes())
                members = place(width, self.settings.replication, nodes)
                new = [i for i in range(width) if i not in self.configs]
                for i in new:
                    m = members[i]
                    self._save(i, {"shard": i, "epoch": 1, "primary": m[0], "isr": list(m),
                                   "members": list(m)})
                for i in range(width):
                    for node in self.configs[i]["members"]:
                        self._replica(i, node)
            deadline = time.time() + timeout
            for i in range(width):
                while True:
                    try:
                        ray.get(self._replica(i, self.configs[i]["primary"]).ping.remote(),
                                timeout=30)
                        break
                    except Exception:
                        if time.time() > deadline:
                            raise
            return {i: self.configs[i] for i in range(width)}

        def remove_shards(self, indexes: list[int]) -> list[str]:
            """Stop the replica sets of shards a reshard emptied, each replica deleting its own
            directory, and forget their configurations. Returns the replicas stopped."""
            stopped = []
            with self.lock:
                for i in indexes:
                    cfg = self.configs.get(i)
                    if cfg is None:
                        continue
                    for node in cfg["members"]:
                        name = self.names.replica(i, node)
                        try:
                            h = ray.get_actor(name, namespace=NAMESPACE)
                        except ValueError:
                            continue
                        try:
                            ray.get(h.destroy.remote(), timeout=30)
                        except Exception as exc:  # a dead node keeps its (empty) copy
                            log.warning("shard %d@%s: not deleted: %r", i, node, exc)
                        ray.kill(h, no_restart=True)
                        self.handles.pop(name, None)
                        self.pending.pop(name, None)
                        self.unreachable.pop(name, None)
                        getattr(self, "positions", {}).pop(name, None)
                        stopped.append(name)
                    self.system.delete(f"cfg:{i}")
                    self.configs.pop(i, None)
            return stopped

        def ping(self) -> dict:
            return {"status": "ok", "store": self.layout["store_id"]}

        def config(self, shard: int) -> dict:
            with self.lock:
                return self.configs[shard]

        def configs_all(self) -> dict:
            with self.lock:
                return dict(self.configs)

        def shrink_isr(self, shard: int, epoch: int, reporter: str, failed: list[str]):
            with self.lock:
                cfg = self.configs[shard]
                if cfg["epoch"] != epoch or cfg["primary"] != reporter:
                    return None
                new = {**cfg, "epoch": epoch + 1,
                       "isr": [m for m in cfg["isr"] if m not in failed]}
                log.warning("shard %d: %s left the in-sync set (epoch %d)", shard, failed,
                            epoch + 1)
                return self._save(shard, new)

        def expand_isr(self, shard: int, epoch: int, reporter: str, member: str):
            with self.lock:
                cfg = self.configs[shard]
                if cfg["epoch"] != epoch or cfg["primary"] != reporter:
                    return None
                if member not in cfg["members"]:
                    return None
                isr = cfg["isr"] + ([member] if member not in cfg["isr"] else [])
                self.unreachable.pop(self.names.replica(shard, member), None)
                return self._save(shard, {**cfg, "epoch": epoch + 1, "isr": isr})

        def primary_failed(self, shard: int, epoch: int) -> dict:
            """A client could not reach the primary of `epoch`: fail over to the in-sync backup
            with the longest log, if the primary really is gone."""
            with self.lock:
                cfg = self.configs[shard]
                if cfg["epoch"] != epoch:
                    return cfg
                if self._alive(shard, cfg["primary"]):
                    return cfg
                return self._fail_over(shard, cfg)

        def _alive(self, shard: int, node: str) -> bool:
            try:
                ray.get(self._replica(shard, node).ping.remote(), timeout=PROBE_TIMEOUT_S)
                return True
            except Exception:
                return False

        def _fail_over(self, shard: int, cfg: dict) -> dict:
            candidates = [m for m in cfg["isr"] if m != cfg["primary"]]
            refs = {m: self._replica(shard, m).ping.remote() for m in candidates}
            alive = {}
            for m, ref in refs.items():
                try:
                    alive[m] = ray.get(ref, timeout=PROBE_TIMEOUT_S)
                except Exception:
                    pass
            if not alive:
                log.error("shard %d: primary %s is gone and no in-sync replica is left",
                          shard, cfg["primary"])
                return cfg
            new_primary = max(alive, key=lambda m: alive[m]["seq"])
            new = self._save(shard, {**cfg, "epoch": cfg["epoch"] + 1, "primary": new_primary,
                                     "isr": [new_primary] + [m for m in alive
                                                             if m != new_primary]})
            log.warning("shard %d: failed over from %s to %s (epoch %d)", shard,
                        cfg["primary"], new_primary, new["epoch"])
            for m in alive:
                try:
                    ray.get(self._replica(shard, m).adopt.remote(new), timeout=PROBE_TIMEOUT_S)
                except Exception:
                    pass
            return new

        # -- the watch loop --------------------------------------------------------------------
        def _watch(self) -> None:
            while not self._stop.wait(1.0):
                try:
                    self._watch_once()
                    self._export_replicas()
                except Exception as exc:
                    log.warning("watch: %r", exc)

        def replicas(self) -> dict[int, list[dict]]:
            """Every shard replica: its node, role (primary or replica), whether it is in the
            in-sync set, its state as it reported it, and its lag: log entries behind the
            primary, as of the last probes (each replica is probed every second)."""
            now = time.time()
            with self.lock:
                configs = dict(self.configs)
            out: dict[int, list[dict]] = {}
            for shard, cfg in sorted(configs.items()):
                head = self.positions.get(self.names.replica(shard, cfg["primary"]))
                rows = []
                for node in cfg["members"]:
                    name = self.names.replica(shard, node)
                    seen = self.positions.get(name)
                    down = self.unreachable.get(name)
                    lag = (max(0, head[0]["seq"] - seen[0]["seq"])
                           if seen and head and not down else None)
                    rows.append({"node": node,
                                 "role": "primary" if node == cfg["primary"] else "replica",
                                 "inSync": node in cfg["isr"],
                                 "state": "unreachable" if down else (
                                     seen[0]["role"] if seen else "unknown"),
                                 "seq": seen[0]["seq"] if seen else None, "lag": lag,
                                 "epoch": cfg["epoch"],
                                 "lastSeenS": round(now - seen[1], 1) if seen else None})
                out[shard] = rows
            return out

        def _export_replicas(self) -> None:
            """Replication lag and in-sync state as Ray metrics (exported by the head's metrics
            agent, so one Prometheus sees them with every other memoray metric)."""
            if self._gauges is None:
                from ray.util.metrics import Gauge

                self._gauges = tuple(Gauge(name, doc, tag_keys=("shard", "node", "role"))
                                     for name, doc in REPLICA_GAUGES.items())
            lag, in_sync = self._gauges
            for shard, rows in self.replicas().items():
                for r in rows:
                    tags = {"shard": str(shard), "node": r["node"], "role": r["role"]}
                    in_sync.set(1 if r["inSync"] else 0, tags=tags)
                    if r["lag"] is not None:
                        lag.set(r["lag"], tags=tags)

        def _watch_once(self) -> None:
            now = time.time()
            with self.lock:
                configs = dict(self.configs)
            for shard, cfg in configs.items():
                for node in cfg["members"]:
                    name = self.names.replica(shard, node)
                    ref = self.pending.get(name)
                    if ref is None:
                        self.pending[name] = self._replica(shard, node).ping.remote()
                        continue
                    ready, _ = ray.wait([ref], timeout=0)
                    if not ready:
                        self.unreachable.setdefault(name, now)
                    else:
                        del self.pending[name]
                        try:
                            info = ray.get(ref)
                        except Exception:
                            self.unreachable.setdefault(name, now)
                            continue
                        self.unreachable.pop(name, None)
                        self.positions[name] = (info, now)
                        if info["role"] == "recovering" or (node not in cfg["isr"]
                                                            and info["role"] != "primary"):
                            self._replica(shard, node).sync.remote()
                        elif (node in cfg["isr"] and node != cfg["primary"]
                              and info["epoch"] < cfg["epoch"]):
                            self._replica(shard, node).adopt.remote(cfg)
                    down = self.unreachable.get(name)
                    if down is None:
                        continue
                    if node == cfg["primary"] and now - down > PROBE_TIMEOUT_S:
                        with self.lock:
                            cur = self.configs[shard]
                            if cur["primary"] == node and not self._alive(shard, node):
                                self._fail_over(shard, cur)
                    elif now - down > self.settings.replace_after_s:
                        self._replace(shard, node)

        def _replace(self, shard: int, lost: str) -> None:
            """Rebuild a replica lost for good on a storage node without one of this shard."""
            with self.lock:
                cfg = self.configs[shard]
                if lost not in cfg["members"] or lost == cfg["primary"]:
                    return
                spare = [n for n in storage_nodes(ray.nodes()) if n not in cfg["members"]]
                if not spare:
                    return
                new_node = spare[shard % len(spare)]
                members = [new_node if m == lost else m for m in cfg["members"]]
                self._save(shard, {**cfg, "epoch": cfg["epoch"] + 1, "members": members,
                                   "isr": [m for m in cfg["isr"] if m != lost]})
                name = self.names.replica(shard, lost)
                h = self.handles.pop(name, None)
                self.pending.pop(name, None)
                self.unreachable.pop(name, None)
                if h is not None:
                    ray.kill(h, no_restart=True)
                self.replaced += 1
                log.warning("shard %d: replica on %s lost for good; rebuilding on %s", shard,
                            lost, new_node)
                self._replica(shard, new_node)

        # -- cluster-wide state ----------------------------------------------------------------
        def tokens(self, known: str | None = None):
            """(version, entries) of the token store, or None when `known` is current. Raises
            (the replica then fails closed) when the file is unreadable or malformed."""
            self.token_store._refresh(force=True)
            entries = self.token_store._entries
            version = hashlib.sha256(json.dumps(entries, sort_keys=True).encode()).hexdigest()
            if version == known:
                return None
            return version, entries

        def audit_append(self, entries: list[dict]) -> list[dict]:
            """Entries built (and redacted) by a replica, appended durably before returning."""
            return self.audit.append_many(entries)

        def audit_read(self, limit: int = 50, principal: str | None = None,
                       action: str | None = None, since: Any = None) -> list[dict]:
            return self.audit.read(limit=limit, principal=principal, action=action, since=since)

        def status(self) -> dict:
            with self.lock:
                return {"store": self.layout["store_id"], "configs": self.configs,
                        "unreachable": {k: round(time.time() - v, 1)
                                        for k, v in self.unreachable.items()},
                        "replaced": self.replaced}

        def stop_replicas(self) -> int:
            """Kill every replica this store started (a clean stop; data stays on disk).

            The watch loop's pass in flight ends first, and nothing starts a replica once the
            stop is set (`_replica`): a pass that was probing or rebuilding a replica while the
            old stop ran started one after the kills (a clean-clone CI run found shard-0's
            replica on the head alive after a stop that followed a node's loss and return).
            Replicas are found by the handles this controller holds as well as by name, since
            a replica just created may not be registered under its name yet."""
            self._stop.set()
            if self._monitor is not None and self._monitor is not threading.current_thread():
                self._monitor.join(timeout=60)
            n = 0
            with self.lock:
                names = {self.names.replica(i, node)
                         for i, cfg in self.configs.items() for node in cfg["members"]}
                for name in sorted(names | set(self.handles)):
                    h = self.handles.get(name)
                    if h is None:
                        try:
                            h = ray.get_actor(name, namespace=NAMESPACE)
                        except ValueError:
                            continue
                    try:
                        ray.get(h.close.remote(), timeout=10)
                    except Exception:
                        pass
                    ray.kill(h, no_restart=True)
                    n += 1
                self.handles.clear()
            return n

    return ClusterController


def _current_layout(data: Path, given: dict) -> dict:
    from dataclasses import asdict

    from memoray.layout import read_layout

    try:
        have = read_layout(data)
    except Exception:
        return given
    if have is None or have.store_id != given.get("store_id"):
        return given
    return asdict(have)


def _shard_options(settings) -> dict:
    from memoray.crypto import key_text_from_settings

    key = key_text_from_settings(settings)
    return {"map_size": settings.map_size_bytes, "durable": settings.durable,
            "snapshot_every": settings.snapshot_every, "encryption": key[0] if key else None}

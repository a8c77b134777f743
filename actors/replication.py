"""Replicated shards: primary-backup over a replicated log, with an in-sync set and epochs.

Design (PacificA, Lin et al. 2008; the same shape as Kafka's ISR): each shard has R replicas on
distinct nodes; a configuration manager (the store's ClusterController, actors/controller.py)
holds, durably, each shard's configuration {epoch, primary, isr, members}. The primary orders
every write, logs+applies it (ReplicaCore), sends it to every other in-sync replica and
acknowledges only when all of them have it durable. A replica that does not answer is removed
from the in-sync set *by the controller* (a durable configuration change with a new epoch) before
the write is acknowledged; so "acknowledged" always means "durable on every current in-sync
replica", and with R=2 writes continue on the survivor when a node dies (a majority quorum would
stop them: that is why this rule and not majority). A primary that the controller replaced is
fenced: its epoch is older, backups refuse its entries and the controller refuses its
configuration changes, so it cannot acknowledge anything. Only an in-sync replica is ever
promoted, so an old store never reappears; a lagging or returning replica replays the log (or
takes a full copy) and joins the in-sync set only when it matches the primary exactly.

Weighed: Raft through a maintained library (pysyncobj: a whole-state-machine-in-memory design
that does not fit an LMDB store; no maintained Python Raft fits a per-shard LMDB log), chain
replication (one hop per replica on every write, and it needs the same master for
reconfiguration). Primary-backup with an external configuration manager needs f+1 replicas to
survive f failures and the Ray head (where the controller runs) is already the cluster's single
point of coordination.

Reads go to the primary, which has every acknowledged write.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from typing import Any

from memoray.actors.client import traced
from memoray.actors.names import NAMESPACE, ActorNames
from memoray.actors.replica_core import WRITE_OPS, Fenced, NeedsResync, ReplicaCore
from memoray.actors.shard_client import ShardClient, ShardSet
from memoray.errors import ErrorCode, MemorayError

log = logging.getLogger(__name__)

REPLICATE_TIMEOUT_S = 5.0     # a backup slower than this is dropped from the in-sync set
CALL_TIMEOUT_S = 30.0         # one client call to a primary
CATCHUP_BATCH = 256
READ_METHODS = ("get", "document", "select", "search", "search_many", "search_packed",
                "stats", "planner_stats",
                "health", "snapshot", "scan", "backup", "expired", "start_rebuild",
                "finish_rebuild", "reseal", "pid", "best_match", "export_snapshot", "outbox_read",
                "outbox_ack",
                # resharding (actors/resharding.py): the mover reads the primary
                "placement", "export_moving", "export_ids", "idem_lookup", "spawn_options")


class NotPrimary(Exception):
    """This replica is not the primary of the current configuration (the client refreshes)."""


def node_resource(node: str) -> str:
    """The custom resource a storage node advertises (`ray start --resources`)."""
    return f"memoray_node_{node}"


def storage_nodes(nodes: list[dict]) -> list[str]:
    """Names of alive nodes that advertise a memoray_node_<name> resource."""
    out = []
    for n in nodes:
        if not n.get("Alive"):
            continue
        for key in n.get("Resources", {}):
            if key.startswith("memoray_node_"):
                out.append(key[len("memoray_node_"):])
    return sorted(set(out))


def replica_actor_class():
    import ray

    # Probes and configuration pushes run in their own concurrency group, so a primary busy with
    # queued requests still answers the controller's ping (no failover of a live primary).
    @ray.remote(max_restarts=-1, max_task_retries=0, num_cpus=0, max_concurrency=16,
                concurrency_groups={"control": 4})
    class ShardReplica:
        """One replica, pinned to its node by a custom resource only that node has: when the
        node dies the actor waits (RESTARTING) for that node to return and never starts on a
        node without its disk."""

        def __init__(self, shard: int, node: str, path: str, dim: int, options: dict,
                     store_id: str):
            self.shard, self.node = shard, node
            self.names = ActorNames(store_id)
            self.rc = ReplicaCore(shard, path, dim, map_size=options.get("map_size", 8 << 30),
                                  durable=options.get("durable", True),
                                  snapshot_every=options.get("snapshot_every", 5000),
                                  encryption=options.get("encryption"))
            self.role = "recovering"
            self.config: dict | None = None
            self._handles: dict[str, Any] = {}
            self._syncing = threading.Lock()
            try:
                cfg = ray.get(self._controller().config.remote(shard), timeout=30)
                self._adopt(cfg)
            except Exception as exc:  # the controller is restarting: recover later via sync()
                log.warning("shard %d@%s: no configuration yet: %s", shard, node, exc)

        # -- plumbing --------------------------------------------------------------------------
        def _controller(self):
            return ray.get_actor(self.names.controller, namespace=NAMESPACE)

        def _peer(self, node: str):
            h = self._handles.get(node)
            if h is None:
                h = ray.get_actor(self.names.replica(self.shard, node), namespace=NAMESPACE)
                self._handles[node] = h
            return h

        def _adopt(self, cfg: dict) -> None:
            with self.rc.lock:
                if self.config is not None and cfg["epoch"] < self.config["epoch"]:
                    return
                self.config = cfg
                self.rc.set_epoch(cfg["epoch"])
                if cfg["primary"] == self.node:
                    self.role = "primary"
                elif self.node in cfg["isr"]:
                    self.role = "backup"
                else:
                    self.role = "recovering"

        @ray.method(concurrency_group="control")
        def adopt(self, cfg: dict) -> str:
            self._adopt(cfg)
            return self.role

        @ray.method(concurrency_group="control")
        def ping(self) -> dict:
            """Lock-free liveness and position (the controller's probe)."""
            return {"node": self.node, "role": self.role, "seq": self.rc.seq,
                    "epoch": self.rc.epoch}

        # -- the primary's side ----------------------------------------------------------------
        def write(self, op: str, payload: Any) -> Any:
            if op not in WRITE_OPS:
                raise MemorayError(ErrorCode.INVALID_INPUT, f"not a write: {op}")
            with self.rc.lock:
                if self.role != "primary":
                    raise NotPrimary(self.config)
                cfg = self.config
                seq, prev = self.rc.seq + 1, self.rc.last_epoch
                result = self.rc.apply(seq, cfg["epoch"], op, payload, strict=True)
                others = [m for m in cfg["isr"] if m != self.node]
                failed = []
                if others:
                    refs = {}
                    for m in others:
                        try:
                            refs[m] = self._peer(m).replicate.remote(
                                cfg["epoch"], seq, cfg["epoch"], prev, op, payload)
                        except Exception:
                            failed.append(m)
                    deadline = time.monotonic() + REPLICATE_TIMEOUT_S
                    for m, ref in refs.items():
                        try:
                            ray.get(ref, timeout=max(0.1, deadline - time.monotonic()))
                        except Exception as exc:
                            if _is(exc, Fenced):
                                self.role = "recovering"
                                raise Fenced(f"shard {self.shard}: primary {self.node} "
                                             f"was replaced") from None
                            self._handles.pop(m, None)
                            failed.append(m)
                if failed:
                    new = ray.get(self._controller().shrink_isr.remote(
                        self.shard, cfg["epoch"], self.node, failed), timeout=CALL_TIMEOUT_S)
                    if new is None:  # the controller moved on without us: never acknowledge
                        self.role = "recovering"
                        raise Fenced(f"shard {self.shard}: primary {self.node} was replaced")
                    self._adopt(new)
                return result

        def read(self, method: str, args: tuple) -> Any:
            if method not in READ_METHODS:
                raise MemorayError(ErrorCode.INVALID_INPUT, f"not a read: {method}")
            with self.rc.lock:
                if self.role != "primary":
                    raise NotPrimary(self.config)
                core = self.rc.core
                if method == "health":
                    h = core.health()
                    in_sync, members = len(self.config["isr"]), len(self.config["members"])
                    # A shard running on fewer in-sync replicas than configured still serves,
                    # but says so: the next node loss could make it unavailable.
                    h.update(status="ok" if in_sync >= members else "degraded", role=self.role,
                             node=self.node, epoch=self.rc.epoch, inSync=in_sync,
                             replicas=members)
                    return h
                if method == "stats":
                    st = core.stats()
                    st.update(replication={"node": self.node, "epoch": self.rc.epoch,
                                           "log_seq": self.rc.seq, "isr": self.config["isr"],
                                           "members": self.config["members"]})
                    return st
                return getattr(core, method)(*args)

        def entries_after(self, seq: int, epoch: int, limit: int = CATCHUP_BATCH):
            with self.rc.lock:
                return self.rc.entries_after(seq, epoch, limit)

        def copy_start(self) -> tuple[int, int]:
            with self.rc.lock:
                return self.rc.seq, self.rc.last_epoch

        def dump_page(self, after: str | None, limit: int = CATCHUP_BATCH):
            with self.rc.lock:
                return self.rc.dump_page(after, limit)

        def add_follower(self, member: str, seq: int, epoch: int):
            """Admit `member` to the in-sync set once its log equals ours (checked under the
            write lock, so no write slips between the check and the change). Else return the
            entries it lacks, or None when it must take a full copy."""
            with self.rc.lock:
                if self.role != "primary":
                    raise NotPrimary(self.config)
                if seq == self.rc.seq and epoch == self.rc.last_epoch:
                    new = ray.get(self._controller().expand_isr.remote(
                        self.shard, self.config["epoch"], self.node, member),
                        timeout=CALL_TIMEOUT_S)
                    if new is None:
                        self.role = "recovering"
                        raise Fenced(f"shard {self.shard}: primary {self.node} was replaced")
                    self._adopt(new)
                    return {"joined": True, "config": new}
                return {"joined": False,
                        "entries": self.rc.entries_after(seq, epoch, CATCHUP_BATCH * 4)}

        # -- a backup's side -------------------------------------------------------------------
        def replicate(self, epoch: int, seq: int, entry_epoch: int, prev_epoch: int, op: str,
                      payload: Any) -> bool:
            with self.rc.lock:
                if epoch < self.rc.epoch:
                    raise Fenced(f"epoch {epoch} < {self.rc.epoch}")
                if self.role == "recovering":
                    raise NeedsResync("recovering")
                self.rc.set_epoch(epoch)
                if seq <= self.rc.seq:
                    if self.rc.epoch_at(seq) == entry_epoch:
                        return True  # a duplicate
                    self.role = "recovering"
                    raise NeedsResync(f"entry {seq} differs")
                if seq != self.rc.seq + 1 or self.rc.last_epoch != prev_epoch:
                    self.role = "recovering"
                    raise NeedsResync(f"entry {seq} does not follow {self.rc.seq}")
                self.rc.apply(seq, entry_epoch, op, payload)
                return True

        def sync(self) -> str:
            """Catch up from the primary and join the in-sync set (the controller calls this for
            every member outside it; one run at a time)."""
            if self.role != "recovering" or not self._syncing.acquire(blocking=False):
                return self.role
            try:
                cfg = ray.get(self._controller().config.remote(self.shard), timeout=30)
                self._adopt(cfg)
                if self.role != "recovering":
                    return self.role
                primary = self._peer(cfg["primary"])
                for _ in range(100_000):
                    with self.rc.lock:
                        seq, ep = self.rc.seq, self.rc.last_epoch
                    res = ray.get(primary.add_follower.remote(self.node, seq, ep),
                                  timeout=CALL_TIMEOUT_S)
                    if res["joined"]:
                        self._adopt(res["config"])
                        log.info("shard %d@%s joined the in-sync set at seq %d", self.shard,
                                 self.node, seq)
                        return self.role
                    entries = res["entries"]
                    if entries is None:
                        self._full_copy(primary, cfg)
                        continue
                    with self.rc.lock:
                        for s, e, op, payload in entries:
                            self.rc.apply(s, e, op, payload)
                return self.role
            except Exception as exc:
                log.warning("shard %d@%s sync failed: %r", self.shard, self.node, exc)
                self._handles.clear()
                return "recovering"
            finally:
                self._syncing.release()

        def _full_copy(self, primary, cfg: dict) -> None:
            seq, ep = ray.get(primary.copy_start.remote(), timeout=CALL_TIMEOUT_S)
            with self.rc.lock:
                self.rc.begin_copy()
            after, n = None, 0
            while True:
                records, vectors = ray.get(primary.dump_page.remote(after, CATCHUP_BATCH),
                                           timeout=CALL_TIMEOUT_S)
                if not records:
                    break
                with self.rc.lock:
                    self.rc.copy_page(records, vectors)
                after = records[-1]["id"]
                n += len(records)
            # The placement lives beside the LMDB environment, not in it: a copy takes it too
            # (a backup rebuilt mid-reshard and then promoted must still fence and export).
            placement = ray.get(primary.read.remote("placement", ()), timeout=CALL_TIMEOUT_S)
            marks = ray.get(primary.moved_marks.remote(), timeout=CALL_TIMEOUT_S)
            with self.rc.lock:
                if placement is not None:
                    self.rc.core.set_placement(placement)
                self.rc.copy_moved(marks)
                self.rc.finish_copy(seq, ep, cfg["epoch"])
            log.info("shard %d@%s took a full copy (%d records, seq %d)", self.shard, self.node,
                     n, seq)

        def moved_marks(self) -> list[str]:
            with self.rc.lock:
                return self.rc.moved_marks()

        def position(self) -> dict:
            with self.rc.lock:
                return {**self.rc.position(), "role": self.role, "node": self.node}

        def close(self) -> bool:
            with self.rc.lock:
                self.rc.close()
            return True

        def destroy(self) -> bool:
            """Close and delete this replica's directory (a shard a reshard emptied and the
            controller removed: every node deletes its own copy)."""
            import shutil

            with self.rc.lock:
                self.rc.close()
                shutil.rmtree(self.rc.path, ignore_errors=True)
            return True

    return ShardReplica


def _is(exc: BaseException, cls: type) -> bool:
    """True when exc is cls, or a Ray task error whose cause is."""
    if isinstance(exc, cls):
        return True
    cause = getattr(exc, "cause", None)
    return isinstance(cause, cls)


class ReplicatedShard(ShardClient):
    """The ShardClient of one replicated shard: every ShardClient method goes to the current
    primary (ShardClient's methods all pass through `_call`, which routes by the method's name);
    on NotPrimary it refreshes the configuration, on a dead or silent primary it asks the
    controller to fail over, retrying until `timeout_s`. Pickles as (shard, store id), so a
    ShardSet of these crosses Ray to the planner and the expiry worker."""

    def __init__(self, shard: int, store_id: str, timeout_s: float = CALL_TIMEOUT_S):
        self.shard = shard
        self.store_id = store_id
        self.names = ActorNames(store_id)
        self.timeout_s = timeout_s
        self.target = None
        self.remote = True
        self.config: dict | None = None
        self._controller = None
        self._handles: dict[str, Any] = {}

    def __reduce__(self):
        return (type(self), (self.shard, self.store_id, self.timeout_s))

    def controller(self):
        import ray

        if self._controller is None:
            self._controller = ray.get_actor(self.names.controller, namespace=NAMESPACE)
        return self._controller

    def _handle(self, node: str):
        import ray

        h = self._handles.get(node)
        if h is None:
            h = ray.get_actor(self.names.replica(self.shard, node), namespace=NAMESPACE)
            self._handles[node] = h
        return h

    async def _call(self, fn, *args: Any, **kwargs: Any) -> Any:
        return await self.call(fn.__name__, *args)

    async def call(self, method: str, *args: Any) -> Any:
        from ray.exceptions import GetTimeoutError, RayActorError

        deadline = time.monotonic() + self.timeout_s
        last: Exception | None = None
        controller = self.controller()
        while time.monotonic() < deadline:
            if self.config is None:
                self.config = await controller.config.remote(self.shard)
            cfg = self.config
            try:
                h = self._handle(cfg["primary"])
                if method in WRITE_OPS:
                    ref = traced(h.write, f"ShardReplica.{method}").remote(
                        method, args if method in ("put", "merge", "import_moved") else args[0])
                else:
                    ref = traced(h.read, f"ShardReplica.{method}").remote(method, args)
                left = max(0.5, deadline - time.monotonic())
                return await asyncio.wait_for(asyncio.wrap_future(ref.future()), left)
            except Exception as exc:
                last = exc
                if _is(exc, NotPrimary) or _is(exc, Fenced):
                    self.config = await controller.config.remote(self.shard)
                    if self.config["epoch"] == cfg["epoch"]:
                        await asyncio.sleep(0.2)
                    continue
                if isinstance(exc, (RayActorError, GetTimeoutError, asyncio.TimeoutError,
                                    ValueError)) or _is(exc, RayActorError):
                    self._handles.pop(cfg["primary"], None)
                    self.config = await controller.primary_failed.remote(self.shard, cfg["epoch"])
                    if self.config["primary"] == cfg["primary"]:
                        await asyncio.sleep(0.5)
                    continue
                raise
        raise MemorayError(ErrorCode.UNAVAILABLE,
                           f"shard {self.shard}: no in-sync replica answered "
                           f"({type(last).__name__ if last else 'timeout'})")


def replicated_shards(store_id: str, shards: int, placement: Any = None) -> ShardSet:
    """`placement`: the layout's routing (memoray.routing.Placement), which decides the width
    (a reshard may have changed it since `--shards`); the set keeps re-reading it from the
    controller (actors/placement.py ControllerSource), so a reshard reaches it without a
    restart."""
    from memoray.actors.placement import ControllerSource

    width = placement.width if placement is not None else shards
    return ShardSet([ReplicatedShard(i, store_id) for i in range(width)], placement,
                    ControllerSource(store_id))

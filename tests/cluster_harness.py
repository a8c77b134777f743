"""A real multi-node Ray cluster on one machine, each node with its own local disk.

The head is `ray start --head` in this mount namespace; every worker is `ray start --address`
inside `unshare -m`, with a private directory bind-mounted over the shared data path, so every
node sees "its" disk at the same path (as on a real cluster) and a shard that lands on the wrong
node finds an empty store. Node loss = SIGKILL of every process in the worker's mount namespace
(raylet, workers, agents: nothing is left to flush); node return = a fresh `ray start` in a fresh
namespace over the same private directory. Every port and the temp dir are this cluster's own, and
teardown kills only the processes it started (never `ray stop`, which kills every Ray on the
machine). Needs root (unshare, mount); `ray.cluster_utils.Cluster` was weighed and has no private
disks.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

from memoray.serve.launcher import LOCAL_RAY_ENV
from tests.server_process import ROOT, descendants, free_port

# Fast failure detection: a killed node is declared dead in ~3 s instead of ~30 s.
# Faster failure detection than Ray's ~30 s, with room for a loaded 2-core machine: a killed node
# refuses connections, so it is declared dead after threshold x period (~10 s).
FAST_HEALTH = {
    "RAY_health_check_initial_delay_ms": "2000",
    "RAY_health_check_period_ms": "2000",
    "RAY_health_check_timeout_ms": "5000",
    "RAY_health_check_failure_threshold": "5",
}
STARTED = b"Ray runtime started."


def can_run() -> str | None:
    """None when this machine can run the harness, else why not."""
    if os.geteuid() != 0:
        return "needs root for unshare -m and bind mounts"
    if shutil.which("unshare") is None:
        return "needs util-linux unshare"
    return None


def _mnt_ns(pid: int) -> str | None:
    try:
        return os.readlink(f"/proc/{pid}/ns/mnt")
    except OSError:
        return None


@dataclass
class Node:
    name: str
    disk: Path                      # the node's private directory (its "local disk")
    resources: dict[str, float]
    proc: subprocess.Popen | None = None
    ns: str | None = None           # mount-namespace id of the running node
    log: Path | None = None
    log_offset: int = 0             # where this start's output begins in the (appended) log


@dataclass
class LocalCluster:
    """Head plus workers; `data_path` is the same path on every node, backed by its own disk."""

    root: Path
    num_cpus: int = 2
    env: dict[str, str] = field(default_factory=dict)
    nodes: dict[str, Node] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.root = Path(self.root)
        self.root.mkdir(parents=True, exist_ok=True)
        self.data_path = self.root / "data"
        self.data_path.mkdir(exist_ok=True)
        # Ray's session paths must stay short (unix socket names are limited to 107 bytes).
        self.temp_dir = Path(tempfile.mkdtemp(prefix="ray-", dir="/tmp"))
        self.gcs_port = free_port()
        self.address = f"127.0.0.1:{self.gcs_port}"

    # -- environment ---------------------------------------------------------------------------
    def _env(self) -> dict[str, str]:
        return {**os.environ, "RAY_USAGE_STATS_ENABLED": "0", "HF_HUB_OFFLINE": "1",
                "TRANSFORMERS_OFFLINE": "1", "HNSWLIB_NO_NATIVE": "1",
                "PYTHONPATH": str(ROOT),
                "PATH": f"{Path(sys.executable).parent}:{os.environ.get('PATH', '')}",
                # `ray start` turns Ray's token auth on when ~/.ray/auth_token exists (another
                # test may have made one): this cluster, its drivers and clients all go without.
                "RAY_AUTH_MODE": "disabled",
                # what docs/operations.md advises for an operator's `ray start` nodes
                **LOCAL_RAY_ENV, **FAST_HEALTH, **self.env}

    def client_env(self) -> dict[str, str]:
        """What a driver (`memoray serve --address`, `serve deploy`) needs to join."""
        env = self._env()
        return {k: env[k] for k in ("RAY_AUTH_MODE", "PYTHONPATH", *FAST_HEALTH)}

    def _ports(self) -> list[str]:
        return ["--node-manager-port", str(free_port()),
                "--object-manager-port", str(free_port()),
                "--dashboard-agent-listen-port", str(free_port()),
                "--dashboard-agent-grpc-port", str(free_port()),
                "--runtime-env-agent-port", str(free_port()),
                "--metrics-export-port", str(free_port()),
                "--min-worker-port", "0", "--max-worker-port", "0"]

    def _resources(self, node: Node) -> str:
        import json

        return json.dumps(node.resources)

    # -- nodes ---------------------------------------------------------------------------------
    def start_head(self, resources: dict[str, float] | None = None,
                   dashboard: bool = False) -> Node:
        """`dashboard`: Ray's dashboard (its REST API is what `serve deploy` talks to), on
        `self.dashboard_url`."""
        node = Node("head", self.data_path, resources or {})
        self.dashboard_port = free_port()
        self.dashboard_url = f"http://127.0.0.1:{self.dashboard_port}"
        node.log = self.root / "head.log"
        node.log_offset = node.log.stat().st_size if node.log.exists() else 0
        cmd = ["ray", "start", "--head", "--block", "--node-ip-address", "127.0.0.1",
               "--port", str(self.gcs_port), "--ray-client-server-port", str(free_port()),
               "--include-dashboard", "true" if dashboard else "false",
               "--dashboard-host", "127.0.0.1", "--dashboard-port", str(self.dashboard_port),
               "--temp-dir", str(self.temp_dir), "--num-cpus", str(self.num_cpus),
               "--object-store-memory", str(200 * 1024**2),
               "--resources", self._resources(node), "--disable-usage-stats", *self._ports()]
        node.proc = subprocess.Popen(cmd, cwd=ROOT, env=self._env(), stdout=open(node.log, "ab"),
                                     stderr=subprocess.STDOUT, start_new_session=True)
        self.nodes["head"] = node
        self._wait_started(node)
        return node

    def add_worker(self, name: str, resources: dict[str, float] | None = None,
                   num_cpus: int | None = None, attempts: int = 3) -> Node:
        """Start (or restart, over the same private disk) a worker node in its own namespace.
        A start that times out on a loaded machine (GCS deadline) is tried again."""
        for attempt in range(attempts):
            try:
                return self._add_worker(name, resources, num_cpus)
            except TimeoutError:
                if attempt == attempts - 1:
                    raise
                if self.nodes.get(name) and self.nodes[name].proc is not None:
                    self.kill_node(name)
        raise AssertionError("unreachable")

    def _add_worker(self, name: str, resources: dict[str, float] | None,
                    num_cpus: int | None) -> Node:
        old = self.nodes.get(name)
        disk = old.disk if old else self.root / "disks" / name
        disk.mkdir(parents=True, exist_ok=True)
        node = Node(name, disk, resources if resources is not None else (
            old.resources if old else {}))
        node.log = self.root / f"{name}.log"
        node.log_offset = node.log.stat().st_size if node.log.exists() else 0
        ray_cmd = " ".join([
            "exec", "ray", "start", "--block", "--address", self.address,
            "--node-ip-address", "127.0.0.1", "--num-cpus", str(num_cpus or self.num_cpus),
            "--object-store-memory", str(100 * 1024**2),
            "--resources", "'" + self._resources(node) + "'", "--disable-usage-stats",
            *self._ports()])
        script = f"mount --bind {disk} {self.data_path} && {ray_cmd}"
        node.proc = subprocess.Popen(["unshare", "-m", "--propagation", "private",
                                      "sh", "-c", script], cwd=ROOT, env=self._env(),
                                     stdout=open(node.log, "ab"), stderr=subprocess.STDOUT,
                                     start_new_session=True)
        deadline = time.time() + 20
        while time.time() < deadline and node.ns in (None, _mnt_ns(os.getpid())):
            node.ns = _mnt_ns(node.proc.pid)
            time.sleep(0.05)
        self.nodes[name] = node
        self._wait_started(node)
        return node

    def _wait_started(self, node: Node, timeout: float = 150) -> None:
        """`ray start` prints STARTED once the node registered with the GCS."""
        offset = node.log_offset
        deadline = time.time() + timeout
        while time.time() < deadline:
            if STARTED in node.log.read_bytes()[offset:]:
                return
            if node.proc.poll() is not None:
                break
            time.sleep(0.3)
        raise TimeoutError(f"node {node.name} did not start:\n{self.tail()}")

    def _ns_pids(self, ns: str) -> list[int]:
        out = []
        for entry in os.listdir("/proc"):
            if entry.isdigit() and _mnt_ns(int(entry)) == ns:
                out.append(int(entry))
        return out

    def kill_node(self, name: str) -> int:
        """Node loss: SIGKILL every process in the worker's mount namespace at once."""
        node = self.nodes[name]
        assert node.ns and node.ns != _mnt_ns(os.getpid()), "refusing to kill our own namespace"
        pids = self._ns_pids(node.ns)
        for _ in range(3):  # processes forked while we kill: repeat until none is left
            for pid in pids:
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
            time.sleep(0.2)
            pids = self._ns_pids(node.ns)
            if not pids:
                break
        if node.proc is not None:
            node.proc.wait(10)
        node.proc = None
        return len(pids)

    def alive_nodes(self) -> int:
        out = subprocess.run(
            [sys.executable, "-c",
             "import ray,sys; ray.init(address=sys.argv[1], logging_level='ERROR');"
             "print(sum(1 for n in ray.nodes() if n['Alive']))", self.address],
            env=self._env(), capture_output=True, text=True, timeout=60)
        try:
            return int(out.stdout.strip().splitlines()[-1])
        except (ValueError, IndexError):
            self.last_error = out.stderr[-2000:]
            return -1

    def _wait_nodes(self, n: int, timeout: float = 90) -> None:
        deadline = time.time() + timeout
        while time.time() < deadline:
            if self.alive_nodes() >= n:
                return
            time.sleep(0.5)
        raise TimeoutError(f"cluster did not reach {n} nodes:\n{self.tail()}\n"
                           f"{getattr(self, 'last_error', '')}")

    def tail(self, n: int = 3000) -> str:
        parts = []
        for node in self.nodes.values():
            if node.log and node.log.exists():
                parts.append(f"--- {node.name}\n" + node.log.read_bytes()[-n:].decode(
                    errors="replace"))
        return "\n".join(parts)

    def shutdown(self) -> None:
        """Kill workers by namespace, then the head's process tree; nothing else is touched."""
        for name, node in list(self.nodes.items()):
            if name != "head" and node.proc is not None:
                self.kill_node(name)
        head = self.nodes.get("head")
        if head and head.proc is not None:
            family = descendants(head.proc.pid)
            head.proc.send_signal(signal.SIGKILL)
            head.proc.wait(10)
            # Ray's daemons (gcs, raylet, agents) are descendants of `ray start --block` or name
            # this cluster's temp dir / GCS port on their command line.
            for pid in family + self._session_pids():
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
            head.proc = None
        shutil.rmtree(self.temp_dir, ignore_errors=True)

    def _session_pids(self) -> list[int]:
        """Processes whose command line names this cluster's temp dir or GCS port."""
        marks = (str(self.temp_dir).encode(), f":{self.gcs_port}".encode())
        out = []
        for entry in os.listdir("/proc"):
            if not entry.isdigit():
                continue
            try:
                cmd = Path(f"/proc/{entry}/cmdline").read_bytes()
            except OSError:
                continue
            if any(m in cmd for m in marks):
                out.append(int(entry))
        return out


def controller_status(cluster: LocalCluster, store_dir: Path) -> dict:
    """The store controller's view (configs, unreachable replicas), read in a separate driver
    (the store id comes from the store's layout file)."""
    import json

    store = json.loads((store_dir / "memoray.json").read_text())["store_id"]
    code = ("import ray,sys,json; ray.init(address=sys.argv[1], logging_level='ERROR');"
            "from memoray.actors.names import NAMESPACE, ActorNames;"
            "c=ray.get_actor(ActorNames(sys.argv[2]).controller, namespace=NAMESPACE);"
            "print(json.dumps(ray.get(c.status.remote(), timeout=30)))")
    out = subprocess.run([sys.executable, "-c", code, cluster.address, store],
                         env=cluster._env(), cwd=ROOT, capture_output=True, text=True,
                         timeout=120)
    return json.loads(out.stdout.strip().splitlines()[-1])

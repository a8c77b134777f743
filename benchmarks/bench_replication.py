"""What replication costs and how fast a replica recovers, on a real 3-node Ray cluster on this
machine (tests/cluster_harness.py: every node its own disk; needs root).

For R = 1, 2, 3 (one store each, `memoray serve --address ... --replication R`, hash embedder,
2 shards, durable LMDB): capture throughput (`writers` concurrent MCP sessions, each capturing
for `seconds`), then retrieve-memories latency (`samples` calls, limit 10). Then, with R=2 and
replace_after_s = 5: one storage node is killed for good and we time (a) until every shard has
an in-sync set of 2 again, the lost replica rebuilt by a full copy on the spare node; and, on a
second store, (b) a node that returns after `while_down` captures: until it has caught up from
the log and rejoined.

    python -m benchmarks.bench_replication [--seconds 20] [--samples 100] [--seed-records 1000]

Writes benchmarks/results/replication.json and replication.png. All nodes share this machine's
cores: absolute figures are that, the ratios between R are the point.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from benchmarks.common import fmt_table, latency_summary, log, result_path, save_json
from tests.cluster_harness import LocalCluster, can_run, controller_status
from tests.server_process import ServerProcess, mcp_client

NODES = {"head": {"memoray_node_head": 1000.0}, "w1": {"memoray_node_w1": 1000.0},
         "w2": {"memoray_node_w2": 1000.0}}


def wait_isr(cluster: LocalCluster, store_dir: Path, n: int, timeout: float = 600) -> float:
    t0 = time.time()
    while time.time() - t0 < timeout:
        st = controller_status(cluster, store_dir)
        if all(len(c["isr"]) >= n for c in st["configs"].values()):
            return time.time() - t0
        time.sleep(0.5)
    raise TimeoutError(f"in-sync sets not back to {n}: {st}")


def server(cluster: LocalCluster, name: str, r: int, **env: str) -> ServerProcess:
    return ServerProcess(cluster.data_path / name, shards=2, extra_args=[
        "--address", cluster.address, "--replication", str(r)],
        env={**cluster.client_env(), "MEMORAY_PROXY_LOCATION": "HeadOnly",
             "MEMORAY_RATE_LIMIT_ENABLED": "false", **env}).start(timeout=600)


async def capture_load(url: str, writers: int, seconds: float) -> dict:
    done: list[float] = []

    async def writer(w: int) -> None:
        async with mcp_client(url) as c:
            i = 0
            end = time.perf_counter() + seconds
            while time.perf_counter() < end:
                t = time.perf_counter()
                await c.call("capture-memory", content=f"writer {w} note {i} about the deploy",
                             workspaceId="bench")
                done.append(time.perf_counter() - t)
                i += 1

    t0 = time.perf_counter()
    await asyncio.gather(*[writer(w) for w in range(writers)])
    wall = time.perf_counter() - t0
    return {"captures": len(done), "per_s": len(done) / wall, "latency": latency_summary(done)}


async def retrieve_load(url: str, samples: int) -> dict:
    lat = []
    async with mcp_client(url) as c:
        for i in range(samples):
            t = time.perf_counter()
            await c.call("retrieve-memories", query=f"note {i} deploy", limit=10)
            lat.append(time.perf_counter() - t)
    return latency_summary(lat)


async def seed(url: str, n: int, tag: str) -> None:
    async with mcp_client(url) as c:
        for start in range(0, n, 100):
            await c.call("capture-memories", items=[
                {"content": f"{tag} seeded memory {i} about service {i % 37}",
                 "workspaceId": "bench"} for i in range(start, min(n, start + 100))])


def plot(res: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rs = [row["replication"] for row in res["by_r"]]
    fig, ax = plt.subplots(1, 3, figsize=(13, 3.8))
    ax[0].bar([str(r) for r in rs], [row["capture"]["per_s"] for row in res["by_r"]])
    ax[0].set(title="capture throughput", xlabel="R", ylabel="captures/s")
    for key, lab in (("p50_ms", "p50"), ("p95_ms", "p95")):
        ax[1].plot(rs, [row["retrieve"][key] for row in res["by_r"]], "o-", label=lab)
    ax[1].set(title="retrieve latency", xlabel="R", ylabel="ms", xticks=rs)
    ax[1].legend()
    rec = res["recovery"]
    ax[2].bar(["rebuild lost\nreplica", "returning node\ncatch-up"],
              [rec["rebuild_s"], rec["return_catch_up_s"]])
    ax[2].set(title="replica recovery (R=2)", ylabel="seconds")
    fig.suptitle(f"memoray replication, 3 Ray nodes on one {os.cpu_count()}-core machine "
                 f"(load {os.getloadavg()[0]:.1f})", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--seconds", type=float, default=20.0)
    ap.add_argument("--writers", type=int, default=4)
    ap.add_argument("--samples", type=int, default=100)
    ap.add_argument("--seed-records", type=int, default=1000)
    ap.add_argument("--while-down", type=int, default=200)
    args = ap.parse_args(argv)
    why = can_run()
    if why:
        print(f"bench_replication: {why}", file=sys.stderr)
        return 2
    root = Path(tempfile.mkdtemp(prefix="memoray-bench-repl-"))
    cluster = LocalCluster(root, num_cpus=1)
    res: dict[str, Any] = {"config": vars(args), "by_r": []}
    try:
        cluster.start_head(NODES["head"])
        cluster.add_worker("w1", NODES["w1"])
        cluster.add_worker("w2", NODES["w2"])
        for r in (1, 2, 3):
            log(f"R={r}: starting")
            srv = server(cluster, f"r{r}", r)
            try:
                asyncio.run(seed(srv.mcp_url, args.seed_records, f"r{r}"))
                cap = asyncio.run(capture_load(srv.mcp_url, args.writers, args.seconds))
                ret = asyncio.run(retrieve_load(srv.mcp_url, args.samples))
                res["by_r"].append({"replication": r, "capture": cap, "retrieve": ret,
                                    "loadavg": os.getloadavg()})
                log(f"R={r}: {cap['per_s']:.1f} captures/s, retrieve p50 {ret['p50_ms']:.1f} ms")
            finally:
                srv.stop()

        log("recovery: a node lost for good (replace_after_s=5)")
        srv = server(cluster, "lost", 2, MEMORAY_REPLACE_AFTER_S="5")
        try:
            asyncio.run(seed(srv.mcp_url, args.seed_records, "lost"))
            wait_isr(cluster, srv.data_dir, 2)
            t0 = time.time()
            cluster.kill_node("w1")       # holds a replica of both shards (head,w1 / w1,w2)
            wait_isr(cluster, srv.data_dir, 2)
            rebuild_s = time.time() - t0
            st = controller_status(cluster, srv.data_dir)
            members = {k: v["members"] for k, v in st["configs"].items()}
        finally:
            srv.stop()
        cluster.add_worker("w1", NODES["w1"])

        log("recovery: a node that returns")
        srv = server(cluster, "return", 2, MEMORAY_REPLACE_AFTER_S="3600")
        try:
            asyncio.run(seed(srv.mcp_url, args.seed_records, "ret"))
            wait_isr(cluster, srv.data_dir, 2)
            cluster.kill_node("w2")
            asyncio.run(seed(srv.mcp_url, args.while_down, "down"))
            t0 = time.time()
            cluster.add_worker("w2", NODES["w2"])
            node_up_s = time.time() - t0
            wait_isr(cluster, srv.data_dir, 2)
            catch_up_s = time.time() - t0
        finally:
            srv.stop()
        res["recovery"] = {
            "rebuild_s": rebuild_s, "rebuild_members_after": members,
            "rebuild_includes": "failure detection + replace_after_s (5 s) + full copy of "
                                f"{args.seed_records} records per shard's share",
            "return_catch_up_s": catch_up_s, "return_node_start_s": node_up_s,
            "return_includes": f"ray start of the node + replica restart + replay of "
                               f"{args.while_down} captures' log entries"}
    finally:
        cluster.shutdown()
    path = save_json("replication.json", res)
    plot(res, result_path("replication.png"))
    print(fmt_table(["R", "captures/s", "capture p50 ms", "retrieve p50 ms", "retrieve p95 ms"],
                    [[row["replication"], row["capture"]["per_s"],
                      row["capture"]["latency"]["p50_ms"],
                      row["retrieve"]["p50_ms"], row["retrieve"]["p95_ms"]]
                     for row in res["by_r"]]))
    rec = res["recovery"]
    print(f"lost replica rebuilt in {rec['rebuild_s']:.1f} s; returning node back in sync "
          f"{rec['return_catch_up_s']:.1f} s after its ray start began "
          f"(node start {rec['return_node_start_s']:.1f} s)")
    print(f"saved {path} and replication.png")
    return 0


if __name__ == "__main__":
    sys.exit(main())

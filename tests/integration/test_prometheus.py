"""A real Prometheus scraping a running server through Ray's metrics pipeline (every node's
metrics export port, found through Ray's file_sd file), with the repo's config and alert rules:
`promtool check rules` passes, every rule evaluates, and every Grafana dashboard query is
answered, with data wherever traffic was sent."""

from __future__ import annotations

import asyncio
import subprocess
import sys
from pathlib import Path

import pytest

from tests.cluster_harness import LocalCluster, can_run
from tests.prometheus_harness import (
    ALERTS,
    Prometheus,
    dashboard_queries,
    missing,
    session_dir_of,
)
from tests.server_process import ROOT, ServerProcess, ToolError, free_port, mcp_client

pytestmark = [pytest.mark.timeout(600), pytest.mark.skipif(missing() is not None,
                                                           reason=str(missing()))]

# Panels that need a replicated store (the controller exports them): empty on one machine.
CLUSTER_ONLY = {"memoray_replica_lag_entries", "memoray_replica_in_sync"}


async def traffic(url: str) -> dict[str, int]:
    seen = {"ok": 0, "limited": 0, "errors": 0}
    async with mcp_client(url) as c:
        await c.call("capture-memories", items=[
            {"content": f"metrics fact {i}: deploy key AKIAIOSFODNN7EXAMPLE rotated",
             "workspaceId": "obs", "eventType": et}
            for i, et in enumerate(["decision", "note", "code_change"] * 4)])
        for i in range(8):
            await c.call("retrieve-memories", query=f"deploy key {i}", limit=5)
        for i in range(40):  # over the per-minute capture limit: some are refused
            try:
                await c.call("capture-memory", content=f"burst {i}", workspaceId="obs",
                             sessionId="burst")
                seen["ok"] += 1
            except ToolError as err:
                seen["limited" if err.code == "RATE_LIMIT_EXCEEDED" else "errors"] += 1
        try:
            await c.call("get-memory", id="0" * 26)
        except ToolError:
            seen["errors"] += 1
    return seen


def test_prometheus_scrapes_every_replica_and_answers_every_dashboard_query(tmp_path):
    srv = ServerProcess(tmp_path / "data", embedder="hash", extra_args=["--replicas", "2"], env={
        "MEMORAY_DASHBOARD": "true", "MEMORAY_DASHBOARD_PORT": str(free_port()),
        "MEMORAY_RATE_LIMIT_LOCAL": "true", "MEMORAY_RATE_LIMIT_CAPTURES_PER_MINUTE": "20"})
    srv.start()
    prom = None
    try:
        seen = asyncio.run(traffic(srv.mcp_url))
        assert seen["limited"] > 0 and seen["errors"] > 0, seen
        sd = session_dir_of(srv.tail(100_000)) / "prom_metrics_service_discovery.json"
        Prometheus.wait_for(sd.exists, 60, f"Ray wrote no file_sd file at {sd}")

        prom = Prometheus(tmp_path / "prom", sd)
        checked = prom.check_config()
        assert checked.returncode == 0, checked.stdout + checked.stderr
        rules = subprocess.run(["promtool", "check", "rules", str(ALERTS)],
                               capture_output=True, text=True, timeout=60)
        assert rules.returncode == 0 and "SUCCESS" in rules.stdout, rules.stdout + rules.stderr
        prom.start()

        # Ray's exporters report every few seconds; wait for the tool-call counters.
        prom.wait_for(lambda: prom.query("memoray_tool_calls_total"), 120,
                      "no memoray metric reached Prometheus\n" + prom.tail())
        series = prom.query("memoray_tool_calls_total")
        assert all("WorkerId" in s["metric"] for s in series)  # through Ray, not /metrics
        # Both Serve replicas' metrics are there (each served some of the calls).
        workers = {s["metric"]["WorkerId"] for s in prom.query(
            'memoray_tool_latency_seconds_count{tool="retrieve-memories"}')
            + prom.query('memoray_tool_latency_seconds_count{tool="capture-memory"}')}
        print(f"Serve replicas seen by Prometheus: {len(workers)}")

        answered = {}
        for title, expr in dashboard_queries():
            def non_empty(expr=expr) -> bool:
                return bool(prom.query(expr))
            if any(name in expr for name in CLUSTER_ONLY):
                answered[title] = len(prom.query(expr))  # answered (success), empty here
                continue
            prom.wait_for(non_empty, 90, f"dashboard panel {title!r} stayed empty: {expr}")
            answered[title] = len(prom.query(expr))
        print("dashboard panels and their series:", answered)

        def all_rules_evaluated() -> bool:
            groups = prom.api("rules")["groups"]
            rules = [r for g in groups for r in g["rules"]]
            return len(rules) == 7 and all(r.get("lastEvaluation", "").startswith("20")
                                           and r["health"] == "ok" for r in rules)
        prom.wait_for(all_rules_evaluated, 60, f"alert rules did not all evaluate: "
                      f"{prom.api('rules')}")
        # Every refusal the client saw is counted, summed over replicas.
        prom.wait_for(lambda: float(prom.query("sum(memoray_rate_limited_total)")[0]["value"][1])
                      == seen["limited"], 60, f"rate-limited count != {seen['limited']}")
    finally:
        if prom is not None:
            prom.stop()
        srv.stop()


# -- a cluster: every node's metrics, replica health ----------------------------------------------

NODES = {"head": {"memoray_node_head": 1000.0}, "w1": {"memoray_node_w1": 1000.0}}


@pytest.mark.cluster
@pytest.mark.timeout(1200)
@pytest.mark.skipif(can_run() is not None, reason=str(can_run()))
def test_one_prometheus_sees_every_node_and_health_shows_each_replica(tmp_path):
    """Two Ray nodes with private disks, R=2, a Serve replica on each node: one Prometheus
    (file_sd from Ray) gets memoray metrics from both nodes, the replication panels have data,
    and health-check / `memoray status` list every shard replica with its node, role and lag."""
    # Serve's proxy prefers replicas on its own node; spread requests so each node's replica
    # serves some (and so has metrics of its own to export).
    cluster = LocalCluster(tmp_path / "c", num_cpus=1,
                           env={"RAY_SERVE_PROXY_PREFER_LOCAL_NODE_ROUTING": "0"})
    srv = prom = None
    try:
        cluster.start_head(NODES["head"], dashboard=True)
        cluster.add_worker("w1", NODES["w1"])
        srv = ServerProcess(cluster.data_path / "a", shards=2, extra_args=[
            "--address", cluster.address, "--replication", "2", "--replicas", "2"],
            env={**cluster.client_env(), "MEMORAY_MAX_REPLICAS_PER_NODE": "1",
                 "MEMORAY_PROXY_LOCATION": "HeadOnly",
                 "MEMORAY_RATE_LIMIT_ENABLED": "false"})
        srv.start(timeout=300)

        async def calls() -> dict:
            async with mcp_client(srv.mcp_url) as c:
                await c.call("capture-memories", items=[
                    {"content": f"cluster metrics fact {i}", "workspaceId": "obs"}
                    for i in range(30)])
                for i in range(30):  # spread over both Serve replicas (one per node)
                    await c.call("retrieve-memories", query=f"fact {i}", limit=3)
                return await c.call("health-check", detailed=True)
        health = asyncio.run(calls())
        for i in range(2):
            replicas = health["components"][f"shard-{i}"]["replicas"]
            assert sorted(r["node"] for r in replicas) == ["head", "w1"], replicas
            assert sorted(r["role"] for r in replicas) == ["primary", "replica"]
            assert all(r["inSync"] and r["lag"] is not None and r["lag"] >= 0
                       for r in replicas), replicas
        status = subprocess.run([sys.executable, "-m", "memoray.cli", "status", "--url",
                                 srv.url], capture_output=True, text=True, timeout=120,
                                cwd=ROOT)
        assert status.returncode == 0, status.stdout + status.stderr
        print(status.stdout)
        assert status.stdout.count("primary  on ") == 2
        assert status.stdout.count("replica  on ") == 2 and "in sync, lag" in status.stdout

        sd = Path(cluster.temp_dir) / "prom_metrics_service_discovery.json"
        Prometheus.wait_for(sd.exists, 60, f"Ray wrote no file_sd file at {sd}")
        prom = Prometheus(tmp_path / "prom", sd).start()
        prom.wait_for(lambda: len({s["metric"]["instance"] for s in prom.query(
            "memoray_tool_calls_total")}) >= 2, 120,
            "memoray metrics did not arrive from both nodes\n" + prom.tail())
        for expr in ("max by (shard, node) (memoray_replica_lag_entries)",
                     "min by (shard, node) (memoray_replica_in_sync)"):
            prom.wait_for(lambda expr=expr: len(prom.query(expr)) == 4, 60,
                          f"{expr}: not one series per shard replica")
        for _title, expr in dashboard_queries():
            prom.query(expr)  # answered (raises otherwise)
    finally:
        if prom is not None:
            prom.stop()
        if srv is not None:
            srv.stop()
        cluster.shutdown()

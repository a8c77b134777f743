"""The cluster configs stay true to the code: they parse, their import path resolves, and every
metric they query is one a replica exports."""

from __future__ import annotations

import importlib
import json
import re
from pathlib import Path

import yaml

from memoray.serve.observability import Metrics

CLUSTER = Path(__file__).resolve().parents[1] / "cluster"


def exported_metrics() -> set[str]:
    suffixes = {"counter": ("_total",), "histogram": ("_bucket", "_sum", "_count"),
                "gauge": ("",)}
    from memoray.actors.controller import REPLICA_GAUGES

    return {m.name + suffix for m in Metrics().registry.collect()
            for suffix in suffixes.get(m.type, ("",))} | set(REPLICA_GAUGES)


def referenced(text: str) -> set[str]:
    return set(re.findall(r"\b(memoray_[a-z_]+)", text))


def test_alerts_and_dashboard_query_exported_metrics():
    have = exported_metrics()
    alerts = (CLUSTER / "prometheus" / "alerts.yaml").read_text()
    yaml.safe_load(alerts)
    dash = (CLUSTER / "grafana" / "memoray-dashboard.json").read_text()
    json.loads(dash)
    for name in referenced(alerts) | referenced(dash):
        assert name in have, f"{name} is queried but not exported"


def test_serve_configs_point_at_the_builder_with_valid_settings():
    from memoray.settings import Settings

    serve_cfg = yaml.safe_load((CLUSTER / "serve-config.yaml").read_text())
    kuberay = list(yaml.safe_load_all((CLUSTER / "kuberay" / "rayservice.yaml").read_text()))
    embedded = yaml.safe_load(kuberay[0]["spec"]["serveConfigV2"])
    for cfg in (serve_cfg, embedded):
        app = cfg["applications"][0]
        module, attr = app["import_path"].split(":")
        assert callable(getattr(importlib.import_module(module), attr))
        Settings(**app["args"])  # every arg is a real setting


def test_ray_cluster_config_parses():
    cfg = yaml.safe_load((CLUSTER / "ray-cluster.yaml").read_text())
    assert cfg["head_node_type"] in cfg["available_node_types"]


def _storage_resources_kuberay(spec: dict) -> list[tuple[str, int, list[str]]]:
    """(group, replicas, memoray_node_* resources) for the head and every worker group."""
    cfg = spec["rayClusterConfig"]
    groups = [("head", 1, cfg["headGroupSpec"]["rayStartParams"])]
    groups += [(g["groupName"], g.get("maxReplicas", g["replicas"]), g["rayStartParams"])
               for g in cfg["workerGroupSpecs"]]
    out = []
    for name, count, params in groups:
        res = json.loads(json.loads(params["resources"])) if "resources" in params else {}
        out.append((name, count, [k for k in res if k.startswith("memoray_node_")]))
    return out


def test_storage_nodes_are_unique_and_enough_for_the_replication():
    """A shard replica is pinned by a memoray_node_<name> resource, so each such resource must
    belong to exactly one node (a group of at most one pod), and there must be at least
    `replication` of them."""
    from memoray.settings import Settings

    kuberay = list(yaml.safe_load_all((CLUSTER / "kuberay" / "rayservice.yaml").read_text()))
    spec = kuberay[0]["spec"]
    storage = [(g, n, r) for g, n, r in _storage_resources_kuberay(spec) if r]
    assert all(n == 1 and len(r) == 1 for _, n, r in storage), storage
    names = [r[0] for _, _, r in storage]
    assert len(set(names)) == len(names)
    app = yaml.safe_load(spec["serveConfigV2"])["applications"][0]
    assert len(names) >= Settings(**app["args"]).replication
    # The embedding workers ask for a GPU, and there is a GPU group to give them one.
    assert Settings(**app["args"]).embedding_gpus > 0
    assert any("nvidia.com/gpu" in json.dumps(g["template"])
               for g in spec["rayClusterConfig"]["workerGroupSpecs"])

    launcher = yaml.safe_load((CLUSTER / "ray-cluster.yaml").read_text())
    pinned = [(t, c.get("max_workers", 1), [k for k in c.get("resources", {})
                                            if k.startswith("memoray_node_")])
              for t, c in launcher["available_node_types"].items()]
    pinned = [p for p in pinned if p[2]]
    assert all(n == 1 for _, n, _ in pinned), pinned
    serve_cfg = yaml.safe_load((CLUSTER / "serve-config.yaml").read_text())
    assert len(pinned) >= Settings(**serve_cfg["applications"][0]["args"]).replication

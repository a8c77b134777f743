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
    return {m.name + suffix for m in Metrics().registry.collect()
            for suffix in suffixes.get(m.type, ("",))}


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

"""Spans and metrics are real: a capture and a retrieve emit the spans and counters operators
dashboard on."""

from __future__ import annotations

import asyncio

import pytest
from opentelemetry import trace
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from tests.service_harness import caller, item, make_service

_exporter = InMemorySpanExporter()


@pytest.fixture(scope="module", autouse=True)
def provider():
    p = TracerProvider()
    p.add_span_processor(SimpleSpanProcessor(_exporter))
    trace.set_tracer_provider(p)  # once per process: OpenTelemetry refuses to override it
    yield


def test_capture_and_retrieve_emit_spans_and_metrics(tmp_path):
    _exporter.clear()
    svc = make_service(tmp_path)
    asyncio.run(svc.capture([item("spans are emitted for captures", event_type="decision")],
                            caller()))
    asyncio.run(svc.retrieve(caller(), "spans", limit=3))
    names = {s.name for s in _exporter.get_finished_spans()}
    assert {"memoray.prepare", "memoray.embed", "memoray.commit", "memoray.embed_query",
            "memoray.fanout"} <= names
    fanout = next(s for s in _exporter.get_finished_spans() if s.name == "memoray.fanout")
    assert fanout.attributes["memoray.shards"] == 2
    text = svc.metrics.render().decode()
    assert 'memoray_memory_captures_total{event_type="decision"} 1.0' in text
    assert "memoray_query_latency_seconds_count" in text


def test_detailed_health_lists_each_shards_replicas_and_sets_gauges(tmp_path):
    svc = make_service(tmp_path)
    asyncio.run(svc.capture([item("a memory for the gauges")], caller()))
    health = asyncio.run(svc.health(detailed=True))
    for i in range(2):
        assert health["components"][f"shard-{i}"]["replicas"] == [
            {"node": "local", "role": "primary", "inSync": True, "lag": 0}]
    brief = asyncio.run(svc.health(detailed=False))
    assert "replicas" not in brief["components"]["shard-0"]
    text = svc.metrics.render().decode()
    assert 'memoray_component_up{component="shard-0"} 1.0' in text
    counts = [float(line.split()[-1]) for line in text.splitlines()
              if line.startswith("memoray_memories{")]
    assert sum(counts) == 1.0


def test_metric_declarations_keep_prometheus_client_arguments():
    from prometheus_client import CollectorRegistry

    from memoray.serve.observability import LATENCY_BUCKETS, Histogram

    r = CollectorRegistry()
    h = Histogram("memoray_test_stage_seconds", "a stage", ["stage"], buckets=LATENCY_BUCKETS,
                  registry=r)
    with h.labels(stage="embed").time():
        pass
    h.labels(stage="embed").observe(0.2)
    assert r.get_sample_value("memoray_test_stage_seconds_count", {"stage": "embed"}) == 2

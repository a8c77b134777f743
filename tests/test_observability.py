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

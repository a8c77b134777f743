"""Prometheus metrics and OpenTelemetry spans for a replica.

Metrics live in a registry per replica and are served at /metrics. Spans use the OpenTelemetry
API only: without an SDK configured they cost next to nothing; with one (MEMORAY_OTEL=console, or
any SDK the operator installs and configures) every tool call, embed and fan-out is traced.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from typing import Any

from opentelemetry import trace
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

_tracer = trace.get_tracer("memoray")
LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10)
# Stages take from tens of microseconds (a filter parse) to seconds (a large batch's embedding).
STAGE_BUCKETS = (0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25,
                 0.5, 1, 2.5, 10)


@contextlib.contextmanager
def span(name: str, **attributes: Any) -> Iterator[Any]:
    with _tracer.start_as_current_span(name) as s:
        for k, v in attributes.items():
            s.set_attribute(f"memoray.{k}", v)
        yield s


def configure_tracing() -> None:
    """Console export on request; anything richer is the operator's SDK configuration."""
    if os.environ.get("MEMORAY_OTEL") != "console":
        return
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import ConsoleSpanExporter, SimpleSpanProcessor

    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(ConsoleSpanExporter()))
    trace.set_tracer_provider(provider)


class Metrics:
    def __init__(self) -> None:
        r = self.registry = CollectorRegistry()
        self.captures = Counter("memoray_memory_captures_total", "Memories captured",
                                ["event_type"], registry=r)
        self.deletes = Counter("memoray_memory_deletes_total", "Memories deleted", registry=r)
        self.tool_calls = Counter("memoray_tool_calls_total", "MCP tool calls",
                                  ["tool", "outcome"], registry=r)
        self.tool_latency = Histogram("memoray_tool_latency_seconds", "MCP tool latency",
                                      ["tool"], buckets=LATENCY_BUCKETS, registry=r)
        self.query_latency = Histogram("memoray_query_latency_seconds",
                                       "Retrieve latency inside the replica", ["strategy"],
                                       buckets=LATENCY_BUCKETS, registry=r)
        self.stage_latency = Histogram(
            "memoray_stage_seconds", "Time per stage of a capture or retrieve (path, stage); "
            "shard_* stages are measured inside the shard and returned with its results",
            ["path", "stage"], buckets=STAGE_BUCKETS, registry=r)
        self.errors = Counter("memoray_errors_total", "Tool errors by code", ["code"], registry=r)
        self.rate_limited = Counter("memoray_rate_limited_total", "Requests over a rate limit",
                                    ["kind"], registry=r)
        self.redactions = Counter("memoray_redactions_total", "Secrets and PII redacted",
                                  ["kind"], registry=r)
        self.memories = Gauge("memoray_memories", "Memories stored, per shard", ["shard"],
                              registry=r)
        self.up = Gauge("memoray_component_up", "1 when a component answers its health check",
                        ["component"], registry=r)

    def render(self) -> bytes:
        return generate_latest(self.registry)

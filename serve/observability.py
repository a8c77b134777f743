"""Metrics and OpenTelemetry spans for a replica.

Metrics are declared once in `Metrics` and recorded to two places:
- Ray's metrics pipeline (`ray.util.metrics`), whenever this process is a Ray worker (every
  Serve replica is). Each node's metrics agent exports what its processes record on the node's
  metrics export port, and Ray's dashboard writes a Prometheus file_sd file listing every node
  (`<session dir>/prom_metrics_service_discovery.json`). One Prometheus with that file sees
  every replica on every node. Ray names them `ray_<name>` and adds labels (WorkerId,
  NodeAddress, ...); cluster/prometheus/prometheus.yml strips the prefix at scrape time, so
  dashboards and alerts use the `memoray_*` names below in both set-ups.
- this process's prometheus_client registry, served at /metrics. That is the whole server when
  it runs one replica (the default on one machine) and what unit tests read; with several
  replicas a scrape of /metrics reaches one of them, so on a cluster scrape Ray's ports instead
  (docs/operations.md).

The classes below take prometheus_client's arguments, so a new metric stays one declaration.
Spans use the OpenTelemetry API only: without an SDK configured they cost next to nothing; with
one (MEMORAY_OTEL=console, or any SDK the operator configures) every tool call is traced.
"""

from __future__ import annotations

import contextlib
import os
import sys
import threading
import time
from collections.abc import Iterator, Sequence
from typing import Any

import prometheus_client as prom
from opentelemetry import trace
from prometheus_client import CollectorRegistry, generate_latest

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


# -- one declaration, two exporters ----------------------------------------------------------------

_ray_lock = threading.Lock()
_ray_metrics: dict[str, Any] = {}  # one Ray metric per name per process (Ray keys them by name)


def _in_ray() -> bool:
    ray = sys.modules.get("ray")  # never imports ray: a process without it records locally only
    return ray is not None and ray.is_initialized()


def _ray_metric(kind: str, name: str, doc: str, labels: tuple[str, ...],
                buckets: Sequence[float] | None) -> Any:
    if not _in_ray():
        return None
    with _ray_lock:
        metric = _ray_metrics.get(name)
        if metric is None:
            from ray.util import metrics as rm

            if kind == "histogram":
                metric = rm.Histogram(name, doc, boundaries=list(buckets or LATENCY_BUCKETS),
                                      tag_keys=labels)
            elif kind == "counter":
                metric = rm.Counter(name, doc, tag_keys=labels)
            else:
                metric = rm.Gauge(name, doc, tag_keys=labels)
            _ray_metrics[name] = metric
        return metric


class _Bound:
    """A metric with its label values: what `.labels(...)` returns."""

    def __init__(self, local: Any, ray_metric: Any, tags: dict[str, str] | None):
        self._local, self._ray, self._tags = local, ray_metric, tags

    def inc(self, amount: float = 1) -> None:
        self._local.inc(amount)
        if self._ray is not None and amount > 0:  # Ray counters take positive steps only
            self._ray.inc(amount, tags=self._tags)

    def observe(self, value: float) -> None:
        self._local.observe(value)
        if self._ray is not None:
            self._ray.observe(value, tags=self._tags)

    def set(self, value: float) -> None:
        self._local.set(value)
        if self._ray is not None:
            self._ray.set(value, tags=self._tags)

    @contextlib.contextmanager
    def time(self) -> Iterator[None]:
        """Observe the duration of the `with` block (a histogram's timer)."""
        t0 = time.perf_counter()
        try:
            yield
        finally:
            self.observe(time.perf_counter() - t0)


class _Metric(_Bound):
    kind = ""
    _prom: Any = None

    def __init__(self, name: str, documentation: str, labelnames: Sequence[str] = (), *,
                 registry: CollectorRegistry, buckets: Sequence[float] | None = None):
        extra = {"buckets": buckets} if buckets is not None else {}
        local = self._prom(name, documentation, list(labelnames), registry=registry, **extra)
        self.labelnames = tuple(labelnames)
        super().__init__(local, _ray_metric(self.kind, name, documentation, self.labelnames,
                                            buckets), None)

    def labels(self, **values: Any) -> _Bound:
        tags = {k: str(v) for k, v in values.items()}
        return _Bound(self._local.labels(**tags), self._ray, tags)


class Counter(_Metric):
    kind, _prom = "counter", prom.Counter


class Gauge(_Metric):
    kind, _prom = "gauge", prom.Gauge


class Histogram(_Metric):
    kind, _prom = "histogram", prom.Histogram


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
        self.gc_collections = Counter(
            "memoray_gc_collections_total", "This replica's garbage collections by generation",
            ["generation"], registry=r)
        self.gc_seconds = Counter(
            "memoray_gc_pause_seconds_total", "Time this replica's loop stood still in "
            "garbage collections, by generation (memoray/gcpause.py)", ["generation"], registry=r)
        self._gc_seen = ([0, 0, 0], [0.0, 0.0, 0.0])

    def sync_gc(self) -> None:
        """Bring the collector counters up to this process's totals (gcpause counts inside the
        collector, where taking a metric's lock could deadlock)."""
        from memoray import gcpause

        w, (seen_n, seen_s) = gcpause.WATCH, self._gc_seen
        for g in range(3):
            n, sec = w.collections[g], w.seconds[g]
            if n > seen_n[g]:
                self.gc_collections.labels(generation=g).inc(n - seen_n[g])
                self.gc_seconds.labels(generation=g).inc(sec - seen_s[g])
                seen_n[g], seen_s[g] = n, sec

    def render(self) -> bytes:
        self.sync_gc()
        return generate_latest(self.registry)

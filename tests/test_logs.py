"""Structured log lines: the fields operators filter on, only those, and the request id shared
by a tool call's line, its OpenTelemetry span and what its actor calls log."""

from __future__ import annotations

import asyncio
import io
import json
import logging

import pytest
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from memoray import logs


@pytest.fixture(autouse=True)
def restore_logging():
    """configure() owns the `memoray` logger of a server process; give it back after each test."""
    logger = logging.getLogger(logs.LOGGER)
    handlers, level, propagate = list(logger.handlers), logger.level, logger.propagate
    yield
    logger.handlers[:] = handlers
    logger.setLevel(level)
    logger.propagate = propagate


def _capture(fmt: str) -> tuple[io.StringIO, logging.Logger]:
    stream = io.StringIO()
    logs.configure(fmt, "INFO", stream=stream)
    return stream, logging.getLogger("memoray.test")


def test_json_lines_carry_the_request_fields_and_nothing_else():
    stream, log = _capture("json")
    token = logs.request_var.set({"request_id": "r123", "tool": "capture-memory"})
    try:
        log.info("tool call", extra={"principal": "alice", "workspace": "w", "outcome": "ok",
                                     "duration_ms": 1.5, "content": "never this",
                                     "metadata": {"k": "never"}})
    finally:
        logs.request_var.reset(token)
    line = json.loads(stream.getvalue().splitlines()[-1])
    assert line["request_id"] == "r123" and line["principal"] == "alice"
    assert line["level"] == "info" and line["time"].endswith("Z") and line["duration_ms"] == 1.5
    assert "content" not in line and "metadata" not in line and "never" not in stream.getvalue()


def test_text_on_a_terminal_json_otherwise_and_by_flag(monkeypatch):
    class Tty(io.StringIO):
        def isatty(self):
            return True

    monkeypatch.delenv("MEMORAY_LOG_FORMAT", raising=False)
    assert logs.resolve_format("auto", Tty()) == "text"
    assert logs.resolve_format("auto", io.StringIO()) == "json"
    assert logs.resolve_format("json", Tty()) == "json"
    monkeypatch.setenv("MEMORAY_LOG_FORMAT", "text")
    assert logs.resolve_format(None, io.StringIO()) == "text"
    stream, log = _capture("text")
    log.info("shard write", extra={"op": "put", "request_id": "abc"})
    assert "shard write" in stream.getvalue() and "request_id=abc" in stream.getvalue()


def test_the_request_id_rides_in_the_ray_task_name():
    assert logs.task_name("ShardCore.put", "r9") == "ShardCore.put|rid=r9"
    assert logs.task_name("ShardCore.put", None) is None


def test_a_tool_call_logs_one_line_and_sets_the_id_on_its_span(tmp_path, monkeypatch):
    from memoray.actors.backend import Backend
    from memoray.actors.embedding_worker import MicroBatcher
    from memoray.actors.shard import ShardCore
    from memoray.embedding import HashEmbedder
    from memoray.serve import observability
    from memoray.serve.mcp_tools import build_mcp
    from memoray.serve.runtime import Runtime
    from memoray.settings import Settings

    provider = TracerProvider()  # this test's own (the global one is set once per process)
    exporter = InMemorySpanExporter()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    monkeypatch.setattr(observability, "_tracer", provider.get_tracer("memoray"))
    stream, _ = _capture("json")
    core = ShardCore(0, tmp_path / "s0", HashEmbedder().dim, map_size=64 << 20, durable=False)
    rt = Runtime(Settings(data_dir=tmp_path, shards=1),
                 Backend.local([core], MicroBatcher(HashEmbedder())))

    async def get_rt():
        return rt

    from types import SimpleNamespace

    from mcp.server.mcpserver import Context

    mcp = build_mcp(get_rt)
    request = SimpleNamespace(request=SimpleNamespace(headers={}))  # an HTTP request's shape
    ctx = Context(request_context=request, mcp_server=mcp)
    asyncio.run(mcp.call_tool("capture-memory", {"content": "private words",
                                                 "workspaceId": "w1"}, ctx))
    lines = [json.loads(x) for x in stream.getvalue().splitlines()]
    call = next(x for x in lines if x["message"] == "tool call")
    write = next(x for x in lines if x["message"] == "shard write")
    assert call["tool"] == "capture-memory" and call["workspace"] == "w1"
    assert call["outcome"] == "ok" and call["principal"] == "local"
    assert write["request_id"] == call["request_id"]  # in process: the contextvar
    span = next(s for s in exporter.get_finished_spans() if s.name == "memoray.tool")
    assert span.attributes["memoray.request_id"] == call["request_id"]
    assert "private words" not in stream.getvalue()
    core.close()

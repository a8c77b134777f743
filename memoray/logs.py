"""Structured logs: one JSON object per line (or a readable line on a terminal), with the request
id that ties a Serve replica's line to the shard actors' lines of the same request.

Fields: time, level, logger, message, and, when known, request_id, principal, workspace, tool,
outcome, duration_ms and the other names in FIELDS. Only those names are ever written (an
`extra=` key outside FIELDS is dropped), and callers pass ids, counts and codes, never memory
content, metadata values, tokens or webhook secrets.

The request id travels with the work: within a process in a contextvar (set by the MCP layer,
serve/mcp_tools.py); across a Ray call as the task's name (actors/client.py names each call
`Class.method|rid=<id>`), which the actor reads back here from Ray's runtime context. No
signature of any actor method changes for it.

Stdlib logging with a small formatter, weighed against structlog (a second logging pipeline
next to the one Ray and Serve already configure through stdlib) and python-json-logger (a
dependency for the 20 lines of `JsonFormatter`); neither adds what this needs.
"""

from __future__ import annotations

import contextvars
import json
import logging
import os
import sys
import time
from typing import Any, TextIO

LOGGER = "memoray"
FORMATS = ("auto", "json", "text")
FIELDS = ("request_id", "principal", "workspace", "tool", "outcome", "duration_ms", "op",
          "shard", "records", "component", "subscription", "delivery", "event", "attempts",
          "status", "error", "count")

# The request this code runs for: {"request_id", "principal", "workspace", "tool"}.
request_var: contextvars.ContextVar[dict | None] = contextvars.ContextVar("memoray_request",
                                                                          default=None)
RID_MARK = "|rid="


def current_request_id() -> str | None:
    """The request id of the work running now: this task's contextvar, else (inside a Ray actor
    called through a typed client) the one carried in the Ray task's name."""
    ctx = request_var.get()
    if ctx and ctx.get("request_id"):
        return ctx["request_id"]
    ray = sys.modules.get("ray")  # never imported here: the core does not import ray
    if ray is None:
        return None
    try:
        if not ray.is_initialized():
            return None
        name = ray.get_runtime_context().get_task_name() or ""
    except Exception:  # outside a task, or a Ray without task names
        return None
    i = name.find(RID_MARK)
    return name[i + len(RID_MARK):] if i >= 0 else None


def task_name(method: str, request_id: str | None) -> str | None:
    """The Ray task name that carries a request id to an actor (None: no request)."""
    return f"{method}{RID_MARK}{request_id}" if request_id else None


def _fields(record: logging.LogRecord) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for name in FIELDS:
        value = getattr(record, name, None)
        if value is not None:
            out[name] = value
    if "request_id" not in out:
        rid = current_request_id()
        if rid:
            out["request_id"] = rid
    return out


def _iso(ts: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(ts)) + f".{int(ts % 1 * 1000):03d}Z"


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        out = {"time": _iso(record.created), "level": record.levelname.lower(),
               "logger": record.name, "message": record.getMessage(), "pid": record.process}
        out.update(_fields(record))
        if record.exc_info:
            out["exception"] = self.formatException(record.exc_info)
        return json.dumps(out, ensure_ascii=False, default=str)


class TextFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        extra = " ".join(f"{k}={v}" for k, v in _fields(record).items())
        line = (f"{time.strftime('%H:%M:%S', time.localtime(record.created))} "
                f"{record.levelname:<7} {record.name}: {record.getMessage()}"
                + (f"  {extra}" if extra else ""))
        if record.exc_info:
            line += "\n" + self.formatException(record.exc_info)
        return line


def resolve_format(fmt: str | None, stream: TextIO) -> str:
    fmt = (fmt or os.environ.get("MEMORAY_LOG_FORMAT") or "auto").lower()
    if fmt not in FORMATS:
        raise ValueError(f"log format {fmt!r}: one of {', '.join(FORMATS)}")
    if fmt == "auto":
        try:
            return "text" if stream.isatty() else "json"
        except (AttributeError, ValueError):
            return "json"
    return fmt


def configure(fmt: str | None = None, level: str | None = None,
              stream: TextIO | None = None) -> str:
    """Give the `memoray` loggers one handler (stderr by default) in this process; idempotent.
    Also Ray's worker_process_setup_hook, so every actor process logs the same way
    (MEMORAY_LOG_FORMAT and MEMORAY_LOG_LEVEL reach workers as environment variables).
    Returns the format chosen."""
    stream = stream or sys.stderr
    chosen = resolve_format(fmt, stream)
    logger = logging.getLogger(LOGGER)
    for h in list(logger.handlers):
        if getattr(h, "_memoray", False):
            logger.removeHandler(h)
    handler = logging.StreamHandler(stream)
    handler._memoray = True  # type: ignore[attr-defined]
    handler.setFormatter(JsonFormatter() if chosen == "json" else TextFormatter())
    logger.addHandler(handler)
    logger.setLevel((level or os.environ.get("MEMORAY_LOG_LEVEL") or "INFO").upper())
    logger.propagate = False
    return chosen


class Timer:
    """Milliseconds since construction, for duration_ms."""

    def __init__(self) -> None:
        self.t0 = time.perf_counter()

    def ms(self) -> float:
        return round((time.perf_counter() - self.t0) * 1000, 2)

"""MemoryService: every request path of one Serve replica, independent of MCP and of Ray.

Each path lives in its own module and reads top to bottom there (validate, authorize,
rate-limit, work, audit): serve/capture.py, serve/retrieve.py, serve/records.py, serve/admin.py,
serve/webhooks.py;
the steps they share are in serve/request.py. Shards and embedders are reached only through the
Backend's typed clients, so unit tests run all of it in process.
"""

from __future__ import annotations

from memoray.serve.admin import Admin
from memoray.serve.capture import Capture
from memoray.serve.records import Records
from memoray.serve.request import Caller
from memoray.serve.retrieve import Retrieve, to_retrieved
from memoray.serve.webhooks import Webhooks

__all__ = ["Caller", "MemoryService", "to_retrieved"]


class MemoryService(Capture, Retrieve, Records, Admin, Webhooks):
    """The use cases of one replica over one store (see the modules above)."""

"""The ASGI app one replica serves: MCP at /mcp (stateless, JSON responses), /healthz, /metrics.

`build_app` is what `@serve.ingress` receives: the app is built inside the replica process,
since a FastAPI app with the MCP app mounted cannot be pickled.
"""

from __future__ import annotations

import contextlib
from collections.abc import Awaitable, Callable
from typing import Any

from fastapi import FastAPI
from fastapi.responses import JSONResponse, Response
from mcp.server.transport_security import TransportSecuritySettings

from memoray.serve.http_auth import BearerAuth
from memoray.serve.mcp_tools import build_mcp
from memoray.serve.observability import Metrics, configure_tracing


def build_app_with(get_runtime: Callable[[], Awaitable[Any]], metrics: Metrics,
                   allowed_hosts: list[str] | None = None) -> FastAPI:
    configure_tracing()
    mcp = build_mcp(get_runtime, metrics=metrics)
    security = TransportSecuritySettings(
        enable_dns_rebinding_protection=allowed_hosts is not None,
        allowed_hosts=allowed_hosts or [],
        allowed_origins=[f"http://{h}" for h in (allowed_hosts or [])],
    )
    mcp_app = mcp.streamable_http_app(stateless_http=True, json_response=True,
                                      transport_security=security,
                                      max_request_body_size=64 * 1024 * 1024)

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI):
        async with mcp.session_manager.run():
            yield

    app = FastAPI(title="memoray", lifespan=lifespan, docs_url=None, redoc_url=None)

    @app.get("/healthz")
    async def healthz() -> JSONResponse:
        rt = await get_runtime()
        health = await rt.service.health(detailed=False)  # also sets the health gauges
        return JSONResponse(health, status_code=200 if health["status"] == "ok" else 503)

    @app.get("/metrics")
    async def prometheus() -> Response:
        return Response(metrics.render(), media_type="text/plain; version=0.0.4")

    @app.api_route("/mcp", methods=["GET", "DELETE"])
    async def no_streams() -> JSONResponse:
        # Stateless JSON mode has no server-initiated streams or sessions to end; an open GET
        # stream would hold a request slot forever.
        return JSONResponse({"code": "INVALID_INPUT", "message": "use POST for MCP requests"},
                            status_code=405, headers={"Allow": "POST"})

    from memoray.serve.viewer import register_viewer

    register_viewer(app, get_runtime)  # `/`, its assets and /api/*: before the MCP mount
    app.mount("/", mcp_app)
    app.add_middleware(BearerAuth, get_runtime=get_runtime)
    return app

"""The web viewer: `/` serves a single-page app shipped in the package (memoray/web, no CDN), and
`/api/*` a small JSON API over the service, with the same authentication, authorization and
rate limits as the MCP tools.

Browser safety. With tokens on, every API call needs `Authorization: Bearer` (the page asks
once and keeps the token in sessionStorage). With tokens off (one local user), a page on another
site must not be able to read or change memories through the user's browser: API requests must
name a loopback Host (defeats DNS rebinding) unless the server runs with --insecure, and
mutating requests must carry an `X-Memoray-Client` header (a custom header forces a CORS
preflight, which this server never grants).
"""

from __future__ import annotations

import json
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from importlib import resources
from typing import Any
from urllib.parse import urlsplit

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response, StreamingResponse

from memoray.auth import authenticate, is_loopback
from memoray.errors import ErrorCode, MemorayError, invalid
from memoray.serve import browse

WEB = resources.files("memoray") / "web"
ASSETS = {"app.js": "text/javascript", "app.css": "text/css", "favicon.svg": "image/svg+xml"}
STATUS = {
    ErrorCode.INVALID_INPUT: 400, ErrorCode.UNAUTHORIZED: 401, ErrorCode.FORBIDDEN: 403,
    ErrorCode.NOT_FOUND: 404, ErrorCode.RATE_LIMIT_EXCEEDED: 429, ErrorCode.STORAGE_FULL: 507,
    ErrorCode.EMBEDDING_FAILED: 503, ErrorCode.QUERY_TIMEOUT: 504, ErrorCode.UNAVAILABLE: 503,
}
SECURITY_HEADERS = {
    "Content-Security-Policy": ("default-src 'self'; img-src 'self' data:; style-src 'self'; "
                                "script-src 'self'; connect-src 'self'; frame-ancestors 'none'"),
    "X-Content-Type-Options": "nosniff", "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-cache",
}


def error_response(err: MemorayError) -> JSONResponse:
    headers = {}
    if err.code == ErrorCode.UNAUTHORIZED:
        headers["WWW-Authenticate"] = 'Bearer realm="memoray"'
    if err.retry_after is not None:
        headers["Retry-After"] = str(max(1, round(err.retry_after)))
    return JSONResponse(err.to_dict(), status_code=STATUS.get(err.code, 500), headers=headers)


def _int(value: str | None, name: str, default: int) -> int:
    if value in (None, ""):
        return default
    try:
        return int(value)
    except ValueError:
        raise invalid(f"{name}: must be an integer") from None


def _facets(q: Any) -> dict | None:
    return browse.browse_filter(
        workspace=q.get("workspace") or None, branch=q.get("branch") or None,
        event_type=q.get("eventType") or None,
        start=browse.parse_time(q.get("start") or None, "start"),
        end=browse.parse_time(q.get("end") or None, "end"))


def register_viewer(app: FastAPI, get_runtime: Callable[[], Awaitable[Any]]) -> None:
    """Add `/`, its assets and `/api/*` to the app (before the MCP app is mounted at `/`)."""

    async def caller_for(request: Request, tool: str, mutating: bool = False):
        """Authenticate (the use cases then authorize, rate-limit under `tool`, and audit)."""
        from memoray.serve.request import Caller

        rt = await get_runtime()
        tokens_on = rt.tokens.enabled
        if not tokens_on and not rt.settings.insecure:
            host = urlsplit("//" + (request.headers.get("host") or "")).hostname or ""
            if not is_loopback(host):
                raise MemorayError(ErrorCode.FORBIDDEN,
                                   "without tokens this server answers loopback names only")
        if mutating and not request.headers.get("x-memoray-client"):
            raise MemorayError(ErrorCode.FORBIDDEN, "missing X-Memoray-Client header")
        try:
            principal = authenticate(rt.tokens, request.headers.get("authorization"))
            if principal.token_id is None and not (is_loopback(rt.settings.host)
                                                   or rt.settings.insecure):
                # As at /mcp: a store bound beyond loopback without tokens stays closed.
                raise MemorayError(ErrorCode.UNAUTHORIZED,
                                   "this server is bound beyond loopback and has no tokens")
        except MemorayError as err:
            await rt.audit.append("anonymous", tool, outcome="denied", code=err.code.value,
                                  detail=err.message)
            raise
        session = request.headers.get("x-memoray-session")
        bound = principal.token_id is not None  # with tokens, the agent is the token's
        caller = Caller(principal=principal, request_id=uuid.uuid4().hex[:16], tool=tool,
                        session=session, agent_id=principal.agent if bound else None,
                        agent_bound=bound)
        return rt, caller

    async def answer(fn: Callable[[], Awaitable[Any]]) -> Response:
        try:
            out = await fn()
        except MemorayError as err:
            return error_response(err)
        return out if isinstance(out, Response) else JSONResponse(out)

    def asset(name: str, media: str) -> Response:
        return Response((WEB / name).read_bytes(), media_type=media, headers=SECURITY_HEADERS)

    @app.get("/", include_in_schema=False)
    async def index() -> Response:
        return asset("index.html", "text/html; charset=utf-8")

    @app.get("/viewer/{name}", include_in_schema=False)
    async def viewer_asset(name: str) -> Response:
        if name not in ASSETS:
            return JSONResponse({"code": "NOT_FOUND", "message": "no such asset"}, 404)
        return asset(name, ASSETS[name])

    @app.get("/api/info")
    async def info(request: Request) -> Response:
        async def run():
            from memoray.version import version

            rt, caller = await caller_for(request, "health-check")
            s = rt.settings
            out = {"version": version(), "shards": len(rt.service.backend.shards),
                   "embedder": s.embedder,
                   "authRequired": rt.tokens.enabled, "principal": caller.principal.name}
            if caller.principal.can("admin"):
                out["dataDir"] = str(s.resolved_data_dir())
            return out
        return await answer(run)

    @app.get("/api/health")
    async def health(request: Request) -> Response:
        async def run():
            rt, caller = await caller_for(request, "health-check")
            return await rt.service.health_check(caller, detailed=True)
        return await answer(run)

    @app.get("/api/stats")
    async def stats(request: Request) -> Response:
        async def run():
            ws = request.query_params.get("workspace") or None
            rt, caller = await caller_for(request, "memory-stats")
            return await rt.service.stats(caller, ws)
        return await answer(run)

    @app.get("/api/memories")
    async def memories(request: Request) -> Response:
        async def run():
            q = request.query_params
            filters = _facets(q)
            rt, caller = await caller_for(request, "browse")
            return await browse.recent(rt.service, caller, filters,
                                       _int(q.get("limit"), "limit", 50), q.get("cursor"))
        return await answer(run)

    @app.get("/api/timeline")
    async def timeline(request: Request) -> Response:
        async def run():
            q = request.query_params
            filters = _facets(q)
            rt, caller = await caller_for(request, "timeline")
            return await browse.timeline(rt.service, caller, filters)
        return await answer(run)

    @app.get("/api/search")
    async def search(request: Request) -> Response:
        async def run():
            q = request.query_params
            query = (q.get("q") or "").strip()
            if not query:
                raise invalid("q: must not be empty")
            mode = q.get("mode") or "hybrid"
            if mode not in ("hybrid", "vector", "lexical"):
                raise invalid("mode: one of hybrid, vector, lexical")
            from memoray.serve.retrieve import check_query

            check_query(query)
            filters = _facets(q)
            rt, caller = await caller_for(request, "retrieve-memories")
            rows, _ = await rt.service.search(caller, query, _int(q.get("limit"), "limit", 20),
                                              filters, mode=mode)
            return {"query": query, "memories": [browse.summary(r) for r in rows],
                    "count": len(rows)}
        return await answer(run)

    @app.get("/api/memories/{memory_id}")
    async def get_memory(memory_id: str, request: Request) -> Response:
        async def run():
            rt, caller = await caller_for(request, "get-memory")
            return (await rt.service.get(caller, memory_id)).model_dump(by_alias=True)
        return await answer(run)

    @app.delete("/api/memories/{memory_id}")
    async def delete_memory(memory_id: str, request: Request) -> Response:
        async def run():
            rt, caller = await caller_for(request, "delete-memory", mutating=True)
            return await rt.service.delete(caller, memory_id)
        return await answer(run)

    @app.get("/api/documents/{memory_id}")
    async def get_document(memory_id: str, request: Request) -> Response:
        async def run():
            rt, caller = await caller_for(request, "get-document")
            return await rt.service.get_document(caller, memory_id)
        return await answer(run)

    @app.get("/api/export")
    async def export(request: Request) -> Response:
        async def run():
            ws = request.query_params.get("workspace") or None
            rt, caller = await caller_for(request, "export")
            service = rt.service
            header = browse.export_header(len(service.backend.shards), ws)
            records = browse.export_records(service, caller, ws)
            first = await anext(records, None)  # authorization and rate limit happen here

            async def lines() -> AsyncIterator[bytes]:
                yield (json.dumps(header) + "\n").encode()
                if first is not None:
                    yield (json.dumps(first, ensure_ascii=False) + "\n").encode()
                async for rec in records:
                    yield (json.dumps(rec, ensure_ascii=False) + "\n").encode()
            return StreamingResponse(lines(), media_type="application/x-ndjson")
        return await answer(run)

    @app.post("/api/import")
    async def import_(request: Request) -> Response:
        async def run():
            try:
                body = json.loads(await request.body())
            except (ValueError, UnicodeDecodeError):
                raise invalid("body: must be JSON {\"records\": [...]}") from None
            if not isinstance(body, dict) or set(body) - {"records", "header"}:
                raise invalid("body: must be JSON {\"records\": [...], \"header\"?: {...}}")
            if body.get("header") is not None:
                browse.check_header(body["header"])
            rt, caller = await caller_for(request, "capture-memories", mutating=True)
            return await browse.import_records(rt.service, caller, body.get("records"))
        return await answer(run)

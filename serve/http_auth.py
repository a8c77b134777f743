"""Bearer authentication at the HTTP layer, as the MCP authorization spec asks: a request to
/mcp (or /metrics) without a valid token is answered 401 with `WWW-Authenticate: Bearer` before
any MCP message is read, so `tools/list` is refused too.

A pure ASGI middleware (no BaseHTTPMiddleware: it adds a task and a copy per request). The tools
authenticate again from the same header (one dict lookup), so a request that reaches them
without passing here is refused all the same.

Protected-resource metadata (RFC 9728, /.well-known/oauth-protected-resource) is not published:
its one required field names the OAuth authorization servers that issue tokens, and memoray's
tokens are static bearer tokens minted by `memoray token create`, with no authorization server
to name. Clients are configured with the token instead (docs/security.md).
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable
from typing import Any

from memoray.auth import authenticate, is_loopback
from memoray.errors import ErrorCode, MemorayError

PROTECTED = ("/mcp", "/metrics")
CHALLENGE = 'Bearer realm="memoray"'


def _json(status: int, body: dict, extra: list[tuple[bytes, bytes]]) -> tuple[dict, dict]:
    data = json.dumps(body).encode()
    start = {"type": "http.response.start", "status": status,
             "headers": [(b"content-type", b"application/json"),
                         (b"content-length", str(len(data)).encode()), *extra]}
    return start, {"type": "http.response.body", "body": data}


class BearerAuth:
    def __init__(self, app: Any, get_runtime: Callable[[], Awaitable[Any]]):
        self.app = app
        self.get_runtime = get_runtime

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        path = scope.get("path", "")
        if scope["type"] != "http" or not path.startswith(PROTECTED):
            return await self.app(scope, receive, send)
        rt = await self.get_runtime()
        header = None
        for k, v in scope.get("headers") or ():
            if k == b"authorization":
                header = v.decode("latin-1")
                break
        try:
            principal = authenticate(rt.tokens, header)
            if principal.token_id is None and not (is_loopback(rt.settings.host)
                                                   or rt.settings.insecure):
                # The store was opened while bound beyond loopback: fail closed, as at start-up.
                raise MemorayError(ErrorCode.UNAUTHORIZED,
                                   "this server is bound beyond loopback and has no tokens")
            if path.startswith("/metrics") and principal.token_id is not None \
                    and not principal.can("metrics"):
                raise MemorayError(ErrorCode.FORBIDDEN,
                                   "this token does not have the 'metrics' scope")
        except MemorayError as err:
            status = {ErrorCode.UNAUTHORIZED: 401, ErrorCode.FORBIDDEN: 403}.get(err.code, 503)
            extra = [(b"www-authenticate", (CHALLENGE + (
                ', error="invalid_token"' if header else "")).encode())] if status == 401 else []
            if rt.audit is not None and status in (401, 403):
                await rt.audit.append("anonymous" if status == 401 else principal.name,
                                      path.strip("/") or "http", outcome="denied",
                                      code=err.code.value, detail=err.message)
            start, body = _json(status, err.to_dict(), extra)
            await send(start)
            await send(body)
            return None
        return await self.app(scope, receive, send)

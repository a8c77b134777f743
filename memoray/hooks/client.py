"""A minimal MCP streamable-HTTP client: one JSON-RPC `tools/call` per HTTP POST.

The server is stateless, so no `initialize` handshake is needed: the protocol version travels in
the `MCP-Protocol-Version` header. http.client (not urllib) keeps the import light and never
routes loopback traffic through an `http_proxy`.
"""

from __future__ import annotations

import json
import time
from urllib.parse import urlsplit

TYPE_CHECKING = False
if TYPE_CHECKING:  # not at run time: typing's import costs every hook ~5 ms
    from typing import Any

PROTOCOL_VERSION = "2025-06-18"

# Retrying later may succeed: keep the items spooled. Everything else is permanent for that input.
TRANSIENT_CODES = frozenset({
    "RATE_LIMIT_EXCEEDED", "UNAVAILABLE", "QUERY_TIMEOUT", "STORAGE_FULL", "EMBEDDING_FAILED",
    "UNAUTHORIZED", "FORBIDDEN", "NETWORK", "TIMEOUT", "PROTOCOL",
})


class CallError(Exception):
    """A failed tool call. `code` is a contract error code, or NETWORK/TIMEOUT/PROTOCOL/UNKNOWN."""

    def __init__(self, code: str, message: str, retry_after: float | None = None):
        super().__init__(f"{code}: {message}")
        self.code = code
        self.message = message
        self.retry_after = retry_after

    @property
    def transient(self) -> bool:
        return self.code in TRANSIENT_CODES


_HTTP_CODES = {401: "UNAUTHORIZED", 403: "FORBIDDEN", 404: "PROTOCOL", 429: "RATE_LIMIT_EXCEEDED"}


class McpClient:
    def __init__(self, mcp_url: str, token: str | None = None, *, connect_timeout: float = 0.5,
                 timed: bool = False):
        parts = urlsplit(mcp_url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"not an http(s) URL: {mcp_url!r}")
        self._https = parts.scheme == "https"
        self._host = parts.hostname
        self._port = parts.port or (443 if self._https else 80)
        # an ASCII host as bytes: getaddrinfo then skips the idna codec's import (~1.4 ms)
        self._addr = (self._host.encode("ascii") if self._host.isascii() else self._host,
                      self._port)
        self._path = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
        self._token = token
        self._connect_timeout = connect_timeout
        self._next_id = 1
        self._timed = timed
        self.seconds = 0.0  # spent reaching the server and waiting for it, when `timed`

    def reachable(self, timeout: float) -> bool:
        """Whether the server accepts a connection: checked before work that only pays off
        with an answer (git's merged branches for a context query). Plain http only."""
        if self._https:
            return True
        import socket

        t0 = time.perf_counter() if self._timed else 0.0
        try:
            socket.create_connection(self._addr,
                                     timeout=min(self._connect_timeout, timeout)).close()
        except OSError:
            return False
        finally:
            if self._timed:
                self.seconds += time.perf_counter() - t0
        return True

    def call_tool(self, name: str, arguments: dict[str, Any], *, timeout: float) -> dict[str, Any]:
        """The tool's structured result, or CallError. `timeout` bounds connect + each read."""
        request_id = self._next_id
        self._next_id += 1
        body = json.dumps({"jsonrpc": "2.0", "id": request_id, "method": "tools/call",
                           "params": {"name": name, "arguments": arguments}},
                          ensure_ascii=False, separators=(",", ":")).encode("utf-8")
        headers = {
            "Content-Type": "application/json",
            "Accept": "application/json, text/event-stream",
            "MCP-Protocol-Version": PROTOCOL_VERSION,
        }
        if self._token:
            headers["Authorization"] = f"Bearer {self._token}"
        status, ctype, raw = self._post(body, headers, timeout)
        message = _decode_message(ctype, raw, request_id)
        if message is None:
            code = _HTTP_CODES.get(status, "UNAVAILABLE" if status >= 500 else "PROTOCOL")
            raise CallError(code, f"HTTP {status} without a JSON-RPC answer: {raw[:200]!r}")
        if "error" in message:
            err = message.get("error") or {}
            code = _HTTP_CODES.get(status, "UNAVAILABLE" if status >= 500 else "PROTOCOL")
            raise CallError(code, f"JSON-RPC error {err.get('code')}: {err.get('message')}")
        result = message.get("result")
        if not isinstance(result, dict):
            raise CallError("PROTOCOL", "JSON-RPC answer without a result object")
        if result.get("isError"):
            raise _tool_error(result)
        structured = result.get("structuredContent")
        if isinstance(structured, dict):
            return structured
        text = _first_text(result)
        try:
            parsed = json.loads(text) if text else {}
        except ValueError:
            parsed = {"text": text}
        return parsed if isinstance(parsed, dict) else {"result": parsed}

    def _post(self, body: bytes, headers: dict[str, str],
              timeout: float) -> tuple[int, str, bytes]:
        if not self._timed:
            return self._send(body, headers, timeout)
        t0 = time.perf_counter()
        try:
            return self._send(body, headers, timeout)
        finally:
            self.seconds += time.perf_counter() - t0

    def _send(self, body: bytes, headers: dict[str, str],
              timeout: float) -> tuple[int, str, bytes]:
        if not self._https:
            return self._post_plain(body, headers, timeout)
        import http.client  # here, not at the top: hooks that never reach the network skip it

        deadline = time.monotonic() + timeout
        conn_cls = http.client.HTTPSConnection if self._https else http.client.HTTPConnection
        conn = conn_cls(self._host, self._port, timeout=min(self._connect_timeout, timeout))
        try:
            conn.connect()
            conn.sock.settimeout(max(0.05, deadline - time.monotonic()))
            conn.request("POST", self._path, body=body, headers=headers)
            resp = conn.getresponse()
            chunks = []
            while True:
                if time.monotonic() > deadline:
                    raise CallError("TIMEOUT", f"no complete answer within {timeout:.1f}s")
                chunk = resp.read1(65536) if hasattr(resp, "read1") else resp.read()
                if not chunk:
                    break
                chunks.append(chunk)
            return resp.status, resp.getheader("Content-Type") or "", b"".join(chunks)
        except CallError:
            raise
        except TimeoutError as exc:
            raise CallError("TIMEOUT", f"server did not answer within {timeout:.1f}s") from exc
        except (OSError, http.client.HTTPException) as exc:
            raise CallError("NETWORK", f"{type(exc).__name__}: {exc}") from exc
        finally:
            conn.close()


    def _post_plain(self, body: bytes, headers: dict[str, str],
                    timeout: float) -> tuple[int, str, bytes]:
        """One HTTP/1.1 POST over a socket, read to EOF (Connection: close). Plain http only:
        http.client's import (its e-mail header parser) costs a hook ~20 ms on every run."""
        import socket

        deadline = time.monotonic() + timeout
        head = [f"POST {self._path} HTTP/1.1", f"Host: {self._host}:{self._port}",
                f"Content-Length: {len(body)}", "Connection: close",
                *(f"{k}: {v}" for k, v in headers.items())]
        try:
            sock = socket.create_connection(self._addr,
                                            timeout=min(self._connect_timeout, timeout))
        except TimeoutError as exc:
            raise CallError("TIMEOUT", f"server did not answer within {timeout:.1f}s") from exc
        except OSError as exc:
            raise CallError("NETWORK", f"{type(exc).__name__}: {exc}") from exc
        try:
            sock.sendall(("\r\n".join(head) + "\r\n\r\n").encode("latin-1") + body)
            chunks = []
            while True:
                left = deadline - time.monotonic()
                if left <= 0:
                    raise CallError("TIMEOUT", f"no complete answer within {timeout:.1f}s")
                sock.settimeout(left)
                chunk = sock.recv(65536)
                if not chunk:
                    break
                chunks.append(chunk)
        except TimeoutError as exc:
            raise CallError("TIMEOUT", f"server did not answer within {timeout:.1f}s") from exc
        except OSError as exc:
            raise CallError("NETWORK", f"{type(exc).__name__}: {exc}") from exc
        finally:
            sock.close()
        return _parse_http_response(b"".join(chunks))


def _parse_http_response(raw: bytes) -> tuple[int, str, bytes]:
    head, sep, payload = raw.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    parts = lines[0].split(" ", 2)
    if not sep or len(parts) < 2 or not parts[1].isdigit():
        raise CallError("NETWORK", "malformed HTTP response")
    fields = {}
    for line in lines[1:]:
        name, _, value = line.partition(":")
        fields[name.strip().lower()] = value.strip()
    if "chunked" in fields.get("transfer-encoding", "").lower():
        out, rest = [], payload
        while rest:
            size_line, _, rest = rest.partition(b"\r\n")
            size = int(size_line.split(b";")[0] or b"0", 16)
            if size == 0:
                break
            out.append(rest[:size])
            rest = rest[size + 2:]
        payload = b"".join(out)
    elif "content-length" in fields:
        payload = payload[: int(fields["content-length"])]
    return int(parts[1]), fields.get("content-type", ""), payload


def _decode_message(ctype: str, raw: bytes, request_id: int) -> dict[str, Any] | None:
    """The JSON-RPC answer from a JSON body or from an SSE stream's `data:` lines."""
    text = raw.decode("utf-8", errors="replace")
    candidates: list[str]
    if "text/event-stream" in ctype.lower():
        candidates, data = [], []
        for line in text.splitlines() + [""]:
            if line.startswith("data:"):
                data.append(line[5:].lstrip(" "))
            elif not line and data:
                candidates.append("\n".join(data))
                data = []
    else:
        candidates = [text]
    for chunk in candidates:
        try:
            msg = json.loads(chunk)
        except ValueError:
            continue
        for m in msg if isinstance(msg, list) else [msg]:
            if isinstance(m, dict) and m.get("id") == request_id and (
                    "result" in m or "error" in m):
                return m
    return None


def _first_text(result: dict[str, Any]) -> str:
    for block in result.get("content") or []:
        if isinstance(block, dict) and block.get("type") == "text":
            return str(block.get("text") or "")
    return ""


def _tool_error(result: dict[str, Any]) -> CallError:
    """The contract puts `{code, message, retryAfter?}` in the text (maybe after a prefix)."""
    text = _first_text(result)
    payload: Any = result.get("structuredContent")
    if not (isinstance(payload, dict) and "code" in payload):
        payload = None
        start = text.find("{")
        if start != -1:
            try:
                payload = json.loads(text[start:])
            except ValueError:
                payload = None
    if isinstance(payload, dict) and isinstance(payload.get("code"), str):
        retry = payload.get("retryAfter")
        return CallError(payload["code"], str(payload.get("message", "")),
                         float(retry) if isinstance(retry, (int, float)) else None)
    return CallError("UNKNOWN", text[:500] or "tool error without a message")

"""The CLI's way to the webhook admin tools: one MCP `tools/call` over HTTP (the server runs MCP
stateless with JSON responses, so one POST is one call), through the CLI's ApiClient (its
token, URL and one-line errors)."""

from __future__ import annotations

import json
from typing import Any

from memoray.client import ApiClient, ClientError

MCP_HEADERS = {"accept": "application/json, text/event-stream",
               "content-type": "application/json", "mcp-protocol-version": "2025-06-18"}


def call_tool(api: ApiClient, name: str, arguments: dict[str, Any]) -> dict:
    body = {"jsonrpc": "2.0", "id": 1, "method": "tools/call",
            "params": {"name": name, "arguments": {k: v for k, v in arguments.items()
                                                   if v is not None}}}
    res = api.request("POST", "/mcp", content=json.dumps(body), headers=MCP_HEADERS)
    if "error" in res:
        raise ClientError(f"{name}: {res['error'].get('message')}")
    result = res.get("result") or {}
    data = result.get("structuredContent")
    if data is None:
        text = (result.get("content") or [{}])[0].get("text", "{}")
        data = json.loads(text)
    if result.get("isError"):
        raise ClientError(f"{data.get('code')}: {data.get('message')}", code=data.get("code"))
    return data

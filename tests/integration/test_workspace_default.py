"""Issue 12, item 5: the X-Memoray-Workspace header that `memoray hooks install` writes into a
project's MCP entry is the default workspace of every tool call that names none."""

from __future__ import annotations

import asyncio

from tests.server_process import mcp_client


def client_with(url: str, headers: dict[str, str]):
    return mcp_client(url, headers=headers)


def test_header_workspace_scopes_calls_that_name_none(minilm_server):
    async def go():
        ws_a, ws_b = "github.com/acme/alpha-ws12", "github.com/acme/beta-ws12"
        fact = "the narwhal exporter flushes every 90 seconds"
        async with client_with(minilm_server.mcp_url, {"X-Memoray-Workspace": ws_a}) as a, \
                client_with(minilm_server.mcp_url, {"X-Memoray-Workspace": ws_b}) as b:
            mine = await a.call("capture-memory", content=fact, eventType="decision")
            await b.call("capture-memory", content=fact + " (beta copy)", eventType="decision")
            await a.call("capture-memories", items=[{"content": "narwhal batch item"}])
            got = await a.call("get-memory", id=mine["id"])
            assert got["workspaceId"] == ws_a
            hits = (await a.call("retrieve-memories", query="narwhal exporter flush"))["memories"]
            assert hits and {h["workspaceId"] for h in hits} == {ws_a}
            assert any(h["content"] == "narwhal batch item" for h in hits)
            ctx = await a.call("build-context", query="narwhal exporter")
            assert fact in ctx["context"] and "beta copy" not in ctx["context"]
            assert ws_a in ctx["context"]  # the block names its workspace
            # what a model reads: markdown as text for build-context; compact JSON, no nulls
            raw = await a.session.call_tool("build-context", {"query": "narwhal exporter"})
            assert raw.content[0].text.startswith("# Memory context")
            assert raw.structured_content["context"] == raw.content[0].text
            raw = await a.session.call_tool("retrieve-memories", {"query": "narwhal"})
            text = raw.content[0].text
            assert "null" not in text and "\n" not in text and '": ' not in text
            assert "agentId" not in raw.structured_content["memories"][0]  # was null
            tools = {t.name: t for t in (await a.session.list_tools()).tools}
            schema = tools["capture-memories"].input_schema
            item = schema["properties"]["items"]["items"]["properties"]
            assert item["content"]["description"] and "title" not in item["eventType"]
            assert tools["retrieve-memories"].input_schema["properties"]["limit"]["maximum"] == 100
            # naming a workspace explicitly still wins over the header
            other = await a.call("retrieve-memories", query="narwhal exporter",
                                 filters={"workspaceId": ws_b})
            assert {h["workspaceId"] for h in other["memories"]} == {ws_b}

    asyncio.run(go())

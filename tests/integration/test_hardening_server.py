"""Issue 13 on a real server through the real MCP client (raw HTTP where the point is the
transport): agent identity bound to the token, explain-query within the caller's view, /metrics
protected with closed label sets, a per-workspace budget that naming no workspace cannot double,
and revoking the last token while the server runs."""

from __future__ import annotations

import asyncio
import subprocess
import sys
import time

import httpx
import pytest

from tests.server_process import ROOT, ServerProcess, mcp_client

pytestmark = pytest.mark.integration
WS = "ws-shared"


def run(coro):
    return asyncio.run(coro)


def _token(data, principal: str, workspaces: str, scopes: str, agent: str | None = None) -> str:
    cmd = [sys.executable, "-m", "memoray.cli", "token", "create", "--data-dir", str(data),
           "--principal", principal, "--workspaces", workspaces, "--scopes", scopes]
    if agent:
        cmd += ["--agent", agent]
    out = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, check=True)
    return out.stdout.strip().splitlines()[-1]


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    data = tmp_path_factory.mktemp("hardening") / "data"
    data.mkdir(parents=True)
    tokens = {"alice": _token(data, "alice", WS, "read,write"),
              "bob": _token(data, "bob", WS, "read,write"),
              "multi": _token(data, "multi", f"{WS},ws-two", "read,write"),
              "admin": _token(data, "admin", "*", "read,write,admin"),
              "prom": _token(data, "prometheus", "*", "metrics")}
    server = ServerProcess(data, embedder="hash", shards=2, env={
        "MEMORAY_RATE_LIMIT_REQUESTS_PER_HOUR": "40"}).start()
    yield server, tokens, data
    server.stop()


def test_agent_identity_is_the_tokens(env):
    server, tokens, _ = env

    async def go():
        async with mcp_client(server.mcp_url, tokens["alice"]) as alice, \
                mcp_client(server.mcp_url, tokens["bob"]) as bob:
            mine = await alice.call("capture-memory", content="alice's private hunch: zebrafig",
                                    workspaceId=WS, visibility="private")
            mid = mine["id"]
            got = await alice.call("get-memory", id=mid)
            assert got["agentId"] == "alice"  # bound from the token, not typed
            # bob may not claim to be alice, on any tool
            for tool, args in [("retrieve-memories", {"query": "zebrafig", "agentId": "alice"}),
                               ("share-memory", {"id": mid, "agentId": "alice"}),
                               ("capture-memory", {"content": "x", "workspaceId": WS,
                                                   "agentId": "alice"})]:
                is_error, body = await bob.raw(tool, args)
                assert is_error and body["code"] == "FORBIDDEN", (tool, body)
            is_error, body = await bob.raw("get-memory", {"id": mid})
            assert is_error and body["code"] == "NOT_FOUND"
            hits = await bob.call("retrieve-memories", query="zebrafig hunch",
                                  filters={"workspaceId": WS})
            assert all(m["id"] != mid for m in hits["memories"])
            # repeating one's own agent is allowed (narrowing, not widening)
            hits = await alice.call("retrieve-memories", query="zebrafig hunch", agentId="alice",
                                    filters={"workspaceId": WS})
            assert any(m["id"] == mid for m in hits["memories"])

    run(go())


def test_explain_withholds_global_estimates_from_a_restricted_caller(env):
    server, tokens, _ = env

    async def go():
        async with mcp_client(server.mcp_url, tokens["alice"]) as alice, \
                mcp_client(server.mcp_url, tokens["admin"]) as admin:
            mine = await alice.call("explain-query", query="x",
                                    filters={"gitBranch": "some-other-tenants-branch"})
            full = await admin.call("explain-query", query="x")
            return mine, full

    mine, full = run(go())
    assert mine["plan"] is None and "withheld" in mine and "accuracy" not in mine
    assert full["plan"]["strategy"] and "estimated_candidates" in str(full["plan"])


def test_metrics_need_the_metrics_scope_and_use_closed_labels(env):
    server, tokens, _ = env
    url = server.url + "/metrics"
    assert httpx.get(url).status_code == 401
    assert httpx.get(url, headers={"Authorization": f"Bearer {tokens['alice']}"}
                     ).status_code == 403

    async def go():
        async with mcp_client(server.mcp_url, tokens["alice"]) as alice:
            for n in range(3):
                await alice.raw(f"no-such-tool-{n}", {})
            await alice.call("capture-memory", content="odd type", workspaceId=WS,
                             eventType="tenant-secret-type")

    run(go())
    text = httpx.get(url, headers={"Authorization": f"Bearer {tokens['prom']}"}).text
    assert "memoray_" in text
    assert "no-such-tool" not in text and "tenant-secret-type" not in text
    assert 'tool="other"' in text and 'event_type="other"' in text


def test_naming_no_workspace_never_doubles_a_budget(env):
    """40 requests/hour per workspace: a caller alternating calls with and without a workspace
    gets about 40 in all, not 80 (the second bucket used to be per principal)."""
    server, tokens, _ = env

    async def go():
        ok = 0
        async with mcp_client(server.mcp_url, tokens["multi"]) as c:
            for n in range(80):
                filters = {"workspaceId": WS} if n % 2 else None
                is_error, body = await c.raw("retrieve-memories",
                                             {"query": "q", "filters": filters})
                if is_error:
                    assert body["code"] == "RATE_LIMIT_EXCEEDED", body
                else:
                    ok += 1
        return ok

    ok = run(go())
    assert ok <= 40 + 10, ok  # leases may overshoot by a few units per replica


def test_revoking_the_last_live_token_leaves_the_server_closed(env):
    server, tokens, data = env
    listed = subprocess.run([sys.executable, "-m", "memoray.cli", "token", "list",
                             "--data-dir", str(data)], cwd=ROOT, capture_output=True,
                            text=True, check=True).stdout
    ids = [line.split()[0] for line in listed.splitlines()[1:] if "active" in line]
    for token_id in ids:
        subprocess.run([sys.executable, "-m", "memoray.cli", "token", "revoke", "--data-dir",
                        str(data), token_id], cwd=ROOT, check=True, capture_output=True)
    time.sleep(1.5)  # the documented reload interval
    body = {"jsonrpc": "2.0", "id": 1, "method": "tools/call",
            "params": {"name": "retrieve-memories", "arguments": {"query": "zebrafig"}}}
    headers = {"Accept": "application/json, text/event-stream"}
    anon = httpx.post(server.mcp_url, json=body, headers=headers, timeout=30)
    assert anon.status_code == 401 and "zebrafig" not in anon.text
    revoked = httpx.post(server.mcp_url, json=body, timeout=30,
                         headers={**headers, "Authorization": f"Bearer {tokens['admin']}"})
    assert revoked.status_code == 401

"""The rate limiter across two Serve replicas, through the real MCP client over HTTP.

One server with `--replicas 2` and MEMORAY_RATE_LIMIT_CAPTURES_PER_MINUTE=40. The session key is
the `x-memoray-session` header (serve/runtime.py check_rate; the server is stateless, so there
is no mcp-session-id). memoray/ratelimit.py documents the tolerance: within any window, at most
capacity + R * lease_cap units are admitted, R being the number of replicas and
lease_cap = max(1, min(capacity // 10, 5)) = 4 here: 40..48 captures per minute per session.
"""

from __future__ import annotations

import asyncio
import re
import time
from contextlib import asynccontextmanager

import httpx
import httpx2
import pytest
from mcp import ClientSession
from mcp.client.streamable_http import streamable_http_client

from memoray.ratelimit import LEASE_FRACTION, LEASE_MAX_UNITS
from tests.server_process import Client, ServerProcess

CAPACITY = 40
REPLICAS = 2
LEASE_CAP = max(1, min(CAPACITY // LEASE_FRACTION, LEASE_MAX_UNITS))
TOLERANCE = REPLICAS * LEASE_CAP
CLIENTS = 8
BURST_S = 10.0
WS = "rl-ws"


@asynccontextmanager
async def session_client(url: str, session: str | None):
    headers = {"x-memoray-session": session} if session else {}
    http = httpx2.AsyncClient(headers=headers, timeout=httpx2.Timeout(60.0))
    async with http, streamable_http_client(url, http_client=http) as (read, write, *_):
        async with ClientSession(read, write) as s:
            await s.initialize()
            yield Client(s)


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    srv = ServerProcess(tmp_path_factory.mktemp("ratelimit") / "data", embedder="hash", shards=2,
                        env={"MEMORAY_RATE_LIMIT_CAPTURES_PER_MINUTE": str(CAPACITY),
                             "MEMORAY_RATE_LIMIT_LOCAL": "true"},
                        extra_args=["--replicas", str(REPLICAS)]).start()
    yield srv
    srv.stop()


def _metric(text: str, name: str, **labels: str) -> float:
    total = 0.0
    for line in text.splitlines():
        if not line.startswith(name + "{"):
            continue
        if all(f'{k}="{v}"' in line for k, v in labels.items()):
            total += float(line.rsplit(" ", 1)[1])
    return total


def _replica_views(url: str, want: int = REPLICAS, rounds: int = 30) -> set[tuple[float, float]]:
    """/metrics is per replica and Serve routes each GET to one of them: the distinct values of
    (allowed, refused) capture-memory calls seen are the replicas' own counters.

    Sequential GETs can all land on one idle replica (Serve's router prefers the replica it
    last saw with the shortest queue), so each round sends several at once: while one replica
    is busy with a GET the router sends the next to the other."""

    async def one_round(c: httpx.AsyncClient) -> list[tuple[float, float]]:
        texts = await asyncio.gather(*(c.get(url + "/metrics", timeout=30) for _ in range(8)))
        return [(_metric(t.text, "memoray_tool_calls_total", tool="capture-memory",
                         outcome="ok"),
                 _metric(t.text, "memoray_tool_calls_total", tool="capture-memory",
                         outcome="RATE_LIMIT_EXCEEDED")) for t in texts]

    async def poll() -> set[tuple[float, float]]:
        views: set[tuple[float, float]] = set()
        async with httpx.AsyncClient() as c:
            for _ in range(rounds):
                views.update(await one_round(c))
                if len(views) >= want:
                    break
        return views

    return asyncio.run(poll())


def test_session_limit_holds_across_two_replicas_and_retry_after_is_right(server):
    session = "burst-session"

    async def worker(i: int, t_end: float, allowed: list, denied: list):
        async with session_client(server.mcp_url, session) as c:
            n = 0
            while time.monotonic() < t_end:
                t_send = time.monotonic()
                is_error, body = await c.raw("capture-memory", {
                    "content": f"burst capture {i}-{n}", "workspaceId": WS})
                t_recv = time.monotonic()
                n += 1
                if is_error:
                    assert body.get("code") == "RATE_LIMIT_EXCEEDED", body
                    denied.append((t_send, t_recv, body))
                else:
                    allowed.append((t_send, t_recv, body["id"]))

    async def burst():
        allowed: list = []
        denied: list = []
        t_end = time.monotonic() + BURST_S
        await asyncio.gather(*(worker(i, t_end, allowed, denied) for i in range(CLIENTS)))
        return allowed, denied

    t_start = time.monotonic()
    allowed, denied = asyncio.run(burst())
    elapsed = time.monotonic() - t_start
    assert elapsed < 60, "the burst must fit in one window"
    n_allowed = len(allowed)
    assert CAPACITY <= n_allowed <= CAPACITY + TOLERANCE, (
        f"{n_allowed} captures admitted in {elapsed:.1f}s for one session; limit {CAPACITY}/min "
        f"with tolerance {TOLERANCE} ({len(denied)} refused)")
    assert len({a[2] for a in allowed}) == n_allowed
    assert len(denied) > 50, "the burst should have gone well past the limit"

    # retryAfter: positive, at most one window, and never earlier than the window allows: the
    # first admitted capture (sent at t0) frees its unit no sooner than t0 + 60 s.
    t0 = min(a[0] for a in allowed)
    for _sent, t_recv, body in denied:
        ra = body.get("retryAfter")
        assert ra is not None and 0 < ra <= 60, body
        assert t_recv + ra >= t0 + 60 - 0.5, (
            f"retryAfter {ra} at +{t_recv - t0:.2f}s would retry before the window frees")
        assert "rate limit exceeded" in body["message"]

    # Both replicas served the burst: each replica's own /metrics counters differ, and the two
    # views add up to what the clients saw.
    views = _replica_views(server.url)
    assert 1 <= len(views) <= REPLICAS, views
    if len(views) == REPLICAS:
        assert sum(v[0] for v in views) == n_allowed, (views, n_allowed)
        assert sum(v[1] for v in views) == len(denied), (views, len(denied))
        assert all(v[0] > 0 for v in views), f"a replica admitted no capture: {views}"
    else:
        # Serve's router answered every /metrics GET from one replica: its counts are a part.
        (one,) = views
        assert 0 < one[0] <= n_allowed and one[1] <= len(denied), (one, n_allowed, len(denied))
        print(f"\nonly one replica's /metrics was reached: {one}")
    print(f"\nrate limit: {n_allowed} admitted / {len(denied)} refused in {elapsed:.1f}s by "
          f"{CLIENTS} clients; per replica (admitted, refused): {sorted(views)}; retryAfter "
          f"range {min(d[2]['retryAfter'] for d in denied):.1f}-"
          f"{max(d[2]['retryAfter'] for d in denied):.1f}s")

    async def one(sess: str | None, content: str, **extra):
        async with session_client(server.mcp_url, sess) as c:
            return await c.raw("capture-memory", {"content": content, "workspaceId": WS, **extra})

    # Another session is not affected.
    is_error, body = asyncio.run(one("other-session", "a different session"))
    assert not is_error, body

    # Retry timing: a little before retryAfter it is still refused; just after it, admitted.
    is_error, body = asyncio.run(one(session, "probe"))
    assert is_error and body["code"] == "RATE_LIMIT_EXCEEDED", body
    ra = body["retryAfter"]
    probe_at = time.monotonic() + ra
    if ra > 5:
        time.sleep(ra - 4)
        is_error, early = asyncio.run(one(session, "too early"))
        assert is_error and early["code"] == "RATE_LIMIT_EXCEEDED", (
            f"admitted 4 s before retryAfter={ra}: the limit let more in than the window allows")
    time.sleep(max(0.0, probe_at - time.monotonic()) + 0.5)
    is_error, body = asyncio.run(one(session, "after waiting retryAfter"))
    assert not is_error, f"still refused after waiting retryAfter={ra}: {body}"


def test_capture_session_limit_applies_without_a_session_header(server):
    """Real clients send no x-memoray-session header (the hooks don't, and stateless MCP has no
    mcp-session-id), but every capture names its sessionId: the per-session capture budget
    must apply to it, else it never applies at all."""
    n = CAPACITY + TOLERANCE + 12

    async def go():
        async with session_client(server.mcp_url, None) as c:
            out = []
            for i in range(n):
                out.append(await c.raw("capture-memory", {
                    "content": f"runaway agent capture {i}", "workspaceId": "rl-nohdr",
                    "sessionId": "agent-session-1"}))
            return out

    results = asyncio.run(go())
    admitted = sum(1 for is_error, _ in results if not is_error)
    codes = {b.get("code") for is_error, b in results if is_error}
    assert codes <= {"RATE_LIMIT_EXCEEDED"}, codes
    assert admitted <= CAPACITY + TOLERANCE, (
        f"{admitted}/{n} captures with sessionId 'agent-session-1' admitted within a minute; "
        f"the per-session limit is {CAPACITY}/min")


def test_metrics_show_the_limiter_refusals(server):
    text = httpx.get(server.url + "/metrics", timeout=30).text
    # one replica's view; the burst above hit both, so each has refusals of kind "session"
    assert re.search(r'memoray_rate_limited_total\{kind="session"\} [1-9]', text), text[:2000]

"""The MCP tools through the real client over HTTP, against a real server on a local Ray."""

from __future__ import annotations

import asyncio
import datetime as dt

import httpx
import pytest

from tests.server_process import ToolError, mcp_client

WS = "it-tools"

MEMORIES = [
    ("decision", "We chose LMDB as the storage engine because it gives crash-safe transactions."),
    ("code_change", "Refactored the payment retry loop in billing/retry.py to use exponential backoff."),
    ("review", "Review: the login handler leaks the session cookie in debug logs; must fix before release."),
    ("decision", "The frontend uses React with Vite; no server-side rendering for now."),
    ("tool_event", "pytest tests/test_api.py failed: 3 errors, database connection refused."),
    ("preference", "The user prefers small commits with imperative-mood messages."),
]


def run(coro):
    return asyncio.run(coro)


def test_tool_list(minilm_server):
    async def go():
        async with mcp_client(minilm_server.mcp_url) as c:
            tools = await c.session.list_tools()
            return {t.name for t in tools.tools}

    names = run(go())
    assert {"capture-memory", "capture-memories", "retrieve-memories", "build-context",
            "get-memory", "delete-memory", "get-document", "explain-query", "memory-stats",
            "health-check"} <= names


def _seed(c, ws=WS, branch="main"):
    async def go():
        ids = []
        for event, text in MEMORIES:
            res = await c.call("capture-memory", content=text, eventType=event, workspaceId=ws,
                               sessionId="s1", gitBranch=branch)
            ids.append(res["id"])
        return ids
    return go()


def test_capture_then_paraphrased_query_finds_it_first(minilm_server):
    async def go():
        async with mcp_client(minilm_server.mcp_url) as c:
            ids = await _seed(c)
            checks = {
                "which database did we pick for persistence?": ids[0],
                "how do failed charges get retried?": ids[1],
                "security problem with cookies in logging": ids[2],
                "what UI framework do we use": ids[3],
            }
            for query, want in checks.items():
                res = await c.call("retrieve-memories", query=query, limit=3,
                                   filters={"workspaceId": WS})
                assert res["memories"][0]["id"] == want, (query, res["memories"])
                for m in res["memories"]:
                    assert 0.0 <= m["score"] <= 1.0
                    assert m["workspaceId"] == WS
    run(go())


def test_equality_and_time_filters(minilm_server):
    ws = WS + "-filters"

    async def go():
        async with mcp_client(minilm_server.mcp_url) as c:
            await _seed(c, ws=ws, branch="feature/x")
            old = (dt.datetime.now(dt.UTC) - dt.timedelta(days=30)).isoformat()
            await c.call("capture-memory", content="An old decision about caching with Redis",
                         eventType="decision", workspaceId=ws, timestamp=old)
            res = await c.call("retrieve-memories", query="decision", limit=20,
                               filters={"workspaceId": ws, "eventType": "decision"})
            assert {m["eventType"] for m in res["memories"]} == {"decision"}
            assert len(res["memories"]) == 3
            since = (dt.datetime.now(dt.UTC) - dt.timedelta(days=1)).isoformat()
            res = await c.call("retrieve-memories", query="decision caching", limit=20,
                               filters={"workspaceId": ws, "startTime": since})
            assert all("Redis" not in m["content"] for m in res["memories"])
            res = await c.call("retrieve-memories", query="caching", limit=20,
                               filters={"workspaceId": ws, "endTime": since})
            assert [m["content"] for m in res["memories"]] == [
                "An old decision about caching with Redis"]
            res = await c.call("retrieve-memories", query="anything", limit=20,
                               filters={"workspaceId": ws, "gitBranch": "main"})
            assert res["memories"] == []
            res = await c.call("retrieve-memories", query="commits", limit=20,
                               filters={"workspaceId": ws, "tier": "preference"})
            assert [m["eventType"] for m in res["memories"]] == ["preference"]
    run(go())


def test_get_and_delete(minilm_server):
    ws = WS + "-delete"

    async def go():
        async with mcp_client(minilm_server.mcp_url) as c:
            mid = (await c.call("capture-memory", content="Ephemeral note about the zebra cache",
                                workspaceId=ws))["id"]
            got = await c.call("get-memory", id=mid)
            assert got["content"] == "Ephemeral note about the zebra cache"
            assert (await c.call("delete-memory", id=mid))["deleted"] is True
            with pytest.raises(ToolError) as err:
                await c.call("get-memory", id=mid)
            assert err.value.code == "NOT_FOUND"
            res = await c.call("retrieve-memories", query="zebra cache", filters={"workspaceId": ws})
            assert res["memories"] == []
            with pytest.raises(ToolError) as err:
                await c.call("delete-memory", id=mid)
            assert err.value.code == "NOT_FOUND"
    run(go())


def test_retrieve_with_neighbouring_turns(minilm_server):
    ws = WS + "-context"

    async def go():
        async with mcp_client(minilm_server.mcp_url) as c:
            lines = ["Why is the nightly export slow?", "It scans the whole audit table.",
                     "We added an index on audit.created_at.", "Now it takes two minutes.",
                     "Closing the ticket."]
            items = [{"content": t, "workspaceId": ws, "sessionId": "chat-1",
                      "eventType": "conversation"} for t in lines]
            ids = [x[0] for x in (await c.call("capture-memories", items=items))["ids"]]
            plain = await c.call("retrieve-memories", query="index on audit created_at",
                                 limit=1, filters={"workspaceId": ws})
            assert "context" not in plain["memories"][0]  # the reply is unchanged without it
            res = await c.call("retrieve-memories", query="index on audit created_at", limit=1,
                               filters={"workspaceId": ws}, contextTurns=1)
            mem = res["memories"][0]
            assert mem["id"] == ids[2]
            assert [(t["id"], t["offset"]) for t in mem["context"]] == [(ids[1], -1),
                                                                       (ids[3], 1)]
            assert res["contextTokens"] == mem["contextTokens"] == sum(
                t["tokens"] for t in mem["context"]) > 0
            with pytest.raises(ToolError) as err:
                await c.call("retrieve-memories", query="x", contextTurns=11)
            assert err.value.code == "INVALID_INPUT"
    run(go())


BAD_CALLS = [
    ("capture-memory", {"content": "x" * (1024 * 1024 + 1), "workspaceId": "bad"}, "content"),
    ("capture-memory", {"content": "", "workspaceId": "bad"}, "content"),
    ("capture-memory", {"content": "   ", "workspaceId": "bad"}, "content"),
    ("capture-memory", {"content": 42, "workspaceId": "bad"}, "content"),
    ("capture-memory", {"content": "ok", "workspaceId": "bad", "colour": "red"}, "colour"),
    ("capture-memory", {"content": "ok", "workspaceId": "bad", "ttlSeconds": -5}, "ttlSeconds"),
    ("capture-memory", {"content": "ok", "workspaceId": "bad", "tier": "forever"}, "tier"),
    ("capture-memory", {"content": "ok", "workspaceId": "bad", "eventType": "Not A Slug"}, "eventType"),
    ("capture-memory", {"content": "ok", "workspaceId": "bad", "timestamp": "yesterday"}, "timestamp"),
    ("capture-memories", {"items": [{"content": "fine", "workspaceId": "bad"}, {"content": ""}]}, "items[1]"),
    ("retrieve-memories", {"query": "x", "limit": 101}, "limit"),
    ("retrieve-memories", {"query": "x", "limit": 0}, "limit"),
    ("retrieve-memories", {"query": "", "limit": 5}, "query"),
    ("retrieve-memories", {"query": "x", "filters": {"colour": "red"}}, "colour"),
    ("retrieve-memories", {"query": "x", "filters": {"tier": {"$regex": "a"}}}, "$regex"),
    ("get-memory", {"id": "not-an-id"}, "id"),
]


@pytest.mark.parametrize("tool,args,field", BAD_CALLS, ids=[f"{t}-{f}" for t, _, f in BAD_CALLS])
def test_bad_input_is_invalid_and_stores_nothing(minilm_server, tool, args, field):
    async def go():
        async with mcp_client(minilm_server.mcp_url) as c:
            before = (await c.call("memory-stats"))["workspaces"].get("bad", 0)
            is_error, body = await c.raw(tool, args)
            after = (await c.call("memory-stats"))["workspaces"].get("bad", 0)
            return is_error, body, before, after

    is_error, body, before, after = run(go())
    assert is_error, body
    assert body["code"] == "INVALID_INPUT", body
    assert field in body["message"], body
    assert after == before == 0


def test_batch_capture_and_build_context(minilm_server):
    ws = WS + "-batch"

    async def go():
        async with mcp_client(minilm_server.mcp_url) as c:
            animals = ["walrus", "heron", "lynx", "tapir", "gecko", "okapi", "ibis", "marmot",
                       "dingo", "narwhal"]
            items = [{"content": f"The {animals[i % 10]}-{i // 10} service listens on port "
                                 f"{8000 + i}", "workspaceId": ws, "eventType": "note"}
                     for i in range(50)]
            res = await c.call("capture-memories", items=items)
            assert res["count"] == 50 and all(len(ids) == 1 for ids in res["ids"])
            stats = await c.call("memory-stats", workspaceId=ws)
            assert stats["total"] == 50
            ctx = await c.call("build-context", query="which port does the marmot-0 service use",
                               workspaceId=ws, tokenBudget=200)
            assert ctx["tokens"] <= 200
            assert "port 8007" in ctx["context"]
    run(go())


def test_health_and_metrics_endpoints(minilm_server):
    health = httpx.get(minilm_server.url + "/healthz", timeout=30).json()
    assert health["status"] == "ok"
    assert {"shard-0", "shard-1", "embedder"} <= set(health["components"])
    metrics = httpx.get(minilm_server.url + "/metrics", timeout=30).text
    assert "memoray_tool_calls_total" in metrics
    assert "memoray_memory_captures_total" in metrics


def _retrieve_stage_sums(url: str) -> dict[str, tuple[float, float]]:
    """memoray_stage_seconds{path="retrieve"}: stage -> (sum, count), from /metrics."""
    from prometheus_client.parser import text_string_to_metric_families

    out: dict[str, list[float]] = {}
    text = httpx.get(url + "/metrics", timeout=30).text
    for fam in text_string_to_metric_families(text):
        if fam.name != "memoray_stage_seconds":
            continue
        for smp in fam.samples:
            if smp.labels.get("path") != "retrieve":
                continue
            slot = out.setdefault(smp.labels["stage"], [0.0, 0.0])
            if smp.name.endswith("_sum"):
                slot[0] += smp.value
            elif smp.name.endswith("_count"):
                slot[1] += smp.value
    return {k: (v[0], v[1]) for k, v in out.items()}


def test_the_fanout_wait_is_split_across_real_shard_actors(minilm_server):
    """Through Ray: every retrieve records, per shard, the time to reach the shard's method and
    the time its answer took back, from the shard's own clock readings; with the shard's search
    they fit inside the replica's whole wait (one machine: one clock)."""
    n = 5

    async def go():
        async with mcp_client(minilm_server.mcp_url) as c:
            await c.call("capture-memory", content="the fanout split test note",
                         workspaceId=WS + "/fanout")
            before = _retrieve_stage_sums(minilm_server.url)
            for i in range(n):
                await c.call("retrieve-memories", query=f"fanout split {i}", limit=3,
                             filters={"workspaceId": WS + "/fanout"})
            return before, _retrieve_stage_sums(minilm_server.url)

    before, after = run(go())

    def delta(stage: str) -> tuple[float, float]:
        s0, c0 = before.get(stage, (0.0, 0.0))
        s1, c1 = after[stage]
        return s1 - s0, c1 - c0

    send, reply, fanout = delta("fanout_send"), delta("fanout_reply"), delta("fanout")
    search = delta("shard_search")
    assert send[1] == reply[1] == 2 * n  # two shards, one call each per retrieve
    assert fanout[1] == n
    assert send[0] > 0 and reply[0] > 0
    # per retrieve and shard: send + search + reply <= the wait for both (ms of slack for the
    # two clocks the replica reads)
    assert send[0] + search[0] + reply[0] <= 2 * fanout[0] + 2 * n * 0.002, (send, search, reply,
                                                                              fanout)


def test_queries_are_embedded_in_the_replica(minilm_server):
    """A retrieve's query is embedded by the replica's own model (actors/query_embedder.py),
    not sent to the embedding worker; the worker embeds only what is captured."""
    async def go():
        async with mcp_client(minilm_server.mcp_url) as c:
            deadline = asyncio.get_running_loop().time() + 120
            while True:  # the replica loads its model in the background after it starts
                emb = (await c.call("health-check", detailed=True))["components"]["embedder"]
                if emb["queries"]["ready"] or asyncio.get_running_loop().time() > deadline:
                    break
                await asyncio.sleep(0.5)
            assert emb["queries"]["ready"], emb
            before_worker = emb["workers"][0]["texts"]
            before_local = emb["queries"]["embedded"]
            await c.call("retrieve-memories", query="an unusual question about otters",
                         limit=3, filters={"workspaceId": "it-queries"})
            await c.call("capture-memory", content="Otters hold hands while they sleep.",
                         eventType="decision", workspaceId="it-queries")
            found = await c.call("retrieve-memories", query="do sea otters sleep holding paws",
                                 limit=1, filters={"workspaceId": "it-queries"})
            emb = (await c.call("health-check", detailed=True))["components"]["embedder"]
            assert emb["queries"]["embedded"] == before_local + 2  # two new queries
            assert emb["workers"][0]["texts"] == before_worker + 1  # the capture only
            assert found["memories"][0]["content"].startswith("Otters hold hands")
    run(go())


def test_every_actor_process_freezes_what_it_loaded_and_times_its_collections(minilm_server):
    """memoray/gcpause.py through Ray: each shard froze what recovery built, the replica what
    its query model brought, the embedding worker its model; each reports its collector's
    pauses, and the replica's reach /metrics."""
    async def go():
        async with mcp_client(minilm_server.mcp_url) as c:
            deadline = asyncio.get_running_loop().time() + 120
            while True:  # the replica freezes once its query model has loaded
                health = await c.call("health-check", detailed=True)
                if (health["components"]["embedder"]["queries"]["ready"]
                        or asyncio.get_running_loop().time() > deadline):
                    break
                await asyncio.sleep(0.5)
            return health, await c.call("memory-stats")

    health, stats = run(go())
    replica = health["replica"]["gc"]
    assert replica["freezeEnabled"] and replica["freezes"] >= 1, replica
    assert replica["frozen"] > 0
    assert len(stats["shards"]) == 2
    for sh in stats["shards"]:
        assert sh["gc"]["freezes"] >= 1 and sh["gc"]["frozen"] > 0, sh["gc"]
    workers = health["components"]["embedder"]["workers"]
    assert workers and all(w["gc"]["freezes"] >= 1 for w in workers), workers
    # MiniLM on ONNX Runtime in both the replica and the worker (memoray/onnx_minilm.py)
    assert health["components"]["embedder"]["queries"]["runtime"] == "onnx"
    assert all(w["runtime"] == "onnx" for w in workers), workers
    text = httpx.get(minilm_server.url + "/metrics", timeout=30).text
    assert 'memoray_gc_collections_total{generation="0"}' in text

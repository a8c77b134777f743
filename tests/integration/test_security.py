"""Security through the real MCP client over HTTP, against one real server with tokens.

Principals (tokens made with `memoray token create`):
  alice    ws-a       read,write       the attacker in the cross-workspace tests
  bob      ws-b       read,write       the victim: owns the data alice must never see or touch
  reader   ws-a       read             read-only: every write must be FORBIDDEN
  admin    *          read,write,admin reads the audit log
  carol    ws-victim  read,write       a third tenant (rate-limit isolation)
Every denial must come back with the right code, leak nothing of bob's data, and be in the audit
log; bob's data must be unchanged afterwards.
"""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import time
from pathlib import Path

import pytest

from memoray.ids import new_id
from tests.server_process import ROOT, ServerProcess, mcp_client

WS_A, WS_B, WS_VICTIM = "ws-a", "ws-b", "ws-victim"
# Per-workspace request budget for this server: high enough for every test of the module, low
# enough that the rate-limit isolation tests at the end can exhaust it in a few seconds.
REQUESTS_PER_HOUR = 300
CONTRACT_CODES = {"INVALID_INPUT", "UNAUTHORIZED", "FORBIDDEN", "NOT_FOUND", "RATE_LIMIT_EXCEEDED",
                  "STORAGE_FULL", "EMBEDDING_FAILED", "QUERY_TIMEOUT", "UNAVAILABLE"}

# Bob's data: distinctive words so any leak is easy to spot.
B_SECRET_WORDS = ["zanzibarquokka", "bobsprivateplan", "xylophonemerger"]
B_TEXTS = [
    "bob decided zanzibarquokka is the codename for the acquisition",
    "bobsprivateplan: migrate the billing cluster to the new region on friday",
    "the xylophonemerger review found a race in the settlement job",
]
B_DOC = ("bobsprivateplan chapter. " + "The quarterly roadmap for the payments team. " * 40
         + "\n\n") * 8  # > 8000 chars: stored as chunks under a parentId
A_TEXTS = [
    "alice notes: the frontend build uses vite and react",
    "alice decided to keep postgres for the ledger",
]


def run(coro):
    return asyncio.run(coro)


def _token(data_dir: Path, principal: str, workspaces: str, scopes: str) -> str:
    out = subprocess.run(
        [sys.executable, "-m", "memoray.cli", "token", "create", "--data-dir", str(data_dir),
         "--principal", principal, "--workspaces", workspaces, "--scopes", scopes],
        cwd=ROOT, capture_output=True, text=True, check=True)
    token = out.stdout.strip().splitlines()[-1]
    assert token.startswith("mr_"), out.stdout
    return token


class Env:
    def __init__(self, server: ServerProcess, tokens: dict[str, str]):
        self.server = server
        self.tokens = tokens
        self.b_ids: list[str] = []
        self.b_chunk_ids: list[str] = []
        self.b_parent: str = ""
        self.b_similar_id: str = ""
        self.a_ids: list[str] = []
        self.b_snapshot: dict[str, dict] = {}
        self.b_total = 0

    @property
    def url(self) -> str:
        return self.server.mcp_url

    @property
    def audit_path(self) -> Path:
        return self.server.data_dir / "audit" / "audit.log"

    def audit_lines(self) -> list[dict]:
        if not self.audit_path.exists():
            return []
        out = []
        for line in self.audit_path.read_bytes().splitlines():
            try:
                out.append(json.loads(line))
            except ValueError:
                pass
        return out

    def all_b_ids(self) -> list[str]:
        return [*self.b_ids, *self.b_chunk_ids, self.b_parent]


@pytest.fixture(scope="module")
def env(tmp_path_factory) -> Env:
    data = tmp_path_factory.mktemp("security") / "data"
    data.mkdir(parents=True)
    tokens = {
        "alice": _token(data, "alice", WS_A, "read,write"),
        "bob": _token(data, "bob", WS_B, "read,write"),
        "reader": _token(data, "reader", WS_A, "read"),
        "admin": _token(data, "admin", "*", "read,write,admin"),
        "carol": _token(data, "carol", WS_VICTIM, "read,write"),
    }
    server = ServerProcess(data, embedder="hash", shards=2, env={
        "MEMORAY_RATE_LIMIT_REQUESTS_PER_HOUR": str(REQUESTS_PER_HOUR),
        "MEMORAY_RATE_LIMIT_CAPTURES_PER_MINUTE": "1000",
    }).start()
    e = Env(server, tokens)

    async def seed():
        async with mcp_client(e.url, tokens["bob"]) as bob:
            for text in B_TEXTS:
                res = await bob.call("capture-memory", content=text, workspaceId=WS_B,
                                     eventType="decision", sessionId="bob-s",
                                     metadata={"owner": "bobsprivateplan"})
                e.b_ids.append(res["id"])
            e.b_similar_id = e.b_ids[0]
            doc = await bob.call("capture-memory", content=B_DOC, workspaceId=WS_B,
                                 eventType="document")
            assert doc["chunks"] > 1 and doc["parentId"]
            e.b_parent, e.b_chunk_ids = doc["parentId"], doc["ids"]
            for mid in [*e.b_ids, *e.b_chunk_ids]:
                e.b_snapshot[mid] = await bob.call("get-memory", id=mid)
            e.b_total = (await bob.call("memory-stats", workspaceId=WS_B))["total"]
        async with mcp_client(e.url, tokens["alice"]) as alice:
            for text in A_TEXTS:
                e.a_ids.append((await alice.call("capture-memory", content=text,
                                                 workspaceId=WS_A))["id"])

    run(seed())
    try:
        yield e
    finally:
        server.stop()


async def _err(client, tool: str, args: dict) -> dict:
    is_error, body = await client.raw(tool, args)
    assert is_error, f"{tool} {args} succeeded: {body}"
    assert body.get("code") in CONTRACT_CODES, body
    return body


def _assert_no_b_leak(env: Env, payload, allowed_ids: tuple[str, ...] = ()) -> None:
    text = json.dumps(payload)
    for word in B_SECRET_WORDS:
        assert word not in text, f"bob's content leaked: {text[:500]}"
    for mid in env.all_b_ids():
        if mid not in allowed_ids:
            assert mid not in text, f"bob's id {mid} leaked: {text[:500]}"


# -- authentication ------------------------------------------------------------------------------


def _post(url: str, token_header: str | None, method: str = "tools/call",
          params: dict | None = None):
    """A raw MCP POST (the point is the transport: no client library in between)."""
    import httpx

    headers = {"Accept": "application/json, text/event-stream",
               "Content-Type": "application/json"}
    if token_header is not None:
        headers["Authorization"] = token_header
    body = {"jsonrpc": "2.0", "id": 1, "method": method, "params": params or {}}
    return httpx.post(url, json=body, headers=headers, timeout=30)


def _assert_401(resp, what) -> dict:
    assert resp.status_code == 401, (what, resp.status_code, resp.text[:300])
    assert resp.headers["www-authenticate"].startswith("Bearer"), (what, resp.headers)
    body = resp.json()
    assert body["code"] == "UNAUTHORIZED", (what, body)
    return body


def test_no_token_is_unauthorized(env):
    """HTTP 401 with WWW-Authenticate: Bearer, before any MCP message is read: tools/list,
    initialize and every tool alike (the MCP authorization spec)."""
    before = len(env.audit_lines())
    calls = [("tools/list", None), ("initialize", {"protocolVersion": "2025-06-18",
                                                   "capabilities": {}, "clientInfo": {
                                                       "name": "t", "version": "0"}})]
    calls += [("tools/call", {"name": tool, "arguments": args}) for tool, args in [
        ("health-check", {}), ("retrieve-memories", {"query": "anything"}),
        ("capture-memory", {"content": "anon write", "workspaceId": WS_A}),
        ("get-memory", {"id": env.b_ids[0]}), ("audit-log", {})]]
    for method, params in calls:
        body = _assert_401(_post(env.url, None, method, params), method)
        _assert_no_b_leak(env, body, allowed_ids=(env.b_ids[0],))
    # A header that is not "Bearer <token>" is the same as none.
    for header in ("Basic YWxpY2U6cGFzcw==", "Bearer", f"Token {env.tokens['alice']}"):
        _assert_401(_post(env.url, header, "tools/list"), header)
    denied = [e for e in env.audit_lines()[before:]
              if e["principal"] == "anonymous" and e["outcome"] == "denied"]
    assert len(denied) >= 10, denied
    assert all(e["code"] == "UNAUTHORIZED" for e in denied)


def test_wrong_token_is_unauthorized(env):
    bodies = []
    for token in ["mr_" + "A" * 43, "mr_not-a-real-token", "garbage-token",
                  env.tokens["alice"][:-2] + "xx"]:
        for method, params in [("tools/list", None), ("tools/call", {
                "name": "capture-memory", "arguments": {"content": "x", "workspaceId": WS_A}})]:
            bodies.append(_assert_401(_post(env.url, f"Bearer {token}", method, params), token))
    assert len({b["message"] for b in bodies}) == 1  # every bad token gets the same answer


def test_revoked_token_is_unauthorized_within_seconds(env):
    data = env.server.data_dir
    token = _token(data, "temp", WS_A, "read,write")
    call = {"name": "retrieve-memories", "arguments": {"query": "alice"}}

    deadline = time.time() + 5  # the new token is picked up within the reload interval
    while True:
        resp = _post(env.url, f"Bearer {token}", "tools/call", call)
        if resp.status_code == 200 or time.time() > deadline:
            break
        time.sleep(0.3)
    assert resp.status_code == 200, resp.text[:300]
    out = subprocess.run([sys.executable, "-m", "memoray.cli", "token", "revoke",
                          "--data-dir", str(data), token],
                         cwd=ROOT, capture_output=True, text=True)
    assert out.returncode == 0 and "revoked" in out.stdout, out
    t0 = time.time()
    while True:
        resp = _post(env.url, f"Bearer {token}", "tools/call", call)
        if resp.status_code != 200 or time.time() - t0 > 10:
            break
        time.sleep(0.2)
    body = _assert_401(resp, "revoked")
    assert time.time() - t0 < 5, "revocation took effect only after 5 s"
    wrong = _assert_401(_post(env.url, "Bearer mr_" + "B" * 43, "tools/call", call), "unknown")
    assert body == wrong, "a revoked token must look exactly like an unknown one"


# -- scopes --------------------------------------------------------------------------------------


def test_read_only_token_cannot_write(env):
    target = env.a_ids[0]
    cases = [
        ("capture-memory", {"content": "reader writes", "workspaceId": WS_A}, "capture"),
        ("capture-memories", {"items": [{"content": "r1", "workspaceId": WS_A},
                                        {"content": "r2", "workspaceId": WS_A}]},
         "capture-batch"),
        ("delete-memory", {"id": target}, "delete"),
        ("upsert-memory", {"items": [{"content": A_TEXTS[0], "workspaceId": WS_A}]}, "upsert"),
        ("share-memory", {"id": target}, "share"),
        ("expire-memories", {"workspaceId": WS_A}, "expire"),
        ("expire-memories", {"dryRun": True}, "expire"),
        ("audit-log", {}, "audit-log"),
        ("rotate-encryption", {}, "rotate-encryption"),
    ]

    async def go():
        async with mcp_client(env.url, env.tokens["reader"]) as reader:
            # reading is fine
            assert (await reader.call("get-memory", id=target))["content"] == A_TEXTS[0]
            for tool, args, action in cases:
                before = len(env.audit_lines())
                body = await _err(reader, tool, args)
                assert body["code"] == "FORBIDDEN", (tool, body)
                new = [e for e in env.audit_lines()[before:]
                       if e["principal"] == "reader" and e["outcome"] == "denied"]
                assert any(e["action"] == action and e.get("code") == "FORBIDDEN"
                           for e in new), (tool, new)
        async with mcp_client(env.url, env.tokens["alice"]) as alice:
            got = await alice.call("get-memory", id=target)
            assert got["content"] == A_TEXTS[0]
            stats = await alice.call("memory-stats", workspaceId=WS_A)
            assert stats["total"] == len(A_TEXTS)

    run(go())


# -- workspace isolation: alice (ws-a) against bob's (ws-b) ids and filters ----------------------


def _cross_cases() -> list[tuple[str, str, dict, set[str], str]]:
    """(label, tool, args, acceptable codes, audit action); <B0>, <CHUNK> and <PARENT> stand for
    one of bob's memory ids, one of his chunk ids and his document's parentId."""
    b0, chunk, parent = "<B0>", "<CHUNK>", "<PARENT>"
    nb = {"workspaceId": WS_B}
    return [
        ("get-memory by id", "get-memory", {"id": b0}, {"NOT_FOUND"}, "get"),
        ("get-memory by chunk id", "get-memory", {"id": chunk}, {"NOT_FOUND"}, "get"),
        ("delete-memory by id", "delete-memory", {"id": b0}, {"NOT_FOUND"}, "delete"),
        ("delete-memory by chunk id", "delete-memory", {"id": chunk}, {"NOT_FOUND"}, "delete"),
        ("get-document by chunk id", "get-document", {"id": chunk}, {"NOT_FOUND"},
         "get-document"),
        ("get-document by parentId", "get-document", {"id": parent}, {"NOT_FOUND"},
         "get-document"),
        ("share-memory by id", "share-memory", {"id": b0}, {"NOT_FOUND"}, "share"),
        ("share-memory private", "share-memory", {"id": b0, "visibility": "private"},
         {"NOT_FOUND"}, "share"),
        ("retrieve eq filter", "retrieve-memories", {"query": B_TEXTS[0], "filters": nb},
         {"FORBIDDEN"}, "retrieve"),
        ("retrieve $in filter", "retrieve-memories",
         {"query": B_TEXTS[0], "filters": {"workspaceId": {"$in": [WS_A, WS_B]}}},
         {"FORBIDDEN"}, "retrieve"),
        ("retrieve $or filter", "retrieve-memories",
         {"query": B_TEXTS[0], "filters": {"$or": [nb, {"workspaceId": WS_A}]}},
         {"FORBIDDEN"}, "retrieve"),
        ("retrieve $and filter", "retrieve-memories",
         {"query": B_TEXTS[0], "filters": {"$and": [nb, {"eventType": "decision"}]}},
         {"FORBIDDEN"}, "retrieve"),
        ("retrieve lexical", "retrieve-memories",
         {"query": "zanzibarquokka", "filters": nb, "mode": "lexical"}, {"FORBIDDEN"},
         "retrieve"),
        ("build-context workspaceId", "build-context", {"query": B_TEXTS[0], "workspaceId": WS_B},
         {"FORBIDDEN"}, "build-context"),
        ("build-context filter", "build-context", {"query": B_TEXTS[0], "filters": nb},
         {"FORBIDDEN"}, "build-context"),
        ("explain-query filter", "explain-query", {"query": B_TEXTS[0], "filters": nb},
         {"FORBIDDEN"}, "explain"),
        ("memory-stats workspaceId", "memory-stats", {"workspaceId": WS_B}, {"FORBIDDEN"},
         "stats"),
        ("expire-memories workspaceId", "expire-memories", {"workspaceId": WS_B},
         {"FORBIDDEN"}, "expire"),
        ("expire-memories dry run", "expire-memories", {"workspaceId": WS_B, "dryRun": True},
         {"FORBIDDEN"}, "expire"),
        ("upsert-memory into B", "upsert-memory",
         {"items": [{"content": B_TEXTS[0] + " (edited by alice)", "workspaceId": WS_B}]},
         {"FORBIDDEN"}, "upsert"),
        ("upsert-memory batch A+B", "upsert-memory",
         {"items": [{"content": "a fine item", "workspaceId": WS_A},
                    {"content": B_TEXTS[1], "workspaceId": WS_B}]}, {"FORBIDDEN"}, "upsert"),
        ("capture-memory into B", "capture-memory",
         {"content": "alice plants this in bob's workspace", "workspaceId": WS_B},
         {"FORBIDDEN"}, "capture"),
        ("capture-memories into B", "capture-memories",
         {"items": [{"content": "planted one", "workspaceId": WS_B}]}, {"FORBIDDEN"},
         "capture-batch"),
        ("capture-memories mixed", "capture-memories",
         {"items": [{"content": "mine", "workspaceId": WS_A},
                    {"content": "planted two", "workspaceId": WS_B}]}, {"FORBIDDEN"},
         "capture-batch"),
        ("audit-log without admin", "audit-log", {}, {"FORBIDDEN"}, "audit-log"),
        ("audit-log filtered on bob", "audit-log", {"principal": "bob"}, {"FORBIDDEN"},
         "audit-log"),
        ("rotate-encryption without admin", "rotate-encryption", {}, {"FORBIDDEN"},
         "rotate-encryption"),
    ]


CROSS_LABELS = [c[0] for c in _cross_cases()]


def _normalize(body: dict, mid: str | None) -> dict:
    return {k: (v.replace(mid, "<ID>") if isinstance(v, str) and mid else v)
            for k, v in body.items()}


@pytest.mark.parametrize("label", CROSS_LABELS)
def test_cross_workspace_every_tool_refused_and_audited(env, label):
    case = next(c for c in _cross_cases() if c[0] == label)
    _, tool, args, codes, action = case
    subst = {"<B0>": env.b_ids[0], "<CHUNK>": env.b_chunk_ids[1], "<PARENT>": env.b_parent}
    args = {k: subst.get(v, v) if isinstance(v, str) else v for k, v in args.items()}
    given_id = args.get("id")

    async def go():
        async with mcp_client(env.url, env.tokens["alice"]) as alice:
            before = len(env.audit_lines())
            body = await _err(alice, tool, args)
            after = env.audit_lines()[before:]
            control = None
            if given_id:  # the same call on an id that exists nowhere
                ghost = new_id()
                control = _normalize(await _err(alice, tool, {**args, "id": ghost}), ghost)
            return body, after, control

    body, new_audit, control = run(go())
    assert body["code"] in codes, body
    _assert_no_b_leak(env, body, allowed_ids=(given_id,) if given_id else ())
    assert WS_B not in body.get("message", ""), body  # messages never name the workspace
    assert set(body) <= {"code", "message", "retryAfter"}, body
    problems = []
    if control is not None and _normalize(body, given_id) != control:
        problems.append(f"another workspace's id is distinguishable from a non-existent one: "
                        f"{_normalize(body, given_id)} vs {control}")
    denials = [e for e in new_audit if e["principal"] == "alice" and e["outcome"] == "denied"]
    if not any(e["action"] == action and e.get("code") == body["code"] for e in denials):
        problems.append(f"denial not audited (want action {action!r}): {new_audit}")
    for e in denials:  # the audit entry itself holds nothing of bob's content
        for word in B_SECRET_WORDS:
            assert word not in json.dumps(e)
    assert not problems, "\n".join(problems)


def test_non_confining_filters_naming_b_return_only_a(env):
    """Filters that mention ws-b without confining to it ($or with another field, $ne, $not,
    $nin) are not refused: they are intersected with alice's workspaces, so they see only ws-a."""
    filters = [
        {"$or": [{"workspaceId": WS_B}, {"eventType": "decision"}]},
        {"$or": [{"workspaceId": WS_B}, {"eventType": "note"}]},
        {"workspaceId": {"$ne": WS_A}},
        {"$not": {"workspaceId": WS_A}},
        {"workspaceId": {"$nin": [WS_A]}},
        {"workspaceId": {"$exists": True}},
        {"metadata.owner": "bobsprivateplan"},
        {"sessionId": "bob-s"},
    ]

    async def go():
        async with mcp_client(env.url, env.tokens["alice"]) as alice:
            for f in filters:
                for tool, args in [("retrieve-memories", {"query": B_TEXTS[0], "limit": 100}),
                                   ("build-context", {"query": B_TEXTS[0]}),
                                   ("explain-query", {"query": B_TEXTS[0]})]:
                    is_error, body = await alice.raw(tool, {**args, "filters": f})
                    if is_error:
                        assert body["code"] == "FORBIDDEN", (f, body)
                        continue
                    if tool == "explain-query":  # echoes alice's own query and filter, and
                        # shows the filter the server really runs: confined to ws-a
                        assert {"workspaceId": WS_A} in body["filter"]["$and"], body["filter"]
                        continue
                    body.pop("query", None)
                    _assert_no_b_leak(env, body)
                    for m in body.get("memories", []):
                        assert m["workspaceId"] == WS_A, (f, m)

    run(go())


def test_retrieve_without_filter_sees_only_own_workspace(env):
    """Bob's memories are the most similar to these queries (identical text), yet alice gets only
    hers, in every mode, and neither stats nor explain nor build-context shows ws-b."""

    async def go():
        async with mcp_client(env.url, env.tokens["alice"]) as alice:
            for query in [*B_TEXTS, "zanzibarquokka", "bobsprivateplan quarterly roadmap"]:
                for mode in ("hybrid", "vector", "lexical"):
                    res = await alice.call("retrieve-memories", query=query, limit=100, mode=mode)
                    assert {m["workspaceId"] for m in res["memories"]} <= {WS_A}, res
                    _assert_no_b_leak(env, res)
            ctx = await alice.call("build-context", query=B_TEXTS[0])
            _assert_no_b_leak(env, ctx)
            stats = await alice.call("memory-stats")
            assert set(stats["workspaces"]) <= {WS_A}, stats
            assert WS_B not in json.dumps(stats)
            assert stats["total"] == len(A_TEXTS), stats
            plan = await alice.call("explain-query", query=B_TEXTS[0])
            assert WS_B not in json.dumps(plan)
            health = await alice.call("health-check", detailed=True)
            _assert_no_b_leak(env, health)
        # the control: bob does get his own memory first for the same query
        async with mcp_client(env.url, env.tokens["bob"]) as bob:
            res = await bob.call("retrieve-memories", query=B_TEXTS[0], limit=3)
            assert res["memories"][0]["id"] == env.b_similar_id

    run(go())


def test_b_data_untouched_and_denials_readable_by_admin(env):
    async def go():
        async with mcp_client(env.url, env.tokens["bob"]) as bob:
            for mid, before in env.b_snapshot.items():
                now = await bob.call("get-memory", id=mid)
                assert now == before, mid
            stats = await bob.call("memory-stats", workspaceId=WS_B)
            assert stats["total"] == env.b_total
            doc = await bob.call("get-document", id=env.b_parent)
            assert doc["complete"] and doc["content"].startswith("bobsprivateplan chapter.")
            assert (await bob.call("retrieve-memories", query="planted",
                                   filters={"workspaceId": WS_B}, mode="lexical"))["count"] == 0
        async with mcp_client(env.url, env.tokens["admin"]) as admin:
            log = await admin.call("audit-log", limit=1000, principal="alice")
            return log

    log = run(go())
    denied = {e["action"] for e in log["entries"] if e["outcome"] == "denied"}
    assert {"get", "delete", "get-document", "share", "retrieve", "build-context", "explain",
            "stats", "expire", "upsert", "capture", "capture-batch", "audit-log",
            "rotate-encryption"} <= denied, denied
    # nothing alice tried ever succeeded against ws-b
    assert not [e for e in log["entries"] if e["outcome"] == "ok" and e.get("workspace") == WS_B]


# -- redaction end to end ------------------------------------------------------------------------

AWS_KEY = "AKIAQ3EGUZMXJ7PLW4TR"
GH_TOKEN = "ghp_Zq8mW2xR7vN4kT9pL3sY6bH1cF5dJ0aE2gQ7"
MARKER = "plumbusredactionmarker"


def test_redaction_end_to_end(env):
    content = (f"{MARKER}: deploy with AWS_ACCESS_KEY_ID={AWS_KEY} and push with "
               f"GH_TOKEN={GH_TOKEN} to the release branch")

    async def go():
        async with mcp_client(env.url, env.tokens["alice"]) as alice:
            res = await alice.call("capture-memory", content=content, workspaceId=WS_A,
                                   metadata={"note": f"token {GH_TOKEN}", "marker": MARKER})
            got = await alice.call("get-memory", id=res["id"])
            batch = await alice.call("capture-memories", items=[
                {"content": f"second {MARKER} key {AWS_KEY}", "workspaceId": WS_A}])
            return res, got, batch

    res, got, batch = run(go())
    assert res["redactions"].get("aws_access_key") == 1, res
    assert res["redactions"].get("github_token") == 2, res  # content + metadata
    assert batch["redactions"].get("aws_access_key") == 1, batch
    assert "[REDACTED:aws_access_key]" in got["content"]
    assert "[REDACTED:github_token]" in got["content"]
    assert "[REDACTED:github_token]" in got["metadata"]["note"]
    assert AWS_KEY not in json.dumps(got) and GH_TOKEN not in json.dumps(got)
    assert MARKER in got["content"]
    # LMDB: the secrets never reached disk, while the rest of the record did (control).
    raw = b"".join(p.read_bytes() for p in env.server.data_dir.glob("shards/*/lmdb/*.mdb"))
    assert MARKER.encode() in raw, "control: the plaintext store should hold the marker"
    for secret in (AWS_KEY, GH_TOKEN):
        assert secret.encode() not in raw
    for p in env.server.data_dir.rglob("*"):
        if p.is_file():
            blob = p.read_bytes()
            assert AWS_KEY.encode() not in blob and GH_TOKEN.encode() not in blob, p


# -- rate limits must not cross tenants (run last: they exhaust budgets) -------------------------


async def _flood(client, tool: str, args: dict, max_calls: int) -> int:
    """Call until RATE_LIMIT_EXCEEDED; returns the number of calls made."""
    for n in range(1, max_calls + 1):
        is_error, body = await client.raw(tool, args)
        if is_error and body.get("code") == "RATE_LIMIT_EXCEEDED":
            return n
    return max_calls


def test_zz_forbidden_requests_do_not_spend_another_workspaces_budget(env):
    """alice may not write ws-victim; her refused calls must not use up ws-victim's request
    budget (else any principal can lock any other workspace out)."""

    async def go():
        async with mcp_client(env.url, env.tokens["alice"]) as alice:
            n = await _flood(alice, "capture-memory",
                             {"content": "flood", "workspaceId": WS_VICTIM},
                             REQUESTS_PER_HOUR + 60)
        async with mcp_client(env.url, env.tokens["carol"]) as carol:
            return n, await carol.raw("capture-memory",
                                      {"content": "carol's own note", "workspaceId": WS_VICTIM})

    n, (is_error, body) = run(go())
    assert not is_error, (f"after {n} FORBIDDEN calls by alice naming ws-victim, carol (its "
                          f"owner) is refused: {body}")


def test_zz_one_principal_cannot_exhaust_everyones_unscoped_budget(env):
    """Tools called without a workspace (get-memory, retrieve-memories, ...) must not share one
    global budget across principals: alice hammering get-memory must not lock bob out."""

    async def go():
        async with mcp_client(env.url, env.tokens["alice"]) as alice:
            n = await _flood(alice, "get-memory", {"id": new_id()}, REQUESTS_PER_HOUR + 60)
        async with mcp_client(env.url, env.tokens["bob"]) as bob:
            return n, await bob.raw("retrieve-memories",
                                    {"query": "billing", "filters": {"workspaceId": WS_B}})

    n, (is_error, body) = run(go())
    assert not is_error, f"after {n} calls by alice, bob's retrieve is refused: {body}"

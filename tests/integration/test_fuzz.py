"""Fuzzing the running server: hypothesis-generated malformed tool calls, derived from the tools'
JSON input schemas (list_tools), through one real MCP session; then raw HTTP garbage.

Properties:
- no call ever ends in a transport error, an HTTP 500 or a crash: every error is a tool result
  with a `code` from the contract's list;
- every call built to be invalid (missing required field, unknown field, wrong JSON type, value
  out of range, garbage id, bad filter, NUL bytes, oversized string, bad batch item) answers
  INVALID_INPUT, and stores nothing: afterwards memory-stats shows no record in any `fuzz-`
  workspace (every generated workspaceId starts with that prefix);
- random filters are judged exactly as memoray.filters.parse_filter judges them locally;
- raw HTTP garbage to /mcp (non-JSON, wrong content type, a 70 MB body, deep nesting, lone
  surrogates) gets a 4xx (or a JSON-RPC error), never a 5xx, and the server stays healthy.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import json
import re
import threading
import time
from typing import Any

import httpx
import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from memoray.errors import MemorayError
from memoray.filters import parse_filter
from memoray.ids import is_valid_id, new_id
from memoray.models import MAX_CONTENT_BYTES, MAX_QUERY_CHARS
from tests.server_process import ServerProcess, mcp_client

CONTRACT_CODES = {"INVALID_INPUT", "UNAUTHORIZED", "FORBIDDEN", "NOT_FOUND", "RATE_LIMIT_EXCEEDED",
                  "STORAGE_FULL", "EMBEDDING_FAILED", "QUERY_TIMEOUT", "UNAVAILABLE"}
PREFIX = "fuzz-"
STATS: dict[str, Any] = {"calls": 0, "seconds": 0.0, "by_test": {}}
HEADERS = {"Accept": "application/json, text/event-stream", "MCP-Protocol-Version": "2025-06-18",
           "Content-Type": "application/json"}
# derandomize and database come from tests/conftest.py's profile (fixed examples unless
# MEMORAY_HYPOTHESIS_RANDOM=1).
HYP = dict(deadline=None,
           suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large,
                                  HealthCheck.filter_too_much,
                                  HealthCheck.function_scoped_fixture])


class Session:
    """One MCP session held open on a background event loop; call() from any thread."""

    def __init__(self, url: str):
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()
        self._ready: concurrent.futures.Future = concurrent.futures.Future()
        self._stop: asyncio.Event | None = None
        self.tools: dict[str, dict] = {}
        self._holder = asyncio.run_coroutine_threadsafe(self._hold(url), self.loop)
        self._ready.result(60)

    async def _hold(self, url: str) -> None:
        self._stop = asyncio.Event()
        try:
            async with mcp_client(url) as c:
                self.client = c
                listed = await c.session.list_tools()
                self.tools = {t.name: t.input_schema for t in listed.tools}
                self._ready.set_result(None)
                await self._stop.wait()
        except BaseException as exc:
            if not self._ready.done():
                self._ready.set_exception(exc)
            raise

    def call(self, tool: str, args: Any, timeout: float = 120) -> tuple[bool, dict]:
        t0 = time.perf_counter()
        try:
            return asyncio.run_coroutine_threadsafe(self.client.raw(tool, args),
                                                    self.loop).result(timeout)
        finally:
            STATS["calls"] += 1
            STATS["seconds"] += time.perf_counter() - t0

    def close(self) -> None:
        if self._stop is not None:
            self.loop.call_soon_threadsafe(self._stop.set)
        try:
            self._holder.result(30)
        except Exception:
            pass
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    srv = ServerProcess(tmp_path_factory.mktemp("fuzz") / "data", embedder="hash", shards=2, env={
        # Limits high enough that a few thousand calls are never refused for rate.
        "MEMORAY_RATE_LIMIT_REQUESTS_PER_HOUR": "10000000",
        "MEMORAY_RATE_LIMIT_CAPTURES_PER_MINUTE": "10000000",
        "MEMORAY_RATE_LIMIT_BULK_ITEMS_PER_MINUTE": "10000000",
    }).start()
    yield srv
    srv.stop()


@pytest.fixture(scope="module")
def session(server):
    s = Session(server.mcp_url)
    baseline = s.call("memory-stats", {})[1]
    s.baseline_total = baseline["total"]  # type: ignore[attr-defined]
    yield s
    s.close()


def _check(result: tuple[bool, dict], want: str | None, what: Any) -> dict:
    is_error, body = result
    if is_error:
        assert isinstance(body, dict) and body.get("code") in CONTRACT_CODES, (what, body)
        assert set(body) <= {"code", "message", "retryAfter"}, body
        assert "Traceback" not in body.get("message", ""), body
        assert body["code"] != "UNAVAILABLE", f"internal error for {what!r}: {body}"
    if want is not None:
        assert is_error and body.get("code") == want, (
            f"expected {want} for {json.dumps(what, default=repr)[:600]}, got {body}")
    return body


# -- strategies ----------------------------------------------------------------------------------

def _types(schema: dict) -> tuple[set[str], list | None, bool]:
    """(JSON types accepted, enum or None, nullable) of one property schema."""
    types, enum, nullable = set(), None, False
    for s in schema.get("anyOf", [schema]):
        t = s.get("type")
        if t == "null":
            nullable = True
        elif t:
            types.add(t)
        if "enum" in s:
            enum = s["enum"]
    return types, enum, nullable


ws_ids = st.text(alphabet="abcdefghijklmnopqrstuvwxyz0123456789-_", max_size=12).map(
    lambda s: PREFIX + s)
short_text = st.text(max_size=40)
not_json = st.text(max_size=30).map(lambda s: "x" + s)  # never parses as JSON (MCP pre-parses)
finite = st.floats(allow_nan=False, allow_infinity=False)
json_leaf = st.one_of(st.none(), st.booleans(), st.integers(-2**40, 2**40), finite, short_text)
json_any = st.recursive(json_leaf, lambda kids: st.one_of(
    st.lists(kids, max_size=4), st.dictionaries(short_text, kids, max_size=4)), max_leaves=12)
small_dict = st.dictionaries(short_text, json_leaf, max_size=3)
small_list = st.lists(json_leaf, max_size=3)

# Values that JSON-typed validation (pydantic, lax) can never coerce into the named type. Bools
# coerce to numbers and 0/1 to bools, NaN/inf serialize as null: none of those are used.
WRONG = {
    "string": st.one_of(st.integers(), finite, st.booleans(), small_list, small_dict),
    "integer": st.one_of(not_json, finite.filter(lambda f: not f.is_integer()), small_list,
                         small_dict),
    "number": st.one_of(not_json, small_list, small_dict),
    "boolean": st.one_of(not_json, st.integers().filter(lambda i: i not in (0, 1)),
                         finite.filter(lambda f: f not in (0.0, 1.0)), small_list, small_dict),
    "object": st.one_of(st.integers(), finite, st.booleans(), not_json, small_list),
    "array": st.one_of(st.integers(), finite, st.booleans(), not_json, small_dict),
}


def _valid_value(name: str, schema: dict):
    """A value of the right JSON type (not necessarily a valid one)."""
    types, enum, nullable = _types(schema)
    if enum:
        return st.sampled_from(enum)
    if name in ("workspaceId",):
        return ws_ids
    if "string" in types:
        return short_text
    if "integer" in types:
        return st.integers(-5, 200)
    if "number" in types:
        return finite
    if "boolean" in types:
        return st.booleans()
    if "object" in types:
        return st.just({})
    if "array" in types:
        return st.just([])
    return st.none()


def _wrong_value(schema: dict):
    """A value of a JSON type the property does not accept (or, for an enum, a string outside
    it)."""
    types, enum, _ = _types(schema)
    pool = st.one_of(st.integers(), finite, st.booleans(), not_json, small_list, small_dict)
    wrong = pool.filter(lambda v: all(_not_coercible(v, t) for t in types))
    if enum:
        wrong = st.one_of(wrong, short_text.filter(
            lambda v: v not in enum and v.strip().strip('"') not in enum))
    return wrong


def _not_coercible(v: Any, t: str) -> bool:
    if t == "string":
        return not isinstance(v, str)
    if t == "integer":
        if isinstance(v, bool) or isinstance(v, int):
            return False
        if isinstance(v, float):
            return not v.is_integer()
        return not isinstance(v, str) or v.startswith("x")
    if t == "number":
        if isinstance(v, (bool, int, float)):
            return False
        return not isinstance(v, str) or v.startswith("x")
    if t == "boolean":
        if isinstance(v, bool):
            return False
        if isinstance(v, (int, float)):
            return v not in (0, 1)
        return not isinstance(v, str) or v.startswith("x")
    if t == "object":
        return not isinstance(v, dict)
    if t == "array":
        return not isinstance(v, list)
    return True


# Items of capture-memories / upsert-memory
def _valid_item():
    return st.fixed_dictionaries(
        {"content": st.text(min_size=1, max_size=60).filter(
            lambda s: s.strip() and "\x00" not in s).map(lambda s: "fz " + s),
         "workspaceId": ws_ids},
        optional={"eventType": st.sampled_from(["note", "decision", "code_change"]),
                  "sessionId": st.text(max_size=10), "tier": st.sampled_from(["session",
                                                                              "project"])})


BAD_ITEM_PATCHES = [
    ("missing content", lambda it: {k: v for k, v in it.items() if k != "content"}),
    ("empty content", lambda it: {**it, "content": "   "}),
    ("NUL content", lambda it: {**it, "content": it["content"] + "\x00"}),
    ("content not str", lambda it: {**it, "content": 12345}),
    ("unknown key", lambda it: {**it, "notAField": 1}),
    ("snake_case key and camel", lambda it: {**it, "workspace_id": it["workspaceId"],
                                             "bogus": True}),
    ("bad eventType", lambda it: {**it, "eventType": "Not A Slug!"}),
    ("long eventType", lambda it: {**it, "eventType": "a" * 65}),
    ("empty workspace", lambda it: {**it, "workspaceId": ""}),
    ("long workspace", lambda it: {**it, "workspaceId": PREFIX + "w" * 300}),
    ("long session", lambda it: {**it, "sessionId": "s" * 257}),
    ("long commit", lambda it: {**it, "gitCommit": "c" * 65}),
    ("ttl zero", lambda it: {**it, "ttlSeconds": 0}),
    ("ttl negative", lambda it: {**it, "ttlSeconds": -5}),
    ("ttl huge", lambda it: {**it, "ttlSeconds": 10**12}),
    ("bad tier", lambda it: {**it, "tier": "forever"}),
    ("bad visibility", lambda it: {**it, "visibility": "public"}),
    ("metadata list", lambda it: {**it, "metadata": [1, 2]}),
    ("metadata too big", lambda it: {**it, "metadata": {"k": "v" * (65 * 1024)}}),
    ("not an object", lambda it: "just a string"),
    ("bad timestamp", lambda it: {**it, "timestamp": "not-a-date"}),
    ("private without agent", lambda it: {**it, "visibility": "private"}),
]


@st.composite
def bad_items(draw) -> list:
    before = draw(st.lists(_valid_item(), max_size=3))
    after = draw(st.lists(_valid_item(), max_size=2))
    # the refusals that only the service sees (after model validation) weigh more
    _, patch = draw(st.sampled_from(BAD_ITEM_PATCHES + BAD_ITEM_PATCHES[-2:] * 4))
    return [*before, patch(draw(_valid_item())), *after]


# Filters that memoray.filters.parse_filter refuses (checked locally in the test)
FIELDS = ["eventType", "workspaceId", "sessionId", "agentId", "gitBranch", "tier", "timestamp",
          "metadata.a", "metadata.a.b", "startTime", "endTime", "id", "visibility",
          "event_type", "nosuchfield", "metadata.", "metadata..x", "$where", ""]
OPS = ["$eq", "$ne", "$in", "$nin", "$gt", "$gte", "$lt", "$lte", "$exists", "$not", "$and",
       "$or", "$regex", "$bogus"]


def _nest(depth: int) -> dict:
    node: dict = {"eventType": "note"}
    for i in range(depth):
        node = {"$not": node} if i % 2 else {"$and": [node]}
    return node


random_filters = st.recursive(
    st.dictionaries(st.sampled_from(FIELDS), st.one_of(json_leaf, st.dictionaries(
        st.sampled_from(OPS), json_any, max_size=2)), max_size=3),
    lambda kids: st.one_of(
        st.fixed_dictionaries({"$and": st.lists(kids, max_size=3)}),
        st.fixed_dictionaries({"$or": st.lists(kids, max_size=3)}),
        st.fixed_dictionaries({"$not": kids}),
        st.dictionaries(st.sampled_from(FIELDS), kids, max_size=2)),
    max_leaves=20)

invalid_filters = st.one_of(
    random_filters,
    st.integers(9, 60).map(_nest),  # deeper than MAX_DEPTH
    st.integers(65, 200).map(lambda n: {"$and": [{"eventType": f"e{i}"} for i in range(n)]}),
    st.integers(257, 400).map(lambda n: {"workspaceId": {"$in": [f"w{i}" for i in range(n)]}}),
    st.builds(lambda k: {"metadata." + "x" * 1100 + k: 1}, short_text),
    st.builds(lambda v: {"timestamp": {"$gt": "x" + v}}, short_text),
    st.builds(lambda v: {"eventType": {"$in": v}}, st.one_of(st.integers(), short_text)),
).filter(lambda f: _locally_invalid(f))


def _locally_invalid(f: Any) -> bool:
    try:
        parse_filter(f)
    except MemorayError as e:
        return e.code.value == "INVALID_INPUT"
    return False


garbage_ids = st.one_of(
    st.text(max_size=40), st.text(min_size=27, max_size=3000),
    st.text(alphabet="0123456789ABCDEFGHJKMNPQRSTVWXYZ", min_size=25, max_size=25),
    st.text(alphabet="ILOU!", min_size=26, max_size=26),
    st.just("../../../etc/passwd"), st.just("0" * 25 + "\x00"),
).filter(lambda s: not is_valid_id(s))

# Per-tool values that have the right JSON type but are out of range or malformed.
BAD_VALUES: dict[str, list] = {
    "capture-memory": [
        ("content", st.sampled_from(["", "   ", "\n\t", "a\x00b", "\x00"])),
        ("content", st.integers(MAX_CONTENT_BYTES // 4 + 1, MAX_CONTENT_BYTES // 4 + 10).map(
            lambda n: "\U0001F600" * n)),  # 4-byte characters: just over 1 MiB in UTF-8
        ("eventType", st.sampled_from(["", "Decision", "1abc", "a b", "x" * 65, "é"])),
        ("workspaceId", st.sampled_from(["", PREFIX + "w" * 300])),
        ("sessionId", st.integers(257, 3000).map(lambda n: "s" * n)),
        ("agentId", st.integers(257, 3000).map(lambda n: "a" * n)),
        ("gitBranch", st.integers(257, 3000).map(lambda n: "b" * n)),
        ("gitCommit", st.integers(65, 500).map(lambda n: "c" * n)),
        ("idempotencyKey", st.integers(257, 3000).map(lambda n: "k" * n)),
        ("ttlSeconds", st.one_of(st.integers(max_value=0), st.integers(min_value=10**10))),
        ("timestamp", st.sampled_from(["yesterday", "2024-13-45", "x", "12:00", ""])),
        ("metadata", st.integers(65 * 1024, 70 * 1024).map(lambda n: {"big": "m" * n})),
    ],
    "capture-memories": [("items", st.just([])), ("items", bad_items()),
                         ("items", st.lists(st.integers(), min_size=1, max_size=3))],
    "upsert-memory": [("items", st.just([])), ("items", bad_items()), ("items", bad_items()),
                      ("similarityThreshold", st.one_of(
                          st.floats(max_value=-5e-324, allow_infinity=False),
                          st.floats(min_value=1.0000000000000002, allow_infinity=False)))],
    "retrieve-memories": [
        ("query", st.sampled_from(["", "  ", "a\x00b"])),
        ("query", st.integers(MAX_QUERY_CHARS + 1, MAX_QUERY_CHARS + 5000).map(
            lambda n: "q" * n)),
        ("limit", st.one_of(st.integers(max_value=0), st.integers(min_value=101),
                            st.just(10**30))),
        # Explicit bounds, not `.filter(lambda f: f < 0)`: Hypothesis rewrites that filter to
        # max_value=next_down(0.0), which is -0.0, a valid weight (-0.0 >= 0).
        ("recencyWeight", st.one_of(st.floats(max_value=-5e-324, allow_infinity=False),
                                    st.floats(min_value=1.0000000000000002,
                                              allow_infinity=False))),
        ("filters", invalid_filters),
    ],
    "build-context": [
        ("query", st.sampled_from(["a\x00b"])),
        ("query", st.integers(MAX_QUERY_CHARS + 1, MAX_QUERY_CHARS + 100).map(
            lambda n: "q" * n)),
        ("limit", st.one_of(st.integers(max_value=0), st.integers(min_value=101))),
        ("tokenBudget", st.one_of(st.integers(max_value=0), st.integers(min_value=100_001))),
        ("filters", invalid_filters),
    ],
    "explain-query": [
        ("limit", st.one_of(st.integers(max_value=0), st.integers(min_value=101))),
        ("filters", invalid_filters),
    ],
    "audit-log": [("limit", st.one_of(st.integers(max_value=0), st.integers(min_value=1001)))],
    "get-memory": [("id", garbage_ids)],
    "delete-memory": [("id", garbage_ids)],
    "get-document": [("id", garbage_ids)],
    "share-memory": [("id", garbage_ids)],
}


def _base_args(draw, tool: str, schema: dict, skip: str | None = None) -> dict:
    """Required fields (valid type), plus a random subset of the others."""
    props = schema.get("properties", {})
    required = set(schema.get("required", []))
    args: dict = {}
    for name, sub in props.items():
        if name == skip:
            continue
        if name == "filters":
            continue
        if name in required or draw(st.booleans()):
            if name == "content":
                args[name] = "fz " + draw(st.text(max_size=30).filter(lambda s: "\x00" not in s))
            elif name == "query":
                args[name] = "fz " + draw(st.text(max_size=30).filter(lambda s: "\x00" not in s))
            elif name == "id":
                args[name] = new_id()
            elif name == "items":
                args[name] = draw(st.lists(_valid_item(), min_size=1, max_size=2))
            elif name == "limit":
                args[name] = draw(st.integers(1, 100))
            elif name in ("tokenBudget",):
                args[name] = draw(st.integers(1, 5000))
            elif name in ("recencyWeight",):
                args[name] = draw(st.floats(0, 1))
            elif name in ("similarityThreshold",):
                args[name] = draw(st.floats(0.01, 1))
            elif name in ("ttlSeconds",):
                args[name] = draw(st.integers(1, 10**6))
            elif name in ("eventType",):
                args[name] = draw(st.sampled_from(["note", "decision"]))
            elif name in ("timestamp",):
                args[name] = "2024-01-02T03:04:05Z"
            elif name in ("metadata",):
                args[name] = draw(small_dict)
            else:
                args[name] = draw(_valid_value(name, sub))
    return args


@st.composite
def invalid_call(draw, tools: dict[str, dict]) -> tuple[str, dict, str]:
    tool = draw(st.sampled_from(sorted(tools)))
    schema = tools[tool]
    props = schema.get("properties", {})
    required = schema.get("required", [])
    kinds = ["extra_field"]
    if required:
        kinds.append("missing_required")
    if props:
        kinds.append("wrong_type")
    if tool in BAD_VALUES:
        kinds += ["bad_value", "bad_value"]
    kind = draw(st.sampled_from(kinds))
    if kind == "extra_field":
        args = _base_args(draw, tool, schema)
        key = draw(st.text(min_size=1, max_size=24).filter(lambda k: k not in props))
        args[key] = draw(json_any)
    elif kind == "missing_required":
        missing = draw(st.sampled_from(required))
        args = _base_args(draw, tool, schema, skip=missing)
    elif kind == "wrong_type":
        name = draw(st.sampled_from(sorted(props)))
        args = _base_args(draw, tool, schema, skip=name)
        args[name] = draw(_wrong_value(props[name]))
        kind = f"wrong_type:{name}"
    else:
        name, strategy = draw(st.sampled_from(BAD_VALUES[tool]))
        args = _base_args(draw, tool, schema, skip=name)
        args[name] = draw(strategy)
        kind = f"bad_value:{name}"
    return tool, args, kind


# -- the fuzz tests ------------------------------------------------------------------------------

INVALID_EXAMPLES = 2000


def test_fuzz_invalid_calls_all_answer_invalid_input(session):
    tools = {k: v for k, v in session.tools.items()}
    assert {"capture-memory", "retrieve-memories", "upsert-memory", "get-memory"} <= set(tools)
    seen: dict[str, int] = {}
    t0 = time.time()

    @settings(max_examples=INVALID_EXAMPLES, **HYP)
    @given(call=invalid_call(tools))
    def fuzz(call):
        tool, args, kind = call
        seen[tool] = seen.get(tool, 0) + 1
        _check(session.call(tool, args), "INVALID_INPUT", (tool, kind, args))

    fuzz()
    STATS["by_test"]["invalid"] = (sum(seen.values()), round(time.time() - t0, 1))
    assert len(seen) == len(tools), f"tools never fuzzed: {set(tools) - set(seen)}"


def _local_verdict(f: Any) -> str | None:
    """What the server should answer for `filters: f`: None (valid) or an error code. Like the
    MCP layer, a string argument for a non-string parameter is first tried as JSON."""
    if isinstance(f, str):
        try:
            parsed = json.loads(f)
        except ValueError:
            parsed = f
        if not isinstance(parsed, str):
            f = parsed
    if f is None:
        return None
    if not isinstance(f, dict):
        return "INVALID_INPUT"
    try:
        parse_filter(f)
    except MemorayError as e:
        return e.code.value
    except Exception as e:  # noqa: BLE001 - a parser crash is itself a finding
        raise AssertionError(f"parse_filter crashed on {f!r}: {e!r}") from e
    return None


def test_fuzz_random_filters_judged_like_the_parser(session):
    """Random (mostly malformed) filters on the read tools: the server agrees with the local
    parser: INVALID_INPUT exactly when parse_filter refuses, otherwise an answer."""
    t0 = time.time()
    n = [0]

    @settings(max_examples=400, **HYP)
    @given(f=st.one_of(random_filters, json_any),
           tool=st.sampled_from(["retrieve-memories", "explain-query", "build-context"]))
    def fuzz(f, tool):
        n[0] += 1
        local = _local_verdict(f)
        args = {"filters": f, "limit": 5}
        if tool != "explain-query":
            args["query"] = "fuzz filters"
        body = _check(session.call(tool, args), local, (tool, f))
        if local is None:
            assert not body.get("code"), (f, body)

    fuzz()
    STATS["by_test"]["filters"] = (n[0], round(time.time() - t0, 1))


def test_fuzz_random_json_arguments(session):
    """Arbitrary JSON objects as arguments, with at least one unknown key: INVALID_INPUT."""
    tools = session.tools
    t0 = time.time()
    n = [0]

    @settings(max_examples=300, **HYP)
    @given(tool=st.sampled_from(sorted(tools)),
           args=st.dictionaries(st.text(max_size=12), json_any, min_size=1, max_size=5))
    def fuzz(tool, args):
        props = tools[tool].get("properties", {})
        assume(any(k not in props for k in args))
        n[0] += 1
        _check(session.call(tool, args), "INVALID_INPUT", (tool, args))

    fuzz()
    STATS["by_test"]["random_json"] = (n[0], round(time.time() - t0, 1))


# -- pinned edge cases through the same session --------------------------------------------------


def test_oversized_and_deep_inputs(session):
    cases = [
        ("capture-memory", {"content": "a" * (MAX_CONTENT_BYTES + 1), "workspaceId": PREFIX + "big"}),
        ("capture-memory", {"content": "ok", "workspaceId": PREFIX + "big",
                            "metadata": {"m": "x" * (64 * 1024 + 1)}}),
        ("capture-memories", {"items": [{"content": f"i{i}", "workspaceId": PREFIX + "many"}
                                        for i in range(1001)]}),
        ("upsert-memory", {"items": [{"content": f"u{i}", "workspaceId": PREFIX + "many"}
                                     for i in range(1001)]}),
        ("retrieve-memories", {"query": "q" * (MAX_QUERY_CHARS + 1)}),
        ("retrieve-memories", {"query": "x", "limit": 10**30}),
        ("retrieve-memories", {"query": "x", "limit": -(10**30)}),
        ("retrieve-memories", {"query": "x", "filters": _nest(9)}),
        ("retrieve-memories", {"query": "x", "filters": _nest(60)}),
        ("explain-query", {"filters": {"$or": [{"eventType": f"e{i}"} for i in range(257)]}}),
        ("build-context", {"tokenBudget": 10**9}),
        ("audit-log", {"limit": 10**6}),
        ("get-memory", {"id": "Z" * 100_000}),
        ("get-document", {"id": "0" * 25 + "\u00e9"}),
        ("delete-memory", {"id": ""}),
        ("capture-memory", {"content": "fine", "workspaceId": PREFIX + "x",
                            "metadata": {"deep": _nest(60)}, "bogusField": 1}),
    ]
    for tool, args in cases:
        _check(session.call(tool, args), "INVALID_INPUT", (tool, str(args)[:200]))
    # a valid-format id that exists nowhere: NOT_FOUND, the same for every id tool
    ghost = new_id()
    for tool in ("get-memory", "delete-memory", "get-document", "share-memory"):
        _check(session.call(tool, {"id": ghost}), "NOT_FOUND", (tool, ghost))


def test_nul_bytes_in_identifier_fields_are_refused(session):
    """NUL bytes are refused in content and query; they must be in every identifier too:
    workspaceId\\x00idempotencyKey is the shard's idempotency index key (see next test)."""
    accepted = []
    for field in ("workspaceId", "sessionId", "agentId", "gitBranch", "gitCommit",
                  "idempotencyKey"):
        args = {"content": f"nul in {field}", "workspaceId": "probe-nul"}
        args[field] = (args.get(field) or "x") + "\x00y"
        is_error, body = session.call("capture-memory", args)
        if not is_error or body.get("code") != "INVALID_INPUT":
            accepted.append(field)
    assert not accepted, f"NUL bytes accepted in {accepted}"


def test_idempotency_keys_do_not_collide_across_workspaces(session):
    """Workspace 'probe-team' with key 'x\\x00k' and workspace 'probe-team\\x00x' with key 'k'
    map to the same LMDB idempotency key: the second capture is silently dropped and answered
    with the id of a memory in the other workspace."""
    first = _check(session.call("capture-memory", {
        "content": "the other workspace's memory", "workspaceId": "probe-team\x00x",
        "idempotencyKey": "k"}), None, "first")
    second = session.call("capture-memory", {
        "content": "a different memory in another workspace", "workspaceId": "probe-team",
        "idempotencyKey": "x\x00k"})
    if second[0]:  # refusing NUL in workspaceId/idempotencyKey is a fix too
        assert second[1]["code"] == "INVALID_INPUT"
        return
    assert first.get("id") != second[1]["id"] and not second[1]["deduplicated"], (
        f"capture in probe-team answered with probe-team\\x00x's memory: {first} / {second[1]}")


def test_upsert_with_an_invalid_later_item_stores_nothing(session):
    """'Bad input changes nothing': an upsert batch whose second item is refused (bad timestamp,
    private without agentId) must not have stored the first."""
    for n, bad in enumerate([{"timestamp": "not-a-date"}, {"visibility": "private"}]):
        ws = f"probe-upsert-{n}"
        body = _check(session.call("upsert-memory", {"items": [
            {"content": f"a valid first item {n}", "workspaceId": ws},
            {"content": f"the invalid second item {n}", "workspaceId": ws, **bad}]}),
            "INVALID_INPUT", bad)
        stats = session.call("memory-stats", {"workspaceId": ws})[1]
        assert stats["total"] == 0, f"{body['message']!r} yet {stats['total']} record(s) stored"


def test_upsert_validates_an_item_that_duplicates_a_stored_memory(session):
    """An exact duplicate is answered 'unchanged' without being stored; it must still be
    validated first: a malformed item is INVALID_INPUT whatever is already stored."""
    ws = "probe-upsert-dup"
    text = "an existing memory that the upsert duplicates"
    _check(session.call("capture-memory", {"content": text, "workspaceId": ws}), None, "seed")
    for bad in ({"timestamp": "not-a-date"}, {"visibility": "private"}):
        _check(session.call("upsert-memory", {"items": [{"content": text, "workspaceId": ws,
                                                         **bad}]}), "INVALID_INPUT", bad)


# -- raw HTTP ------------------------------------------------------------------------------------


def _post(url: str, body: bytes, headers: dict | None = None, timeout: float = 60) -> httpx.Response:
    return httpx.post(url, content=body, headers=headers if headers is not None else HEADERS,
                      timeout=timeout)


def _rpc(tool: str, args_json: str) -> bytes:
    head = json.dumps({"jsonrpc": "2.0", "id": 7, "method": "tools/call"})[:-1]
    return f'{head},"params":{{"name":{json.dumps(tool)},"arguments":{args_json}}}}}'.encode()


def test_raw_http_garbage_gets_4xx_never_5xx(server):
    url = server.mcp_url
    big = 70 * 1024 * 1024
    cases: list[tuple[str, bytes, dict | None]] = [
        ("non-JSON", b"\x00\xff\xfe this is not json", None),
        ("empty body", b"", None),
        ("truncated JSON", b'{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{', None),
        ("JSON array of numbers", b"[1,2,3]", None),
        ("JSON string", b'"hello"', None),
        ("wrong content type", b'{"jsonrpc":"2.0","id":1,"method":"tools/list"}',
         {**HEADERS, "Content-Type": "text/plain"}),
        ("form content type", b"a=1&b=2",
         {**HEADERS, "Content-Type": "application/x-www-form-urlencoded"}),
        ("unknown protocol version", b'{"jsonrpc":"2.0","id":1,"method":"tools/list"}',
         {**HEADERS, "MCP-Protocol-Version": "1999-01-01"}),
        ("not UTF-8", b'{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"x\xc3"}}',
         None),
        ("arguments a string", _rpc("retrieve-memories", '"str"'), None),
        ("arguments a list", _rpc("retrieve-memories", "[1,2]"), None),
        ("unknown method", b'{"jsonrpc":"2.0","id":1,"method":"no/such","params":{}}', None),
        ("lone surrogate in content", _rpc("capture-memory",
                                           '{"content":"a\\ud800b","workspaceId":"fuzz-s"}'),
         None),
        ("lone low surrogate in query", _rpc("retrieve-memories", '{"query":"\\udfff"}'), None),
        ("surrogate in workspaceId", _rpc("capture-memory",
                                          '{"content":"ok","workspaceId":"fuzz-\\udc80"}'), None),
        ("deep JSON nesting", b'{"a":' * 5000 + b"1" + b"}" * 5000, None),
        ("deep filter nesting", _rpc("retrieve-memories", '{"query":"x","filters":'
                                     + '{"$not":' * 3000 + '{"eventType":"a"}' + "}" * 3000 + "}"),
         None),
        ("huge number", _rpc("retrieve-memories", '{"query":"x","limit":' + "9" * 5000 + "}"),
         None),
        ("NaN", _rpc("retrieve-memories", '{"query":"x","recencyWeight":NaN}'), None),
        ("70 MB of JSON", b'{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":'
                          b'"capture-memory","arguments":{"content":"' + b"a" * big + b'"}}}',
         None),
        ("70 MB of garbage", b"x" * big, None),
    ]
    failures = []
    for label, body, headers in cases:
        try:
            r = _post(url, body, headers)
        except httpx.HTTPError as exc:
            failures.append(f"{label}: transport error {exc!r}")
            continue
        if r.status_code >= 500:
            failures.append(f"{label}: HTTP {r.status_code} {r.text[:200]}")
            continue
        if r.status_code == 200:  # a JSON-RPC answer: an error, or a tool error result
            doc = r.json()
            if "result" in doc:
                res = doc["result"]
                if not res.get("isError"):
                    failures.append(f"{label}: accepted: {str(res)[:200]}")
                elif res["structuredContent"].get("code") not in CONTRACT_CODES:
                    failures.append(f"{label}: bad tool error {res}")
            elif "error" not in doc:
                failures.append(f"{label}: neither result nor error: {doc}")
        elif not 400 <= r.status_code < 500:
            failures.append(f"{label}: HTTP {r.status_code}")
    for method in ("PUT", "DELETE", "PATCH"):
        r = httpx.request(method, url, headers=HEADERS, timeout=30)
        if r.status_code >= 500:
            failures.append(f"{method}: HTTP {r.status_code}")
    assert not failures, "\n".join(failures)
    assert httpx.get(server.url + "/healthz", timeout=30).status_code == 200
    r = _post(url, _rpc("health-check", "{}"))
    assert r.status_code == 200 and not r.json()["result"].get("isError"), r.text[:300]


def test_zz_nothing_stored_and_server_healthy(server, session):
    """After everything above: no record in any fuzz- workspace, and the server is healthy."""
    is_error, stats = session.call("memory-stats", {})
    assert not is_error, stats
    fuzzed = {ws: n for ws, n in stats["workspaces"].items() if ws.startswith(PREFIX)}
    detail = ""
    if fuzzed:
        is_error, res = session.call("retrieve-memories", {
            "query": "fz", "limit": 20, "mode": "lexical",
            "filters": {"workspaceId": {"$in": sorted(fuzzed)[:200]}}})
        detail = "; ".join(repr(m["content"][:60]) for m in res.get("memories", []))
    assert not fuzzed, f"records stored by invalid calls: {fuzzed} ({detail})"
    assert httpx.get(server.url + "/healthz", timeout=30).status_code == 200
    log = server.tail(5_000_000)
    crashes = [line for line in log.splitlines() if re.search(r"tool [\w-]+ failed", line)]
    assert not crashes, "\n".join(crashes[:20])
    print(f"\nfuzz: {STATS['calls']} MCP calls in {STATS['seconds']:.1f}s; per test: "
          f"{STATS['by_test']}")


STREAMS = 260  # just over the replica's max_ongoing_requests (256)


def test_zzz_idle_get_streams_do_not_starve_the_server(server):
    """MCP is served stateless with JSON responses, yet GET /mcp opens a server-sent-event stream
    that never ends, without authentication. Each holds one of the replica's
    max_ongoing_requests (256): a few hundred idle GETs must not lock every client out. Runs
    last: it wedges the server while it fails."""

    async def go():
        stop = asyncio.Event()
        opened: list[int] = []

        async def hold(client):
            try:
                async with client.stream("GET", server.mcp_url, headers=HEADERS,
                                         timeout=httpx.Timeout(10, read=None)) as r:
                    opened.append(r.status_code)
                    if r.status_code == 200:
                        await stop.wait()
            except httpx.HTTPError:
                opened.append(-1)

        limits = httpx.Limits(max_connections=400, max_keepalive_connections=0)
        async with httpx.AsyncClient(limits=limits) as hc:
            tasks = [asyncio.create_task(hold(hc)) for _ in range(STREAMS)]
            t0 = time.time()
            while len(opened) < STREAMS - 4 and time.time() - t0 < 15:
                await asyncio.sleep(0.2)
            t_open = time.time() - t0
            try:
                async with httpx.AsyncClient() as probe:
                    r = await probe.post(server.mcp_url, headers=HEADERS,
                                         content=_rpc("health-check", "{}"), timeout=8)
                    outcome = (r.status_code, r.text[:100])
            except httpx.HTTPError as exc:
                outcome = (None, repr(exc))
            stop.set()
            await asyncio.wait(tasks, timeout=10)
        # once the streams are gone, the server must answer again
        t1, recovered = time.time(), None
        async with httpx.AsyncClient() as probe:
            while time.time() - t1 < 10:
                try:
                    r = await probe.post(server.mcp_url, headers=HEADERS,
                                         content=_rpc("health-check", "{}"), timeout=3)
                    if r.status_code == 200:
                        recovered = round(time.time() - t1, 1)
                        break
                except httpx.HTTPError:
                    pass
        return sum(1 for s in opened if s == 200), round(t_open, 1), outcome, recovered

    streams, t_open, outcome, recovered = asyncio.run(go())
    assert outcome[0] == 200, (
        f"with {streams} idle GET /mcp streams open (opened in {t_open}s), a tool call got "
        f"{outcome}; after they closed the server answered again "
        + (f"in {recovered}s" if recovered is not None else "not within 10 s"))

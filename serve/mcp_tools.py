"""The MCP surface: tools as typed functions (camelCase parameters are the wire contract).

MemorayMCP turns every failure into the contract's tool error, a JSON object
{code, message, retryAfter?}: argument validation -> INVALID_INPUT naming the field, unknown
arguments -> INVALID_INPUT, MemorayError -> its code, anything unexpected -> UNAVAILABLE with
nothing internal leaked.
"""

from __future__ import annotations

import json
import logging
import time
import uuid
from collections.abc import Awaitable, Callable
from typing import Annotated, Any, Literal

from mcp.server.mcpserver import Context, MCPServer
from mcp.server.mcpserver.exceptions import ToolError
from mcp_types import CallToolResult, TextContent
from pydantic import Field, ValidationError, WithJsonSchema

from memoray.auth import authenticate
from memoray.errors import ErrorCode, MemorayError, invalid
from memoray.logs import request_var
from memoray.models import EVENT_TYPES, MAX_BATCH, MAX_LIMIT, CaptureItem
from memoray.serve.observability import span

log = logging.getLogger(__name__)



def error_result(err: MemorayError) -> CallToolResult:
    body = err.to_dict()
    return CallToolResult(content=[TextContent(type="text", text=json.dumps(body))],
                          structured_content=body, is_error=True)


def _loc(parts: tuple) -> str:
    """("items", 1, "content") -> "items[1].content"."""
    out = ""
    for p in parts:
        out += f"[{p}]" if isinstance(p, int) else (f".{p}" if out else str(p))
    return out


def _validation_message(exc: ValidationError, prefix: str = "") -> str:
    parts = []
    for e in exc.errors()[:5]:
        loc = _loc(tuple(e["loc"])) or "arguments"
        msg = e["msg"].removeprefix("Value error, ")
        parts.append(f"{prefix}{loc}: {msg}")
    return "; ".join(parts)


def _drop_nulls(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _drop_nulls(v) for k, v in value.items() if v is not None}
    if isinstance(value, list):
        return [_drop_nulls(v) for v in value]
    return value


def compact(result: Any) -> Any:
    """A tool's result without nulls, its JSON text unindented (indentation cost more
    characters than the content it carried). A text block that is not that JSON (build-context's
    markdown) is left as it is."""
    if not isinstance(result, CallToolResult) or result.is_error or not isinstance(
            result.structured_content, dict):
        return result
    data = _drop_nulls(result.structured_content)
    content = result.content
    if len(content) == 1 and isinstance(content[0], TextContent) and content[0].text.startswith(
            "{"):
        content = [TextContent(type="text", text=json.dumps(
            data, ensure_ascii=False, separators=(",", ":")))]
    return CallToolResult(content=content, structured_content=data)


def _untitled(schema: Any, in_properties: bool = False) -> Any:
    """A JSON schema without pydantic's generated titles ("Eventtype" for eventType): the
    property names and descriptions say it better, in fewer tokens."""
    if isinstance(schema, dict):
        return {k: _untitled(v, k in ("properties", "$defs") and not in_properties)
                for k, v in schema.items()
                if not (k == "title" and isinstance(v, str) and not in_properties)}
    if isinstance(schema, list):
        return [_untitled(v) for v in schema]
    return schema


class MemorayMCP(MCPServer):
    def __init__(self, *args: Any, metrics: Any = None, **kwargs: Any):
        super().__init__(*args, **kwargs)
        self.memoray_metrics = metrics

    async def list_tools(self):
        tools = await super().list_tools()
        for t in tools:
            t.input_schema = _untitled(t.input_schema)
            if t.output_schema is not None:
                t.output_schema = _untitled(t.output_schema)
        return tools

    async def call_tool(self, name: str, arguments: dict[str, Any], context: Any = None):
        t0 = time.perf_counter()
        outcome = "ok"
        # The request's identity for every log line of it, here and (through the typed actor
        # clients) in the shards: caller_for adds the principal once authenticated.
        request = {"request_id": uuid.uuid4().hex[:16], "tool": name, "principal": None,
                   "workspace": _named_workspace(arguments)}
        reset = request_var.set(request)
        try:
            tool = self._tool_manager.get_tool(name)
            if tool is None:
                raise invalid(f"unknown tool {name!r}")
            allowed = set(tool.parameters.get("properties", {}))
            extra = sorted(set(arguments or {}) - allowed)
            if extra:
                raise invalid(f"unknown argument(s): {', '.join(extra)} "
                              f"(allowed: {', '.join(sorted(allowed))})")
            with span("memoray.tool", tool=name, request_id=request["request_id"]):
                return compact(await super().call_tool(name, arguments, context))
        except MemorayError as err:
            outcome = err.code.value
            return error_result(err)
        except ToolError as exc:
            cause = exc.__cause__
            if isinstance(cause, MemorayError):
                err = cause
            elif isinstance(cause, ValidationError):
                err = invalid(_validation_message(cause))
            else:
                log.error("tool %s failed", name, exc_info=cause or exc)
                err = MemorayError(ErrorCode.UNAVAILABLE, "internal error; see the server log")
            outcome = err.code.value
            return error_result(err)
        finally:
            m = self.memoray_metrics
            if m is not None:  # labels from closed sets only: known tools, error codes
                label = name if self._tool_manager.get_tool(name) is not None else "other"
                m.tool_calls.labels(tool=label, outcome=outcome).inc()
                m.tool_latency.labels(tool=label).observe(time.perf_counter() - t0)
                if outcome != "ok":
                    m.errors.labels(code=outcome).inc()
            # One line per call: who, where, what, how it ended, how long. Never arguments.
            log.info("tool call", extra={
                "request_id": request["request_id"], "principal": request["principal"],
                "workspace": request["workspace"],
                "tool": name if self._tool_manager.get_tool(name) is not None else "other",
                "outcome": outcome, "duration_ms": round((time.perf_counter() - t0) * 1000, 2)})
            request_var.reset(reset)


def build_mcp(get_runtime: Callable[[], Awaitable[Any]], metrics: Any = None) -> MemorayMCP:
    """Register the tools. `get_runtime()` returns the replica's Runtime (service, token store,
    limiter), built lazily inside the replica process."""
    # log_level: MCPServer puts a rich handler on the root logger at this level. At INFO the
    # SDK's "Terminating session" line, rendered by rich, was a fifth of a replica's CPU per
    # stateless call (py-spy, README "Twelfth session"); memoray's own lines have their own logger.
    mcp = MemorayMCP(name="memoray", metrics=metrics, log_level="WARNING", instructions=(
        "Persistent memory for coding agents. Capture decisions, code changes and lessons with "
        "capture-memory; recall them with retrieve-memories or build-context; expand an id "
        "with get-memory. A call that names no workspaceId works in the project's workspace "
        "(the X-Memoray-Workspace header of this server's entry), else in the token's own."))

    async def caller_for(ctx: Context, tool: str, agent_id: str | None = None):
        """Authenticate the request (the use case then authorizes, rate-limits and audits).
        With tokens on, the agent identity is the token's: an agentId argument may only repeat
        it, never name another agent."""
        rt = await get_runtime()
        headers = ctx.headers or {}
        from memoray.serve.request import Caller

        name = "anonymous"
        try:
            principal = authenticate(rt.tokens, headers.get("authorization"))
            name = principal.name
            if principal.token_id is not None:
                if agent_id is not None and agent_id != principal.agent:
                    raise MemorayError(ErrorCode.FORBIDDEN,
                                       "agentId: this token acts as its own agent and may not "
                                       "act as another")
                agent_id = principal.agent
        except MemorayError as err:
            await rt.audit.append(name, tool, outcome="denied", code=err.code.value,
                                  detail=err.message)
            raise
        session = headers.get("x-memoray-session") or headers.get("mcp-session-id")
        request = request_var.get() or {"request_id": uuid.uuid4().hex[:16]}
        request["principal"] = principal.name
        request["workspace"] = request.get("workspace") or header_workspace(headers)
        return rt.service, Caller(principal=principal, request_id=request["request_id"],
                                  agent_id=agent_id, tool=tool, session=session,
                                  agent_bound=principal.token_id is not None,
                                  workspace=header_workspace(headers))

    def default_workspace(caller: Any) -> str:
        """Where a capture that names no workspace goes: the project's (header), else the
        token's only workspace, else "default"."""
        if caller.workspace:
            return caller.workspace
        mine = caller.principal.visible_workspaces()
        return next(iter(mine)) if mine is not None and len(mine) == 1 else "default"

    @mcp.tool(name="capture-memory", description=(
        "Store one memory (content up to 1 MiB; long content is chunked). Returns its id(s)."))
    async def capture_memory(
        content: Annotated[str, Field(description=_F["content"].description)], ctx: Context,
        eventType: Annotated[str, Field(description=_F["event_type"].description,
                                        examples=list(EVENT_TYPES))] = "note",
        metadata: Annotated[dict[str, Any] | None,
                            Field(description=_F["metadata"].description)] = None,
        workspaceId: Annotated[str | None, Field(description=_F["workspace_id"].description,
                                                 max_length=256)] = None,
        sessionId: Annotated[str | None, Field(description=_F["session_id"].description)] = None,
        agentId: Annotated[str | None, Field(description=_F["agent_id"].description)] = None,
        gitBranch: Annotated[str | None, Field(description=_F["git_branch"].description)] = None,
        gitCommit: Annotated[str | None, Field(description=_F["git_commit"].description)] = None,
        tier: Annotated[Literal["session", "project", "preference", "pattern"] | None,
                        Field(description=_F["tier"].description)] = None,
        visibility: Annotated[Literal["private", "shared"] | None,
                              Field(description=_F["visibility"].description)] = None,
        ttlSeconds: Annotated[int | None, Field(description=_F["ttl_seconds"].description,
                                                ge=1)] = None,
        timestamp: Annotated[str | None, Field(description=_F["timestamp"].description)] = None,
        idempotencyKey: Annotated[str | None,
                                  Field(description=_F["idempotency_key"].description)] = None,
    ) -> dict[str, Any]:
        raw = {k: v for k, v in dict(
            content=content, eventType=eventType, metadata=metadata or {},
            workspaceId=workspaceId, sessionId=sessionId, agentId=agentId, gitBranch=gitBranch,
            gitCommit=gitCommit, tier=tier, visibility=visibility, ttlSeconds=ttlSeconds,
            timestamp=timestamp, idempotencyKey=idempotencyKey).items() if v is not None}
        svc, caller = await caller_for(ctx, "capture-memory", agentId)
        raw.setdefault("workspaceId", default_workspace(caller))
        try:
            item = CaptureItem.model_validate(_bind_agent(raw, caller))
        except ValidationError as exc:
            raise invalid(_validation_message(exc)) from None
        res = (await svc.capture([item], caller))[0]
        return {"ids": res["ids"], "id": res["ids"][0], "chunks": res["chunks"],
                "parentId": res["parentId"], "deduplicated": res["deduplicated"],
                "redactions": res["redactions"]}

    @mcp.tool(name="capture-memories", description=(
        f"Store a batch of memories (bulk import, hook queues); at most {MAX_BATCH} items, each "
        "with the fields of capture-memory."))
    async def capture_memories(items: ItemsArg, ctx: Context) -> dict[str, Any]:
        svc, caller = await caller_for(ctx, "capture-memories", _first_agent(items))
        ws = default_workspace(caller)
        parsed = _parse_items([_bind_agent(_bind_workspace(raw, ws), caller) for raw in items])
        results = await svc.capture(parsed, caller, action="capture-batch")
        redactions: dict[str, int] = {}
        for r in results:
            for k, v in r["redactions"].items():
                redactions[k] = redactions.get(k, 0) + v
        errors = [{"index": i, **r["error"]} for i, r in enumerate(results) if "error" in r]
        out = {"ids": [r["ids"] for r in results], "count": len(results) - len(errors),
               "deduplicated": sum(1 for r in results if r["deduplicated"]),
               "redactions": redactions}
        if errors:  # per-item outcomes: retry these (with their idempotency keys) only
            out["failed"] = len(errors)
            out["errors"] = errors
        return out

    @mcp.tool(name="retrieve-memories", description=(
        "Find the memories most relevant to a query (hybrid vector + lexical), under filters: "
        "field equality and $and/$or/$not/$eq/$ne/$in/$nin/$gt/$gte/$lt/$lte/$exists over "
        "eventType, workspaceId, sessionId, agentId, gitBranch, tier, timestamp and "
        "metadata.<path>; startTime/endTime shorthand. Scores are 0-1."))
    async def retrieve_memories(
        query: Annotated[str, Field(description="What to look for, in words.")], ctx: Context,
        limit: Annotated[int, Field(description="How many memories at most.", ge=1,
                                    le=MAX_LIMIT)] = 10,
        filters: Annotated[dict[str, Any] | None, Field(description=FILTERS_HELP)] = None,
        mode: Annotated[Literal["hybrid", "vector", "lexical"], Field(
            description="hybrid (default): meaning and words; vector: meaning; lexical: "
                        "words.")] = "hybrid",
        agentId: Annotated[str | None, Field(description="Your agent id: private memories of "
                                             "this agent are included.")] = None,
        recencyWeight: Annotated[float, Field(description="0: relevance only; 1: newest "
                                              "first.", ge=0.0, le=1.0)] = 0.0,
        contextTurns: Annotated[int, Field(description="Also return, with each memory, this "
                                           "many records either side of it in its session "
                                           "(what was said or done around it), each with its "
                                           "token count.", ge=0, le=10)] = 0,
        contextTokenBudget: Annotated[int | None, Field(description="The most tokens the "
                                                        "context turns may take in all (nearest "
                                                        "turns first); default: no limit.",
                                                        ge=0, le=100_000)] = None,
    ) -> dict[str, Any]:
        if not 0.0 <= recencyWeight <= 1.0:
            raise invalid("recencyWeight: must be between 0 and 1")
        svc, caller = await caller_for(ctx, "retrieve-memories", agentId)
        mems = await svc.retrieve(caller, query, limit, filters, mode=mode,
                                  recency_weight=recencyWeight, context_turns=contextTurns,
                                  context_budget=contextTokenBudget)
        if not contextTurns:  # the reply is what it was before context existed
            return {"memories": [m.model_dump(by_alias=True,
                                              exclude={"context", "context_tokens"})
                                 for m in mems], "count": len(mems)}
        return {"memories": [m.model_dump(by_alias=True) for m in mems], "count": len(mems),
                "contextTokens": sum(m.context_tokens or 0 for m in mems)}

    @mcp.tool(name="build-context", description=(
        "A markdown context block of the memories that matter for this workspace, branch and "
        "query, packed to fit tokenBudget (counted with a real tokenizer). style 'index': one "
        "line per memory starting with its id (expand with get-memory). Empty when there is "
        "nothing to show."))
    async def build_context(
        ctx: Context,
        query: Annotated[str | None, Field(description="The task at hand; omit it for a "
                                           "general briefing.")] = None,
        limit: Annotated[int, Field(description="Candidates to consider.", ge=1,
                                    le=MAX_LIMIT)] = 40,
        filters: Annotated[dict[str, Any] | None, Field(description=FILTERS_HELP)] = None,
        tokenBudget: Annotated[int, Field(description="The most tokens the block may take.",
                                          ge=1, le=100_000)] = 1500,
        workspaceId: Annotated[str | None, Field(description="The project; default: this "
                                                 "server entry's project.")] = None,
        gitBranch: Annotated[str | None, Field(description="Your branch: its recent changes "
                                               "get a section.")] = None,
        sessionId: Annotated[str | None, Field(description="Your session id.")] = None,
        agentId: Annotated[str | None, Field(description="Your agent id.")] = None,
        style: Annotated[Literal["full", "index"], Field(
            description="full: memories in full or trimmed; index: one line per memory, its "
                        "id first (expand with get-memory).")] = "full",
    ) -> CallToolResult:
        svc, caller = await caller_for(ctx, "build-context", agentId)
        out = await svc.build_context(caller, query=query, limit=limit, filters=filters,
                                      budget=tokenBudget,
                                      workspace_id=workspaceId or caller.workspace,
                                      branch=gitBranch, session_id=sessionId, style=style)
        # the markdown itself is what a model reads; the numbers ride along as structured data
        return CallToolResult(content=[TextContent(type="text", text=out["context"])],
                              structured_content=out)

    @mcp.tool(name="upsert-memory", description=(
        "Store memories, merging near-duplicates (cosine >= similarityThreshold, default 0.85, "
        "same workspace and scope) into the existing memory instead of adding; exact duplicates "
        "are left unchanged. Returns a merge report."))
    async def upsert_memory(
        items: ItemsArg, ctx: Context,
        similarityThreshold: Annotated[float, Field(
            description="Cosine similarity at which an item merges into an existing memory.",
            ge=0.0, le=1.0)] = 0.85,
    ) -> dict[str, Any]:
        svc, caller = await caller_for(ctx, "upsert-memory", _first_agent(items))
        ws = default_workspace(caller)
        parsed = _parse_items([_bind_agent(_bind_workspace(raw, ws), caller) for raw in items])
        return await svc.upsert(parsed, caller, threshold=similarityThreshold)

    @mcp.tool(name="share-memory", description=(
        "Make a private memory visible to the whole workspace (visibility 'shared'), or take it "
        "back ('private'). Only the owning agent (agentId) or an admin may."))
    async def share_memory(id: str, ctx: Context, agentId: str | None = None,
                           visibility: Literal["private", "shared"] = "shared") -> dict[str, Any]:
        svc, caller = await caller_for(ctx, "share-memory", agentId)
        return await svc.share(caller, id, visibility)

    @mcp.tool(name="expire-memories", description=(
        "Run TTL expiry and the retention policies now (dryRun reports without deleting). "
        "Returns the purge report."))
    async def expire_memories(ctx: Context, dryRun: bool = False,
                              workspaceId: str | None = None) -> dict[str, Any]:
        svc, caller = await caller_for(ctx, "expire-memories")
        return await svc.expire(caller, dryRun, workspaceId)

    @mcp.tool(name="audit-log", description=(
        "Admin: the newest audit entries (every mutation and every denied request)."))
    async def audit_log(ctx: Context, limit: int = 50, principal: str | None = None,
                        action: str | None = None) -> dict[str, Any]:
        svc, caller = await caller_for(ctx, "audit-log")
        return await svc.audit_log(caller, limit, principal, action)

    @mcp.tool(name="rotate-encryption", description=(
        "Admin: re-encrypt every stored record under the current key (start the server with "
        "MEMORAY_ENCRYPTION_KEY='NEW,OLD' first). Runs online."))
    async def rotate_encryption(ctx: Context) -> dict[str, Any]:
        svc, caller = await caller_for(ctx, "rotate-encryption")
        return await svc.rotate_encryption(caller)

    @mcp.tool(name="create-webhook", description=(
        "Admin: subscribe a URL to this workspace's memory events (memory.captured, "
        "memory.updated, memory.deleted, memory.expired, memory.shared). Returns the "
        "subscription with its signing secret, shown only this once. https only; content is "
        "sent (redacted) only with includeContent."))
    async def create_webhook(
        url: Annotated[str, Field(description="The receiver: https://...")], ctx: Context,
        workspaceId: Annotated[str | None, Field(description="The workspace whose events are "
                                                 "sent; default: this server entry's "
                                                 "project.")] = None,
        events: Annotated[list[str] | None, Field(description="Event types; default: all.")]
        = None,
        includeContent: Annotated[bool, Field(description="Send the memory's (redacted) "
                                              "content with captured/updated/shared "
                                              "events.")] = False,
        description: Annotated[str | None, Field(description="A note for operators.",
                                                 max_length=200)] = None,
    ) -> dict[str, Any]:
        svc, caller = await caller_for(ctx, "create-webhook")
        spec = {"workspaceId": workspaceId or default_workspace(caller), "url": url,
                "includeContent": includeContent, "description": description}
        if events is not None:
            spec["events"] = events
        return await svc.create_webhook(caller, spec)

    @mcp.tool(name="list-webhooks", description=(
        "Admin: webhook subscriptions (never their secrets), with pending and dead-letter "
        "counts."))
    async def list_webhooks(ctx: Context, workspaceId: str | None = None) -> dict[str, Any]:
        svc, caller = await caller_for(ctx, "list-webhooks")
        return await svc.list_webhooks(caller, workspaceId)

    @mcp.tool(name="test-webhook", description=(
        "Admin: send one signed webhook.test delivery to a subscription now and report the "
        "receiver's answer."))
    async def test_webhook(id: str, ctx: Context) -> dict[str, Any]:
        svc, caller = await caller_for(ctx, "test-webhook")
        return await svc.test_webhook(caller, id)

    @mcp.tool(name="delete-webhook", description=(
        "Admin: delete a subscription with its pending deliveries and dead letters."))
    async def delete_webhook(id: str, ctx: Context) -> dict[str, Any]:
        svc, caller = await caller_for(ctx, "delete-webhook")
        return await svc.delete_webhook(caller, id)

    @mcp.tool(name="list-dead-letters", description=(
        "Admin: a subscription's deliveries that failed every attempt, with the last error."))
    async def list_dead_letters(id: str, ctx: Context, limit: int = 100) -> dict[str, Any]:
        svc, caller = await caller_for(ctx, "list-dead-letters")
        return await svc.dead_letters(caller, id, limit)

    @mcp.tool(name="replay-dead-letters", description=(
        "Admin: queue a subscription's dead letters again (all, or those deliveryIds)."))
    async def replay_dead_letters(id: str, ctx: Context,
                                  deliveryIds: list[str] | None = None) -> dict[str, Any]:
        svc, caller = await caller_for(ctx, "replay-dead-letters")
        return await svc.replay_dead_letters(caller, id, deliveryIds)

    @mcp.tool(name="get-memory", description=(
        "One memory by id, in full (expands a line of a build-context index)."))
    async def get_memory(id: Annotated[str, Field(description="The memory's id.")],
                         ctx: Context) -> dict[str, Any]:
        svc, caller = await caller_for(ctx, "get-memory")
        return (await svc.get(caller, id)).model_dump(by_alias=True)

    @mcp.tool(name="delete-memory", description=(
        "Hard-delete one memory by id (a chunk id deletes its whole document)."))
    async def delete_memory(id: str, ctx: Context) -> dict[str, Any]:
        svc, caller = await caller_for(ctx, "delete-memory")
        return await svc.delete(caller, id)

    @mcp.tool(name="get-document", description=(
        "Reassemble a chunked document, in order, from its parentId or any chunk id."))
    async def get_document(id: str, ctx: Context) -> dict[str, Any]:
        svc, caller = await caller_for(ctx, "get-document")
        return await svc.get_document(caller, id)

    @mcp.tool(name="explain-query", description=(
        "The plan the query planner would run for a retrieve: strategy, estimated candidates "
        "and cost, and the planner's measured accuracy."))
    async def explain_query(ctx: Context, query: str = "", limit: int = 10,
                            filters: dict[str, Any] | None = None) -> dict[str, Any]:
        svc, caller = await caller_for(ctx, "explain-query")
        return await svc.explain(caller, query, limit, filters)

    @mcp.tool(name="memory-stats", description=(
        "Counts per workspace, shard, eventType and tier; index and storage sizes."))
    async def memory_stats(ctx: Context, workspaceId: str | None = None) -> dict[str, Any]:
        svc, caller = await caller_for(ctx, "memory-stats")
        return await svc.stats(caller, workspaceId or caller.workspace)

    @mcp.tool(name="ping", description=(
        "Liveness through the whole HTTP/MCP/auth/rate-limit stack; touches no data."))
    async def ping(ctx: Context) -> dict[str, Any]:
        svc, caller = await caller_for(ctx, "ping")
        return await svc.ping(caller)

    @mcp.tool(name="health-check", description="Overall and per-component status.")
    async def health_check(ctx: Context, detailed: bool = False) -> dict[str, Any]:
        svc, caller = await caller_for(ctx, "health-check")
        return await svc.health_check(caller, detailed)

    return mcp


WORKSPACE_HEADER = "x-memoray-workspace"
_F = CaptureItem.model_fields
FILTERS_HELP = (
    "Field equality and $and/$or/$not/$eq/$ne/$in/$nin/$gt/$gte/$lt/$lte/$exists over eventType, "
    "workspaceId, sessionId, agentId, gitBranch, tier, timestamp and metadata.<path>; "
    "startTime/endTime as shorthand. Example: {\"eventType\": {\"$in\": [\"decision\", "
    "\"lesson\"]}, \"gitBranch\": \"main\"}. Default workspace: this server entry's project.")


def _named_workspace(arguments: Any) -> str | None:
    """The workspace a call names (its workspaceId, or its items' one workspace), for logs."""
    if not isinstance(arguments, dict):
        return None
    ws = arguments.get("workspaceId")
    if isinstance(ws, str):
        return ws[:256]
    items = arguments.get("items")
    if isinstance(items, list):
        named = {i.get("workspaceId") for i in items if isinstance(i, dict)}
        if len(named) == 1 and isinstance(next(iter(named)), str):
            return next(iter(named))[:256]
    return None


def header_workspace(headers: Any) -> str | None:
    """The project's workspace named by the X-Memoray-Workspace header, if any (too long or
    blank counts as none: a bad header must not widen or break a call)."""
    try:
        value = (headers.get(WORKSPACE_HEADER) or "").strip()
    except Exception:  # headers of an unknown transport
        return None
    from memoray.models import MAX_ID_FIELD

    return value if value and len(value) <= MAX_ID_FIELD else None


def _bind_workspace(raw: Any, workspace: str) -> Any:
    """An item that names no workspaceId takes the default one."""
    if isinstance(raw, dict) and "workspaceId" not in raw and "workspace_id" not in raw:
        return {**raw, "workspaceId": workspace}
    return raw


# Batch items: checked one by one after binding the agent and workspace (so a private item of a
# token-bound agent needs no agentId), but published with CaptureItem's full schema.
ItemsArg = Annotated[list[dict[str, Any]], WithJsonSchema({
    "type": "array", "minItems": 1, "maxItems": MAX_BATCH,
    "description": "The memories, each with the fields of capture-memory.",
    "items": CaptureItem.model_json_schema(by_alias=True)})]


def _first_agent(items: list[Any]) -> str | None:
    """The agent a batch acts as without tokens (its first item's agentId)."""
    first = items[0] if items and isinstance(items[0], dict) else {}
    agent = first.get("agentId")
    return agent if isinstance(agent, str) else None


def _bind_agent(raw: Any, caller: Any) -> Any:
    """With a token-bound agent, a private item without agentId is that agent's."""
    if (caller.agent_bound and isinstance(raw, dict) and raw.get("visibility") == "private"
            and raw.get("agentId") is None):
        return {**raw, "agentId": caller.agent_id}
    return raw


def _parse_items(items: list[dict[str, Any]]) -> list[CaptureItem]:
    """Validate a batch of wire items."""
    if not items:
        raise invalid("items: must hold at least one item")
    if len(items) > MAX_BATCH:
        raise invalid(f"items: at most {MAX_BATCH} items per call")
    parsed = []
    for i, raw in enumerate(items):
        try:
            parsed.append(CaptureItem.model_validate(raw))
        except ValidationError as exc:
            raise invalid(_validation_message(exc, prefix=f"items[{i}].")) from None
    return parsed

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
from typing import Any, Literal

from mcp.server.mcpserver import Context, MCPServer
from mcp.server.mcpserver.exceptions import ToolError
from mcp_types import CallToolResult, TextContent
from pydantic import ValidationError

from memoray.auth import authenticate
from memoray.errors import ErrorCode, MemorayError, invalid
from memoray.models import MAX_BATCH, CaptureItem
from memoray.serve.observability import span

log = logging.getLogger(__name__)



def error_result(err: MemorayError) -> CallToolResult:
    body = err.to_dict()
    return CallToolResult(content=[TextContent(type="text", text=json.dumps(body))],
                          structured_content=body, is_error=True)


def _validation_message(exc: ValidationError, prefix: str = "") -> str:
    parts = []
    for e in exc.errors()[:5]:
        loc = ".".join(str(p) for p in e["loc"]) or "arguments"
        msg = e["msg"].removeprefix("Value error, ")
        parts.append(f"{prefix}{loc}: {msg}")
    return "; ".join(parts)


class MemorayMCP(MCPServer):
    def __init__(self, *args: Any, metrics: Any = None, **kwargs: Any):
        super().__init__(*args, **kwargs)
        self.memoray_metrics = metrics

    async def call_tool(self, name: str, arguments: dict[str, Any], context: Any = None):
        t0 = time.perf_counter()
        outcome = "ok"
        try:
            tool = self._tool_manager.get_tool(name)
            if tool is None:
                raise invalid(f"unknown tool {name!r}")
            allowed = set(tool.parameters.get("properties", {}))
            extra = sorted(set(arguments or {}) - allowed)
            if extra:
                raise invalid(f"unknown argument(s): {', '.join(extra)} "
                              f"(allowed: {', '.join(sorted(allowed))})")
            with span("memoray.tool", tool=name):
                return await super().call_tool(name, arguments, context)
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


def build_mcp(get_runtime: Callable[[], Awaitable[Any]], metrics: Any = None) -> MemorayMCP:
    """Register the tools. `get_runtime()` returns the replica's Runtime (service, token store,
    limiter), built lazily inside the replica process."""
    mcp = MemorayMCP(name="memoray", metrics=metrics, instructions=(
        "Persistent memory for coding agents. Capture decisions, code changes and lessons with "
        "capture-memory; recall them with retrieve-memories or build-context."))

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
        return rt.service, Caller(principal=principal, request_id=uuid.uuid4().hex[:16],
                                  agent_id=agent_id, tool=tool, session=session,
                                  agent_bound=principal.token_id is not None)

    @mcp.tool(name="capture-memory", description=(
        "Store one memory (content up to 1 MiB; long content is chunked). Returns its id(s)."))
    async def capture_memory(
        content: str, ctx: Context, eventType: str = "note", metadata: dict[str, Any] | None = None,
        workspaceId: str = "default", sessionId: str | None = None, agentId: str | None = None,
        gitBranch: str | None = None, gitCommit: str | None = None,
        tier: Literal["session", "project", "preference", "pattern"] | None = None,
        visibility: Literal["private", "shared"] | None = None, ttlSeconds: int | None = None,
        timestamp: str | None = None, idempotencyKey: str | None = None,
    ) -> dict[str, Any]:
        raw = {k: v for k, v in dict(
            content=content, eventType=eventType, metadata=metadata or {},
            workspaceId=workspaceId, sessionId=sessionId, agentId=agentId, gitBranch=gitBranch,
            gitCommit=gitCommit, tier=tier, visibility=visibility, ttlSeconds=ttlSeconds,
            timestamp=timestamp, idempotencyKey=idempotencyKey).items() if v is not None}
        svc, caller = await caller_for(ctx, "capture-memory", agentId)
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
    async def capture_memories(items: list[dict[str, Any]], ctx: Context) -> dict[str, Any]:
        svc, caller = await caller_for(ctx, "capture-memories", _first_agent(items))
        parsed = _parse_items([_bind_agent(raw, caller) for raw in items])
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
        query: str, ctx: Context, limit: int = 10, filters: dict[str, Any] | None = None,
        mode: Literal["hybrid", "vector", "lexical"] = "hybrid", agentId: str | None = None,
        recencyWeight: float = 0.0,
    ) -> dict[str, Any]:
        if not 0.0 <= recencyWeight <= 1.0:
            raise invalid("recencyWeight: must be between 0 and 1")
        svc, caller = await caller_for(ctx, "retrieve-memories", agentId)
        mems = await svc.retrieve(caller, query, limit, filters, mode=mode,
                                  recency_weight=recencyWeight)
        return {"memories": [m.model_dump(by_alias=True) for m in mems], "count": len(mems)}

    @mcp.tool(name="build-context", description=(
        "A markdown context block of the memories that matter for this workspace, branch and "
        "query, packed to fit tokenBudget (counted with a real tokenizer)."))
    async def build_context(
        ctx: Context, query: str | None = None, limit: int = 40,
        filters: dict[str, Any] | None = None, tokenBudget: int = 1500,
        workspaceId: str | None = None, gitBranch: str | None = None,
        sessionId: str | None = None, agentId: str | None = None,
    ) -> dict[str, Any]:
        svc, caller = await caller_for(ctx, "build-context", agentId)
        return await svc.build_context(caller, query=query, limit=limit, filters=filters,
                                       budget=tokenBudget, workspace_id=workspaceId,
                                       branch=gitBranch, session_id=sessionId)

    @mcp.tool(name="upsert-memory", description=(
        "Store memories, merging near-duplicates (cosine >= similarityThreshold, default 0.85, "
        "same workspace and scope) into the existing memory instead of adding; exact duplicates "
        "are left unchanged. Returns a merge report."))
    async def upsert_memory(items: list[dict[str, Any]], ctx: Context,
                            similarityThreshold: float = 0.85) -> dict[str, Any]:
        svc, caller = await caller_for(ctx, "upsert-memory", _first_agent(items))
        parsed = _parse_items([_bind_agent(raw, caller) for raw in items])
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

    @mcp.tool(name="get-memory", description="One memory by id.")
    async def get_memory(id: str, ctx: Context) -> dict[str, Any]:
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
        return await svc.stats(caller, workspaceId)

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

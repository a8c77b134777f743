"""What every use case shares: who is calling (Caller), and the steps every request path takes in
the same order after validation and authentication: authorize, rate-limit, (work), audit.

UseCase holds a replica's dependencies; serve/capture.py, retrieve.py, records.py and admin.py
each add one request path on top of it, and serve/service.py composes them.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

import numpy as np

from memoray import filters as flt
from memoray.actors.backend import Backend
from memoray.actors.planner import QueryPlanner
from memoray.auth import Principal
from memoray.errors import ErrorCode, MemorayError
from memoray.records import Record
from memoray.serve.observability import Metrics
from memoray.settings import Settings

# memoray_stage_seconds{path, stage}: a closed set of labels. Replica-side stages are timed by a
# StageClock in the use case; shard_* stages are measured inside the shard (put: ShardCore's
# stage totals in its stats; search: the `stages` each shard returns with its hits).
CAPTURE_STAGES = ("validation", "auth", "rate_limit", "prepare", "embed", "commit", "audit",
                  "serialization")
# fanout_send / fanout_reply: from the replica's send to a shard's searches starting, and from
# their end to the replica having every answer (Ray's transport and the packing of the request
# and the results, shard_search.pack; wall clocks, so across nodes skew too).
RETRIEVE_STAGES = ("validation", "auth", "rate_limit", "plan", "embed_query", "fanout",
                   "fanout_send", "fanout_reply", "shard_search", "shard_filter",
                   "shard_vector", "shard_lexical", "shard_neighbours", "shard_score",
                   "shard_fetch", "merge", "serialization")


class StageClock:
    """Times the consecutive stages of one request: `lap(stage)` charges the time since the
    previous lap (or the start) to that stage. Observing is a few microseconds per stage."""

    __slots__ = ("_hist", "_path", "_t")

    def __init__(self, metrics: Metrics, path: str):
        self._hist = metrics.stage_latency
        self._path = path
        self._t = time.perf_counter()

    def lap(self, stage: str) -> float:
        now = time.perf_counter()
        seconds = now - self._t
        self._t = now
        self._hist.labels(path=self._path, stage=stage).observe(seconds)
        return seconds

    def skip(self) -> None:
        """Start the next stage now (time since the last lap belongs to no stage)."""
        self._t = time.perf_counter()

    def observe(self, stage: str, seconds: float) -> None:
        self._hist.labels(path=self._path, stage=stage).observe(seconds)


@dataclass
class Caller:
    """An authenticated request: its principal, and what the transport said about it."""

    principal: Principal
    request_id: str = ""
    agent_id: str | None = None
    tool: str = ""  # the MCP tool (rate-limit keys are per tool)
    session: str | None = None  # the x-memoray-session / mcp-session-id header
    agent_bound: bool = False  # agent_id comes from the token (tokens on), not from arguments
    # The project's workspace, from the X-Memoray-Workspace header that `memoray hooks install`
    # writes into the project's MCP entry: the default for every call that names none.
    workspace: str | None = None


class UseCase:
    def __init__(self, settings: Settings, backend: Backend, *, planner: QueryPlanner | None = None,
                 redactor: Any = None, audit: Any = None, limiter: Any = None,
                 metrics: Metrics | None = None, expiry: Any = None, webhooks: Any = None):
        """`audit`: a memoray.audit.GroupCommit (or None); `limiter`: a LeaseClient (or None);
        `expiry`: an ExpiryClient (or None); `webhooks`: a WebhookClient (or None)."""
        self.settings = settings
        self.backend = backend
        self.planner = planner or QueryPlanner()
        self.redactor = redactor
        self.audit = audit
        self.limiter = limiter
        self.metrics = metrics or Metrics()
        self.expiry = expiry
        self.webhooks = webhooks
        self.started = time.time()

    def clock(self, path: str) -> StageClock:
        """A StageClock for one capture or retrieve (memoray_stage_seconds)."""
        return StageClock(self.metrics, path)

    # -- authorize --------------------------------------------------------------------------
    async def authorize(self, caller: Caller, scope: str, action: str,
                        workspace: str | None = None) -> None:
        """The caller's token must carry `scope` (and the workspace, when named); a refusal is
        audited before it is returned."""
        try:
            caller.principal.require(scope, workspace)
        except MemorayError as exc:
            await self.audited(caller, action, outcome="denied", code=exc.code.value,
                               detail=exc.message)
            raise

    async def scoped_filter(self, caller: Caller, node: Any, action: str) -> Any:
        """Restrict a parsed filter to what the caller may see: its workspaces, and private
        memories only of its own agent. Naming a workspace the caller lacks is refused."""
        named = flt.referenced_workspaces(node)
        if named is None and caller.workspace:  # none named: the project's own workspace
            node = flt.and_([node, flt.Eq("workspace_id", caller.workspace)])
            named = {caller.workspace}
        if named is not None:
            for ws in named:
                await self.authorize(caller, "read", action, ws)
        allowed = caller.principal.visible_workspaces()
        if allowed is not None:
            node = flt.and_([node, flt.in_("workspace_id", sorted(allowed))])
        visible = [flt.not_(flt.Eq("visibility", "private"))]
        if caller.agent_id:
            visible.append(flt.Eq("agent_id", caller.agent_id))
        return flt.and_([node, flt.or_(visible)])

    def can_see(self, caller: Caller, record: Record) -> bool:
        """Its workspace, and a private memory only for its own agent: a private memory with no
        agent (anonymized) is visible to no caller."""
        if not caller.principal.allows_workspace(record["workspace_id"]):
            return False
        if record.get("visibility") == "private" and (
                caller.agent_id is None or record.get("agent_id") != caller.agent_id):
            return False
        return True

    async def authorize_items(self, caller: Caller, items: list, action: str) -> list:
        """Each item's workspace must be the caller's; with a token-bound agent, an item may
        name no other agent (a private item without one becomes the caller's)."""
        out = []
        for item in items:
            await self.authorize(caller, "write", action, item.workspace_id)
            if caller.agent_bound:
                if item.agent_id not in (None, caller.agent_id):
                    await self.audited(caller, action, workspace=item.workspace_id,
                                       outcome="denied", code="FORBIDDEN",
                                       detail="agentId of another agent")
                    raise MemorayError(ErrorCode.FORBIDDEN, "agentId: this token acts as its "
                                                            "own agent and may not act as another")
                if item.visibility == "private" and item.agent_id is None:
                    item = item.model_copy(update={"agent_id": caller.agent_id})
            out.append(item)
        return out

    # -- rate-limit -------------------------------------------------------------------------
    async def rate_limit(self, caller: Caller, workspace: str | None, cost: int = 1,
                         session: str | None = None) -> None:
        """Charge the call to its budgets (after authorization, so a refused call never spends a
        tenant's quota): to its workspace, or, when it names none, to every workspace the caller
        can read (so leaving the workspace out never doubles a budget); a caller of every
        workspace has its own bucket. The session is the capture's sessionId, else the header."""
        from memoray.ratelimit import exempt, request_keys

        if (self.limiter is None or not self.settings.rate_limit_enabled
                or exempt(self.settings, caller.principal)):
            return

        if workspace is not None:
            targets: list[str | None] = [workspace]
        else:
            visible = caller.principal.visible_workspaces()
            targets = sorted(visible) if visible else [None]
        keys, units = [], 1
        for ws in targets:
            more, units = request_keys(caller.tool, workspace=ws,
                                       session=session or caller.session,
                                       principal=caller.principal.name, items=cost)
            keys += [k for k in more if k not in keys]
        decision = await self.limiter.acquire(keys, units)
        if not decision.allowed:
            self.metrics.rate_limited.labels(kind=decision.kind or "request").inc()
            await self.audited(caller, caller.tool, workspace=workspace, outcome="denied",
                               code="RATE_LIMIT_EXCEEDED")
            raise decision.error()

    # -- audit ------------------------------------------------------------------------------
    async def audited(self, caller: Caller, action: str, *, workspace: str | None = None,
                      ids: list[str] | None = None, outcome: str = "ok", code: str | None = None,
                      detail: str | None = None) -> None:
        """One audit entry, durable before this returns (group-committed)."""
        if self.audit is not None:
            await self.audit.append(caller.principal.name, action, workspace=workspace,
                                    ids=ids or [], outcome=outcome, code=code, detail=detail,
                                    request_id=caller.request_id)

    async def audited_many(self, caller: Caller, action: str,
                           items: list[tuple[str | None, list[str]]]) -> None:
        """One entry per (workspace, ids) pair, all in one group commit (a batch's captures)."""
        if self.audit is not None and items:
            await self.audit.append_many([
                self.audit.entry(caller.principal.name, action, workspace=ws, ids=ids,
                                 request_id=caller.request_id) for ws, ids in items])

    # -- shared work ------------------------------------------------------------------------
    async def embed(self, texts: list[str], query: bool = False) -> np.ndarray:
        try:
            return await self.backend.embed(texts, query)
        except MemorayError:
            raise
        except Exception as exc:
            raise MemorayError(ErrorCode.EMBEDDING_FAILED, f"embedding failed: {exc}") from exc

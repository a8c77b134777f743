"""The wire contract: pydantic models for records and tool inputs/outputs (camelCase on the wire).

Inside the server a record is a plain dict with snake_case keys (memoray.records.Record); it is what
shards msgpack into LMDB. Models exist only at the edges, where validation pays for itself.
"""

from __future__ import annotations

import re
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator
from pydantic.alias_generators import to_camel

MAX_CONTENT_BYTES = 1024 * 1024
MAX_BATCH = 1000
MAX_LIMIT = 100
MAX_QUERY_CHARS = 8192
MAX_METADATA_BYTES = 64 * 1024
MAX_ID_FIELD = 256

Tier = Literal["session", "project", "preference", "pattern"]
Visibility = Literal["private", "shared"]
SearchMode = Literal["hybrid", "vector", "lexical"]

# Well-known event types; any lowercase slug is accepted so agents can add their own.
EVENT_TYPES = (
    "note", "decision", "code_change", "tool_event", "review", "prompt", "conversation",
    "session_summary", "error", "preference", "convention", "document",
)
_EVENT_RE = re.compile(r"^[a-z][a-z0-9_.\-]{0,63}$")

# The scoped fields every shard indexes (postings) and every filter may name.
SCOPED_FIELDS = ("event_type", "workspace_id", "session_id", "agent_id", "git_branch", "tier",
                 "visibility")
WIRE_TO_FIELD = {to_camel(f): f for f in SCOPED_FIELDS} | {"timestamp": "timestamp"}



class Wire(BaseModel):
    """camelCase on the wire, snake_case in Python; unknown fields are an error, never ignored."""

    model_config = ConfigDict(
        alias_generator=to_camel, populate_by_name=True, extra="forbid", str_strip_whitespace=False
    )


def check_text(v: str) -> str:
    """Storable text: valid Unicode (JSON may carry lone surrogates; UTF-8 cannot) and no NUL."""
    try:
        v.encode("utf-8")
    except UnicodeEncodeError:
        raise ValueError("must be valid Unicode (no lone surrogates)") from None
    if "\x00" in v:
        raise ValueError("must not contain NUL bytes")
    return v


def _check_content(v: str) -> str:
    if not v or not v.strip():
        raise ValueError("must not be empty")
    if len(v.encode("utf-8", "surrogatepass")) > MAX_CONTENT_BYTES:
        raise ValueError(f"is larger than {MAX_CONTENT_BYTES} bytes (1 MiB)")
    return check_text(v)


class CaptureItem(Wire):
    """One memory to store."""

    content: str = Field(description="The memory itself: a decision, a change, a lesson "
                         "(at most 1 MiB; long text is chunked).")
    event_type: str = Field(default="note", description=(
        "Kind of memory, a lowercase slug: decision, convention, preference, lesson, "
        "code_change, error, session_summary, note, ..."), examples=list(EVENT_TYPES))
    metadata: dict[str, Any] = Field(default_factory=dict, description=(
        "Free JSON (at most 64 KiB), filterable as metadata.<path>."))
    workspace_id: str = Field(default="default", min_length=1, max_length=MAX_ID_FIELD,
                              description="The project. Omit it to use this server entry's "
                              "project workspace (or the token's only one).")
    session_id: str | None = Field(default=None, max_length=MAX_ID_FIELD,
                                   description="The agent session that produced it.")
    agent_id: str | None = Field(default=None, max_length=MAX_ID_FIELD,
                                 description="The agent that produced it (owner of private "
                                 "memories).")
    git_branch: str | None = Field(default=None, max_length=MAX_ID_FIELD,
                                   description="The git branch it belongs to; memories of "
                                   "unmerged branches stay out of other branches' context.")
    git_commit: str | None = Field(default=None, max_length=64,
                                   description="HEAD's commit when it was captured.")
    tier: Tier | None = Field(default=None, description=(
        "Lifetime: session (short), project (default), preference or pattern (long-lived)."))
    visibility: Visibility | None = Field(default=None, description=(
        "private (only agentId sees it) or shared (default)."))
    ttl_seconds: int | None = Field(default=None, ge=1, le=100 * 365 * 86400,
                                    description="Expire after this many seconds.")
    timestamp: str | None = Field(default=None, description=(
        "ISO 8601 time it happened (for imports); default now."))
    idempotency_key: str | None = Field(default=None, max_length=MAX_ID_FIELD, description=(
        "A retry with the same key stores nothing new."))

    _content = field_validator("content")(classmethod(lambda cls, v: _check_content(v)))

    @field_validator("workspace_id", "session_id", "agent_id", "git_branch", "git_commit",
                     "timestamp", "idempotency_key")
    @classmethod
    def _text_fields(cls, v: str | None) -> str | None:
        return None if v is None else check_text(v)

    @field_validator("idempotency_key")
    @classmethod
    def _key(cls, v: str | None) -> str | None:
        if v is not None and any(ord(c) < 32 for c in v):
            raise ValueError("must not contain control characters")
        return v

    @field_validator("timestamp")
    @classmethod
    def _timestamp(cls, v: str | None) -> str | None:
        if v is not None:
            from memoray.errors import MemorayError
            from memoray.timeutil import parse_iso

            try:
                parse_iso(v)
            except MemorayError as exc:
                raise ValueError(exc.message.removeprefix("timestamp: ")) from None
        return v

    @model_validator(mode="after")
    def _private_needs_agent(self) -> CaptureItem:
        if self.visibility == "private" and not self.agent_id:
            raise ValueError("visibility: a private memory needs an agentId")
        return self

    @field_validator("event_type")
    @classmethod
    def _event_type(cls, v: str) -> str:
        if not _EVENT_RE.match(v):
            raise ValueError("must be a lowercase slug such as 'decision' or 'code_change'")
        return v

    @field_validator("metadata")
    @classmethod
    def _metadata(cls, v: dict[str, Any]) -> dict[str, Any]:
        import msgpack

        try:
            size = len(msgpack.packb(v))
        except (TypeError, ValueError) as exc:
            raise ValueError(f"must hold only JSON values ({exc})") from None
        if size > MAX_METADATA_BYTES:
            raise ValueError(f"is larger than {MAX_METADATA_BYTES} bytes")
        return v


class ContextTurn(Wire):
    """A record next to a retrieved memory in its session (retrieve's contextTurns): what was
    said or done just before or after it. offset: its place relative to the memory in the
    session's (timestamp, id) order: -2, -1 before it, 1, 2 after."""

    id: str
    content: str
    offset: int
    timestamp: str
    event_type: str
    metadata: dict[str, Any]
    tokens: int


class RetrievedMemory(Wire):
    id: str
    content: str
    score: float
    metadata: dict[str, Any]
    timestamp: str
    event_type: str
    session_id: str | None = None
    workspace_id: str
    git_branch: str | None = None
    agent_id: str | None = None
    tier: str | None = None
    parent_id: str | None = None
    chunk_index: int | None = None
    chunk_count: int | None = None
    # With contextTurns > 0: the records around this one in its session, in order, and what
    # they cost (tokens, memoray.tokens); None when context was not asked for.
    context: list[ContextTurn] | None = None
    context_tokens: int | None = None


class CaptureResult(Wire):
    ids: list[str]
    chunks: int = 0
    deduplicated: bool = False
    redactions: dict[str, int] = Field(default_factory=dict)


class BatchCaptureResult(Wire):
    ids: list[list[str]]
    count: int
    redactions: dict[str, int] = Field(default_factory=dict)


class DeleteResult(Wire):
    id: str
    deleted: bool
    chunks_deleted: int = 0

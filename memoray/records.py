"""What a shard stores for one memory: the record, msgpack-encoded in LMDB (sealed when
encryption is on). snake_case keys; timestamps are Unix seconds. Wire models (camelCase) live in
memoray/models.py; this is the inside shape every layer passes around."""

from __future__ import annotations

from typing import Any, TypedDict


class Record(TypedDict, total=False):
    id: str
    content: str  # absent in the slim rows the postings keep
    content_hash: str
    event_type: str
    metadata: dict[str, Any]
    workspace_id: str
    session_id: str | None
    agent_id: str | None
    git_branch: str | None
    git_commit: str | None
    tier: str
    visibility: str  # "shared" | "private"
    timestamp: float
    created_at: float
    updated_at: float
    expires_at: float | None
    parent_id: str | None  # documents: the parent id shared by every chunk
    chunk_index: int | None
    chunk_count: int | None
    chunk_overlap: int
    merge_count: int
    merged_ids: list[str]
    previous_content: str
    idempotency_key: str | None
    score: float  # set on retrieved copies only, never stored


def slim(record: Record) -> Record:
    """What the postings keep per label: everything but the content."""
    return {k: v for k, v in record.items() if k != "content"}  # type: ignore[return-value]

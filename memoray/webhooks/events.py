"""The outbox entry a shard writes in the same LMDB transaction as a change.

An entry carries what a receiver needs to act (ids, workspace, kind) and never the content or
the metadata: a subscription that asks for content gets it, redacted, fetched at delivery time.
Event ids are derived from the change itself (kind, memory id, the record's version), so every
replica of a shard writes the same id for the same change and a re-delivery after a fail-over
carries the id the receiver has already seen.
"""

from __future__ import annotations

import hashlib
import time
from typing import Any, Literal, TypedDict

EventType = Literal["memory.captured", "memory.updated", "memory.deleted", "memory.expired",
                    "memory.shared"]
EVENT_TYPES: tuple[str, ...] = ("memory.captured", "memory.updated", "memory.deleted",
                                "memory.expired", "memory.shared")
TEST_EVENT = "webhook.test"  # sent by the `test` admin call only; never subscribed to


class Event(TypedDict, total=False):
    id: str            # evt_<26 hex>: stable for one change, on every replica
    type: str          # one of EVENT_TYPES
    at: float          # Unix seconds, when the shard committed it
    memory_id: str
    workspace_id: str
    event_type: str | None   # the memory's eventType (decision, code_change, ...)
    git_branch: str | None
    session_id: str | None
    agent_id: str | None
    parent_id: str | None
    visibility: str | None
    chunks: int | None


def event_id(kind: str, memory_id: str, version: Any) -> str:
    digest = hashlib.blake2b(f"{kind}|{memory_id}|{version!r}".encode(), digest_size=13)
    return "evt_" + digest.hexdigest()


def from_record(kind: str, record: dict, now: float | None = None) -> Event:
    """The event for one change of `record` (the new body, or the deleted one)."""
    version = record.get("updated_at") or record.get("created_at") or record.get("timestamp")
    return Event(id=event_id(kind, record["id"], version), type=kind,
                 at=time.time() if now is None else now, memory_id=record["id"],
                 workspace_id=record.get("workspace_id", ""),
                 event_type=record.get("event_type"), git_branch=record.get("git_branch"),
                 session_id=record.get("session_id"), agent_id=record.get("agent_id"),
                 parent_id=record.get("parent_id"), visibility=record.get("visibility"),
                 chunks=record.get("chunk_count"))


def is_document_head(record: dict) -> bool:
    """One event per memory: a chunked document is announced by its first chunk only."""
    return record.get("chunk_index") in (None, 0)

"""A capture item turned into the records to store: redacted, chunked when long, with its tier,
TTL and id (minted on the shard its idempotency key hashes to, so the key check and the write are
one shard transaction). Pure CPU work with no I/O: the capture path runs it off the event loop."""

from __future__ import annotations

import hashlib
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from memoray import lifecycle
from memoray.chunking import split_document
from memoray.errors import invalid
from memoray.ids import new_id, new_id_on_shard, shard_for
from memoray.models import CaptureItem
from memoray.records import Record
from memoray.routing import Routing
from memoray.timeutil import parse_iso

CHUNK_THRESHOLD_CHARS = 8000
CHUNK_MAX_CHARS = 4000
CHUNK_OVERLAP = 200


CHUNK_KEY_SEPARATOR = "\x1f"  # no caller key may contain it (memoray.models checks)


def chunk_key(key: str | None, index: int) -> str | None:
    """A document's chunk keys: the document's own key on chunk 0 (so a retried document is
    recognised by its first chunk), then keys in a namespace no caller key can reach."""
    if not key:
        return None
    return key if index == 0 else f"{key}{CHUNK_KEY_SEPARATOR}{index}"


def content_hash(text: str) -> str:
    return hashlib.sha256(" ".join(text.split()).encode()).hexdigest()


@dataclass
class Prepared:
    """One capture item turned into the records to store (one, or several chunks)."""

    records: list[Record]
    redactions: Counter = field(default_factory=Counter)


def redact_text(redactor: Any, text: str) -> tuple[str, Counter]:
    if redactor is None:
        return text, Counter()
    res = redactor.redact(text)
    return res.text, Counter(res.counts)


def redact_value(redactor: Any, value: dict) -> tuple[dict, Counter]:
    if redactor is None or not value:
        return value, Counter()
    out, counts = redactor.redact_value(value)
    return out, Counter(counts)


def prepare_item(item: CaptureItem, now: float, *, shards: int | Routing, redactor: Any,
                 ttl_overrides: Any = None) -> Prepared:
    content, red = redact_text(redactor, item.content)
    metadata, mred = redact_value(redactor, item.metadata)
    red.update(mred)
    # Every stored string is redacted, identifiers included (a session id or a branch name can
    # carry a pasted secret); the commit is a hash and the workspace an id the caller is bound to.
    idents = {"session_id": item.session_id, "agent_id": item.agent_id,
              "git_branch": item.git_branch}
    for name, value in idents.items():
        if value:
            idents[name], ired = redact_text(redactor, value)
            red.update(ired)
    ts = parse_iso(item.timestamp, "timestamp") if item.timestamp else now
    tier = item.tier or lifecycle.default_tier(item.event_type)
    ttl = item.ttl_seconds if item.ttl_seconds is not None else lifecycle.default_ttl(
        item.event_type, tier, ttl_overrides)
    visibility = item.visibility or "shared"
    if visibility == "private" and not item.agent_id:
        raise invalid("visibility: a private memory needs an agentId")
    base: Record = {
        "event_type": item.event_type, "metadata": metadata, "workspace_id": item.workspace_id,
        "session_id": idents["session_id"], "agent_id": idents["agent_id"],
        "git_branch": idents["git_branch"], "git_commit": item.git_commit, "tier": tier,
        "visibility": visibility, "timestamp": ts, "created_at": now, "updated_at": now,
        "expires_at": (now + ttl) if ttl else None, "parent_id": None, "chunk_index": None,
        "chunk_count": None, "merge_count": 1, "merged_ids": [],
        "idempotency_key": item.idempotency_key,
    }
    key_shard = (shard_for(f"{item.workspace_id}\x00{item.idempotency_key}", shards)
                 if item.idempotency_key else None)
    if len(content) <= CHUNK_THRESHOLD_CHARS:
        rid = new_id_on_shard(key_shard, shards) if key_shard is not None else new_id()
        rec: Record = {"id": rid, "content": content, "content_hash": content_hash(content),
                       **base}
        return Prepared([rec], red)
    # A document: chunks share one shard (the parent's), so get-document is one call.
    parent = new_id_on_shard(key_shard, shards) if key_shard is not None else new_id()
    home = shard_for(parent, shards)
    chunks = split_document(content, max_chars=CHUNK_MAX_CHARS, overlap=CHUNK_OVERLAP)
    records: list[Record] = []
    for c in chunks:
        records.append({**base, "id": new_id_on_shard(home, shards), "content": c.content,
                        "content_hash": content_hash(c.content), "parent_id": parent,
                        "chunk_index": c.index, "chunk_count": len(chunks),
                        "chunk_overlap": c.overlap_prefix,
                        "idempotency_key": chunk_key(item.idempotency_key, c.index)})
    return Prepared(records, red)

"""Browsing, timelines, export and import: the use cases behind the web viewer and the CLI.

They sit on the MemoryService's backend and authorization helpers, so the same principal rules
hold as for the MCP tools: a caller sees only its workspaces, and other agents' private memories
only with the admin scope (export) or never (browse).
"""

from __future__ import annotations

import asyncio
import re
import time
from collections import Counter
from collections.abc import AsyncIterator
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from memoray import filters as flt
from memoray.errors import MemorayError, invalid
from memoray.ids import is_valid_id
from memoray.models import (
    MAX_BATCH,
    MAX_CONTENT_BYTES,
    MAX_ID_FIELD,
    Tier,
    Visibility,
    check_text,
)
from memoray.records import Record
from memoray.timeutil import parse_iso, to_iso

EXPORT_FORMAT = "memoray-export"
EXPORT_VERSION = 1
MAX_PAGE = 200
PREVIEW_CHARS = 600
_EVENT_RE = re.compile(r"^[a-z][a-z0-9_.\-]{0,63}$")
_CURSOR_RE = re.compile(r"^(-?\d+(?:\.\d+)?(?:e-?\d+)?)~([0-9A-Z]{26})$")


def browse_filter(workspace: str | None = None, branch: str | None = None,
                  event_type: str | None = None, start: str | None = None,
                  end: str | None = None) -> dict | None:
    """The wire filter for the viewer's facets (None when there are none)."""
    parts: dict[str, Any] = {}
    if workspace:
        parts["workspaceId"] = workspace
    if branch:
        parts["gitBranch"] = branch
    if event_type:
        parts["eventType"] = event_type
    if start:
        parts["startTime"] = start
    if end:
        parts["endTime"] = end
    return parts or None


def encode_cursor(record: dict) -> str:
    return f"{float(record['timestamp'])!r}~{record['id']}"


def decode_cursor(cursor: str | None) -> tuple[float, str] | None:
    if not cursor:
        return None
    m = _CURSOR_RE.match(cursor)
    if not m:
        raise invalid("cursor: not a cursor this server handed out")
    return float(m.group(1)), m.group(2)


def summary(record: dict, preview: int = PREVIEW_CHARS) -> dict:
    """A record for a list view: camelCase, ISO timestamp, content cut to a preview."""
    content = record.get("content") or ""
    out = {
        "id": record["id"], "eventType": record["event_type"],
        "workspaceId": record["workspace_id"], "gitBranch": record.get("git_branch"),
        "gitCommit": record.get("git_commit"), "sessionId": record.get("session_id"),
        "agentId": record.get("agent_id"), "tier": record.get("tier"),
        "visibility": record.get("visibility"), "timestamp": to_iso(record["timestamp"]),
        "metadata": record.get("metadata") or {}, "parentId": record.get("parent_id"),
        "chunkIndex": record.get("chunk_index"), "chunkCount": record.get("chunk_count"),
        "content": content[:preview], "truncated": len(content) > preview,
    }
    if "score" in record:
        out["score"] = record["score"]
    return out


async def recent(service: Any, caller: Any, filters: dict | None, limit: int,
                 cursor: str | None = None) -> dict:
    """Newest first across all shards, one page, with the cursor of the next page."""
    # validate
    if not 1 <= limit <= MAX_PAGE:
        raise invalid(f"limit: must be between 1 and {MAX_PAGE}")
    before = decode_cursor(cursor)
    parsed = flt.parse_filter(filters)
    # authorize, rate-limit
    await service.authorize(caller, "read", "browse")
    node = await service.scoped_filter(caller, parsed, "browse")
    await service.rate_limit(caller, (filters or {}).get("workspaceId"))
    # work
    parts = await service.backend.shards.each(lambda c: c.recent(node, limit, before))
    rows = sorted((r for p in parts for r in p),
                  key=lambda r: (float(r["timestamp"]), r["id"]), reverse=True)[:limit]
    nxt = encode_cursor(rows[-1]) if len(rows) == limit else None
    return {"memories": [summary(r) for r in rows], "count": len(rows), "nextCursor": nxt}


async def timeline(service: Any, caller: Any, filters: dict | None) -> dict:
    """Counts per UTC day and per event type, for the viewer's charts."""
    parsed = flt.parse_filter(filters)
    await service.authorize(caller, "read", "timeline")
    node = await service.scoped_filter(caller, parsed, "timeline")
    await service.rate_limit(caller, (filters or {}).get("workspaceId"))
    parts = await service.backend.shards.each(lambda c: c.day_counts(node))
    days: dict[str, Counter] = {}
    types: Counter = Counter()
    for part in parts:
        for day, per in part.items():
            days.setdefault(day, Counter()).update(per)
            types.update(per)
    return {"days": [{"day": d, "total": sum(c.values()), "eventTypes": dict(c)}
                     for d, c in sorted(days.items())],
            "eventTypes": dict(types.most_common()), "total": sum(types.values())}


# -- export ------------------------------------------------------------------------------------

def export_header(shards: int, workspace: str | None) -> dict:
    from memoray.version import version

    return {"format": EXPORT_FORMAT, "version": EXPORT_VERSION, "memoray": version(),
            "exportedAt": to_iso(time.time()), "shards": shards, "workspaceId": workspace}


async def export_records(service: Any, caller: Any, workspace: str | None = None,
                         page: int = 256) -> AsyncIterator[dict]:
    """Every stored record the caller may read, every field as stored, shard by shard in id
    order. Admins (the local user included) get private memories too: an export is a backup."""
    await service.authorize(caller, "read", "export", workspace)
    await service.rate_limit(caller, workspace)
    principal = caller.principal
    admin = principal.can("admin")
    for shard in service.backend.shards.clients:
        after: str | None = None
        while True:
            batch = await shard.scan(after, page)
            if not batch:
                break
            after = batch[-1]["id"]
            for rec in batch:
                if workspace is not None and rec["workspace_id"] != workspace:
                    continue
                if not principal.allows_workspace(rec["workspace_id"]):
                    continue
                if not admin and not service.can_see(caller, rec):
                    continue
                yield rec
            if len(batch) < page:
                break


# -- import ------------------------------------------------------------------------------------

class ImportRecord(BaseModel):
    """One exported record: the stored fields, snake_case, timestamps as epoch seconds. Unknown
    fields are refused so nothing is silently dropped."""

    model_config = ConfigDict(extra="forbid")

    id: str
    content: str
    event_type: str
    metadata: dict[str, Any] = Field(default_factory=dict)
    workspace_id: str = Field(min_length=1, max_length=MAX_ID_FIELD)
    session_id: str | None = Field(default=None, max_length=MAX_ID_FIELD)
    agent_id: str | None = Field(default=None, max_length=MAX_ID_FIELD)
    git_branch: str | None = Field(default=None, max_length=MAX_ID_FIELD)
    git_commit: str | None = Field(default=None, max_length=64)
    tier: Tier | None = None
    visibility: Visibility | None = None
    timestamp: float
    created_at: float | None = None
    updated_at: float | None = None
    expires_at: float | None = None
    parent_id: str | None = None
    chunk_index: int | None = Field(default=None, ge=0)
    chunk_count: int | None = Field(default=None, ge=1)
    chunk_overlap: int | None = Field(default=None, ge=0)
    content_hash: str | None = None
    merge_count: int | None = Field(default=None, ge=1)
    merged_ids: list[str] | None = None
    previous_content: str | None = None
    idempotency_key: str | None = Field(default=None, max_length=MAX_ID_FIELD * 2)

    @field_validator("id")
    @classmethod
    def _id(cls, v: str) -> str:
        if not is_valid_id(v):
            raise ValueError("not a memory id (26 Crockford base32 characters)")
        return v

    @field_validator("parent_id")
    @classmethod
    def _parent(cls, v: str | None) -> str | None:
        if v is not None and not is_valid_id(v):
            raise ValueError("not a memory id")
        return v

    @field_validator("content")
    @classmethod
    def _content(cls, v: str) -> str:
        if not v.strip():
            raise ValueError("must not be empty")
        if len(v.encode("utf-8", "surrogatepass")) > MAX_CONTENT_BYTES:
            raise ValueError("is larger than 1 MiB")
        return check_text(v)

    @field_validator("event_type")
    @classmethod
    def _event(cls, v: str) -> str:
        if not _EVENT_RE.match(v):
            raise ValueError("must be a lowercase slug such as 'decision'")
        return v

    @field_validator("workspace_id", "session_id", "agent_id", "git_branch", "git_commit",
                     "previous_content", "idempotency_key")
    @classmethod
    def _text(cls, v: str | None) -> str | None:
        return None if v is None else check_text(v)


# Every stored field round-trips (a field added to Record must be added here too).
assert set(Record.__annotations__) - {"score"} <= set(ImportRecord.model_fields)


def parse_import(raw: list[Any]) -> list[dict]:
    """Validate a batch of exported records; the first bad one fails the batch (nothing is
    stored), named by its position."""
    if not isinstance(raw, list) or not raw:
        raise invalid("records: must be a non-empty list")
    if len(raw) > MAX_BATCH:
        raise invalid(f"records: at most {MAX_BATCH} per request")
    out = []
    for i, item in enumerate(raw):
        if not isinstance(item, dict):
            raise invalid(f"records[{i}]: must be an object")
        try:
            rec = ImportRecord.model_validate(item)
        except ValidationError as exc:
            e = exc.errors()[0]
            loc = ".".join(str(p) for p in e["loc"])
            raise invalid(f"records[{i}].{loc}: {e['msg'].removeprefix('Value error, ')}") from None
        data = rec.model_dump(exclude_unset=True)
        out.append(data)
    return out

async def import_records(service: Any, caller: Any, raw: list[Any]) -> dict:
    """Store exported records under their own ids and timestamps. A record already stored
    exactly so is left alone; one stored differently is overwritten where it is; the rest are
    created on their home's shard (memoray/routing.py: a document's chunks stay together, with
    any shard count). Re-importing a file is therefore a no-op."""
    shards = service.backend.shards
    records = parse_import(raw)
    workspaces = sorted({r["workspace_id"] for r in records})
    for ws in workspaces:
        await service.authorize(caller, "write", "import", ws)
    await service.rate_limit(caller, workspaces[0] if len(workspaces) == 1 else None,
                             cost=len(records))
    found = await shards.get_many([r["id"] for r in records])
    existing: dict[int, dict | None] = {i: hit[1] if hit else None for i, hit in enumerate(found)}
    todo = [i for i, rec in enumerate(records) if existing[i] != rec]
    stored_ok: dict[int, bool] = {}
    if todo:
        vectors = await service.embed([records[i]["content"] for i in todo])
        pos = {i: j for j, i in enumerate(todo)}
        fresh = [i for i in todo if existing[i] is None]
        groups: dict[int, list[int]] = {}
        for i in todo:
            if existing[i] is not None:  # overwritten on the shard that holds it
                groups.setdefault(found[i][0], []).append(i)
        outs = await asyncio.gather(*[
            shards[s].put([records[i] for i in idx], vectors[[pos[i] for i in idx]])
            for s, idx in groups.items()])
        for idx, out in zip(groups.values(), outs):
            # False: its idempotency key already names another stored memory; nothing written
            stored_ok.update((i, bool(ok)) for i, (_mid, ok) in zip(idx, out))
        if fresh:
            routed = await shards.put_routed([records[i] for i in fresh],
                                             vectors[[pos[i] for i in fresh]])
            for i, out in zip(fresh, routed):
                if isinstance(out, BaseException):
                    raise out
                stored_ok[i] = bool(out[1])
    written = [i for i in todo if stored_ok[i]]
    created = sum(1 for i in written if existing[i] is None)
    await service.audited_many(caller, "import", [
        (ws, [records[i]["id"] for i in written if records[i]["workspace_id"] == ws])
        for ws in sorted({records[i]["workspace_id"] for i in written})])
    return {"received": len(records), "created": created, "updated": len(written) - created,
            "unchanged": len(records) - len(todo), "skipped": len(todo) - len(written)}


def check_header(header: Any) -> dict:
    if not isinstance(header, dict) or header.get("format") != EXPORT_FORMAT:
        raise invalid("not a memoray export (its first line must be the export header)")
    if header.get("version") != EXPORT_VERSION:
        raise invalid(f"export version {header.get('version')!r} is not supported "
                      f"(this server reads version {EXPORT_VERSION})")
    return header


def parse_time(value: str | None, name: str) -> str | None:
    if value:
        try:
            parse_iso(value, name)
        except MemorayError:
            raise invalid(f"{name}: must be an ISO 8601 time") from None
    return value

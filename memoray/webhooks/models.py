"""What crosses the admin boundary: a subscription as created (SubscriptionSpec, validated
before anything is stored) and as listed (never with its secret), and a delivery's payload."""

from __future__ import annotations

from typing import Any, TypedDict

from pydantic import BaseModel, ConfigDict, Field, field_validator
from pydantic.alias_generators import to_camel

from memoray.webhooks.events import EVENT_TYPES, Event

MAX_SUBSCRIPTIONS_PER_WORKSPACE = 20


class SubscriptionSpec(BaseModel):
    model_config = ConfigDict(alias_generator=to_camel, populate_by_name=True, extra="forbid")

    workspace_id: str = Field(min_length=1, max_length=256)
    url: str = Field(min_length=1, max_length=2048)
    events: list[str] = Field(default_factory=lambda: list(EVENT_TYPES), min_length=1)
    include_content: bool = False
    description: str | None = Field(None, max_length=200)

    @field_validator("events")
    @classmethod
    def _known(cls, value: list[str]) -> list[str]:
        unknown = sorted(set(value) - set(EVENT_TYPES))
        if unknown:
            raise ValueError(f"unknown event(s) {', '.join(unknown)}; known: "
                             f"{', '.join(EVENT_TYPES)}")
        return sorted(set(value), key=EVENT_TYPES.index)


class Subscription(TypedDict, total=False):
    id: str                 # sub_<ulid>
    workspace_id: str
    url: str
    events: list[str]
    include_content: bool
    description: str | None
    created_at: float
    created_by: str
    secret: bytes           # sealed with the store's key when encryption is on; never listed


def public(sub: Subscription, **extra: Any) -> dict:
    """The wire form (camelCase), without the secret."""
    out = {"id": sub["id"], "workspaceId": sub["workspace_id"], "url": sub["url"],
           "events": list(sub["events"]), "includeContent": bool(sub.get("include_content")),
           "description": sub.get("description"), "createdAt": sub.get("created_at"),
           "createdBy": sub.get("created_by")}
    out.update(extra)
    return out


def payload(event: Event, content: str | None = None) -> dict:
    """The JSON body of a delivery: {type, timestamp, data} as Standard Webhooks suggests."""
    from memoray.timeutil import to_iso

    data = {"eventId": event["id"], "memoryId": event.get("memory_id"),
            "workspaceId": event.get("workspace_id"), "eventType": event.get("event_type"),
            "gitBranch": event.get("git_branch"), "sessionId": event.get("session_id"),
            "agentId": event.get("agent_id"), "parentId": event.get("parent_id"),
            "visibility": event.get("visibility"), "chunks": event.get("chunks")}
    data = {k: v for k, v in data.items() if v is not None}
    if content is not None:
        data["content"] = content
    return {"type": event["type"], "timestamp": to_iso(event["at"]), "data": data}

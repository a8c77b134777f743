"""Defaults that shape a memory's life: its tier and its time to live, by event type.

Tool events are noise within days; prompts within weeks; decisions, conventions and preferences
are the lessons worth keeping, so they never expire unless asked to.
"""

from __future__ import annotations

DAY = 86400

# Event types the hooks and docs use; metrics label these by name and every other type "other"
# (labels come from a closed set: a caller must not mint series or learn another tenant's types).
KNOWN_EVENT_TYPES = frozenset({
    "note", "decision", "preference", "convention", "pattern", "code_change", "tool_event",
    "prompt", "conversation", "error", "fix", "review", "session_summary", "summary", "document",
})

DEFAULT_TIER = {
    "preference": "preference",
    "convention": "pattern",
    "tool_event": "session",
    "prompt": "session",
    "conversation": "session",
}

DEFAULT_TTL_BY_EVENT = {
    "tool_event": 7 * DAY,
    "prompt": 30 * DAY,
    "conversation": 90 * DAY,
    "error": 30 * DAY,
}

DEFAULT_TTL_BY_TIER = {
    "session": 14 * DAY,
    "project": None,
    "preference": None,
    "pattern": None,
}

# Ranking weight per tier: a preference or a convention outranks an old tool event.
TIER_WEIGHT = {"preference": 1.0, "pattern": 1.0, "project": 0.9, "session": 0.8}


def default_tier(event_type: str) -> str:
    return DEFAULT_TIER.get(event_type, "project")


def default_ttl(event_type: str, tier: str,
                overrides: dict[str, int | None] | None = None) -> int | None:
    """TTL in seconds, or None for no expiry. `overrides` maps event types or `tier:<name>`."""
    overrides = overrides or {}
    if event_type in overrides:
        return overrides[event_type]
    if f"tier:{tier}" in overrides:
        return overrides[f"tier:{tier}"]
    if event_type in DEFAULT_TTL_BY_EVENT:
        return DEFAULT_TTL_BY_EVENT[event_type]
    return DEFAULT_TTL_BY_TIER.get(tier)


# How specific an event type is: a merge keeps the more specific of the two (a decision merged
# into a tool event stays a decision). Unknown types rank with the specific ones.
_SPECIFICITY = {"tool_event": 0, "prompt": 0, "conversation": 0, "note": 1, "code_change": 2}
_TIER_STRENGTH = {"session": 0, "project": 1, "pattern": 2, "preference": 2}


def merged_retention(old: dict, event_type: str, tier: str,
                     expires_at: float | None) -> dict:
    """The event type, tier and expiry of a memory that absorbs another wording: the incoming
    type when it is more specific, the stronger tier, and the later expiry (None, never, wins)."""
    out_type = old.get("event_type") or event_type
    if _SPECIFICITY.get(event_type, 3) > _SPECIFICITY.get(out_type, 3):
        out_type = event_type
    out_tier = old.get("tier") or tier
    if _TIER_STRENGTH.get(tier, 1) > _TIER_STRENGTH.get(out_tier, 1):
        out_tier = tier
    old_exp = old.get("expires_at")
    out_exp = None if old_exp is None or expires_at is None else max(old_exp, expires_at)
    return {"event_type": out_type, "tier": out_tier, "expires_at": out_exp}

"""Defaults that shape a memory's life: its tier and its time to live, by event type.

Tool events are noise within days; prompts within weeks; decisions, conventions and preferences
are the lessons worth keeping, so they never expire unless asked to.
"""

from __future__ import annotations

DAY = 86400

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

"""ISO 8601 at the edges, float epoch seconds inside (sortable, cheap to compare)."""

from __future__ import annotations

from datetime import UTC, datetime

from memoray.errors import invalid


def now() -> float:
    return datetime.now(UTC).timestamp()


def parse_iso(value: str | float | int | datetime, field: str = "timestamp") -> float:
    if isinstance(value, bool):
        raise invalid(f"{field}: expected an ISO 8601 timestamp, got a boolean")
    if isinstance(value, (int, float)):
        return float(value)
    if isinstance(value, datetime):
        dt = value
    elif isinstance(value, str):
        text = value.strip()
        if text.endswith("Z") or text.endswith("z"):
            text = text[:-1] + "+00:00"
        try:
            dt = datetime.fromisoformat(text)
        except ValueError:
            raise invalid(f"{field}: {value!r} is not an ISO 8601 timestamp") from None
    else:
        raise invalid(f"{field}: expected an ISO 8601 timestamp")
    if dt.tzinfo is None:
        dt = dt.replace(tzinfo=UTC)
    return dt.timestamp()


def to_iso(ts: float) -> str:
    return datetime.fromtimestamp(ts, UTC).isoformat().replace("+00:00", "Z")

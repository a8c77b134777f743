"""ISO 8601 at the edges, float epoch seconds inside (sortable, cheap to compare)."""

from __future__ import annotations

from datetime import UTC, datetime

from memoray.errors import invalid

# The range every stored timestamp must render in (UTC): year 1 to 9999. An offset can push a
# valid local time outside it ("9999-12-31T23:59:59-14:00" is year 10000 in UTC).
MIN_TS = datetime(1, 1, 1, tzinfo=UTC).timestamp()
MAX_TS = datetime(9999, 12, 31, 23, 59, 59, tzinfo=UTC).timestamp()


def now() -> float:
    return datetime.now(UTC).timestamp()


def parse_iso(value: str | float | int | datetime, field: str = "timestamp") -> float:
    if isinstance(value, bool):
        raise invalid(f"{field}: expected an ISO 8601 timestamp, got a boolean")
    if isinstance(value, (int, float)):
        return float(value)  # epoch seconds (filters check them for finiteness themselves)
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
    try:
        ts = dt.timestamp()
    except (OverflowError, ValueError):
        raise invalid(f"{field}: {value!r} is outside years 1-9999 in UTC") from None
    return _in_range(ts, field, value)


def _in_range(ts: float, field: str, value: object) -> float:
    if not (MIN_TS <= ts <= MAX_TS) or ts != ts:
        raise invalid(f"{field}: {value!r} is outside years 1-9999 in UTC")
    return ts


def to_iso(ts: float) -> str:
    """ISO 8601 UTC. A stored value outside the renderable range (written before the range was
    checked at the edge) is clamped, so one bad record never breaks a query for others."""
    try:
        return datetime.fromtimestamp(min(max(ts, MIN_TS), MAX_TS), UTC).isoformat().replace(
            "+00:00", "Z")
    except (OverflowError, ValueError, OSError):
        return "0001-01-01T00:00:00Z"

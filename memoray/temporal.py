"""Dates in a query -> the time span it asks about, for a date-proximity boost at retrieval.

"in May 2023", "on 13 October, 2023", "October 13, 2023", "2023-05-08", "in 2022", "last week",
"yesterday", "3 days ago", "last month", "last year", "this week": each becomes [start, end)
in epoch seconds (UTC); a month without a year or a weekday is not resolved (too ambiguous).
Relative expressions count back from `now`. An event the query orders itself against ("before
the migration", "since the outage") is an Anchor: the replica looks the event up and splits the
timeline at its time (anchored_span). `date_terms` gives the lexical analyzer index terms for
absolute dates.

Library trade-off: dateparser's search_dates finds more phrasings but costs milliseconds per
query and guesses (it reads "may" the verb as a month); parsedatetime likewise. A retrieve runs
this on every query, so a few precompiled regexes over the phrasings agents and people use,
no guessing, cost microseconds.
"""

from __future__ import annotations

import calendar
import math
import re
from datetime import UTC, datetime, timedelta
from typing import NamedTuple

MONTHS = {m.lower(): i for i, m in enumerate(calendar.month_name) if m}
MONTHS.update({m.lower(): i for i, m in enumerate(calendar.month_abbr) if m})
MONTHS.pop("may", None)  # "may" alone is usually the verb; "in May" / "May 2023" below
_MON = r"(january|february|march|april|may|june|july|august|september|october|november|" \
       r"december|jan|feb|mar|apr|jun|jul|aug|sep|sept|oct|nov|dec)"
_ISO = re.compile(r"\b(\d{4})-(\d{2})-(\d{2})\b")
_DMY = re.compile(rf"\b(\d{{1,2}})(?:st|nd|rd|th)?\s+{_MON},?\s+(\d{{4}})\b", re.I)
_MDY = re.compile(rf"\b{_MON}\s+(\d{{1,2}})(?:st|nd|rd|th)?,?\s+(\d{{4}})\b", re.I)
_MY = re.compile(rf"\b{_MON},?\s+(\d{{4}})\b", re.I)
_IN_MONTH = re.compile(rf"\b(?:in|during|since|by)\s+{_MON}\b(?!\s+\d)", re.I)
_YEAR = re.compile(r"\b(?:in|during|of|since)\s+((?:19|20)\d{2})\b")
_AGO = re.compile(r"\b(\d+|a|one|two|three|four|five|six)\s+(day|week|month|year)s?\s+ago\b",
                  re.I)
_WORDS = {"a": 1, "one": 1, "two": 2, "three": 3, "four": 4, "five": 5, "six": 6}
DAY = 86400.0


def _month_num(name: str) -> int:
    name = name.lower()
    return 5 if name == "may" else MONTHS[name[:3] if name.startswith("sept") else name]


def _month_span(year: int, month: int) -> tuple[float, float]:
    start = datetime(year, month, 1, tzinfo=UTC)
    end = datetime(year + (month == 12), month % 12 + 1, 1, tzinfo=UTC)
    return start.timestamp(), end.timestamp()


def _day_span(year: int, month: int, day: int) -> tuple[float, float] | None:
    try:
        start = datetime(year, month, day, tzinfo=UTC).timestamp()
    except ValueError:
        return None
    return start, start + DAY


def date_terms(text: str) -> list[str]:
    """Index terms for the absolute dates `text` names: `@YYYY-MM-DD` for a day (plus its
    `@YYYY-MM`), `@YYYY-MM` for a month with its year; in order of appearance, each once.
    Differently written dates meet ("8 May, 2023" = "May 8, 2023" = "2023-05-08"), and a query
    naming a month meets every record naming a day in it. Impossible dates yield nothing."""
    if not any(c.isdigit() for c in text):
        return []
    found: list[tuple[int, str]] = []
    for rx, order in ((_ISO, "ymd"), (_DMY, "dmy"), (_MDY, "mdy")):
        for m in rx.finditer(text):
            y, mo, d = _ymd(m, order)
            if _day_span(y, mo, d) is not None:
                found += [(m.start(), f"@{y:04d}-{mo:02d}-{d:02d}"),
                          (m.start(), f"@{y:04d}-{mo:02d}")]
    for m in _MY.finditer(text):
        mo = _month_num(m[1])
        found.append((m.start(), f"@{int(m[2]):04d}-{mo:02d}"))
    found.sort(key=lambda x: x[0])
    return list(dict.fromkeys(term for _, term in found))


def _ymd(m: re.Match, order: str) -> tuple[int, int, int]:
    if order == "ymd":
        return int(m[1]), int(m[2]), int(m[3])
    if order == "dmy":
        return int(m[3]), _month_num(m[2]), int(m[1])
    return int(m[3]), _month_num(m[1]), int(m[2])


def query_time_span(query: str, now: float) -> tuple[float, float] | None:
    """The [start, end) epoch span a query's date expression names, None when it names none.
    The first (most specific) match wins: a full date, then a month with its year, a month
    alone (the latest one not after `now`), a year, then relative expressions."""
    if m := _ISO.search(query):
        return _day_span(int(m[1]), int(m[2]), int(m[3]))
    if m := _DMY.search(query):
        return _day_span(int(m[3]), _month_num(m[2]), int(m[1]))
    if m := _MDY.search(query):
        return _day_span(int(m[3]), _month_num(m[1]), int(m[2]))
    if m := _MY.search(query):
        return _month_span(int(m[2]), _month_num(m[1]))
    today = datetime.fromtimestamp(now, UTC)
    if m := _IN_MONTH.search(query):
        month = _month_num(m[1])
        year = today.year if month <= today.month else today.year - 1
        return _month_span(year, month)
    if m := _YEAR.search(query):
        year = int(m[1])
        return datetime(year, 1, 1, tzinfo=UTC).timestamp(), datetime(
            year + 1, 1, 1, tzinfo=UTC).timestamp()
    low = query.lower()
    midnight = datetime(today.year, today.month, today.day, tzinfo=UTC)
    if "yesterday" in low:
        return (midnight - timedelta(days=1)).timestamp(), midnight.timestamp()
    if "today" in low:
        return midnight.timestamp(), now
    if m := _AGO.search(query):
        n = _WORDS.get(m[1].lower()) or int(m[1])
        unit = {"day": 1, "week": 7, "month": 30, "year": 365}[m[2].lower()]
        centre = now - n * unit * DAY
        return centre - unit * DAY / 2, centre + unit * DAY / 2
    for phrase, days in (("last week", 7), ("past week", 7), ("this week", 7),
                         ("last month", 31), ("past month", 31), ("last year", 365),
                         ("past year", 365), ("recently", 14), ("lately", 14)):
        if phrase in low:
            back = 2 * days if phrase.startswith("last") else days
            return now - back * DAY, now
    return None


_ANCHOR = re.compile(r"\b(before|after|since|prior to|following)\s+(.+?)\s*(?:[?!.;,]|$)", re.I)
_LEAD = re.compile(r"^(?:the|a|an|our|my|we|i|you|they|he|she|it)\s+", re.I)


class Anchor(NamedTuple):
    """"before the migration": records before the time of the event the query names."""

    relation: str  # "before" | "after"
    text: str  # the event, to look up ("the migration")


def query_anchor(query: str) -> Anchor | None:
    """An event a query orders itself against ("before the migration", "after we upgraded
    numpy", "since the outage"), None when there is none or when it is a date (a date names
    its own span, see query_time_span). The event's time is found by looking it up."""
    m = _ANCHOR.search(query)
    if not m:
        return None
    text = m[2].strip()
    if not text or query_time_span(text, 0.0) is not None or any(c.isdigit() for c in text):
        return None
    core = _LEAD.sub("", text)
    if len(core) < 3:
        return None
    relation = "before" if m[1].lower() in ("before", "prior to") else "after"
    return Anchor(relation, text)


def anchored_span(anchor: Anchor, at: float) -> tuple[float, float]:
    """The span on the asked side of the event found at `at` (the event itself included)."""
    return (-math.inf, at) if anchor.relation == "before" else (at, math.inf)


def proximity(ts, span: tuple[float, float], scale_s: float):
    """1 inside the span, decaying as exp(-distance / scale_s) outside (numpy arrays)."""
    import numpy as np

    ts = np.asarray(ts, dtype=np.float64)
    lo, hi = span
    dist = np.maximum(0.0, np.maximum(lo - ts, ts - hi))
    return np.exp(-dist / max(scale_s, 1.0))

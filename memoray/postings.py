"""Per-shard secondary indexes: scoped field -> labels, and a timestamp order.

A shard rebuilds these from its records on start and keeps them in step with every write. They
answer the indexed leaves of a filter (see memoray.filters.evaluate) without touching rows, and
keep a slim copy of each record (no content) so the residual, non-indexed leaves can still be
checked without a trip to LMDB. Single-threaded: the shard serializes access.

Memory: a slim row is kept msgpack-encoded (a few hundred bytes) rather than as a dict of
Python objects (about three times that), and decoded when read; readers touch few rows (a
search's pool, a filter's residual), so the decode costs microseconds where the dicts cost
about 800 bytes per record held.

Labels are the shard's int64 row numbers. Every array handed out is sorted, unique int64; the
cached ones are read-only, so a caller can never corrupt the cache.
"""

from __future__ import annotations

import math
import time
from collections.abc import Iterable
from typing import Any

import msgpack
import numpy as np
from sortedcontainers import SortedList

from memoray.models import SCOPED_FIELDS

NONE_KEY = "__none__"  # stats() key for "field missing or None" (values are strings otherwise)
N_QUANTILES = 21  # q0, q5, ..., q100 of the timestamps

_EMPTY = np.empty(0, dtype=np.int64)
_EMPTY.flags.writeable = False


def _frozen(arr: np.ndarray) -> np.ndarray:
    arr.flags.writeable = False
    return arr


class Postings:
    """Inverted lists for SCOPED_FIELDS, a sorted (timestamp, label) index, and slim rows."""

    __slots__ = ("_all", "_codes", "_counts", "_eq_cache", "_index", "_rows", "_stats", "_ts",
                 "_ts_arrays")

    def __init__(self) -> None:
        self._rows: dict[int, bytes] = {}  # label -> msgpack of the slim row
        # Per scoped field: value -> code, a code per label (int32, -1: no such label) and a
        # count per value. 4 bytes per label and field, where sets of labels cost ~50.
        self._index: dict[str, dict[Any, int]] = {f: {} for f in SCOPED_FIELDS}
        self._codes: dict[str, np.ndarray] = {f: np.full(0, -1, np.int32) for f in SCOPED_FIELDS}
        self._counts: dict[str, dict[Any, int]] = {f: {} for f in SCOPED_FIELDS}
        self._ts: SortedList = SortedList()  # (timestamp, label)
        self._eq_cache: dict[tuple[str, Any], np.ndarray] = {}
        self._all: np.ndarray | None = None
        self._ts_arrays: tuple[np.ndarray, np.ndarray] | None = None  # labels in timestamp order
        self._stats: dict[str, Any] | None = None

    # -- mutation -------------------------------------------------------------------------------

    def add(self, label: int, record: dict[str, Any]) -> None:
        """Index one record; re-adding a label replaces what it had."""
        label = int(label)
        if label in self._rows:
            self.remove(label)
        row = {k: v for k, v in record.items() if k != "content"}
        self._rows[label] = _pack(row)
        for field in SCOPED_FIELDS:
            value = row.get(field)
            codes_of = self._index[field]
            code = codes_of.get(value)
            if code is None:
                code = codes_of[value] = len(codes_of)
            codes = self._codes[field]
            if label >= len(codes):
                grown = np.full(max(1024, 2 * len(codes), label + 1), -1, np.int32)
                grown[: len(codes)] = codes
                self._codes[field] = codes = grown
            codes[label] = code
            counts = self._counts[field]
            counts[value] = counts.get(value, 0) + 1
            self._eq_cache.pop((field, value), None)
        ts = row.get("timestamp")
        if ts is not None:
            self._ts.add((float(ts), label))
            self._ts_arrays = None
        self._all = None
        self._stats = None

    def remove(self, label: int) -> None:
        """Undo add(); unknown labels are a no-op (deletes may race with expiry)."""
        label = int(label)
        packed = self._rows.pop(label, None)
        if packed is None:
            return
        row = _unpack(packed)
        for field in SCOPED_FIELDS:
            value = row.get(field)
            self._codes[field][label] = -1
            counts = self._counts[field]
            counts[value] -= 1
            if not counts[value]:
                del counts[value]  # so values() and stats() only list values still present
            self._eq_cache.pop((field, value), None)
        ts = row.get("timestamp")
        if ts is not None:  # float() of the stored value: exactly what add() inserted
            self._ts.remove((float(ts), label))
            self._ts_arrays = None
        self._all = None
        self._stats = None

    # -- lookups --------------------------------------------------------------------------------

    def __len__(self) -> int:
        return len(self._rows)

    def __contains__(self, label: object) -> bool:
        return label in self._rows

    def row(self, label: int) -> dict[str, Any]:
        """The slim record (everything but content), a fresh dict; KeyError for an unknown
        label."""
        return _unpack(self._rows[int(label)])

    def values(self, field: str) -> list[Any]:
        """Distinct values present for a scoped field (None included): lets range leaves on
        strings be answered from the dictionary, not the rows."""
        self._index_of(field)
        return list(self._counts[field])

    def all_labels(self) -> np.ndarray:
        if self._all is None:
            arr = np.fromiter(self._rows, dtype=np.int64, count=len(self._rows))
            arr.sort()
            self._all = _frozen(arr)
        return self._all

    def labels_eq(self, field: str, value: Any) -> np.ndarray:
        """Labels whose field equals value; None means the field is missing or None."""
        if field == "timestamp":
            if value is None:
                return np.setdiff1d(
                    self.all_labels(), self.labels_ts_range(None, True, None, True),
                    assume_unique=True,
                )
            return self.labels_ts_range(value, True, value, True)
        key = (field, value)
        cached = self._eq_cache.get(key)
        if cached is not None:
            return cached
        code = self._index_of(field).get(value)
        if code is None or not self._counts[field].get(value):
            return _EMPTY  # not cached: arbitrary query values must not grow the cache
        arr = np.flatnonzero(self._codes[field] == code).astype(np.int64)  # sorted, unique
        self._eq_cache[key] = _frozen(arr)
        return arr

    def labels_in(self, field: str, values: Iterable[Any]) -> np.ndarray:
        """Labels whose field equals any of values (None as in labels_eq)."""
        arrays = [self.labels_eq(field, v) for v in _distinct(values)]
        # deduped, not just merged: 1, 1.0 and True are one dict key but distinct filter values.
        return union_sorted(arrays)

    def labels_ts_range(
        self, lo: float | None, lo_incl: bool, hi: float | None, hi_incl: bool
    ) -> np.ndarray:
        """Labels with lo <(=) timestamp <(=) hi; a None bound is open. Records without a
        timestamp never match."""
        sl = self._ts
        n = len(sl)
        i = 0 if lo is None else sl.bisect_left((lo,) if lo_incl else (lo, math.inf))
        j = n if hi is None else sl.bisect_left((hi, math.inf) if hi_incl else (hi,))
        if j <= i:
            return _EMPTY
        if j - i == len(self._rows):
            return self.all_labels()
        if self._ts_arrays is None and (j - i) * 4 < n:
            # Small slice right after a write: cheaper than rebuilding the arrays.
            out = np.fromiter((lab for _, lab in sl.islice(i, j)), dtype=np.int64, count=j - i)
        else:
            out = self._ts_order()[1][i:j].copy()
        out.sort()
        return out

    def newest(self, labels: np.ndarray, limit: int,
               before: tuple[float, str] | None = None) -> list[int]:
        """Up to `limit` of `labels`, newest first by (timestamp, id), strictly below `before`
        (a (timestamp, id) cursor). Ties on timestamp (a batch shares one) are ordered by id so
        paging never skips or repeats a record."""
        ts, order = self._ts_order()
        j = len(ts) if before is None else int(np.searchsorted(ts, before[0], side="right"))
        cand = order[:j]
        cand = cand[np.isin(cand, labels, assume_unique=True)]
        picked: list[tuple[float, str, int]] = []
        for label in cand[::-1]:
            row = self.row(int(label))
            t = float(row["timestamp"])
            if before is not None and t == before[0] and row["id"] >= before[1]:
                continue
            if len(picked) >= limit and t < picked[-1][0]:
                break
            picked.append((t, row["id"], int(label)))
        picked.sort(key=lambda p: (p[0], p[1]), reverse=True)
        return [p[2] for p in picked[:limit]]

    def day_counts(self, labels: np.ndarray) -> dict[str, dict[str, int]]:
        """{"YYYY-MM-DD" (UTC): {event_type: count}} over `labels`: the viewer's timeline."""
        out: dict[str, dict[str, int]] = {}
        for label in labels:
            row = self.row(int(label))
            day = time.strftime("%Y-%m-%d", time.gmtime(float(row["timestamp"])))
            per = out.setdefault(day, {})
            per[row["event_type"]] = per.get(row["event_type"], 0) + 1
        return out

    def stats(self) -> dict[str, Any]:
        """{"total", "fields": {field: {value or "__none__": count}}, "ts_quantiles": [21]}.

        Cached until the next write; the returned dict is shared, so treat it as read-only.
        """
        if self._stats is None:
            fields = {
                field: {(NONE_KEY if v is None else v): n for v, n in counts.items()}
                for field, counts in self._counts.items()
            }
            self._stats = {
                "total": len(self._rows),
                "fields": fields,
                "ts_quantiles": self._quantiles(),
            }
        return self._stats

    # -- internals ------------------------------------------------------------------------------

    def _index_of(self, field: str) -> dict[Any, int]:
        index = self._index.get(field)
        if index is None:
            raise ValueError(f"{field!r} is not an indexed field (indexed: {SCOPED_FIELDS})")
        return index

    def _ts_order(self) -> tuple[np.ndarray, np.ndarray]:
        if self._ts_arrays is None:
            n = len(self._ts)
            ts = np.fromiter((t for t, _ in self._ts), dtype=np.float64, count=n)
            labels = np.fromiter((lab for _, lab in self._ts), dtype=np.int64, count=n)
            self._ts_arrays = (_frozen(ts), _frozen(labels))
        return self._ts_arrays

    def _quantiles(self) -> list[float]:
        """Linear-interpolated quantiles read straight off the SortedList: 42 O(log n) lookups."""
        sl = self._ts
        n = len(sl)
        if n == 0:
            return []
        out = []
        for k in range(N_QUANTILES):
            pos = k * (n - 1) / (N_QUANTILES - 1)
            a = int(pos)
            t = sl[a][0]
            frac = pos - a
            if frac:
                t += frac * (sl[a + 1][0] - t)
            out.append(float(t))
        return out


# A slim row is packed as a msgpack array: a bitmask of which ROW_KEYS it has, their values in
# ROW_KEYS order, then (only if there are any) a map of its other keys. The key names, repeated
# in every row, were about 200 of a row's ~370 bytes. In memory only (rebuilt from LMDB on start).
ROW_KEYS = ("id", "content_hash", "event_type", "metadata", "workspace_id", "session_id",
            "agent_id", "git_branch", "git_commit", "tier", "visibility", "timestamp",
            "created_at", "updated_at", "expires_at", "parent_id", "chunk_index", "chunk_count",
            "chunk_overlap", "merge_count", "merged_ids", "previous_content", "idempotency_key")
_ROW_KEY_SET = frozenset(ROW_KEYS)


def _pack(row: dict[str, Any]) -> bytes:
    mask = 0
    values: list[Any] = [0]
    for i, k in enumerate(ROW_KEYS):
        if k in row:
            mask |= 1 << i
            values.append(row[k])
    values[0] = mask
    if len(values) - 1 < len(row):
        values.append({k: v for k, v in row.items() if k not in _ROW_KEY_SET})
    return msgpack.packb(values, use_bin_type=True)


_KEYS_OF_MASK: dict[int, tuple[str, ...]] = {}  # a mask's keys (few distinct masks occur)


def _keys_of(mask: int) -> tuple[str, ...]:
    keys = _KEYS_OF_MASK.get(mask)
    if keys is None:
        keys = tuple(k for i, k in enumerate(ROW_KEYS) if mask >> i & 1)
        if len(_KEYS_OF_MASK) < 4096:
            _KEYS_OF_MASK[mask] = keys
    return keys


def _unpack(blob: bytes) -> dict[str, Any]:
    values = msgpack.unpackb(blob, raw=False, strict_map_key=False)
    keys = _keys_of(values[0])
    row = dict(zip(keys, values[1:]))
    if len(values) > len(keys) + 1:
        row.update(values[-1])
    return row


def union_sorted(arrays: list[np.ndarray]) -> np.ndarray:
    """Union of sorted unique int64 arrays. A stable sort of concatenated sorted runs is a
    linear merge (timsort), ~40x faster than np.union1d's quicksort on 50k labels."""
    arrays = [a for a in arrays if len(a)]
    if not arrays:
        return _EMPTY
    if len(arrays) == 1:
        return arrays[0]
    out = np.concatenate(arrays)
    out.sort(kind="stable")
    keep = np.empty(len(out), dtype=bool)
    keep[0] = True
    np.not_equal(out[1:], out[:-1], out=keep[1:])
    return out[keep]


def _distinct(values: Iterable[Any]) -> list[Any]:
    """Dedupe keeping type apart (True, 1 and 1.0 hash alike but are different filter values)."""
    seen: dict[tuple[type, Any], Any] = {}
    for v in values:
        seen.setdefault((type(v), v), v)
    return list(seen.values())

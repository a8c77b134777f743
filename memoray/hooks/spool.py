"""The local spool: every captured item is appended here first, then flushed to the server.

Appending first and sending from the spool keeps the order of items across hooks and survives
a server outage or a killed hook. Files in the spool directory:

- `spool.jsonl`: one CaptureItem per line, oldest first.
- `spool.meta`: `{"offset": bytes already acknowledged, "backoffUntil": epoch seconds,
  "strikes": uncoded failures at the head}`.
- `spool.lock`: flock held briefly around every change to the two files above (no network).
- `flush.lock`: flock held by the one hook flushing; others append and leave.

An item leaves the spool only after the server acknowledged it. A hook killed between the ack
and the offset update resends that batch next time, which the server's idempotency keys make
harmless. The spool is bounded (MEMORAY_SPOOL_MAX_BYTES, default 50 MB, roughly 100k hook
items): past it new items are dropped with a line on stderr, so an unreachable server can never
fill the disk.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import sys
import time
from collections.abc import Iterator
from pathlib import Path

from memoray.hooks.client import CallError, McpClient

TYPE_CHECKING = False
if TYPE_CHECKING:  # not at run time: typing's import costs every hook ~5 ms
    from typing import Any

BATCH_ITEMS = 100
BATCH_BYTES = 2 * 1024 * 1024
TIMEOUT_BACKOFF_S = 30.0  # a server that hangs would cost every hook its full timeout
# An error without a contract code (a server bug, a crashed actor) is retried this many times
# for the same spool head before it is treated like INVALID_INPUT: no item blocks forever.
UNKNOWN_RETRIES = 5
COMPACT_MIN_BYTES = 1024 * 1024


def log(message: str) -> None:
    print(f"memoray hook: {message}", file=sys.stderr)


class FlushResult:
    """What one flush did. (A plain class: importing dataclasses costs a hook several ms.)"""

    __slots__ = ("sent", "dropped", "pending", "skipped", "error")

    def __init__(self) -> None:
        self.sent = 0
        self.dropped = 0
        self.pending = False  # items remain in the spool
        self.skipped: str | None = None  # "busy" (another hook flushes) or "backoff"
        self.error: CallError | None = None


class Spool:
    def __init__(self, directory: Path, max_bytes: int = 50 * 1024 * 1024):
        self.dir = directory
        self.max_bytes = max_bytes
        self.data = directory / "spool.jsonl"
        self.meta_path = directory / "spool.meta"

    # -- locking and metadata ---------------------------------------------------------------

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        self.dir.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.dir / "spool.lock", os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)  # closing releases the lock

    def _meta(self) -> dict[str, Any]:
        try:
            meta = json.loads(self.meta_path.read_text(encoding="utf-8"))
            return meta if isinstance(meta, dict) else {}
        except (OSError, ValueError):
            return {}

    def _write_meta(self, meta: dict[str, Any]) -> None:
        tmp = self.meta_path.with_suffix(".meta.tmp")
        tmp.write_text(json.dumps(meta), encoding="utf-8")
        os.replace(tmp, self.meta_path)

    def _size(self) -> int:
        try:
            return self.data.stat().st_size
        except OSError:
            return 0

    def backoff_remaining(self) -> float:
        """Seconds until the server may be tried again (0 when it may be tried now)."""
        until = self._meta().get("backoffUntil")
        return max(0.0, float(until) - time.time()) if isinstance(until, (int, float)) else 0.0

    def set_backoff(self, seconds: float) -> None:
        with self._locked():
            meta = self._meta()
            meta["backoffUntil"] = time.time() + seconds
            self._write_meta(meta)

    def pending_bytes(self) -> int:
        offset = self._meta().get("offset", 0)
        return max(0, self._size() - (offset if isinstance(offset, int) else 0))

    def pending_items(self) -> list[dict[str, Any]]:
        """Everything not yet acknowledged (for tests and diagnostics; reads the whole spool)."""
        with self._locked():
            return [item for _, item in self._read_from(self._offset(), None, None)[0]]

    def _offset(self) -> int:
        offset = self._meta().get("offset", 0)
        return offset if isinstance(offset, int) and 0 <= offset <= self._size() else 0

    # -- append -------------------------------------------------------------------------------

    def append(self, items: list[dict[str, Any]]) -> int:
        """Append items (durably); returns how many fit under the bound."""
        if not items:
            return 0
        lines = [json.dumps(it, ensure_ascii=False, separators=(",", ":")).encode("utf-8") + b"\n"
                 for it in items]
        with self._locked():
            pending = self._size() - self._offset()
            keep: list[bytes] = []
            for line in lines:
                if pending + len(line) > self.max_bytes:
                    break
                keep.append(line)
                pending += len(line)
            if len(keep) < len(lines):
                log(f"spool full ({self.max_bytes} bytes pending): dropped {len(lines) - len(keep)}"
                    f" new item(s); is the server at MEMORAY_URL running?")
            if keep:
                fd = os.open(self.data, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
                try:
                    size = os.fstat(fd).st_size
                    prefix = b""
                    if size:  # a hook killed mid-write may have left a partial last line
                        with open(self.data, "rb") as f:
                            f.seek(size - 1)
                            prefix = b"" if f.read(1) == b"\n" else b"\n"
                    os.write(fd, prefix + b"".join(keep))
                    os.fsync(fd)
                finally:
                    os.close(fd)
            return len(keep)

    # -- flush --------------------------------------------------------------------------------

    def _read_from(self, offset: int, max_items: int | None,
                   max_bytes: int | None) -> tuple[list[tuple[int, dict[str, Any]]], int]:
        """[(end offset, item)] from offset, and the offset after the last whole line read."""
        out: list[tuple[int, dict[str, Any]]] = []
        pos = offset
        if not self.data.exists():
            return out, offset
        with open(self.data, "rb") as f:
            f.seek(offset)
            used = 0
            for line in f:
                if not line.endswith(b"\n"):
                    break  # a partial line being written or left by a crash: not an item yet
                if out and max_bytes is not None and used + len(line) > max_bytes:
                    break
                pos += len(line)
                used += len(line)
                try:
                    item = json.loads(line)
                except ValueError:
                    if line.strip():
                        log("skipped a corrupt spool line")
                    continue
                if isinstance(item, dict):
                    out.append((pos, item))
                if max_items is not None and len(out) >= max_items:
                    break
        return out, pos

    def _ack(self, new_offset: int, *, compact: bool = True) -> None:
        """Mark everything before new_offset as delivered; reclaim space when worthwhile.

        compact=False while a caller still holds offsets into the current file.
        """
        with self._locked():
            meta = self._meta()
            meta.pop("backoffUntil", None)
            meta.pop("strikes", None)
            size = self._size()
            if new_offset >= size:
                with open(self.data, "r+b") as f:
                    f.truncate(0)
                meta["offset"] = 0
            elif compact and new_offset > COMPACT_MIN_BYTES and new_offset * 2 > size:
                tmp = self.data.with_suffix(".jsonl.tmp")
                with open(self.data, "rb") as src, open(tmp, "wb") as dst:
                    src.seek(new_offset)
                    while chunk := src.read(1 << 20):
                        dst.write(chunk)
                    dst.flush()
                    os.fsync(dst.fileno())
                os.replace(tmp, self.data)
                meta["offset"] = 0
            else:
                meta["offset"] = new_offset
            self._write_meta(meta)

    def flush(self, client: McpClient, deadline: float) -> FlushResult:
        """Send pending items in order, in batches, until empty, a transient error or deadline."""
        fd = self.take_flush_lock()
        if fd is None:
            result = FlushResult()
            result.skipped, result.pending = "busy", True
            return result
        try:
            return self.flush_holding_lock(client, deadline)
        finally:
            os.close(fd)  # closing releases the lock

    def take_flush_lock(self, wait_until: float | None = None) -> int | None:
        """The fd holding `flush.lock`, or None when another process holds it (past
        `wait_until`, a time.monotonic() value, when given). The lock belongs to the open file:
        a child forked while holding it holds it until its own copy closes."""
        self.dir.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.dir / "flush.lock", os.O_RDWR | os.O_CREAT, 0o600)
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                return fd
            except OSError:
                if wait_until is None or time.monotonic() >= wait_until:
                    os.close(fd)
                    return None
                time.sleep(0.02)

    def flush_holding_lock(self, client: McpClient, deadline: float) -> FlushResult:
        """flush(), by the holder of the flush lock."""
        result = FlushResult()
        if self.backoff_remaining() > 0:
            result.skipped, result.pending = "backoff", self.pending_bytes() > 0
            return result
        self._flush_locked(client, deadline, result)
        return result

    def _flush_locked(self, client: McpClient, deadline: float, result: FlushResult) -> None:
        while True:
            with self._locked():
                start = self._offset()
                batch, end = self._read_from(start, BATCH_ITEMS, BATCH_BYTES)
            if not batch:
                if end > start:  # only corrupt lines: step over them
                    self._ack(end)
                result.pending = False
                return
            remaining = deadline - time.monotonic()
            if remaining <= 0.05:
                result.pending = True
                return
            items = [item for _, item in batch]
            try:
                client.call_tool("capture-memories", {"items": items}, timeout=remaining)
            except CallError as exc:
                if exc.transient or (exc.code == "UNKNOWN" and self._strike(start)):
                    self._transient(exc, result)
                    return
                if exc.code != "UNKNOWN" and len(batch) == 1:
                    self._drop(items[0], exc, result)
                    self._ack(end)
                    continue
                # INVALID_INPUT: find the bad items. UNKNOWN, retries spent: the head alone
                # decides, so a server failing everything loses one item per round, not all.
                suspects = batch[:1] if exc.code == "UNKNOWN" else batch
                if not self._one_by_one(client, deadline, suspects, result):
                    return
                continue
            result.sent += len(items)
            self._ack(end)

    def _strike(self, head: int) -> bool:
        """Count an uncoded failure at this spool head; True while it may still be retried."""
        with self._locked():
            meta = self._meta()
            strikes = meta.get("strikes")
            count = strikes.get("count", 0) + 1 if isinstance(strikes, dict) and strikes.get(
                "offset") == head else 1
            meta["strikes"] = {"offset": head, "count": count}
            self._write_meta(meta)
        return count < UNKNOWN_RETRIES

    def _one_by_one(self, client: McpClient, deadline: float,
                    batch: list[tuple[int, dict[str, Any]]], result: FlushResult) -> bool:
        """Send items singly: refused ones are dropped, the rest delivered (False: stop)."""
        for end, item in batch:
            remaining = deadline - time.monotonic()
            if remaining <= 0.05:
                result.pending = True
                return False
            try:
                client.call_tool("capture-memories", {"items": [item]}, timeout=remaining)
                result.sent += 1
            except CallError as exc:
                if exc.transient:
                    self._transient(exc, result)
                    return False
                self._drop(item, exc, result)
            self._ack(end, compact=False)
        return True

    def _transient(self, exc: CallError, result: FlushResult) -> None:
        result.error, result.pending = exc, True
        wait = exc.retry_after or (TIMEOUT_BACKOFF_S if exc.code == "TIMEOUT" else 0)
        if wait:
            self.set_backoff(min(wait, 300.0))

    @staticmethod
    def _drop(item: dict[str, Any], exc: CallError, result: FlushResult) -> None:
        result.dropped += 1
        result.error = exc
        log(f"server refused item {item.get('idempotencyKey', '?')} "
            f"({item.get('eventType', '?')}): {exc.code}: {exc.message[:300]}; dropped it")

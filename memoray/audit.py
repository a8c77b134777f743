"""The append-only audit log: who did what to which workspace, and how it ended.

Format: JSON lines in DATA_DIR/audit/audit.log, one object per line:
  {"ts": ISO 8601 UTC, "principal", "action", "workspace": str|null, "ids": [...],
   "outcome": "ok"|"denied"|"error", "code"?, "detail"?, "request_id"?, "truncated"?, "ids_total"?}
Rotated by size: audit.log -> audit.log.1 -> audit.log.2 ... (the oldest beyond `keep` is deleted).

Durability: every line is one write() on an O_APPEND descriptor, followed by an fsync, and
append()/append_many() return only after both (GroupCommit: one fsync per group of entries).
Callers append *after* a mutation commits and *before* acknowledging it, so every acknowledged
mutation has its line on disk; a crash between the commit and the append can leave a committed
but unacknowledged mutation without a line.

Concurrency: a lock serialises threads; processes share the file through O_APPEND (the kernel
picks the end of file and writes the line in one step) and an flock on audit.log.lock (shared for
appends, exclusive for rotation, so no line lands in a file that was just rotated away). Lines are
capped at PIPE_BUF (4096 bytes): POSIX promises that size is written whole on pipes, and local
filesystems do not interleave O_APPEND writes of it either. A longer entry gets its detail (then
its id list) truncated and is marked "truncated": true. NFS gives none of these guarantees.
"""

from __future__ import annotations

import argparse
import errno
import fcntl
import json
import os
import select
import sys
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, BinaryIO, Literal

from memoray.errors import ErrorCode, MemorayError, invalid
from memoray.timeutil import parse_iso

Outcome = Literal["ok", "denied", "error"]
OUTCOMES = ("ok", "denied", "error")
MAX_LINE = getattr(select, "PIPE_BUF", 4096)
DEFAULT_MAX_BYTES = 64 * 1024 * 1024
DEFAULT_KEEP = 10
MAX_FIELD_CHARS = 128
SINCE_SKEW_S = 60.0  # entries from concurrent processes may be this much out of order
_READ_BLOCK = 64 * 1024


def _iso(ts: float) -> str:
    """Fixed-width UTC timestamps, so lines sort and align."""
    return datetime.fromtimestamp(ts, UTC).isoformat(timespec="microseconds")[:-6] + "Z"


def _identity(text: str) -> str:
    return text


def _dumps(entry: dict[str, Any]) -> bytes:
    return (json.dumps(entry, ensure_ascii=False, separators=(",", ":")) + "\n").encode("utf-8")


def _fit(entry: dict[str, Any]) -> bytes:
    """Encode one line no longer than MAX_LINE, shortening detail, then ids, then the fields."""
    line = _dumps(entry)
    if len(line) <= MAX_LINE:
        return line
    entry = dict(entry, truncated=True)
    line = _dumps(entry)
    while len(line) > MAX_LINE and entry.get("detail"):
        # Every character costs at least one byte, so cutting `excess` characters is enough.
        excess = len(line) - MAX_LINE
        entry["detail"] = entry["detail"][: max(0, len(entry["detail"]) - excess)]
        line = _dumps(entry)
    if len(line) > MAX_LINE and entry["ids"]:
        entry["ids_total"] = len(entry["ids"])
        while len(line) > MAX_LINE and entry["ids"]:
            entry["ids"] = entry["ids"][: len(entry["ids"]) // 2]
            line = _dumps(entry)
    if len(line) > MAX_LINE:
        for k in ("principal", "action", "workspace", "request_id", "code"):
            if isinstance(entry.get(k), str):
                entry[k] = entry[k][:MAX_FIELD_CHARS]
        line = _dumps(entry)
    return line


def _reverse_lines(f: BinaryIO) -> Iterator[bytes]:
    """Lines from the end of a file backwards, reading fixed-size blocks (the tail is cheap)."""
    f.seek(0, os.SEEK_END)
    pos = f.tell()
    rest = b""
    while pos > 0:
        n = min(_READ_BLOCK, pos)
        pos -= n
        f.seek(pos)
        parts = (f.read(n) + rest).split(b"\n")
        rest = parts[0]
        for line in reversed(parts[1:]):
            if line:
                yield line
    if rest:
        yield rest


class AuditLog:
    def __init__(self, path: str | Path, *, max_bytes: int = DEFAULT_MAX_BYTES,
                 keep: int | None = DEFAULT_KEEP, redact: Callable[[str], str] | None = None,
                 clock: Callable[[], float] = time.time):
        """`keep`: rotated files kept (None keeps all). `redact` scrubs detail strings (secrets,
        PII) before they reach disk."""
        if max_bytes < MAX_LINE:
            raise ValueError(f"max_bytes must be at least {MAX_LINE}")
        self.path = Path(path).expanduser()
        self.max_bytes = max_bytes
        self.keep = keep
        self.redact = redact or _identity
        self._clock = clock
        self._lock = threading.Lock()
        self._fd: int | None = None
        self._fd_ident: tuple[int, int] | None = None
        self._lock_fd: int | None = None

    @classmethod
    def for_data_dir(cls, data_dir: str | Path, **kwargs: Any) -> AuditLog:
        return cls(Path(data_dir).expanduser() / "audit" / "audit.log", **kwargs)

    # -- files ---------------------------------------------------------------------------------

    def _rotated(self, n: int) -> Path:
        return self.path.with_name(f"{self.path.name}.{n}")

    def files(self) -> list[Path]:
        """The current file then the rotated ones, newest first."""
        out = [self.path] if self.path.exists() else []
        n = 1
        while self._rotated(n).exists():
            out.append(self._rotated(n))
            n += 1
        return out

    def _fsync_dir(self) -> None:
        fd = os.open(self.path.parent, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)

    def _flock_fd(self) -> int:
        if self._lock_fd is None:
            self.path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
            lock_path = self.path.with_name(self.path.name + ".lock")
            self._lock_fd = os.open(lock_path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        return self._lock_fd

    def _current_fd(self) -> int:
        """Our descriptor for the current file, reopened when another process rotated it."""
        try:
            st = os.stat(self.path)
            ident: tuple[int, int] | None = (st.st_dev, st.st_ino)
        except FileNotFoundError:
            ident = None
        if self._fd is not None and ident == self._fd_ident:
            return self._fd
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None
        fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o600)
        st = os.fstat(fd)
        self._fd, self._fd_ident = fd, (st.st_dev, st.st_ino)
        if ident is None:
            self._fsync_dir()  # the new file's name must survive a crash too
        return fd

    def _rotate(self) -> None:
        """Shift audit.log.N -> N+1 (dropping those beyond keep), audit.log -> .1. Caller holds
        the exclusive flock."""
        n = 1
        while self._rotated(n).exists():
            n += 1
        for i in range(n - 1, 0, -1):
            if self.keep is not None and i + 1 > self.keep:
                self._rotated(i).unlink()
            else:
                os.replace(self._rotated(i), self._rotated(i + 1))
        if self.keep == 0:
            self.path.unlink()
        else:
            os.replace(self.path, self._rotated(1))
        self._fsync_dir()

    # -- writing -------------------------------------------------------------------------------

    def entry(self, principal: str, action: str, *, workspace: str | None = None,
              ids: Sequence[str] = (), outcome: Outcome = "ok", code: str | None = None,
              detail: str | None = None, request_id: str | None = None) -> dict[str, Any]:
        """One entry as it will be stored (validated, detail redacted), not yet written."""
        if outcome not in OUTCOMES:
            raise invalid(f"outcome: must be one of {', '.join(OUTCOMES)}")
        entry: dict[str, Any] = {"ts": _iso(self._clock()), "principal": principal,
                                 "action": action, "workspace": workspace, "ids": list(ids),
                                 "outcome": outcome}
        if code is not None:
            entry["code"] = str(code)
        if detail is not None:
            entry["detail"] = self.redact(detail)
        if request_id is not None:
            entry["request_id"] = request_id
        return entry

    def append(self, principal: str, action: str, **fields: Any) -> dict[str, Any]:
        """Write one entry durably and return it as stored. Raises MemorayError (STORAGE_FULL or
        UNAVAILABLE) if it could not be written, so the caller does not acknowledge."""
        return self.append_many([self.entry(principal, action, **fields)])[0]

    def append_many(self, entries: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
        """Write entries (from `entry`) with one fsync for all: each line is its own O_APPEND
        write (whole, see above), then the file is synced once before this returns."""
        lines = [_fit(e) for e in entries]
        if not lines:
            return []
        try:
            with self._lock:
                lock_fd = self._flock_fd()
                fcntl.flock(lock_fd, fcntl.LOCK_SH)
                try:
                    fd = self._current_fd()
                    size = os.fstat(fd).st_size
                    need = sum(len(line) for line in lines)
                    if size and size + need > self.max_bytes:
                        # Not atomic (flock drops then re-takes), so re-check after conversion.
                        fcntl.flock(lock_fd, fcntl.LOCK_EX)
                        fd = self._current_fd()
                        size = os.fstat(fd).st_size
                        if size and size + need > self.max_bytes:
                            self._rotate()
                            fd = self._current_fd()
                    for line in lines:
                        written = os.write(fd, line)
                        while written < len(line):  # only on a short write (disk nearly full)
                            written += os.write(fd, line[written:])
                    os.fsync(fd)
                finally:
                    fcntl.flock(lock_fd, fcntl.LOCK_UN)
        except OSError as e:
            code_ = ErrorCode.STORAGE_FULL if e.errno in (errno.ENOSPC, errno.EDQUOT) \
                else ErrorCode.UNAVAILABLE
            raise MemorayError(code_, f"audit log is not writable: {e.strerror}") from e
        return [json.loads(line) for line in lines]

    def close(self) -> None:
        with self._lock:
            for fd in (self._fd, self._lock_fd):
                if fd is not None:
                    os.close(fd)
            self._fd = self._lock_fd = None
            self._fd_ident = None

    # -- reading -------------------------------------------------------------------------------

    def read(self, limit: int = 50, principal: str | None = None, action: str | None = None,
             since: float | str | None = None) -> list[dict[str, Any]]:
        """Matching entries, newest first, scanning backwards from the end of the newest file and
        stopping at `limit` (or once entries are older than `since`). Unparseable lines (a torn
        tail after a crash) are skipped."""
        if limit <= 0 or not self.path.parent.exists():
            return []
        since_ts = None if since is None else parse_iso(since, "since")
        out: list[dict[str, Any]] = []
        with self._lock:
            try:
                lock_fd: int | None = self._flock_fd()
            except PermissionError:  # a read-only view of the data dir: read without the lock
                lock_fd = None
            if lock_fd is not None:
                fcntl.flock(lock_fd, fcntl.LOCK_SH)  # no rotation while we walk the files
            try:
                for path in self.files():
                    with open(path, "rb") as f:
                        for raw in _reverse_lines(f):
                            try:
                                entry = json.loads(raw)
                                ts = parse_iso(entry["ts"]) if since_ts is not None else 0.0
                            except (ValueError, KeyError, TypeError, MemorayError):
                                continue
                            if since_ts is not None and ts < since_ts:
                                if ts < since_ts - SINCE_SKEW_S:
                                    return out
                                continue
                            if principal is not None and entry.get("principal") != principal:
                                continue
                            if action is not None and entry.get("action") != action:
                                continue
                            out.append(entry)
                            if len(out) >= limit:
                                return out
            finally:
                if lock_fd is not None:
                    fcntl.flock(lock_fd, fcntl.LOCK_UN)
        return out


# -- CLI -----------------------------------------------------------------------------------------

class GroupCommit:
    """The audit log as the server writes it: appends from the event loop are written and
    fsync'ed by one background thread in groups (whatever queued while the previous fsync ran),
    and each caller awaits its own entries' durability. The promise is append()'s (durable before
    the caller acknowledges), at one fsync per group instead of one per entry, and the event loop
    never blocks on the disk."""

    def __init__(self, log: AuditLog):
        self.log = log
        self._queue: list[tuple[list[dict[str, Any]], Any, Any]] = []
        self._cv = threading.Condition()
        self._thread: threading.Thread | None = None
        self.groups = 0  # fsyncs done (for tests and stats)
        self.entries = 0

    def entry(self, principal: str, action: str, **fields: Any) -> dict[str, Any]:
        return self.log.entry(principal, action, **fields)

    async def append(self, principal: str, action: str, **fields: Any) -> dict[str, Any]:
        return (await self.append_many([self.log.entry(principal, action, **fields)]))[0]

    async def append_many(self, entries: list[dict[str, Any]]) -> list[dict[str, Any]]:
        import asyncio

        if not entries:
            return []
        loop = asyncio.get_running_loop()
        fut = loop.create_future()
        with self._cv:
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name="audit-group-commit",
                                                daemon=True)
                self._thread.start()
            self._queue.append((entries, fut, loop))
            self._cv.notify()
        return await fut

    def _run(self) -> None:
        while True:
            with self._cv:
                while not self._queue:
                    self._cv.wait()
                batch, self._queue = self._queue, []
            flat = [e for entries, _, _ in batch for e in entries]
            try:
                written: list[dict[str, Any]] | None = self.log.append_many(flat)
                error: BaseException | None = None
            except BaseException as exc:  # noqa: BLE001 - handed to every waiter
                written, error = None, exc
            self.groups += 1
            self.entries += len(flat)
            pos = 0
            for entries, fut, loop in batch:
                part = None if written is None else written[pos:pos + len(entries)]
                pos += len(entries)
                loop.call_soon_threadsafe(_settle, fut, part, error)

    def read(self, *args: Any, **kwargs: Any) -> list[dict[str, Any]]:
        return self.log.read(*args, **kwargs)


def _settle(fut: Any, result: Any, error: BaseException | None) -> None:
    if fut.done():
        return
    if error is not None:
        fut.set_exception(error)
    else:
        fut.set_result(result)


def _cell(value: Any, width: int) -> str:
    text = "" if value is None else str(value).replace("\n", " ")
    return text if len(text) <= width else text[: width - 1] + "…"


def main_audit(args: argparse.Namespace) -> int:
    data_dir = getattr(args, "data_dir", None)
    if data_dir is None:
        from memoray.settings import Settings

        data_dir = Settings().resolved_data_dir()
    log = AuditLog.for_data_dir(data_dir)
    try:
        entries = log.read(limit=getattr(args, "limit", 50),
                           principal=getattr(args, "principal", None),
                           action=getattr(args, "action", None),
                           since=getattr(args, "since", None))
    except MemorayError as e:
        print(f"error: {e.message}", file=sys.stderr)
        return 2
    finally:
        log.close()
    if getattr(args, "json", False):
        for e in entries:
            print(json.dumps(e, ensure_ascii=False, separators=(",", ":")))
        return 0
    if not entries:
        print(f"no audit entries in {log.path}")
        return 0
    headers = ["TS", "PRINCIPAL", "ACTION", "WORKSPACE", "OUTCOME", "IDS", "DETAIL"]
    rows = []
    for e in entries:
        ids = e.get("ids") or []
        id_cell = "" if not ids else ids[0] + (f" +{len(ids) - 1}" if len(ids) > 1 else "")
        outcome = e.get("outcome", "") + (f" {e['code']}" if e.get("code") else "")
        rows.append([_cell(e.get("ts"), 27), _cell(e.get("principal"), 20),
                     _cell(e.get("action"), 20), _cell(e.get("workspace"), 24), outcome,
                     id_cell, _cell(e.get("detail"), 60)])
    widths = [max(len(x) for x in col) for col in zip(headers, *rows)]
    for row in [headers, *rows]:
        print("  ".join(x.ljust(w) for x, w in zip(row, widths)).rstrip())
    return 0

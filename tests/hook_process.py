"""Waiting for a `memoray hook`'s detached flusher (memoray/hooks/runner.py flush_detached)."""

from __future__ import annotations

import fcntl
import os
import time
from pathlib import Path


def log_size(spool: Path) -> int:
    try:
        return (spool / "hook.log").stat().st_size
    except OSError:
        return 0


def settle(spool: Path, log_from: int = 0, timeout: float = 30.0) -> str:
    """Wait until no flusher holds the spool's flush lock (the hook's detached child took it
    before the hook exited), then return what was logged to hook.log since `log_from`."""
    lock = spool / "flush.lock"
    if lock.exists():
        fd = os.open(lock, os.O_RDWR)
        try:
            deadline = time.monotonic() + timeout
            while True:
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    break
                except OSError:
                    if time.monotonic() > deadline:
                        raise TimeoutError(f"a flusher held {lock} for {timeout}s") from None
                    time.sleep(0.01)
        finally:
            os.close(fd)
    try:
        with open(spool / "hook.log", "rb") as f:
            f.seek(log_from)
            return f.read().decode(errors="replace")
    except OSError:
        return ""

"""Where one hook's time goes, when `MEMORAY_HOOK_TRACE` names a file: one JSON line per hook
with wall-clock marks (our first line ran, the runner imported, the handler done, the output
written) and the seconds spent in git and in calls to the server. A hook's wall time on a
given machine is mostly the interpreter's start and imports; this says how much, per run.
`benchmarks/bench_hooks.py` reads it. Off (one environment lookup) unless set."""

from __future__ import annotations

import json
import os
import time

TRACE_ENV = "MEMORAY_HOOK_TRACE"


class Trace:
    __slots__ = ("path", "marks", "spent")

    def __init__(self, path: str, entry: float | None):
        self.path = path
        now = time.time()
        self.marks: dict[str, float] = {"entry": entry if entry is not None else now,
                                        "runner": now}
        self.spent: dict[str, float] = {"git": 0.0, "server": 0.0}

    @classmethod
    def from_env(cls, entry: float | None) -> Trace | None:
        path = os.environ.get(TRACE_ENV)
        return cls(path, entry) if path else None

    def mark(self, name: str) -> None:
        self.marks[name] = time.time()

    def add(self, what: str, seconds: float) -> None:
        self.spent[what] = self.spent.get(what, 0.0) + seconds

    def write(self, event: str) -> None:
        """Append this hook's line (one write on an O_APPEND descriptor: lines of hooks that
        run at once do not interleave). A trace that cannot be written is dropped."""
        self.mark("end")
        line = json.dumps({"event": event, "pid": os.getpid(), "marks": self.marks,
                           "spent": self.spent}, separators=(",", ":")) + "\n"
        try:
            fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
            try:
                os.write(fd, line.encode())
            finally:
                os.close(fd)
        except OSError:
            pass

"""Pacing for batch jobs that share the cluster with live traffic (the reindex).

`TokenBucket` caps the job's rate (records/s). `Throttle` moves that rate with what live
requests would feel: it times a probe (a query embedding on every embedding worker and a call
on every shard: what a retrieve waits for) against the same probe timed before the job started.
Above `target` times the baseline the rate is halved; below it grows by 20% (a multiplicative
decrease on congestion, as in TCP's congestion control). The probe sees the
queues the job builds, so the job backs off before retrieves do, whatever the hardware.
"""

from __future__ import annotations

import asyncio
import statistics
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field


class TokenBucket:
    """`rate` tokens per second, at most `burst` saved up; `take(n)` waits for n."""

    def __init__(self, rate: float, burst: float, clock: Callable[[], float] = time.monotonic):
        self.rate, self.burst, self.clock = rate, burst, clock
        self.tokens = burst
        self.at = clock()

    def _fill(self) -> None:
        now = self.clock()
        self.tokens = min(self.burst, self.tokens + (now - self.at) * self.rate)
        self.at = now

    def wait_for(self, n: float) -> float:
        """Seconds until n tokens are there (0 when they are)."""
        self._fill()
        need = min(n, self.burst) - self.tokens
        return 0.0 if need <= 0 else need / max(self.rate, 1e-9)

    async def take(self, n: float) -> None:
        while (delay := self.wait_for(n)) > 0:
            await asyncio.sleep(delay)
        self.tokens -= min(n, self.burst)


@dataclass
class Throttle:
    """Adaptive rate between `min_rate` and `max_rate` records/s, driven by probe latency.

    A probe over `target` x baseline (+ `slack_s`) halves the rate, taken from what the job
    actually achieved (so a nominal rate far above the real one still backs off at once); a
    good probe raises it by 20%, never beyond twice the achieved rate (so the nominal rate
    cannot drift away from reality while the job is bound elsewhere)."""

    max_rate: float
    min_rate: float = 5.0
    target: float = 2.0          # keep the probe under target x its baseline
    slack_s: float = 0.010       # timer noise: never react to a few milliseconds
    adaptive: bool = True
    start_rate: float = 50.0
    baseline_s: float | None = None
    rate: float = field(init=False)
    backoffs: int = 0
    history: list[tuple[float, float, float]] = field(default_factory=list)  # (t, probe, rate)

    def __post_init__(self) -> None:
        self.max_rate = max(self.max_rate, self.min_rate)
        # Adaptive: start low and climb (a job at full speed hurts before the first probe).
        self.rate = (max(self.min_rate, min(self.max_rate, self.start_rate)) if self.adaptive
                     else self.max_rate)

    def calibrate(self, samples: list[float]) -> float:
        self.baseline_s = statistics.median(samples)
        return self.baseline_s

    @property
    def limit_s(self) -> float:
        return (self.baseline_s or 0.0) * self.target + self.slack_s

    def observe(self, probe_s: float, achieved: float, now: float | None = None) -> float:
        """One probe's latency and the rate achieved since the last one in; the new rate out."""
        if self.adaptive and self.baseline_s is not None:
            if probe_s > self.limit_s:
                self.rate = max(self.min_rate, min(self.rate, achieved) / 2)
                self.backoffs += 1
            else:
                self.rate = min(self.max_rate, self.rate * 1.2 + 1,
                                max(2 * achieved, self.min_rate, self.start_rate))
        self.history.append((now if now is not None else time.monotonic(), probe_s, self.rate))
        return self.rate


async def timed(probe: Callable[[], Awaitable[object]]) -> float:
    t0 = time.perf_counter()
    await probe()
    return time.perf_counter() - t0

"""Rate limits: an exact sliding-window log per (kind, key), plus leases so replicas don't pay an
actor round trip per request.

Kinds and their default budgets (see limits_from_settings):
  session    captures per minute per session (100)              interactive budget
  workspace  requests per hour per workspace (1000)             interactive budget
  bulk       items per minute per workspace for batch imports   bulk budget (1000 = MAX_BATCH)
  principal  requests per hour per principal                    only if configured
  tool:NAME  requests per minute per workspace for one tool     only if configured
Batches (capture-memories / upsert-memory with more than one item) are charged to `bulk` only, and
everything else never touches `bulk`, so a bulk importer can exhaust its own budget without
starving retrieval, and heavy retrieval never blocks an import (request_keys encodes this).

Leasing. The central SlidingWindow (one actor) hands out small grants of quota: at most
Limit.lease_cap() = max(1, min(capacity // 10, 5)) units, valid for LEASE_TTL_S. A replica's
LeaseClient spends its grants locally and synchronously, asks for a new one only when a key runs
dry, and returns what is left when a grant expires. A grant counts as used at the central limiter
from the moment it is issued until the unused part comes back.

Tolerance: for each key, the units admitted across all replicas within any window of the limit's
length are at most capacity + R * lease_cap, R being the number of LeaseClients. (Units admitted
from grants issued inside the window are bounded by capacity, as the central log never holds more;
units from grants issued before it are bounded by what the clients held unspent when it began, and
a client never holds more than lease_cap of a key.) With the defaults that is +5 per replica on 100
captures/minute and +5 per replica on 1000 requests/hour. Requests costing more than a key's
lease_cap (bulk batches) skip leasing and go to the central limiter, which is exact.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections import deque
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from memoray.errors import ErrorCode, MemorayError

Key = tuple[str, str]
logger = logging.getLogger(__name__)

SESSION, WORKSPACE, BULK, PRINCIPAL = "session", "workspace", "bulk", "principal"
TOOL_PREFIX = "tool:"
LEASE_TTL_S = 2.0
LEASE_FRACTION = 10  # a grant is at most 1/10 of the capacity ...
LEASE_MAX_UNITS = 5  # ... and at most this many units
SWEEP_EVERY_S = 5.0
DEFAULT_BULK_ITEMS_PER_MINUTE = 1000
BATCH_TOOLS = frozenset({"capture-memories", "upsert-memory"})
CAPTURE_TOOLS = frozenset({"capture-memory", "capture-memories", "upsert-memory"})


@dataclass(frozen=True, slots=True)
class Limit:
    capacity: int
    window_s: float

    def lease_cap(self) -> int:
        return max(1, min(self.capacity // LEASE_FRACTION, LEASE_MAX_UNITS))

    def describe(self) -> str:
        w = self.window_s
        unit = "hour" if w == 3600 else "minute" if w == 60 else "second" if w == 1 else f"{w:g}s"
        return f"{self.capacity} per {unit}"


@dataclass(frozen=True, slots=True)
class Decision:
    """allowed, or why not. retry_after: seconds until the request would fit if nothing else
    arrived; None when it can never fit (its cost exceeds the limit's capacity)."""

    allowed: bool
    retry_after: float | None = 0.0
    kind: str | None = None
    message: str = ""

    def error(self) -> MemorayError:
        if self.retry_after is None:
            return MemorayError(ErrorCode.INVALID_INPUT, self.message)
        return MemorayError(ErrorCode.RATE_LIMIT_EXCEEDED, self.message,
                            retry_after=self.retry_after)

    def raise_if_denied(self) -> None:
        if not self.allowed:
            raise self.error()


ALLOWED = Decision(True)


@dataclass(frozen=True, slots=True)
class Lease:
    """A grant of `amount` units of `key`. amount 0 means denied, with retry_after."""

    key: Key
    amount: int
    expires_at: float  # on the central limiter's clock
    ttl: float
    lease_id: int = 0
    retry_after: float | None = 0.0


def limits_from_settings(settings: Any) -> dict[str, Limit]:
    """Limits per kind. A capacity of 0 (or None) turns that kind off; rate_limit_enabled=False
    turns everything off. The optional knobs are read if Settings has them."""
    if not getattr(settings, "rate_limit_enabled", True):
        return {}
    spec: list[tuple[str, int | None, float]] = [
        (SESSION, getattr(settings, "rate_limit_captures_per_minute", 100), 60.0),
        (WORKSPACE, getattr(settings, "rate_limit_requests_per_hour", 1000), 3600.0),
        (BULK, getattr(settings, "rate_limit_bulk_items_per_minute",
                       DEFAULT_BULK_ITEMS_PER_MINUTE), 60.0),
        (PRINCIPAL, getattr(settings, "rate_limit_principal_requests_per_hour", None), 3600.0),
    ]
    tools = getattr(settings, "rate_limit_tool_requests_per_minute", None) or {}
    spec += [(TOOL_PREFIX + tool, n, 60.0) for tool, n in dict(tools).items()]
    return {kind: Limit(int(n), w) for kind, n, w in spec if n and int(n) > 0}


def exempt(settings: Any, principal: Any) -> bool:
    """One local user: tokenless requests to a loopback bind are never limited (a 5,000-memory
    import must not stall), unless `rate_limit_local` asks for it. Authenticated callers and any
    non-loopback bind (which needs tokens or --insecure) keep every limit."""
    if getattr(settings, "rate_limit_local", False):
        return False
    from memoray.auth import LOCAL_PRINCIPAL, is_loopback

    return principal is LOCAL_PRINCIPAL and is_loopback(getattr(settings, "host", ""))


def request_keys(tool: str, *, workspace: str | None, session: str | None = None,
                 principal: str | None = None, items: int = 1) -> tuple[list[Key], int]:
    """The keys and cost one tool call is charged. Batches of more than one item go to the bulk
    budget (cost = items); anything else costs 1 against the interactive keys."""
    # Calls that name no workspace are charged to a per-principal bucket, never a shared one.
    ws = workspace or f"-/{principal or 'anonymous'}"
    if tool in BATCH_TOOLS and items > 1:
        return [(BULK, ws)], items
    keys: list[Key] = [(WORKSPACE, ws)]
    if tool in CAPTURE_TOOLS and session:
        # Scoped by principal so a caller can't burn another principal's session budget.
        keys.append((SESSION, f"{principal or '-'}/{session}"))
    if principal:
        keys.append((PRINCIPAL, principal))
    keys.append((TOOL_PREFIX + tool, ws))
    return keys, 1


def _unique(keys: Iterable[Key]) -> list[Key]:
    return list(dict.fromkeys((str(k[0]), str(k[1])) for k in keys))


class _Log:
    """Entries [ts, amount] in time order with their running total; lists so a lease can be
    shrunk in place when its unused part comes back."""

    __slots__ = ("entries", "total")

    def __init__(self) -> None:
        self.entries: deque[list[float]] = deque()
        self.total = 0

    def expire(self, now: float, window: float) -> None:
        e = self.entries
        while e and e[0][0] + window <= now:
            self.total -= int(e.popleft()[1])

    def retry_after(self, need: int, now: float, window: float) -> float:
        """Seconds until `need` units have aged out of the window, rounded up to the
        millisecond (the wire's precision), so retrying after it never comes too early."""
        freed = 0
        for ts, amount in self.entries:
            freed += int(amount)
            if freed >= need:
                return max(0.0, math.ceil((ts + window - now) * 1000 - 1e-6) / 1000)
        return window  # unreachable while need <= total

    def add(self, now: float, amount: int) -> list[float]:
        ts = max(now, self.entries[-1][0]) if self.entries else now  # keep time order
        entry = [ts, amount]
        self.entries.append(entry)
        self.total += amount
        return entry


class SlidingWindow:
    """The central limiter: exact sliding-window logs, all-or-nothing across keys, and leases.

    Memory per key is bounded by the number of charges inside one window (at most capacity
    entries); idle keys are dropped by a periodic sweep. Not thread-safe: the actor serialises
    calls.
    """

    def __init__(self, limits: Mapping[str, Limit], *, lease_ttl_s: float = LEASE_TTL_S,
                 clock: Callable[[], float] = time.monotonic):
        self.limits = dict(limits)
        self.lease_ttl_s = lease_ttl_s
        self._clock = clock
        self._logs: dict[Key, _Log] = {}
        self._leases: dict[int, tuple[Key, list[float]]] = {}
        self._next_lease = 1
        self._swept_at: float | None = None
        self._counts = {"allowed": 0, "denied": 0, "granted_units": 0, "returned_units": 0}

    def _now(self, now: float | None) -> float:
        return self._clock() if now is None else now

    def _log(self, key: Key, now: float) -> _Log:
        log = self._logs.get(key)
        if log is None:
            log = self._logs[key] = _Log()
        log.expire(now, self.limits[key[0]].window_s)
        return log

    def _sweep(self, now: float) -> None:
        if self._swept_at is not None and now - self._swept_at < SWEEP_EVERY_S:
            return
        self._swept_at = now
        for key in list(self._logs):
            log = self._logs[key]
            limit = self.limits.get(key[0])
            if limit is None:
                del self._logs[key]
                continue
            log.expire(now, limit.window_s)
            if not log.entries:
                del self._logs[key]
        for lease_id, (key, entry) in list(self._leases.items()):
            limit = self.limits.get(key[0])
            if limit is None or entry[0] + limit.window_s <= now:
                del self._leases[lease_id]  # aged out: returning it would change nothing

    def _deny(self, kind: str, limit: Limit, cost: int, retry_after: float | None) -> Decision:
        self._counts["denied"] += 1
        if retry_after is None:
            msg = (f"request costs {cost} units but the {kind} limit is {limit.describe()}; "
                   "split it into smaller batches")
        else:
            msg = f"rate limit exceeded ({kind}: {limit.describe()}); retry in {retry_after:.1f}s"
        return Decision(False, retry_after, kind, msg)

    def usage(self, key: Key, now: float | None = None) -> int:
        if key[0] not in self.limits:
            return 0
        return self._log(key, self._now(now)).total

    def acquire(self, keys: Sequence[Key], cost: int = 1, now: float | None = None) -> Decision:
        """Charge `cost` to every key, or to none. Kinds without a limit are free. When denied,
        retry_after is the latest of the keys' times to free enough quota: exact if no other
        traffic arrives."""
        if cost < 0:
            raise ValueError("cost must be >= 0")
        now = self._now(now)
        self._sweep(now)
        limited = [k for k in _unique(keys) if k[0] in self.limits]
        worst: tuple[float, str] | None = None
        for key in limited:
            limit = self.limits[key[0]]
            if cost > limit.capacity:
                return self._deny(key[0], limit, cost, None)
            log = self._log(key, now)
            need = log.total + cost - limit.capacity
            if need > 0:
                wait = log.retry_after(need, now, limit.window_s)
                if worst is None or wait > worst[0]:
                    worst = (wait, key[0])
        if worst is not None:
            return self._deny(worst[1], self.limits[worst[1]], cost, worst[0])
        if cost:
            for key in limited:
                self._logs[key].add(now, cost)
        self._counts["allowed"] += 1
        return ALLOWED

    def grant(self, key: Key, want: int, now: float | None = None,
              min_amount: int = 1) -> Lease:
        """Up to min(want, lease_cap) units (never fewer than min_amount), charged now."""
        now = self._now(now)
        self._sweep(now)
        key = (str(key[0]), str(key[1]))
        limit = self.limits.get(key[0])
        if limit is None:  # unlimited kind: nothing to track
            return Lease(key, max(want, min_amount), now + self.lease_ttl_s, self.lease_ttl_s)
        min_amount = max(1, min_amount)
        if min_amount > limit.capacity:
            d = self._deny(key[0], limit, min_amount, None)
            return Lease(key, 0, now, self.lease_ttl_s, retry_after=d.retry_after)
        log = self._log(key, now)
        available = limit.capacity - log.total
        amount = min(want, max(limit.lease_cap(), min_amount), available)
        if amount < min_amount:
            wait = log.retry_after(min_amount - available, now, limit.window_s)
            self._counts["denied"] += 1
            return Lease(key, 0, now, self.lease_ttl_s, retry_after=wait)
        lease_id = self._next_lease
        self._next_lease += 1
        self._leases[lease_id] = (key, log.add(now, amount))
        self._counts["granted_units"] += amount
        return Lease(key, amount, now + self.lease_ttl_s, self.lease_ttl_s, lease_id)

    def release(self, key: Key, unused: int, lease_id: int | None = None,
                now: float | None = None) -> int:
        """Give back unused units of a grant; returns how many were credited. With lease_id the
        units come off that grant's own entry (exact); without it, off the key's newest entries."""
        if unused <= 0:
            return 0
        now = self._now(now)
        key = (str(key[0]), str(key[1]))
        if key[0] not in self.limits:
            return 0
        log = self._log(key, now)
        if lease_id is not None:
            found = self._leases.pop(lease_id, None)
            if found is None or found[0] != key:
                return 0
            entries: Iterable[list[float]] = [found[1]]
        else:
            entries = reversed(log.entries)
        returned = 0
        for entry in entries:
            if returned >= unused:
                break
            if entry[0] + self.limits[key[0]].window_s <= now:
                continue  # already aged out of the window
            take = min(int(entry[1]), unused - returned)
            entry[1] -= take
            returned += take
        log.total -= returned
        self._counts["returned_units"] += returned
        return returned

    def stats(self, now: float | None = None) -> dict[str, Any]:
        now = self._now(now)
        self._sweep(now)
        return {"keys": len(self._logs), "tracked_leases": len(self._leases),
                **self._counts,
                "limits": {k: {"capacity": v.capacity, "window_s": v.window_s}
                           for k, v in self.limits.items()}}


class Central(Protocol):
    """What a LeaseClient needs from the central limiter (an actor handle adapter, or local)."""

    def grant(self, key: Key, want: int, min_amount: int) -> Awaitable[Lease]: ...
    def release(self, key: Key, unused: int, lease_id: int | None) -> Awaitable[int]: ...
    def acquire(self, keys: list[Key], cost: int) -> Awaitable[Decision]: ...


class LocalCentral:
    """A SlidingWindow in this process behind the async Central interface."""

    def __init__(self, window: SlidingWindow):
        self.window = window

    async def grant(self, key: Key, want: int, min_amount: int) -> Lease:
        return self.window.grant(key, want, min_amount=min_amount)

    async def release(self, key: Key, unused: int, lease_id: int | None) -> int:
        return self.window.release(key, unused, lease_id)

    async def acquire(self, keys: list[Key], cost: int) -> Decision:
        return self.window.acquire(keys, cost)


class LeaseClient:
    """Replica-side: spends local grants synchronously; one round trip per grant, not per request.

    Per key it holds at most lease_cap unspent units (refills top the balance up to lease_cap, one
    refill in flight per key), which is what bounds the overshoot. After a denial it answers
    locally until min(retry_after, lease TTL): by then other replicas' grants have expired and come
    back, so the central view is current again.
    """

    def __init__(self, central: Central, limits: Mapping[str, Limit], *,
                 clock: Callable[[], float] = time.monotonic):
        self.central = central
        self.limits = dict(limits)
        self._clock = clock
        self._held: dict[Key, list[list[Any]]] = {}  # key -> [[lease_id, remaining, expires]]
        self._denied: dict[Key, tuple[float, float, str]] = {}  # key -> (recheck, retry_at, msg)
        self._inflight: dict[Key, asyncio.Future[None]] = {}  # one refill per key at a time
        self._to_release: list[tuple[Key, int, int]] = []
        self._tasks: set[asyncio.Task[None]] = set()
        self.round_trips = 0

    def _balance(self, key: Key, now: float) -> int:
        held = self._held.get(key)
        if not held:
            return 0
        live = []
        for lease in held:
            if lease[2] <= now:
                if lease[1] > 0:
                    self._to_release.append((key, lease[1], lease[0]))
            elif lease[1] > 0:
                live.append(lease)
        if live:
            self._held[key] = live
        else:
            del self._held[key]
        return sum(lease[1] for lease in live)

    def _consume(self, key: Key, cost: int) -> None:
        for lease in sorted(self._held[key], key=lambda lease: lease[2]):  # soonest-expiring first
            take = min(lease[1], cost)
            lease[1] -= take
            cost -= take
            if not cost:
                return

    def _cached_denial(self, keys: list[Key], now: float) -> Decision | None:
        if len(self._denied) > 1024:  # keys that were never asked about again
            self._denied = {k: d for k, d in self._denied.items() if d[0] > now}
        worst: tuple[float, str, str] | None = None
        for key in keys:
            d = self._denied.get(key)
            if d is None:
                continue
            if d[0] <= now:
                del self._denied[key]
            elif worst is None or d[1] - now > worst[0]:
                worst = (max(0.0, d[1] - now), key[0], d[2])
        return None if worst is None else Decision(False, worst[0], worst[1], worst[2])

    def _flush_releases(self) -> None:
        if not self._to_release:
            return
        try:
            asyncio.get_running_loop()
        except RuntimeError:
            return  # no loop (sync caller): they go out on the next async call or close()
        pending, self._to_release = self._to_release, []
        for key, unused, lease_id in pending:
            task = asyncio.ensure_future(self._release(key, unused, lease_id))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def _release(self, key: Key, unused: int, lease_id: int) -> None:
        try:
            self.round_trips += 1
            await self.central.release(key, unused, lease_id)
        except Exception:  # the units stay charged until they age out: the safe side
            logger.debug("returning %d units of %s failed", unused, key, exc_info=True)

    def try_acquire(self, keys: Sequence[Key], cost: int = 1) -> bool:
        """The synchronous fast path: True if local grants covered the whole request."""
        limited = [k for k in _unique(keys) if k[0] in self.limits]
        now = self._clock()
        if any(cost > self.limits[k[0]].lease_cap() for k in limited):
            return not limited
        if self._cached_denial(limited, now) is not None:
            return False
        if all(self._balance(k, now) >= cost for k in limited):
            for k in limited:
                self._consume(k, cost)
            self._flush_releases()
            return True
        self._flush_releases()
        return False

    async def _refill(self, key: Key, cost: int) -> Decision | None:
        """Top the key's balance up to lease_cap. None means "look again": the balance may now
        suffice, or a concurrent refill was awaited (its denial, if any, is now cached)."""
        pending = self._inflight.get(key)
        if pending is not None:
            await pending
            return None
        done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._inflight[key] = done
        try:
            now = self._clock()
            balance = self._balance(key, now)
            if balance >= cost:
                return None
            cap = self.limits[key[0]].lease_cap()
            self.round_trips += 1
            lease = await self.central.grant(key, cap - balance, cost - balance)
            if lease.amount <= 0:
                retry = lease.retry_after
                msg = f"rate limit exceeded ({key[0]}: {self.limits[key[0]].describe()})"
                if retry is None:
                    return Decision(False, None, key[0], msg)
                after = self._clock()
                self._denied[key] = (after + min(retry, lease.ttl), after + retry, msg)
                return Decision(False, retry, key[0], f"{msg}; retry in {retry:.1f}s")
            # Expiry counts from when we asked, so it never outlives the central grant.
            self._held.setdefault(key, []).append([lease.lease_id, lease.amount, now + lease.ttl])
            return None
        finally:
            del self._inflight[key]
            done.set_result(None)

    async def acquire(self, keys: Sequence[Key], cost: int = 1) -> Decision:
        """All-or-nothing over keys. Local when grants cover it; otherwise refills the short keys
        concurrently; requests larger than a lease go straight to the central limiter."""
        limited = [k for k in _unique(keys) if k[0] in self.limits]
        if not limited or cost == 0:
            return ALLOWED
        if any(cost > self.limits[k[0]].lease_cap() for k in limited):
            self.round_trips += 1
            return await self.central.acquire(limited, cost)
        for _ in range(3):
            if self.try_acquire(limited, cost):
                return ALLOWED
            now = self._clock()
            cached = self._cached_denial(limited, now)
            if cached is not None:
                return cached
            short = [k for k in limited if self._balance(k, now) < cost]
            results = await asyncio.gather(*(self._refill(k, cost) for k in short))
            self._flush_releases()
            denied = [d for d in results if d is not None]
            if denied:
                return max(denied, key=lambda d: math.inf if d.retry_after is None
                           else d.retry_after)
        # Other coroutines keep draining what we fetch: settle it exactly at the centre.
        self.round_trips += 1
        return await self.central.acquire(limited, cost)

    async def close(self) -> None:
        """Return every unspent grant (replica shutdown) so the quota isn't held until TTL."""
        for key, held in self._held.items():
            for lease in held:
                if lease[1] > 0:
                    self._to_release.append((key, lease[1], lease[0]))
        self._held.clear()
        pending, self._to_release = self._to_release, []
        await asyncio.gather(*(self._release(*p) for p in pending), *list(self._tasks))

    def held(self, key: Key) -> int:
        return self._balance(key, self._clock())

"""Sliding-window limits, retry_after, leases across replicas (in-process, no Ray)."""

from __future__ import annotations

import asyncio
import bisect
import copy
import pickle
import random
from types import SimpleNamespace

import pytest

from memoray.errors import ErrorCode, MemorayError
from memoray.ratelimit import (
    BULK,
    SESSION,
    WORKSPACE,
    Decision,
    Lease,
    LeaseClient,
    Limit,
    LocalCentral,
    SlidingWindow,
    limits_from_settings,
    request_keys,
)
from memoray.settings import Settings


class Clock:
    def __init__(self, t: float = 0.0):
        self.t = t

    def __call__(self) -> float:
        return self.t


W = ("workspace", "w")


def window(capacity=3, window_s=10.0, **kw):
    return SlidingWindow({"workspace": Limit(capacity, window_s),
                          "session": Limit(capacity, window_s)}, **kw)


def test_window_math_and_boundary():
    sw = window(3, 10.0)
    for t in (0.0, 1.0, 2.0):
        assert sw.acquire([W], 1, now=t).allowed
    d = sw.acquire([W], 1, now=3.0)
    assert not d.allowed and d.retry_after == pytest.approx(7.0) and d.kind == "workspace"
    assert not sw.acquire([W], 1, now=9.999).allowed
    assert sw.acquire([W], 1, now=10.0).allowed  # the t=0 charge leaves at exactly t+window
    assert sw.usage(W, now=10.0) == 3
    assert sw.usage(W, now=30.0) == 0


def test_retry_after_counts_the_units_needed():
    sw = window(5, 10.0)
    assert sw.acquire([W], 2, now=0.0).allowed
    assert sw.acquire([W], 2, now=5.0).allowed
    d = sw.acquire([W], 3, now=6.0)  # need 2 freed: the t=0 charge, at t=10
    assert d.retry_after == pytest.approx(4.0)
    d = sw.acquire([W], 4, now=6.0)  # need 3 freed: both charges, the second at t=15
    assert d.retry_after == pytest.approx(9.0)
    assert sw.acquire([W], 1, now=6.0).allowed


def test_retry_after_is_exact_under_random_traffic():
    rng = random.Random(3)
    sw = SlidingWindow({"workspace": Limit(20, 30.0), "session": Limit(7, 5.0)})
    t, checked = 0.0, 0
    for _ in range(2000):
        t += rng.expovariate(2.0)
        keys = [W] if rng.random() < 0.5 else [W, ("session", "s")]
        cost = rng.randint(1, 4)
        d = sw.acquire(keys, cost, now=t)
        if not d.allowed:
            assert d.retry_after is not None and d.retry_after > 0
            early, exact = copy.deepcopy(sw), copy.deepcopy(sw)
            assert not early.acquire(keys, cost, now=t + d.retry_after - 0.001 - 1e-6).allowed
            assert exact.acquire(keys, cost, now=t + d.retry_after).allowed
            checked += 1
    assert checked > 100


def test_all_or_nothing_across_keys():
    sw = window(3, 10.0)
    s = ("session", "s1")
    assert sw.acquire([W], 3, now=0.0).allowed
    d = sw.acquire([W, s], 1, now=1.0)
    assert not d.allowed and sw.usage(s, now=1.0) == 0  # nothing charged to the free key
    assert sw.acquire([s], 3, now=2.0).allowed
    d = sw.acquire([s, W], 1, now=5.0)  # both full: wait for the later of the two
    assert d.retry_after == pytest.approx(7.0)
    assert sw.acquire([W, W], 0, now=5.0).allowed  # duplicates count once, zero is free


def test_cost_beyond_capacity_can_never_fit():
    sw = window(3, 10.0)
    d = sw.acquire([W], 4, now=0.0)
    assert not d.allowed and d.retry_after is None
    err = d.error()
    assert err.code is ErrorCode.INVALID_INPUT and "split" in err.message
    d = sw.acquire([W], 3, now=0.0)
    assert d.allowed
    err = sw.acquire([W], 1, now=1.0).error()
    assert err.code is ErrorCode.RATE_LIMIT_EXCEEDED and err.retry_after == pytest.approx(9.0)
    assert err.to_dict()["retryAfter"] == 9.0
    with pytest.raises(MemorayError):
        sw.acquire([W], 1, now=1.0).raise_if_denied()


def test_unlimited_kinds_are_free():
    sw = window(1, 10.0)
    for _ in range(100):
        assert sw.acquire([("tool:get-memory", "w")], 5, now=0.0).allowed


def test_limits_from_settings():
    lim = limits_from_settings(Settings())
    assert lim[SESSION] == Limit(100, 60.0) and lim[WORKSPACE] == Limit(1000, 3600.0)
    assert lim[BULK] == Limit(1000, 60.0) and "principal" not in lim
    assert limits_from_settings(Settings(rate_limit_enabled=False)) == {}
    custom = limits_from_settings(SimpleNamespace(
        rate_limit_captures_per_minute=0, rate_limit_requests_per_hour=50,
        rate_limit_bulk_items_per_minute=200, rate_limit_principal_requests_per_hour=500,
        rate_limit_tool_requests_per_minute={"build-context": 30}))
    assert SESSION not in custom and custom["principal"] == Limit(500, 3600.0)
    assert custom["tool:build-context"] == Limit(30, 60.0)
    assert Limit(100, 60).lease_cap() == 5 and Limit(20, 60).lease_cap() == 2
    assert Limit(3, 60).lease_cap() == 1


def test_request_keys_split_bulk_from_interactive():
    keys, cost = request_keys("capture-memories", workspace="w", session="s", principal="p",
                              items=500)
    assert keys == [(BULK, "w")] and cost == 500
    keys, cost = request_keys("capture-memory", workspace="w", session="s", principal="p")
    assert keys == [(WORKSPACE, "w"), (SESSION, "p/s"), ("principal", "p"),
                    ("tool:capture-memory", "w")] and cost == 1
    keys, _ = request_keys("retrieve-memories", workspace="w", session="s", principal="p")
    assert (SESSION, "p/s") not in keys and (WORKSPACE, "w") in keys
    keys, cost = request_keys("capture-memories", workspace=None, items=1)
    assert keys[0] == (WORKSPACE, "-/anonymous") and cost == 1
    keys, _ = request_keys("get-memory", workspace=None, principal="alice")
    assert keys[0] == (WORKSPACE, "-/alice")  # no shared bucket one principal could drain


def test_bulk_importer_cannot_starve_retrieval():
    sw = SlidingWindow(limits_from_settings(Settings()))
    t = 0.0
    while True:  # import until the bulk budget is gone
        keys, cost = request_keys("capture-memories", workspace="w", principal="p", items=250)
        if not sw.acquire(keys, cost, now=t).allowed:
            break
        t += 0.01
    assert sw.usage((BULK, "w"), now=t) == 1000
    for _ in range(50):
        keys, cost = request_keys("retrieve-memories", workspace="w", principal="p")
        assert sw.acquire(keys, cost, now=t).allowed
    # ...and the reverse: an exhausted interactive budget leaves imports alone
    sw2 = SlidingWindow(limits_from_settings(Settings(rate_limit_requests_per_hour=10)))
    for _ in range(10):
        assert sw2.acquire(*request_keys("build-context", workspace="w"), now=0.0).allowed
    assert not sw2.acquire(*request_keys("build-context", workspace="w"), now=0.0).allowed
    assert sw2.acquire(*request_keys("capture-memories", workspace="w", items=900),
                       now=0.0).allowed


def test_grant_caps_and_release_returns_exactly():
    sw = SlidingWindow({"workspace": Limit(100, 60.0)}, lease_ttl_s=2.0)
    lease = sw.grant(W, 50, now=0.0)
    assert lease.amount == 5 and lease.expires_at == 2.0 and lease.lease_id
    assert sw.usage(W, now=0.0) == 5
    assert sw.release(W, 3, lease.lease_id, now=3.0) == 3
    assert sw.usage(W, now=3.0) == 2
    assert sw.release(W, 3, lease.lease_id, now=3.0) == 0  # once only
    big = sw.grant(W, 20, now=3.0, min_amount=20)  # min_amount above the cap is honoured
    assert big.amount == 20
    late = sw.grant(W, 5, now=4.0)
    assert sw.release(W, 5, late.lease_id, now=64.0) == 0  # aged out: nothing to return
    assert sw.stats(now=200.0)["keys"] == 0  # idle keys are swept


def test_grant_denial_has_retry_after():
    sw = SlidingWindow({"workspace": Limit(10, 60.0)})
    assert sw.acquire([W], 9, now=0.0).allowed
    assert sw.grant(W, 5, now=1.0).amount == 1  # what is left
    lease = sw.grant(W, 1, now=2.0)
    assert lease.amount == 0 and lease.retry_after == pytest.approx(58.0)
    assert sw.grant(W, 1, now=2.0, min_amount=11).retry_after is None


def test_decisions_and_leases_pickle():
    for obj in [Decision(False, 1.5, "workspace", "m"), Lease(W, 3, 2.0, 2.0, 7)]:
        assert pickle.loads(pickle.dumps(obj)) == obj


# -- LeaseClient ---------------------------------------------------------------------------------

class SlowCentral(LocalCentral):
    """Yields to the event loop around every call, like an actor round trip would."""

    def __init__(self, window):
        super().__init__(window)
        self.calls = 0

    async def _hop(self):
        for _ in range(3):
            await asyncio.sleep(0)

    async def grant(self, key, want, min_amount):
        self.calls += 1
        await self._hop()
        lease = await super().grant(key, want, min_amount)
        await self._hop()
        return lease

    async def release(self, key, unused, lease_id):
        await self._hop()
        return await super().release(key, unused, lease_id)

    async def acquire(self, keys, cost):
        self.calls += 1
        await self._hop()
        return await super().acquire(keys, cost)


def test_lease_client_spends_locally():
    async def main():
        clock = Clock()
        limits = {"workspace": Limit(100, 60.0)}
        central = SlowCentral(SlidingWindow(limits, clock=clock))
        client = LeaseClient(central, limits, clock=clock)
        results = await asyncio.gather(*(client.acquire([W]) for _ in range(5)))
        assert all(d.allowed for d in results) and central.calls == 1  # one refill in flight
        for _ in range(45):
            assert (await client.acquire([W])).allowed
        assert central.calls == 10  # one grant of 5 units per 5 requests
        assert client.held(W) == 0 and client.try_acquire([W]) is False
        assert (await client.acquire([W])).allowed and client.held(W) == 4
        assert client.try_acquire([W]) is True and client.held(W) == 3  # the sync fast path

    asyncio.run(main())


def test_lease_client_denial_uses_central_retry_after_and_caches_it():
    async def main():
        clock = Clock()
        limits = {"workspace": Limit(3, 10.0)}
        central = SlowCentral(SlidingWindow(limits, clock=clock))
        client = LeaseClient(central, limits, clock=clock)
        for _ in range(3):
            assert (await client.acquire([W])).allowed
        clock.t = 1.0
        d = await client.acquire([W])
        assert not d.allowed and d.retry_after == pytest.approx(9.0)
        assert d.error().code is ErrorCode.RATE_LIMIT_EXCEEDED
        calls = central.calls
        clock.t = 1.5
        d = await client.acquire([W])  # answered locally
        assert d.retry_after == pytest.approx(8.5) and central.calls == calls
        clock.t = 10.0
        assert (await client.acquire([W])).allowed

    asyncio.run(main())


def test_expired_grants_come_back():
    async def main():
        clock = Clock()
        limits = {"workspace": Limit(100, 60.0)}
        sw = SlidingWindow(limits, clock=clock, lease_ttl_s=2.0)
        client = LeaseClient(SlowCentral(sw), limits, clock=clock)
        assert (await client.acquire([W])).allowed
        assert sw.usage(W) == 5 and client.held(W) == 4
        clock.t = 2.5  # the grant expired with 4 unspent
        assert (await client.acquire([W])).allowed
        for _ in range(10):
            await asyncio.sleep(0)
        assert sw.usage(W) == 1 + 5  # 1 spent + the new grant
        await client.close()  # shutdown returns what is held
        assert sw.usage(W) == 2 and client.held(W) == 0

    asyncio.run(main())


def test_large_costs_bypass_leases():
    async def main():
        limits = {"bulk": Limit(1000, 60.0)}
        sw = SlidingWindow(limits)
        central = SlowCentral(sw)
        client = LeaseClient(central, limits)
        assert (await client.acquire([("bulk", "w")], 600)).allowed
        d = await client.acquire([("bulk", "w")], 600)
        assert not d.allowed and d.retry_after > 0
        assert (await client.acquire([("bulk", "w")], 1001)).retry_after is None
        assert sw.stats()["tracked_leases"] == 0 and central.calls == 3
        assert (await client.acquire([("other", "x")], 10**6)).allowed  # unlimited kind

    asyncio.run(main())


def _max_in_window(times: list[float], window_s: float) -> int:
    times = sorted(times)
    return max((bisect.bisect_left(times, t + window_s) - i for i, t in enumerate(times)),
               default=0)


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_two_replicas_stay_within_limit_plus_tolerance(seed):
    """Two LeaseClients on one central limiter under concurrent bursty load: in every window the
    admitted total stays within capacity + replicas * lease_cap, and the budget is actually used."""
    async def main():
        rng = random.Random(seed)
        clock = Clock()
        cap_ws, cap_s, win = 50, 20, 10.0
        limits = {"workspace": Limit(cap_ws, win), "session": Limit(cap_s, win)}
        sw = SlidingWindow(limits, clock=clock, lease_ttl_s=2.0)
        clients = [LeaseClient(SlowCentral(sw), limits, clock=clock) for _ in range(2)]
        admitted: dict[tuple[str, str], list[float]] = {W: [], ("session", "s"): []}
        for step in range(600):  # 60 s of simulated time
            clock.t = step * 0.1
            reqs = []
            for _ in range(rng.randint(0, 8)):
                keys = [W, ("session", "s")] if rng.random() < 0.3 else [W]
                reqs.append((keys, clients[rng.randrange(2)].acquire(keys)))
            results = await asyncio.gather(*(c for _, c in reqs))
            for (keys, _), d in zip(reqs, results):
                if d.allowed:
                    for k in keys:
                        admitted[k].append(clock.t)
                else:
                    assert d.retry_after is not None and 0 <= d.retry_after <= win
        for key, capacity in ((W, cap_ws), (("session", "s"), cap_s)):
            tolerance = 2 * Limit(capacity, win).lease_cap()
            assert _max_in_window(admitted[key], win) <= capacity + tolerance
        assert len(admitted[W]) >= 0.9 * cap_ws * 60 / win  # not needlessly conservative
        for c in clients:
            await c.close()

    asyncio.run(main())


def test_limiter_client_serves_lease_client():
    """The typed limiter client (the same one replicas use over the actor) drives a LeaseClient."""
    from memoray.actors.rate_limiter import LimiterClient, create

    sw = SlidingWindow({"workspace": Limit(10, 60.0)})

    async def main():
        client = LeaseClient(LimiterClient(sw), sw.limits)
        assert (await client.acquire([W])).allowed
        assert sw.usage(W) == 1  # lease_cap of 10/window is 1
        await client.close()

    asyncio.run(main())
    assert callable(create)

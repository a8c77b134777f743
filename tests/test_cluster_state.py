"""ClusterTokenStore without Ray: fails closed when the controller cannot be reached."""

from __future__ import annotations

import asyncio
import concurrent.futures

import pytest

from memoray.auth import authenticate, hash_token, new_token
from memoray.errors import MemorayError
from memoray.serve.cluster_state import ClusterTokenStore


class FakeRef:
    def __init__(self, value=None, error: Exception | None = None):
        self.value, self.error = value, error

    def future(self):
        f = concurrent.futures.Future()
        if self.error:
            f.set_exception(self.error)
        else:
            f.set_result(self.value)
        return f


class FakeController:
    def __init__(self, entries):
        self.entries = entries
        self.down = False

    class _Method:
        def __init__(self, fn):
            self.remote = fn

    @property
    def tokens(self):
        def remote(known):
            if self.down:
                return FakeRef(error=ConnectionError("controller unreachable"))
            version = str(len(self.entries)) + str([e.get("revoked") for e in self.entries])
            return FakeRef(None if version == known else (version, list(self.entries)))
        return self._Method(remote)


def test_fails_closed_before_first_read_and_when_stale():
    token = new_token()
    ctl = FakeController([{"id": "t1", "hash": hash_token(token), "principal": "p",
                           "workspaces": ["*"], "scopes": ["read"]}])
    store = ClusterTokenStore(ctl, stale_after_s=0.2)
    with pytest.raises(MemorayError) as e:
        authenticate(store, None)          # never heard from the controller: refuse, not open
    assert e.value.code.value == "UNAVAILABLE"

    asyncio.run(store.refresh())
    assert authenticate(store, f"Bearer {token}").name == "p"
    with pytest.raises(MemorayError) as e:
        authenticate(store, None)
    assert e.value.code.value == "UNAUTHORIZED"

    ctl.down = True
    with pytest.raises(ConnectionError):
        asyncio.run(store.refresh())
    import time

    time.sleep(0.3)
    with pytest.raises(MemorayError) as e:  # stale: the token may have been revoked since
        authenticate(store, f"Bearer {token}")
    assert e.value.code.value == "UNAVAILABLE"


def test_revocation_is_seen_on_the_next_refresh():
    token = new_token()
    entry = {"id": "t1", "hash": hash_token(token), "principal": "p", "workspaces": ["*"],
             "scopes": ["read"]}
    ctl = FakeController([entry])
    store = ClusterTokenStore(ctl)
    asyncio.run(store.refresh())
    assert store.verify(token) is not None
    entry["revoked"] = "2026-01-01T00:00:00Z"
    asyncio.run(store.refresh())
    assert store.verify(token) is None

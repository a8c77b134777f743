"""Webhooks without Ray: signatures, the SSRF guard, the shard outbox (same commit as the
change), and the dispatcher delivering to a real local HTTP receiver."""

from __future__ import annotations

import asyncio
import time

import lmdb
import numpy as np
import pytest

from memoray.actors.shard import ShardCore
from memoray.actors.webhook_dispatcher import WebhookClient, WebhookDispatcher, backoff
from memoray.errors import MemorayError
from memoray.settings import Settings
from memoray.webhooks import signing, ssrf
from tests.service_harness import caller, item, make_service
from tests.webhook_receiver import Receiver

LOOPBACK = {"allow_loopback": True}


# -- signatures ------------------------------------------------------------------------------------

def test_signature_matches_the_standard_webhooks_test_vector():
    # The example from the Standard Webhooks specification (and the svix/standardwebhooks
    # libraries' tests): our hand-written signer must agree with it byte for byte.
    secret = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"
    sig = signing.sign(secret, "msg_p5jXN8AQM9LWM0D4loKWxJek", 1614265330,
                       b'{"test": 2432232314}')
    assert sig == "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE="


def test_verify_refuses_tampering_wrong_secret_and_stale_timestamps():
    secret = signing.new_secret()
    body = b'{"type":"memory.captured"}'
    hdrs = signing.headers(secret, "msg_1", body)
    signing.verify(secret, hdrs, body)
    with pytest.raises(signing.SignatureError, match="mismatch"):
        signing.verify(secret, hdrs, body + b" ")
    with pytest.raises(signing.SignatureError, match="mismatch"):
        signing.verify(signing.new_secret(), hdrs, body)
    with pytest.raises(signing.SignatureError, match="replay window"):
        signing.verify(secret, hdrs, body, now=time.time() + signing.REPLAY_WINDOW_S + 5)
    with pytest.raises(signing.SignatureError, match="missing"):
        signing.verify(secret, {}, body)


# -- the SSRF guard --------------------------------------------------------------------------------

@pytest.mark.parametrize("url", [
    "https://169.254.169.254/latest/meta-data/",  # cloud metadata (link-local)
    "https://10.1.2.3/hook", "https://172.16.0.1/hook", "https://192.168.1.1/hook",
    "https://100.64.0.1/hook",                    # carrier-grade NAT
    "https://[::ffff:169.254.169.254]/hook",      # IPv4-mapped IPv6
    "https://[fd00:ec2::254]/hook",               # AWS IPv6 metadata (unique-local)
    "https://[fe80::1]/hook", "https://0.0.0.0/hook", "https://224.0.0.1/hook",
    "https://127.0.0.1/hook", "http://127.0.0.1:9/hook",  # loopback not allowed by default
    "http://93.184.216.34/hook",                  # plain http
    "ftp://93.184.216.34/", "https://user:pw@93.184.216.34/", "https:///nohost",
])
def test_refused_targets(url):
    with pytest.raises(ssrf.TargetRefused):
        target = ssrf.parse(url, ssrf.Policy())
        ssrf.resolve(target, ssrf.Policy())


def test_allowed_targets_and_operator_overrides():
    ok = ssrf.parse("https://93.184.216.34:8443/hook?x=1", ssrf.Policy())
    assert ssrf.resolve(ok, ssrf.Policy()) == "93.184.216.34"
    assert ssrf.pinned_url(ok, "93.184.216.34") == "https://93.184.216.34:8443/hook?x=1"
    loop = ssrf.parse("http://127.0.0.1:9/hook", ssrf.Policy(allow_loopback=True))
    assert ssrf.resolve(loop, ssrf.Policy(allow_loopback=True)) == "127.0.0.1"
    with pytest.raises(ssrf.TargetRefused):  # loopback allowed does not open private ranges
        ssrf.parse("http://10.0.0.1/hook", ssrf.Policy(allow_loopback=True))
    priv = ssrf.Policy(allow_private=True)
    assert ssrf.resolve(ssrf.parse("https://10.0.0.1/", priv), priv) == "10.0.0.1"


def test_a_hostname_is_judged_by_every_address_it_resolves_to_now():
    target = ssrf.parse("https://hooks.example.com/x", ssrf.Policy())
    assert ssrf.resolve(target, ssrf.Policy(), lambda h, p: ["93.184.216.34"]) == "93.184.216.34"
    # DNS rebinding: the same name now answers with the metadata address, or with a mix.
    for answer in (["169.254.169.254"], ["93.184.216.34", "10.0.0.7"], ["127.0.0.1"]):
        with pytest.raises(ssrf.TargetRefused):
            ssrf.resolve(target, ssrf.Policy(), lambda h, p, a=answer: a)


def test_backoff_grows_exponentially_with_jitter_and_a_cap():
    import random

    rng = random.Random(1)
    delays = [backoff(n, 1.0, 30.0, rng) for n in range(1, 8)]
    for n, d in enumerate(delays, start=1):
        full = min(30.0, 2 ** (n - 1))
        assert full / 2 <= d <= full
    assert delays[-1] <= 30.0


# -- the outbox ------------------------------------------------------------------------------------

def _kinds(core: ShardCore) -> list[tuple[str, str]]:
    return [(e["type"], e["memory_id"]) for _, e in core.outbox_read(1000)]


def test_every_change_writes_its_event_in_the_same_commit(tmp_path):
    svc = make_service(tmp_path, shards=1)
    core = svc.cores[0]
    res = asyncio.run(svc.capture([item("alpha", idempotency_key="k1", agent_id="a",
                                        visibility="private")], caller("a")))
    mid = res[0]["ids"][0]
    asyncio.run(svc.capture([item("alpha", idempotency_key="k1", agent_id="a",
                                  visibility="private")], caller("a")))  # a replay: no event
    asyncio.run(svc.share(caller("a"), mid, "shared"))
    doc = asyncio.run(svc.capture([item("long text. " * 3000)], caller()))[0]
    asyncio.run(svc.delete(caller(), mid))
    assert len(doc["ids"]) > 1  # chunked: announced once, by its first chunk
    assert _kinds(core) == [("memory.captured", mid), ("memory.shared", mid),
                            ("memory.captured", doc["ids"][0]), ("memory.deleted", mid)]
    events = [e for _, e in core.outbox_read(1000)]
    assert all("content" not in e and "metadata" not in e for e in events)
    assert events[2]["chunks"] == len(doc["ids"])
    # acknowledged events are gone; the rest stay, in order
    first = core.outbox_read(2)
    assert core.outbox_ack(first[-1][0]) == 2
    assert [k for k, _ in _kinds(core)] == ["memory.captured", "memory.deleted"]


def test_a_failed_commit_writes_no_event_and_expiry_is_its_own_event(tmp_path):
    svc = make_service(tmp_path, shards=1)
    core = svc.cores[0]

    def boom(txn):
        raise lmdb.Error("disk on fire")

    core.storage.txn_extra = boom  # fails inside the write transaction
    with pytest.raises(MemorayError):
        asyncio.run(svc.capture([item("never stored")], caller()))
    assert core.outbox_read() == [] and core.storage.count() == 0
    mid = asyncio.run(svc.capture([item("short lived", ttl_seconds=1)], caller()))[0]["ids"][0]
    asyncio.run(svc.expiry.run(now=time.time() + 10))
    assert _kinds(core) == [("memory.captured", mid), ("memory.expired", mid)]


def test_merge_is_announced_as_updated(tmp_path):
    svc = make_service(tmp_path, shards=1)
    first = asyncio.run(svc.upsert([item("the deploy script lives in ops/deploy.sh")],
                                   caller()))
    asyncio.run(svc.upsert([item("the deploy script lives in ops/deploy.sh now")], caller(),
                           threshold=0.5))
    kinds = [k for k, _ in _kinds(svc.cores[0])]
    assert kinds == ["memory.captured", "memory.updated"], (first, kinds)


def test_event_ids_are_the_same_on_every_replica(tmp_path):
    """Two stores applying the same op write the same event id (fail-over re-sends it)."""
    rec = {"id": "01ARZ3NDEKTSV4RRFFQ69G5FAV", "content": "x", "workspace_id": "w",
           "event_type": "note", "timestamp": 1.0, "created_at": 1.0, "updated_at": 1.0,
           "visibility": "shared", "tier": "project", "metadata": {}}
    ids = []
    for n in range(2):
        core = ShardCore(0, tmp_path / f"r{n}", 4, map_size=32 << 20, durable=False)
        core.put([rec], np.ones((1, 4), np.float32))
        ids.append(core.outbox_read()[0][1]["id"])
        core.close()
    assert ids[0] == ids[1]


# -- the dispatcher, in process, against a real receiver -------------------------------------------

def _service_with_dispatcher(tmp_path, shards=2, **kw):
    svc = make_service(tmp_path, shards=shards)
    opts = {"policy": LOOPBACK, "retry_base_s": 0.1, "retry_max_s": 0.5, "poll_s": 0.05,
            "idle_poll_s": 0.2, **kw}
    dispatcher = WebhookDispatcher(svc.backend.shards, tmp_path / "webhooks", **opts)
    svc.webhooks = WebhookClient(dispatcher)
    svc.settings = Settings(data_dir=tmp_path, shards=shards, webhook_allow_loopback=True)
    return svc, dispatcher


def test_every_event_type_is_delivered_signed(tmp_path):
    rx = Receiver().start()
    svc, disp = _service_with_dispatcher(tmp_path)
    try:
        sub = asyncio.run(svc.create_webhook(caller(), {"workspaceId": "ws", "url": rx.url,
                                                        "includeContent": True}))
        assert sub["secret"].startswith("whsec_")
        listed = asyncio.run(svc.list_webhooks(caller(), None))["subscriptions"]
        assert "secret" not in listed[0] and listed[0]["url"] == rx.url
        a = asyncio.run(svc.capture([item("alpha token=ghp_abcdefghijklmnopqrstuvwxyz0123456789",
                                          agent_id="x", visibility="private")],
                                    caller("x")))[0]["ids"][0]
        # Content is read (and redacted) at delivery time: wait for it before deleting `a`.
        first = rx.wait_for(lambda es: len(es) == 1, secret=sub["secret"])[0]
        assert first["type"] == "memory.captured" and first["data"]["memoryId"] == a
        assert first["data"]["content"].startswith("alpha token=")
        assert "ghp_" not in first["data"]["content"]  # redacted content only
        b = asyncio.run(svc.capture([item("beta", ttl_seconds=1)], caller()))[0]["ids"][0]
        asyncio.run(svc.capture([item("in another workspace", workspace_id="other")], caller()))
        asyncio.run(svc.share(caller("x"), a, "shared"))
        asyncio.run(svc.upsert([item("alpha")], caller(), threshold=0.01))
        asyncio.run(svc.delete(caller(), a))
        asyncio.run(svc.expiry.run(now=time.time() + 10))
        want = {("memory.captured", a), ("memory.captured", b), ("memory.shared", a),
                ("memory.updated", a), ("memory.deleted", a), ("memory.expired", b)}
        evs = rx.wait_for(lambda es: want <= {(e["type"], e["data"]["memoryId"]) for e in es},
                          secret=sub["secret"], timeout=30)
        assert all(e["data"]["workspaceId"] == "ws" for e in evs)  # not the other workspace
        assert not [e for e in evs if e["type"] == "memory.deleted" and "content" in e["data"]]
        assert len({e["_id"] for e in evs}) == len(evs)   # one delivery id per delivery
        test = asyncio.run(svc.test_webhook(caller(), sub["id"]))
        assert test["delivered"] and test["status"] == 200
    finally:
        disp.close()
        rx.stop()


def test_idle_outboxes_are_read_less_often_and_an_event_still_comes(tmp_path):
    """While nothing comes, the dispatcher's wait between reads doubles up to idle_poll_s (an
    idle server's reads were 8 actor calls a second); the first event after that still goes out."""
    rx = Receiver().start()
    svc, disp = _service_with_dispatcher(tmp_path, poll_s=0.05, idle_poll_s=0.4)
    try:
        sub = asyncio.run(svc.create_webhook(caller(), {"workspaceId": "ws", "url": rx.url}))
        time.sleep(0.5)  # past the first doublings
        before, t0 = disp.outbox_reads, time.monotonic()
        time.sleep(2.0)
        reads, idle_s = disp.outbox_reads - before, time.monotonic() - t0
        # Every 0.05 s, 2 shards read 80 times in 2 s; backed off to 0.4 s, about 10.
        assert reads <= 2 * (idle_s / 0.4 + 2), reads
        t_capture = time.monotonic()
        mid = asyncio.run(svc.capture([item("after a quiet spell")], caller()))[0]["ids"][0]
        evs = rx.wait_for(lambda es: len(es) == 1, secret=sub["secret"], timeout=10)
        assert evs[0]["data"]["memoryId"] == mid
        assert time.monotonic() - t_capture < 5.0
    finally:
        disp.close()
        rx.stop()


def test_a_new_subscription_wakes_a_backed_off_dispatcher(tmp_path):
    """Creating a subscription resets the idle wait: its first event goes out at once, not after
    the wait the dispatcher had backed off to (in a clean-clone run of the thirteenth stop, 30
    captures ended inside one idle wait and the receiver had not yet been called)."""
    rx = Receiver().start()
    svc, disp = _service_with_dispatcher(tmp_path, poll_s=0.05, idle_poll_s=60.0)
    try:
        # Waits so far 0.05, 0.1, 0.2, 0.4, 0.8, 1.6 (3.15 s in all); at 3.3 s the dispatcher
        # is inside a 3.2 s wait that ends at 6.35 s.
        time.sleep(3.3)
        t0 = time.monotonic()
        sub = asyncio.run(svc.create_webhook(caller(), {"workspaceId": "ws", "url": rx.url}))
        mid = asyncio.run(svc.capture([item("right after subscribing")], caller()))[0]["ids"][0]
        evs = rx.wait_for(lambda es: len(es) == 1, secret=sub["secret"], timeout=10)
        assert evs[0]["data"]["memoryId"] == mid
        assert time.monotonic() - t0 < 1.5  # without the wake: about 3 s
    finally:
        disp.close()
        rx.stop()


def test_without_include_content_no_content_is_sent(tmp_path):
    rx = Receiver().start()
    svc, disp = _service_with_dispatcher(tmp_path)
    try:
        sub = asyncio.run(svc.create_webhook(caller(), {"workspaceId": "ws", "url": rx.url,
                                                        "events": ["memory.captured"]}))
        asyncio.run(svc.capture([item("secret plans")], caller()))
        evs = rx.wait_for(lambda es: len(es) == 1, secret=sub["secret"])
        assert "content" not in evs[0]["data"] and b"secret plans" not in rx.requests[0]["body"]
    finally:
        disp.close()
        rx.stop()


def test_receiver_down_then_up_gets_everything_and_failures_dead_letter(tmp_path):
    rx = Receiver().start()
    port = rx.port
    rx.stop()  # down
    svc, disp = _service_with_dispatcher(tmp_path, max_attempts=50)
    try:
        sub = asyncio.run(svc.create_webhook(caller(), {"workspaceId": "ws",
                                                        "url": f"http://127.0.0.1:{port}/h"}))
        ids = [r["ids"][0] for r in asyncio.run(svc.capture(
            [item(f"fact {i}") for i in range(10)], caller()))]
        time.sleep(1.0)
        assert disp.status()["pending"] == 10
        rx = Receiver(port).start()  # up again
        evs = rx.wait_for(lambda es: {e["data"]["memoryId"] for e in es} >= set(ids),
                          secret=sub["secret"], timeout=30)
        assert {e["data"]["memoryId"] for e in evs} == set(ids)
        deadline = time.time() + 10
        while disp.status()["pending"] and time.time() < deadline:
            time.sleep(0.1)
        assert disp.status()["pending"] == 0
    finally:
        disp.close()
        rx.stop()


def test_dead_letters_are_listed_and_replayed(tmp_path):
    rx = Receiver(status=500).start()
    svc, disp = _service_with_dispatcher(tmp_path, max_attempts=3)
    try:
        sub = asyncio.run(svc.create_webhook(caller(), {"workspaceId": "ws", "url": rx.url}))
        mid = asyncio.run(svc.capture([item("x")], caller()))[0]["ids"][0]
        deadline = time.time() + 20
        while not disp.store.dead_letters(sub["id"]) and time.time() < deadline:
            time.sleep(0.1)
        dead = asyncio.run(svc.dead_letters(caller(), sub["id"]))["deadLetters"]
        assert len(dead) == 1 and dead[0]["memoryId"] == mid and dead[0]["attempts"] == 3
        assert dead[0]["lastError"] == "HTTP 500" and len(rx.requests) == 3
        assert len({r["headers"]["webhook-id"] for r in rx.requests}) == 1  # same id each try
        rx.status = 204
        assert asyncio.run(svc.replay_dead_letters(caller(), sub["id"]))["replayed"] == 1
        rx.wait_for(lambda es: len(es) == 4, secret=sub["secret"])
        assert asyncio.run(svc.dead_letters(caller(), sub["id"]))["count"] == 0
    finally:
        disp.close()
        rx.stop()


def test_redirects_are_not_followed(tmp_path):
    inner = Receiver().start()  # what a redirect would reach
    rx = Receiver(redirect_to=inner.url).start()
    svc, disp = _service_with_dispatcher(tmp_path, max_attempts=2)
    try:
        sub = asyncio.run(svc.create_webhook(caller(), {"workspaceId": "ws", "url": rx.url}))
        asyncio.run(svc.capture([item("x")], caller()))
        deadline = time.time() + 20
        while not disp.store.dead_letters(sub["id"]) and time.time() < deadline:
            time.sleep(0.1)
        dead = disp.dead_letters(sub["id"])
        assert dead and "redirect not followed" in dead[0]["lastError"]
        assert inner.requests == []
    finally:
        disp.close()
        rx.stop()
        inner.stop()


def test_create_refuses_ssrf_targets_and_bad_input(tmp_path):
    svc, disp = _service_with_dispatcher(tmp_path)
    svc.settings = Settings(data_dir=tmp_path)  # loopback not allowed
    try:
        for url in ("https://169.254.169.254/", "https://10.0.0.8/", "http://127.0.0.1:9/h",
                    "https://127.0.0.2/h", "http://example.com/"):
            with pytest.raises(MemorayError) as e:
                asyncio.run(svc.create_webhook(caller(), {"workspaceId": "ws", "url": url}))
            assert e.value.code.value == "INVALID_INPUT", url
        for bad in ({"workspaceId": "ws", "url": "https://93.184.216.34/", "events": ["nope"]},
                    {"workspaceId": "", "url": "https://93.184.216.34/"},
                    {"workspaceId": "ws", "url": "https://93.184.216.34/", "extra": 1}):
            with pytest.raises(MemorayError) as e:
                asyncio.run(svc.create_webhook(caller(), bad))
            assert e.value.code.value == "INVALID_INPUT"
        assert disp.list() == []  # nothing stored
    finally:
        disp.close()


def test_delivery_time_dns_rebinding_is_refused(tmp_path):
    answers = {"now": ["93.184.216.34"]}
    svc, disp = _service_with_dispatcher(tmp_path, max_attempts=1, policy={},
                                         resolver=lambda h, p: answers["now"])
    try:
        sub = disp.create({"workspace_id": "ws", "url": "https://hooks.example.com/x",
                           "events": ["memory.captured"]}, "t")
        answers["now"] = ["169.254.169.254"]  # the name now points at the metadata service
        asyncio.run(svc.capture([item("x")], caller()))
        deadline = time.time() + 10
        while not disp.dead_letters(sub["id"]) and time.time() < deadline:
            time.sleep(0.1)
        assert "refused: 169.254.169.254" in disp.dead_letters(sub["id"])[0]["lastError"]
    finally:
        disp.close()


def test_secrets_are_sealed_at_rest_with_the_store_key(tmp_path):
    from memoray.crypto import generate_key

    svc, disp = _service_with_dispatcher(tmp_path, encryption=generate_key())
    try:
        sub = disp.create({"workspace_id": "ws", "url": "http://127.0.0.1:9/",
                           "events": ["memory.captured"]}, "t")
        raw = b"".join((tmp_path / "webhooks" / "lmdb").joinpath(f).read_bytes()
                       for f in ("data.mdb",))
        assert sub["secret"].encode() not in raw
        assert disp.store.secret(disp.store.subs()[sub["id"]]) == sub["secret"]
    finally:
        disp.close()


def test_only_admins_of_the_workspace_manage_its_subscriptions(tmp_path):
    from memoray.auth import Principal

    svc, disp = _service_with_dispatcher(tmp_path)
    admin_a = caller(principal=Principal("alice", frozenset({"a"}),
                                         frozenset({"read", "write", "admin"})))
    admin_b = caller(principal=Principal("bob", frozenset({"b"}),
                                         frozenset({"read", "write", "admin"})))
    writer_a = caller(principal=Principal("carol", frozenset({"a"}),
                                          frozenset({"read", "write"})))
    try:
        sub = asyncio.run(svc.create_webhook(admin_a, {"workspaceId": "a",
                                                       "url": "http://127.0.0.1:9/h"}))
        for who, spec in ((writer_a, "a"), (admin_b, "a")):
            with pytest.raises(MemorayError) as e:
                asyncio.run(svc.create_webhook(who, {"workspaceId": spec,
                                                     "url": "http://127.0.0.1:9/h"}))
            assert e.value.code.value == "FORBIDDEN"
        assert asyncio.run(svc.list_webhooks(admin_b, None))["count"] == 0
        for call in (svc.test_webhook, svc.delete_webhook, svc.dead_letters):
            with pytest.raises(MemorayError) as e:  # bob: like a subscription that is not there
                asyncio.run(call(admin_b, sub["id"]))
            assert e.value.code.value == "NOT_FOUND"
        with pytest.raises(MemorayError) as e:
            asyncio.run(svc.delete_webhook(writer_a, sub["id"]))
        assert e.value.code.value == "FORBIDDEN"
        assert asyncio.run(svc.list_webhooks(admin_a, "a"))["count"] == 1
        assert asyncio.run(svc.delete_webhook(admin_a, sub["id"]))["deleted"]
        assert disp.list() == []
    finally:
        disp.close()

"""WebhookDispatcher: drains the shards' outboxes into one durable queue per subscriber and
delivers, signed, with retries; a plain class the Ray actor is made from (WebhookClient is its
typed client).

Why captures never wait for a receiver: a shard writes the event in its own commit and returns;
this actor reads the outboxes on its own schedule in another process: every POLL_S while events
come, backing off to IDLE_POLL_S while none do (each read is an actor call to every shard, and an
idle server's 8 reads a second were its third busiest process); a new subscription wakes it at
once and resets the wait, so the first events a new subscriber causes are not held behind an idle
wait. Why a slow receiver never slows another: every subscription has its own queue and its own
worker (at most `concurrency` attempts in flight), all on this actor's event loop thread.

At least once, never invented: an outbox batch is acknowledged on the shard only after its
deliveries are committed here (WebhookStore.fan_out); a crash in between reads the batch again
and the `seen` index queues nothing twice. A delivery leaves the queue only after a 2xx answer
(or into the dead-letter list after `max_attempts`). Receivers drop the rare duplicate (a crash
between the answer and the commit) by the webhook-id header.
"""

from __future__ import annotations

import asyncio
import json
import logging
import random
import threading
import time
from pathlib import Path
from typing import Any

import httpx

from memoray.actors.client import ActorClient
from memoray.actors.shard_client import ShardSet
from memoray.actors.webhook_store import Delivery, WebhookStore, delivery_id
from memoray.ids import new_id
from memoray.webhooks import signing, ssrf
from memoray.webhooks.events import TEST_EVENT
from memoray.webhooks.models import Subscription, payload, public

log = logging.getLogger(__name__)

POLL_S = 0.25
IDLE_POLL_S = 2.0  # the longest wait between reads once the outboxes stay empty
OUTBOX_BATCH = 256
CONTENT_EVENTS = ("memory.captured", "memory.updated", "memory.shared")
USER_AGENT = "memoray-webhooks/1"


def backoff(attempts: int, base_s: float, max_s: float, rng: random.Random) -> float:
    """Exponential with "equal jitter": half the delay fixed, half random, so retries of many
    deliveries spread out instead of arriving together."""
    delay = min(max_s, base_s * (2 ** max(0, attempts - 1)))
    return delay / 2 + rng.uniform(0, delay / 2)


class WebhookDispatcher:
    def __init__(self, shards: ShardSet, path: str | Path, *, policy: dict | None = None,
                 encryption: str | None = None, max_attempts: int = 8,
                 retry_base_s: float = 5.0, retry_max_s: float = 3600.0,
                 timeout_s: float = 10.0, concurrency: int = 4, poll_s: float = POLL_S,
                 idle_poll_s: float = IDLE_POLL_S, resolver: Any = None, start: bool = True):
        """`policy`: ssrf.Policy fields; `encryption`: the store's key text (secrets sealed);
        `resolver`: host -> addresses (tests); `start`: run the delivery thread now."""
        from memoray.redaction import Redactor

        self.shards = shards
        self.store = WebhookStore(path, encryption)
        self.policy = ssrf.Policy(**(policy or {}))
        self.max_attempts = max_attempts
        self.retry_base_s = retry_base_s
        self.retry_max_s = retry_max_s
        self.timeout_s = timeout_s
        self.concurrency = concurrency
        self.poll_s = poll_s
        self.idle_poll_s = max(poll_s, idle_poll_s)
        self.outbox_reads = 0
        self.resolver = resolver or ssrf.system_resolver
        self.redactor = Redactor(pii="redact")
        self.rng = random.Random()
        self.totals = {"delivered": 0, "failed_attempts": 0, "dead": 0, "fanned_out": 0}
        self.last_errors: dict[str, str] = {}
        self._subs: dict[str, Subscription] = self.store.subs()
        self._lock = threading.Lock()
        self._wake: dict[str, asyncio.Event] = {}
        self._workers: dict[str, asyncio.Task] = {}
        self._poke: asyncio.Event | None = None  # set: read the outboxes now, at POLL_S again
        self._inflight: dict[str, set[bytes]] = {}
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._stopping = False
        if start:
            self.start()

    # -- the delivery thread --------------------------------------------------------------------
    def start(self) -> bool:
        if self._thread is None:
            ready = threading.Event()
            self._thread = threading.Thread(target=self._run, args=(ready,), daemon=True,
                                            name="webhook-dispatcher")
            self._thread.start()
            ready.wait(10)
        return True

    def _run(self, ready: threading.Event) -> None:
        self._loop = asyncio.new_event_loop()
        asyncio.set_event_loop(self._loop)
        self._poke = asyncio.Event()
        self._http = httpx.AsyncClient(follow_redirects=False, trust_env=False,
                                       timeout=httpx.Timeout(self.timeout_s),
                                       headers={"user-agent": USER_AGENT})
        for sub_id in list(self._subs):
            self._ensure_worker(sub_id)
        self._loop.create_task(self._pump())
        ready.set()
        self._loop.run_forever()

    def _call_soon(self, fn: Any, *args: Any) -> None:
        if self._loop is not None:
            self._loop.call_soon_threadsafe(fn, *args)

    def _run_coro(self, coro: Any, timeout: float) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result(timeout)

    async def _pump(self) -> None:
        """Outboxes -> per-subscriber queues, forever."""
        last_prune = 0.0
        wait = self.poll_s
        while not self._stopping:
            moved = 0
            self.shards.refresh()  # a reshard may have added or removed shards
            for i in range(len(self.shards)):
                try:
                    moved += await self._drain(i)
                except Exception as exc:  # a shard restarting: its events wait in its outbox
                    log.warning("webhook outbox of shard %d unreadable: %s", i,
                                type(exc).__name__, extra={"shard": i})
            if time.time() - last_prune > 600:
                last_prune = time.time()
                self.store.prune_seen()
            if moved:
                wait = self.poll_s
            else:  # nothing came: wait, and twice as long next time, up to idle_poll_s
                try:
                    await asyncio.wait_for(self._poke.wait(), wait)
                    wait = self.poll_s  # poked: a subscriber expects events soon
                except TimeoutError:
                    wait = min(wait * 2, self.idle_poll_s)
                self._poke.clear()

    def _wake_pump(self) -> None:
        if self._poke is not None:
            self._poke.set()

    async def _drain(self, shard: int) -> int:
        client = self.shards[shard]
        entries = await client.outbox_read(OUTBOX_BATCH)
        self.outbox_reads += 1
        if not entries:
            return 0
        with self._lock:
            subs = dict(self._subs)
        queued = self.store.fan_out([ev for _, ev in entries], subs)  # durable first
        await client.outbox_ack(entries[-1][0])                         # then acknowledged
        self.totals["fanned_out"] += queued
        if queued:
            for sub_id in subs:
                self._kick(sub_id)
        return len(entries)

    def _kick(self, sub_id: str) -> None:
        ev = self._wake.get(sub_id)
        if ev is not None:
            ev.set()

    def _ensure_worker(self, sub_id: str) -> None:
        if sub_id not in self._workers:
            self._wake[sub_id] = asyncio.Event()
            self._inflight[sub_id] = set()
            self._workers[sub_id] = asyncio.get_event_loop().create_task(self._worker(sub_id))

    def _stop_worker(self, sub_id: str) -> None:
        task = self._workers.pop(sub_id, None)
        if task is not None:
            task.cancel()
        self._wake.pop(sub_id, None)
        self._inflight.pop(sub_id, None)

    async def _worker(self, sub_id: str) -> None:
        """One subscriber's queue: start due deliveries up to `concurrency` in flight; sleep
        until the next one is due or new ones arrive."""
        wake, inflight = self._wake[sub_id], self._inflight[sub_id]
        while True:
            wake.clear()
            free = self.concurrency - len(inflight)
            soonest = None
            if free > 0:
                due, soonest = self.store.due(sub_id, time.time(), free, inflight)
                for key, d in due:
                    inflight.add(key)
                    asyncio.get_event_loop().create_task(self._attempt(sub_id, key, d))
            wait = 1.0 if soonest is None else max(0.01, min(1.0, soonest - time.time()))
            try:
                await asyncio.wait_for(wake.wait(), wait)
            except TimeoutError:
                pass

    async def _attempt(self, sub_id: str, key: bytes, d: Delivery) -> None:
        try:
            with self._lock:
                sub = self._subs.get(sub_id)
            if sub is None:
                return
            status, error = await self._send(sub, d)
            if error is None:
                self.store.delivered(key)
                self.totals["delivered"] += 1
                log.info("webhook delivered", extra={
                    "subscription": sub_id, "delivery": d["id"], "event": d["event"]["type"],
                    "attempts": d["attempts"] + 1, "status": status})
                return
            d = {**d, "attempts": d["attempts"] + 1, "last_error": error, "last_status": status}
            self.totals["failed_attempts"] += 1
            self.last_errors[sub_id] = error
            if d["attempts"] >= self.max_attempts:
                self.store.bury(key, d)
                self.totals["dead"] += 1
                log.warning("webhook dead-lettered", extra={
                    "subscription": sub_id, "delivery": d["id"], "attempts": d["attempts"],
                    "status": status, "error": error})
            else:
                d["next_at"] = time.time() + backoff(d["attempts"], self.retry_base_s,
                                                     self.retry_max_s, self.rng)
                self.store.retry(key, d)
                log.info("webhook attempt failed", extra={
                    "subscription": sub_id, "delivery": d["id"], "attempts": d["attempts"],
                    "status": status, "error": error})
        except Exception as exc:  # never let one delivery stop the worker
            log.error("webhook attempt crashed: %s", type(exc).__name__,
                      extra={"subscription": sub_id})
        finally:
            self._inflight.get(sub_id, set()).discard(key)
            self._kick(sub_id)

    async def _content(self, event: dict) -> str | None:
        """Redacted content for a subscription that asked for it (None when gone)."""
        mid = event.get("memory_id")
        if not mid:
            return None
        rec = await self.shards.get_one(mid)  # after a reshard, maybe not on its id's owner
        if rec is None:
            return None
        return self.redactor.redact(rec.get("content", "")).text

    async def _send(self, sub: Subscription, d: Delivery) -> tuple[int | None, str | None]:
        """One attempt: (status, None) on a 2xx, else (status or None, why)."""
        ev = d["event"]
        try:
            content = (await self._content(ev)
                       if sub.get("include_content") and ev["type"] in CONTENT_EVENTS else None)
        except Exception as exc:
            return None, f"content unavailable: {type(exc).__name__}"
        body = json.dumps(payload(ev, content), separators=(",", ":"),
                          ensure_ascii=False).encode()
        try:
            target = ssrf.parse(sub["url"], self.policy)
            loop = asyncio.get_event_loop()
            address = await loop.run_in_executor(None, ssrf.resolve, target, self.policy,
                                                 self.resolver)
        except ssrf.TargetRefused as exc:
            return None, f"refused: {exc}"
        hdrs = {"content-type": "application/json", "host": _host_header(target),
                **signing.headers(self.store.secret(sub), d["id"], body)}
        ext = {"sni_hostname": target.host} if target.scheme == "https" else {}
        try:
            res = await self._http.post(ssrf.pinned_url(target, address), content=body,
                                        headers=hdrs, extensions=ext)
        except httpx.TimeoutException:
            return None, "timeout"
        except httpx.HTTPError as exc:
            return None, f"connection failed: {type(exc).__name__}"
        if 200 <= res.status_code < 300:
            return res.status_code, None
        if 300 <= res.status_code < 400:
            return res.status_code, f"redirect not followed (HTTP {res.status_code})"
        return res.status_code, f"HTTP {res.status_code}"

    # -- the admin surface (any thread) ---------------------------------------------------------
    def create(self, sub: dict, created_by: str) -> dict:
        """Store a subscription validated by the caller (serve/webhooks.py); returns it with its
        secret, the only time the secret is shown."""
        secret = signing.new_secret()
        stored = Subscription(id="sub_" + new_id(), workspace_id=sub["workspace_id"],
                              url=sub["url"], events=list(sub["events"]),
                              include_content=bool(sub.get("include_content")),
                              description=sub.get("description"), created_at=time.time(),
                              created_by=created_by)
        self.store.put_sub(stored, secret)
        with self._lock:
            self._subs = self.store.subs()
        self._call_soon(self._ensure_worker, stored["id"])
        self._call_soon(self._wake_pump)
        return public(stored, secret=secret)

    def list(self, workspaces: list[str] | None = None) -> list[dict]:
        with self._lock:
            subs = list(self._subs.values())
        return [public(s, **self.store.counts(s["id"]), lastError=self.last_errors.get(s["id"]))
                for s in sorted(subs, key=lambda s: s["id"])
                if workspaces is None or s["workspace_id"] in workspaces]

    def get(self, sub_id: str) -> dict | None:
        with self._lock:
            sub = self._subs.get(sub_id)
        return None if sub is None else public(sub)

    def delete(self, sub_id: str) -> bool:
        found = self.store.delete_sub(sub_id)
        with self._lock:
            self._subs = self.store.subs()
        self._call_soon(self._stop_worker, sub_id)
        return found

    def test(self, sub_id: str) -> dict:
        """Send one signed `webhook.test` delivery now (not queued, not retried) and report."""
        with self._lock:
            sub = self._subs.get(sub_id)
        if sub is None:
            return {"delivered": False, "error": "no such subscription"}
        event = {"id": "evt_test_" + new_id(), "type": TEST_EVENT, "at": time.time(),
                 "workspace_id": sub["workspace_id"]}
        d = Delivery(id=delivery_id(event["id"], sub_id), event=event, attempts=0)
        t0 = time.perf_counter()
        status, error = self._run_coro(self._send(sub, d), self.timeout_s + 5)
        return {"delivered": error is None, "status": status, "error": error,
                "deliveryId": d["id"], "durationMs": round((time.perf_counter() - t0) * 1000, 1)}

    def dead_letters(self, sub_id: str, limit: int = 100) -> list[dict]:
        return [{"deliveryId": d["id"], "eventId": d["event"]["id"], "type": d["event"]["type"],
                 "memoryId": d["event"].get("memory_id"), "attempts": d["attempts"],
                 "lastStatus": d.get("last_status"), "lastError": d.get("last_error"),
                 "deadAt": d.get("dead_at")} for d in self.store.dead_letters(sub_id, limit)]

    def replay(self, sub_id: str, delivery_ids: list[str] | None = None) -> int:
        n = self.store.replay(sub_id, set(delivery_ids) if delivery_ids else None)
        self._call_soon(self._kick, sub_id)
        return n

    def status(self) -> dict:
        with self._lock:
            subs = list(self._subs)
        pending = {s: self.store.counts(s) for s in subs}
        return {"subscriptions": len(subs), **self.totals,
                "pending": sum(c["pending"] for c in pending.values()),
                "deadLetters": sum(c["dead"] for c in pending.values())}

    def health(self) -> dict:
        alive = self._thread is not None and self._thread.is_alive()
        return {"status": "ok" if alive else "unavailable", **self.status()}

    def close(self) -> None:
        self._stopping = True
        if self._loop is not None and self._thread is not None and self._thread.is_alive():
            async def shutdown() -> None:
                tasks = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
                for t in tasks:
                    t.cancel()
                await asyncio.gather(*tasks, return_exceptions=True)
                await self._http.aclose()
                asyncio.get_event_loop().stop()

            asyncio.run_coroutine_threadsafe(shutdown(), self._loop)
        if self._thread is not None:
            self._thread.join(5)
        self.store.close()


def _host_header(target: ssrf.Target) -> str:
    default = 443 if target.scheme == "https" else 80
    host = f"[{target.host}]" if ":" in target.host else target.host
    return host if target.port == default else f"{host}:{target.port}"


ACTOR_OPTIONS = {"max_restarts": -1, "max_task_retries": 0, "num_cpus": 0,
                 "max_concurrency": 8}


def dispatcher_actor_class(**options: Any) -> Any:
    import ray

    return ray.remote(**{**ACTOR_OPTIONS, **options})(WebhookDispatcher)


def dispatcher_options(settings: Any) -> dict:
    """The dispatcher's keyword arguments from the server settings."""
    from memoray.crypto import key_text_from_settings

    key = key_text_from_settings(settings)
    return {"policy": {"allow_loopback": settings.webhook_allow_loopback,
                       "allow_http": settings.webhook_allow_http,
                       "allow_private": settings.webhook_allow_private},
            "encryption": key[0] if key else None,
            "max_attempts": settings.webhook_max_attempts,
            "retry_base_s": settings.webhook_retry_base_s,
            "retry_max_s": settings.webhook_retry_max_s,
            "timeout_s": settings.webhook_timeout_s,
            "concurrency": settings.webhook_concurrency}


class WebhookClient(ActorClient[WebhookDispatcher]):
    async def create(self, sub: dict, created_by: str) -> dict:
        return await self._call(WebhookDispatcher.create, sub, created_by)

    async def list(self, workspaces: list[str] | None = None) -> list[dict]:
        return await self._call(WebhookDispatcher.list, workspaces)

    async def get(self, sub_id: str) -> dict | None:
        return await self._call(WebhookDispatcher.get, sub_id)

    async def delete(self, sub_id: str) -> bool:
        return await self._call(WebhookDispatcher.delete, sub_id)

    async def test(self, sub_id: str) -> dict:
        return await self._call(WebhookDispatcher.test, sub_id)

    async def dead_letters(self, sub_id: str, limit: int = 100) -> list[dict]:
        return await self._call(WebhookDispatcher.dead_letters, sub_id, limit)

    async def replay(self, sub_id: str, delivery_ids: list[str] | None = None) -> int:
        return await self._call(WebhookDispatcher.replay, sub_id, delivery_ids)

    async def status(self) -> dict:
        return await self._call(WebhookDispatcher.status)

    async def health(self) -> dict:
        return await self._call(WebhookDispatcher.health)

"""The webhook dispatcher's durable state: one LMDB environment (DATA_DIR/webhooks).

Databases (format 1, in meta `format`):
- subs: subscription id -> msgpack Subscription (its secret sealed with the store's key when
  encryption is on). The cluster-wide subscription list: one dispatcher per store owns it (on
  the head in cluster mode), every replica reaches it through WebhookClient.
- queue: sub id \\0 n -> msgpack Delivery: one ordered queue per subscriber.
- dead: sub id \\0 n -> Delivery with its last error (listable, replayable).
- seen: delivery id -> ms time: what was already fanned out, so an outbox batch read again
  after a crash (fanned out, not yet acknowledged on the shard) never queues a delivery twice.
"""

from __future__ import annotations

import hashlib
import time
from pathlib import Path
from typing import Any, TypedDict

import lmdb
import msgpack

from memoray.actors.shard_storage import from_u64, u64
from memoray.crypto import keyring_sealer
from memoray.errors import ErrorCode, MemorayError
from memoray.webhooks.models import Subscription

FORMAT = 1
SEEN_KEEP_S = 7 * 86400


class Delivery(TypedDict, total=False):
    id: str            # msg_<hex>: the webhook-id header, the same on every attempt
    event: dict        # memoray.webhooks.events.Event
    attempts: int
    next_at: float
    last_error: str | None
    last_status: int | None
    dead_at: float


def delivery_id(event_id: str, sub_id: str) -> str:
    return "msg_" + hashlib.blake2b(f"{event_id}|{sub_id}".encode(), digest_size=13).hexdigest()


def _prefix(sub_id: str) -> bytes:
    return sub_id.encode() + b"\x00"


class WebhookStore:
    def __init__(self, path: Path | str, keyring: Any = None):
        self.path = Path(path)
        self.path.mkdir(parents=True, exist_ok=True)
        self.env = lmdb.open(str(self.path / "lmdb"), map_size=4 << 30, max_dbs=8, subdir=True)
        self.sealer = keyring_sealer(keyring)
        self.subs_db = self.env.open_db(b"subs")
        self.queue = self.env.open_db(b"queue")
        self.dead = self.env.open_db(b"dead")
        self.seen = self.env.open_db(b"seen")
        self.meta = self.env.open_db(b"meta")
        with self.env.begin(write=True) as txn:
            raw = txn.get(b"format", db=self.meta)
            fmt = msgpack.unpackb(raw) if raw else None
            if fmt is None:
                txn.put(b"format", msgpack.packb(FORMAT), db=self.meta)
            elif fmt > FORMAT:
                raise MemorayError(ErrorCode.UNAVAILABLE,
                                   f"webhook store format {fmt} is newer than {FORMAT}")

    # -- subscriptions ------------------------------------------------------------------------
    def put_sub(self, sub: Subscription, secret: str) -> None:
        stored = {**sub, "secret": self.sealer.seal(secret.encode(),
                                                    b"whsec:" + sub["id"].encode())}
        with self.env.begin(write=True) as txn:
            txn.put(sub["id"].encode(), msgpack.packb(stored, use_bin_type=True), db=self.subs_db)

    def subs(self) -> dict[str, Subscription]:
        with self.env.begin() as txn:
            return {k.decode(): msgpack.unpackb(v, raw=False)
                    for k, v in txn.cursor(db=self.subs_db)}

    def secret(self, sub: Subscription) -> str:
        return self.sealer.open(sub["secret"], b"whsec:" + sub["id"].encode()).decode()

    def delete_sub(self, sub_id: str) -> bool:
        """The subscription, its queue and its dead letters, in one transaction."""
        with self.env.begin(write=True) as txn:
            found = txn.delete(sub_id.encode(), db=self.subs_db)
            for db in (self.queue, self.dead):
                cur = txn.cursor(db=db)
                while cur.set_range(_prefix(sub_id)) and bytes(cur.key()).startswith(
                        _prefix(sub_id)):
                    cur.delete()
        return found

    # -- fan-out --------------------------------------------------------------------------------
    def fan_out(self, events: list[dict], subs: dict[str, Subscription]) -> int:
        """Queue one delivery per (event, matching subscription), durably, skipping those queued
        before. Returns how many were queued."""
        now = time.time()
        n = 0
        with self.env.begin(write=True) as txn:
            seq = from_u64(txn.get(b"next", db=self.meta) or u64(0))
            for ev in events:
                for sub in subs.values():
                    if (sub["workspace_id"] != ev.get("workspace_id")
                            or ev["type"] not in sub["events"]):
                        continue
                    did = delivery_id(ev["id"], sub["id"])
                    if txn.get(did.encode(), db=self.seen) is not None:
                        continue
                    seq += 1
                    d = Delivery(id=did, event=ev, attempts=0, next_at=now, last_error=None,
                                 last_status=None)
                    txn.put(_prefix(sub["id"]) + u64(seq), msgpack.packb(d), db=self.queue)
                    txn.put(did.encode(), u64(int(now * 1000)), db=self.seen)
                    n += 1
            txn.put(b"next", u64(seq), db=self.meta)
        return n

    def enqueue(self, sub_id: str, d: Delivery) -> bytes:
        with self.env.begin(write=True) as txn:
            seq = from_u64(txn.get(b"next", db=self.meta) or u64(0)) + 1
            key = _prefix(sub_id) + u64(seq)
            txn.put(key, msgpack.packb(d), db=self.queue)
            txn.put(b"next", u64(seq), db=self.meta)
        return key

    # -- the queue ----------------------------------------------------------------------------
    def due(self, sub_id: str, now: float, limit: int, exclude: set[bytes],
            scan: int = 2000) -> tuple[list[tuple[bytes, Delivery]], float | None]:
        """Up to `limit` deliveries whose time has come (in queue order), and the earliest
        time a waiting one comes due."""
        out: list[tuple[bytes, Delivery]] = []
        soonest: float | None = None
        with self.env.begin() as txn:
            cur = txn.cursor(db=self.queue)
            found = cur.set_range(_prefix(sub_id))
            seen = 0
            while found and seen < scan and len(out) < limit:
                k = bytes(cur.key())
                if not k.startswith(_prefix(sub_id)):
                    break
                seen += 1
                if k not in exclude:
                    d = msgpack.unpackb(cur.value(), raw=False)
                    if d["next_at"] <= now:
                        out.append((k, d))
                    elif soonest is None or d["next_at"] < soonest:
                        soonest = d["next_at"]
                found = cur.next()
        return out, soonest

    def delivered(self, key: bytes) -> None:
        with self.env.begin(write=True) as txn:
            txn.delete(key, db=self.queue)

    def retry(self, key: bytes, d: Delivery) -> None:
        with self.env.begin(write=True) as txn:
            if txn.get(key, db=self.queue) is not None:  # not deleted meanwhile
                txn.put(key, msgpack.packb(d), db=self.queue)

    def bury(self, key: bytes, d: Delivery) -> None:
        """Out of the queue, into the dead-letter list, in one transaction."""
        with self.env.begin(write=True) as txn:
            if txn.delete(key, db=self.queue):
                txn.put(key, msgpack.packb({**d, "dead_at": time.time()}), db=self.dead)

    def dead_letters(self, sub_id: str, limit: int = 100) -> list[Delivery]:
        out = []
        with self.env.begin() as txn:
            cur = txn.cursor(db=self.dead)
            found = cur.set_range(_prefix(sub_id))
            while found and len(out) < limit and bytes(cur.key()).startswith(_prefix(sub_id)):
                out.append(msgpack.unpackb(cur.value(), raw=False))
                found = cur.next()
        return out

    def replay(self, sub_id: str, ids: set[str] | None = None) -> int:
        """Dead letters back into the queue (all, or those with these delivery ids), attempts
        reset, due now."""
        n = 0
        now = time.time()
        with self.env.begin(write=True) as txn:
            cur = txn.cursor(db=self.dead)
            found = cur.set_range(_prefix(sub_id))
            moved = []
            while found and bytes(cur.key()).startswith(_prefix(sub_id)):
                d = msgpack.unpackb(cur.value(), raw=False)
                if ids is None or d["id"] in ids:
                    moved.append((bytes(cur.key()), d))
                found = cur.next()
            for k, d in moved:
                txn.delete(k, db=self.dead)
                d.pop("dead_at", None)
                d.update(attempts=0, next_at=now)
                txn.put(k, msgpack.packb(d), db=self.queue)
                n += 1
        return n

    def counts(self, sub_id: str) -> dict[str, int]:
        out = {}
        with self.env.begin() as txn:
            for name, db in (("pending", self.queue), ("dead", self.dead)):
                cur = txn.cursor(db=db)
                found = cur.set_range(_prefix(sub_id))
                c = 0
                while found and bytes(cur.key()).startswith(_prefix(sub_id)):
                    c += 1
                    found = cur.next()
                out[name] = c
        return out

    def prune_seen(self, now: float | None = None) -> int:
        cutoff = int(((now or time.time()) - SEEN_KEEP_S) * 1000)
        n = 0
        with self.env.begin(write=True) as txn:
            cur = txn.cursor(db=self.seen)
            found = cur.first()
            while found:
                if from_u64(cur.value()) < cutoff:
                    found = cur.delete() and bool(cur.key())
                    n += 1
                else:
                    found = cur.next()
        return n

    def close(self) -> None:
        self.env.close()

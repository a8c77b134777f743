"""One shard's LMDB environment: the source of truth.

Databases: records (id -> msgpack record, sealed when encryption is on), vectors (label ->
float32 bytes), labels (label -> id), ids (id -> label), log (seq -> op, for index replay),
idem (workspace\\x00key -> id), meta, outbox (n -> webhook event, sealed like records: written
in the same transaction as the change it announces, read and acknowledged by the webhook
dispatcher). Every public write is one transaction; it returns only after LMDB commits (fsync'ed
when durable), which is the moment a write may be acknowledged.
"""

from __future__ import annotations

import errno
import os
import struct
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import lmdb
import msgpack
import numpy as np

from memoray.crypto import Keyring, check_marker, keyring_sealer, store_marker
from memoray.errors import ErrorCode, MemorayError
from memoray.webhooks import events as wh

_U64 = struct.Struct(">Q")
OP_PUT = 1
OP_DEL = 2


def u64(n: int) -> bytes:
    return _U64.pack(n)


def from_u64(b: bytes) -> int:
    return _U64.unpack(b)[0]


LOW_DISK_BYTES = 16 << 20  # below this much free space, an I/O error is taken as a full disk


def _disk_nearly_full(path: Path) -> bool:
    try:
        st = os.statvfs(path)
    except OSError:
        return False
    return st.f_bavail * st.f_frsize < LOW_DISK_BYTES


def _storage_error(exc: Exception, path: Path | None = None) -> MemorayError:
    """STORAGE_FULL (not retryable: free space first) for a full map or disk, UNAVAILABLE for
    anything else. LMDB reports a full disk during commit as a plain I/O error (EIO), so an I/O
    error on a nearly full filesystem counts as full."""
    if isinstance(exc, lmdb.MapFullError):
        return MemorayError(ErrorCode.STORAGE_FULL, "shard storage is full (map size reached)")
    if (isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, errno.EDQUOT)
            or "No space left" in str(exc) or path is not None and _disk_nearly_full(path)):
        return MemorayError(ErrorCode.STORAGE_FULL, "disk is full")
    return MemorayError(ErrorCode.UNAVAILABLE, f"storage error: {type(exc).__name__}")


class ShardStorage:
    def __init__(self, path: Path, *, map_size: int, durable: bool = True,
                 keyring: Keyring | None = None):
        self.path = Path(path)
        self.path.mkdir(parents=True, exist_ok=True)
        self.env = lmdb.open(
            str(self.path / "lmdb"), map_size=map_size, max_dbs=16, subdir=True,
            sync=durable, metasync=durable, writemap=False, readahead=False, lock=True,
        )
        self.txn_extra: Callable[[lmdb.Transaction], None] | None = None
        self.keyring = keyring
        self.sealer = keyring_sealer(keyring)
        self.records = self.env.open_db(b"records")
        self.vectors = self.env.open_db(b"vectors")
        self.labels = self.env.open_db(b"labels")
        self.ids = self.env.open_db(b"ids")
        self.log = self.env.open_db(b"log")
        self.idem = self.env.open_db(b"idem")
        self.meta = self.env.open_db(b"meta")
        # label -> the vectors of wordings a memory absorbed in upsert merges (float32 rows)
        self.wordings = self.env.open_db(b"wordings")
        # Webhook events, committed with the change (actors/webhook_dispatcher.py drains them).
        self.outbox = self.env.open_db(b"outbox")
        self.outbox_enabled = True  # off while a replica takes a full copy (no new events)
        with self.env.begin(write=False) as txn:
            self._seq = self._meta_int(txn, b"seq")
            self._next_label = self._meta_int(txn, b"next_label")
            marker = txn.get(b"encryption_marker", db=self.meta)
        # An encrypted store refuses to open without its key; a plaintext store opened with a key
        # is marked before its first sealed write, so it never opens without the key again.
        new_marker = check_marker(marker, keyring)
        if new_marker is not None:
            self._write(lambda txn: txn.put(b"encryption_marker", new_marker, db=self.meta))

    # -- meta -------------------------------------------------------------------------------
    def _meta_int(self, txn: lmdb.Transaction, key: bytes) -> int:
        raw = txn.get(key, db=self.meta)
        return from_u64(raw) if raw else 0


    @property
    def seq(self) -> int:
        return self._seq

    # -- codec ------------------------------------------------------------------------------
    def encode(self, record: dict) -> bytes:
        return self.sealer.seal(msgpack.packb(record, use_bin_type=True), record["id"].encode())

    def decode(self, memory_id: bytes, blob: bytes) -> dict:
        return msgpack.unpackb(self.sealer.open(blob, memory_id), raw=False)

    # -- writes -----------------------------------------------------------------------------
    def _write(self, fn: Callable[[lmdb.Transaction], Any]) -> Any:
        # A one-shot hook that commits in the same transaction as the next write: the replicated
        # log entry of an op (actors/replica_core.py) and the op's effect are durable together.
        extra, self.txn_extra = self.txn_extra, None
        try:
            with self.env.begin(write=True) as txn:
                out = fn(txn)
                if extra is not None:
                    extra(txn)
                return out
        except MemorayError:
            raise
        except (lmdb.Error, OSError) as exc:
            raise _storage_error(exc, self.path) from exc

    def put_many(self, records: list[dict], vectors: np.ndarray) -> list[tuple[str, int, bool]]:
        """Commit records and vectors in one transaction.

        Returns (id, label, created) per record; a record whose idempotency key was already
        used returns the id stored under that key with label -1 and nothing is written for it.
        A document is one unit: when its first chunk (which carries the document's key) is a
        retry, its other chunks are not written either (returned as ("", -1, False)), so a
        retried document never adds chunks, whatever its content now.
        """
        vectors = np.ascontiguousarray(vectors, dtype=np.float32)

        def tx(txn: lmdb.Transaction) -> list[tuple[str, int, bool]]:
            seq, next_label = self._seq, self._next_label
            out: list[tuple[str, int, bool]] = []
            events: list[wh.Event] = []
            replayed_docs: set[str] = set()
            for record, vec in zip(records, vectors):
                if record.get("parent_id") in replayed_docs:
                    out.append(("", -1, False))
                    continue
                key = record.get("idempotency_key")
                if key:
                    ikey = f"{record['workspace_id']}\x00{key}".encode()
                    existing = txn.get(ikey, db=self.idem)
                    if existing is None and record.get("chunk_index") == 0:
                        # a document stored before chunk keys were namespaced: "K#0"
                        existing = txn.get(ikey + b"#0", db=self.idem)
                    if existing is not None and existing.decode() != record["id"]:
                        out.append((existing.decode(), -1, False))  # a retry: stored already
                        if record.get("parent_id"):
                            replayed_docs.add(record["parent_id"])
                        continue
                    txn.put(ikey, record["id"].encode(), db=self.idem)
                mid = record["id"].encode()
                old = txn.get(mid, db=self.ids)
                if old is not None:
                    label, created = from_u64(old), False
                else:
                    label, created = next_label, True
                    next_label += 1
                    txn.put(mid, u64(label), db=self.ids)
                    txn.put(u64(label), mid, db=self.labels)
                txn.put(mid, self.encode(record), db=self.records)
                txn.put(u64(label), vec.tobytes(), db=self.vectors)
                seq += 1
                txn.put(u64(seq), msgpack.packb((OP_PUT, label)), db=self.log)
                out.append((record["id"], label, created))
                if wh.is_document_head(record):
                    events.append(wh.from_record(
                        "memory.captured" if created else "memory.updated", record))
            txn.put(b"seq", u64(seq), db=self.meta)
            txn.put(b"next_label", u64(next_label), db=self.meta)
            self._outbox_put(txn, events)
            return out, seq, next_label

        out, seq, next_label = self._write(tx)
        self._seq, self._next_label = seq, next_label
        return out

    def replace_record(self, record: dict) -> None:
        """Rewrite a record's body (metadata merge, key rotation) without touching its vector."""
        mid = record["id"].encode()

        def tx(txn: lmdb.Transaction) -> None:
            if txn.get(mid, db=self.ids) is None:
                raise MemorayError(ErrorCode.NOT_FOUND, f"memory {record['id']} not found")
            old = txn.get(mid, db=self.records)
            txn.put(mid, self.encode(record), db=self.records)
            if self.outbox_enabled and wh.is_document_head(record):
                before = self.decode(mid, old).get("visibility") if old is not None else None
                kind = ("memory.shared" if before != record.get("visibility")
                        else "memory.updated")
                self._outbox_put(txn, [wh.from_record(kind, record)])

        self._write(tx)

    def add_wording(self, label: int, vector: np.ndarray, keep: int = 32) -> None:
        """Remember a wording's vector for a memory (its newest `keep`)."""
        row = np.ascontiguousarray(vector, dtype=np.float32).tobytes()

        def tx(txn: lmdb.Transaction) -> None:
            old = txn.get(u64(label), db=self.wordings) or b""
            kept = (old + row)[-keep * len(row):]
            txn.put(u64(label), kept, db=self.wordings)

        self._write(tx)

    def wordings_of(self, labels: list[int], dim: int) -> dict[int, np.ndarray]:
        out: dict[int, np.ndarray] = {}
        with self.env.begin() as txn:
            for label in labels:
                raw = txn.get(u64(label), db=self.wordings)
                if raw:
                    out[label] = np.frombuffer(raw, dtype=np.float32).reshape(-1, dim)
        return out

    def delete_many(self, ids: list[str], kind: str = "memory.deleted"
                    ) -> list[tuple[str, int]]:
        """Hard delete: the record, its vector, its id maps and its idempotency key go.
        `kind`: the webhook event it announces (memory.deleted, or memory.expired)."""

        def tx(txn: lmdb.Transaction) -> tuple[list[tuple[str, int]], int]:
            seq = self._seq
            gone: list[tuple[str, int]] = []
            events: list[wh.Event] = []
            for memory_id in ids:
                mid = memory_id.encode()
                raw_label = txn.get(mid, db=self.ids)
                if raw_label is None:
                    continue
                blob = txn.get(mid, db=self.records)
                if blob is not None:
                    record = self.decode(mid, blob)
                    key = record.get("idempotency_key")
                    if key:
                        txn.delete(f"{record['workspace_id']}\x00{key}".encode(), db=self.idem)
                    if wh.is_document_head(record):
                        events.append(wh.from_record(kind, record))
                label = from_u64(raw_label)
                txn.delete(mid, db=self.records)
                txn.delete(mid, db=self.ids)
                txn.delete(raw_label, db=self.labels)
                txn.delete(raw_label, db=self.vectors)
                txn.delete(raw_label, db=self.wordings)
                seq += 1
                txn.put(u64(seq), msgpack.packb((OP_DEL, label)), db=self.log)
                gone.append((memory_id, label))
            txn.put(b"seq", u64(seq), db=self.meta)
            self._outbox_put(txn, events)
            return gone, seq

        gone, seq = self._write(tx)
        self._seq = seq
        return gone

    # -- webhook outbox ---------------------------------------------------------------------
    def _outbox_put(self, txn: lmdb.Transaction, events: list[wh.Event]) -> None:
        """Append events inside the caller's write transaction (so they commit with it)."""
        if not events or not self.outbox_enabled:
            return
        n = self._meta_int(txn, b"outbox_seq")
        for ev in events:
            n += 1
            blob = self.sealer.seal(msgpack.packb(ev, use_bin_type=True), b"outbox:" + u64(n))
            txn.put(u64(n), blob, db=self.outbox)
        txn.put(b"outbox_seq", u64(n), db=self.meta)

    def outbox_read(self, limit: int = 256) -> list[tuple[int, wh.Event]]:
        """The oldest unacknowledged events, in commit order."""
        out: list[tuple[int, wh.Event]] = []
        with self.env.begin() as txn:
            for k, v in txn.cursor(db=self.outbox):
                n = from_u64(k)
                out.append((n, msgpack.unpackb(self.sealer.open(bytes(v), b"outbox:" + k),
                                               raw=False)))
                if len(out) >= limit:
                    break
        return out

    def outbox_ack(self, upto: int) -> int:
        """Drop events up to `upto` (the dispatcher has them durably). Its own transaction, not
        through _write, so it never takes a replicated op's one-shot hook."""
        n = 0
        try:
            with self.env.begin(write=True) as txn:
                cur = txn.cursor(db=self.outbox)
                while cur.first() and from_u64(cur.key()) <= upto:
                    cur.delete()
                    n += 1
        except (lmdb.Error, OSError) as exc:
            raise _storage_error(exc, self.path) from exc
        return n

    def outbox_trim(self, older_than: float) -> int:
        """Drop events committed before `older_than` (Unix seconds) that nobody acknowledged:
        a backup replica's copy (the dispatcher drains the primary's), or a store whose
        dispatcher never ran."""
        n = 0
        with self.env.begin(write=True) as txn:
            cur = txn.cursor(db=self.outbox)
            while cur.first():
                k = bytes(cur.key())
                ev = msgpack.unpackb(self.sealer.open(bytes(cur.value()), b"outbox:" + k),
                                     raw=False)
                if ev.get("at", 0) >= older_than:
                    break
                cur.delete()
                n += 1
        return n

    def outbox_size(self) -> int:
        with self.env.begin() as txn:
            return txn.stat(self.outbox)["entries"]

    def reseal_all(self, batch: int = 500) -> int:
        """Online key rotation: re-encrypt every record not sealed with the current key, a batch
        per transaction (readers never wait on one long transaction), then re-mark the store."""
        if self.keyring is None:
            return 0
        done = 0
        after = b""
        while True:
            with self.env.begin() as txn:
                cur = txn.cursor(db=self.records)
                found = cur.set_range(after) if after else cur.first()
                chunk = []
                while found and len(chunk) < batch:
                    k, v = cur.key(), cur.value()
                    if k != after:
                        chunk.append((bytes(k), bytes(v)))
                    found = cur.next()
            if not chunk:
                break
            stale = [(k, v) for k, v in chunk if self.sealer.rotation_needed(v)]

            def tx(txn: lmdb.Transaction, stale=stale) -> None:
                for k, v in stale:
                    txn.put(k, self.sealer.seal(self.sealer.open(v, k), k), db=self.records)

            if stale:
                self._write(tx)
                done += len(stale)
            after = chunk[-1][0]
        def outbox_tx(txn: lmdb.Transaction) -> None:  # the few pending webhook events too
            for k, v in list(txn.cursor(db=self.outbox)):
                aad = b"outbox:" + bytes(k)
                if self.sealer.rotation_needed(bytes(v)):
                    txn.put(bytes(k), self.sealer.seal(self.sealer.open(bytes(v), aad), aad),
                            db=self.outbox)

        self._write(outbox_tx)
        marker = store_marker(self.keyring)
        self._write(lambda txn: txn.put(b"encryption_marker", marker, db=self.meta))
        return done

    def trim_log(self, upto_seq: int) -> int:
        """Drop log entries an index snapshot already covers."""

        def tx(txn: lmdb.Transaction) -> int:
            n = 0
            cur = txn.cursor(db=self.log)
            while cur.first() and from_u64(cur.key()) <= upto_seq:
                cur.delete()
                n += 1
            return n

        return self._write(tx)

    # -- reads ------------------------------------------------------------------------------
    def get(self, memory_id: str) -> dict | None:
        mid = memory_id.encode()
        with self.env.begin(buffers=False) as txn:
            blob = txn.get(mid, db=self.records)
            return self.decode(mid, blob) if blob is not None else None

    def get_by_labels(self, labels: list[int]) -> list[dict | None]:
        out: list[dict | None] = []
        with self.env.begin() as txn:
            for label in labels:
                mid = txn.get(u64(label), db=self.labels)
                blob = txn.get(mid, db=self.records) if mid is not None else None
                out.append(self.decode(mid, blob) if blob is not None else None)
        return out

    def vectors_of(self, labels: np.ndarray, dim: int) -> tuple[np.ndarray, np.ndarray]:
        """The stored float32 vectors of labels and which were found (the vector index's exact
        rescoring reads them here: file-backed pages, not a second copy in the heap). One
        join and one frombuffer, not a numpy assignment per label."""
        width = dim * 4
        keys = [_U64.pack(lb) for lb in np.asarray(labels).tolist()]
        with self.env.begin() as txn:
            raws = [txn.get(k, db=self.vectors) for k in keys]
        found = np.fromiter((r is not None and len(r) == width for r in raws), bool, len(raws))
        if not found.all():
            raws = [r if ok else bytes(width) for r, ok in zip(raws, found.tolist())]
        out = np.frombuffer(b"".join(raws), np.float32).reshape(len(raws), dim)
        return out, found

    def label_of(self, memory_id: str) -> int | None:
        with self.env.begin() as txn:
            raw = txn.get(memory_id.encode(), db=self.ids)
        return from_u64(raw) if raw is not None else None

    def iter_all(self) -> Iterator[tuple[int, dict, np.ndarray]]:
        """Every live record with its label and vector, for rebuilding in-memory indexes."""
        with self.env.begin() as txn:
            ids = txn.cursor(db=self.ids)
            for mid, raw_label in ids:
                blob = txn.get(mid, db=self.records)
                vec = txn.get(raw_label, db=self.vectors)
                if blob is None or vec is None:
                    continue
                yield from_u64(raw_label), self.decode(mid, blob), np.frombuffer(vec, np.float32)

    def iter_log(self, after_seq: int) -> Iterator[tuple[int, int, int]]:
        with self.env.begin() as txn:
            cur = txn.cursor(db=self.log)
            if not cur.set_range(u64(after_seq + 1)):
                return
            for k, v in cur:
                op, label = msgpack.unpackb(v)
                yield from_u64(k), op, label


    def scan(self, after: str | None, limit: int) -> list[dict]:
        """Records in id order after `after`: paging for batch jobs (reindex, export)."""
        out: list[dict] = []
        with self.env.begin() as txn:
            cur = txn.cursor(db=self.records)
            found = cur.set_range(after.encode()) if after else cur.first()
            while found and len(out) < limit:
                k = bytes(cur.key())
                if after is None or k != after.encode():
                    out.append(self.decode(k, bytes(cur.value())))
                found = cur.next()
        return out

    def backup(self, dest: Path) -> int:
        """A consistent, compacted copy of the environment (LMDB's own hot backup)."""
        dest = Path(dest)
        dest.mkdir(parents=True, exist_ok=True)
        self.env.copy(str(dest), compact=True)
        return sum(f.stat().st_size for f in dest.iterdir() if f.is_file())

    def count(self) -> int:
        with self.env.begin() as txn:
            return txn.stat(self.ids)["entries"]

    def disk_bytes(self) -> int:
        return sum(f.stat().st_size for f in (self.path / "lmdb").glob("*") if f.is_file())

    def close(self) -> None:
        self.env.close()

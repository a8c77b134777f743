"""One replica of one shard: a ShardCore plus the replicated log that keeps replicas identical.

The replicated log (LMDB database `rlog` in the shard's own environment) maps a sequence number
to (epoch, op, payload) and carries the *full* op (records and vectors, ids, record bodies), so
a lagging replica can replay it. An entry commits in the same LMDB transaction as the op's effect
(ShardStorage.txn_extra), so "applied" and "logged" never disagree after a crash.

Log matching as in Raft: an entry is identified by (seq, epoch); a replica appends seq N only if
its entry N-1 carries the epoch the primary says it does, so equal (seq, epoch) implies equal
prefixes. A replica whose last entry the primary does not hold (a fenced primary's unacknowledged
tail) or whose gap the primary has trimmed is rebuilt by a full copy instead of an undo.

On-disk format: meta `format` = 2 (v1 stores, written before replication, have no `rlog` and no
`format`; they are migrated in place on open: the database is created and the version written).
This module never imports ray: the Ray actor around it is actors/replication.py.
"""

from __future__ import annotations

import shutil
import threading
from pathlib import Path
from typing import Any

import msgpack
import numpy as np

from memoray import gcpause
from memoray.actors.shard import ShardCore
from memoray.actors.shard_storage import from_u64, u64
from memoray.errors import ErrorCode, MemorayError

FORMAT_VERSION = 2
RLOG_KEEP = 200_000        # entries kept for catch-up; a replica further behind gets a full copy
TRIM_EVERY = 5_000
WRITE_OPS = ("put", "merge", "update_record", "delete", "purge",
             # a reshard's steps (actors/resharding.py) go through the log like any write, so
             # every replica holds the placement and the moved copies before the source drops them
             "set_placement", "import_moved", "drop_moved")


class Fenced(Exception):
    """The sender's epoch is older than this replica's: it is a stale primary."""


class NeedsResync(Exception):
    """This replica cannot apply the entry in order (gap, divergence, or recovering)."""


def get_meta(storage: Any, key: str) -> Any:
    """A msgpack value under `m:<key>` in the shard's meta database."""
    with storage.env.begin() as txn:
        raw = txn.get(b"m:" + key.encode(), db=storage.meta)
    return msgpack.unpackb(raw) if raw else None


def set_meta(storage: Any, key: str, value: Any) -> None:
    storage._write(lambda txn: txn.put(b"m:" + key.encode(), msgpack.packb(value),
                                       db=storage.meta))


def vector_of(storage: Any, label: int) -> np.ndarray | None:
    with storage.env.begin() as txn:
        raw = txn.get(u64(label), db=storage.vectors)
    return np.frombuffer(raw, np.float32).copy() if raw is not None else None


class ReplicaCore:
    def __init__(self, shard_id: int, path: Path | str, dim: int, **shard_kwargs: Any):
        self.shard_id = shard_id
        self.path = Path(path)
        self.dim = dim
        self.shard_kwargs = shard_kwargs
        self.lock = threading.RLock()
        self._open()

    # -- opening, format, migration -------------------------------------------------------------
    def _open(self) -> None:
        self.core = ShardCore(self.shard_id, self.path, self.dim, **self.shard_kwargs)
        st = self.core.storage
        self.rlog = st.env.open_db(b"rlog")
        fmt = get_meta(st, "format")
        if fmt is None:  # a v1 store (or a new one): migrate in place
            set_meta(st, "format", FORMAT_VERSION)
            self.migrated_from = 1 if st.seq else None
        elif fmt > FORMAT_VERSION:
            raise MemorayError(ErrorCode.UNAVAILABLE,
                               f"shard {self.shard_id} has format {fmt}; this version reads "
                               f"<= {FORMAT_VERSION}")
        else:
            self.migrated_from = None
        if get_meta(st, "copying"):  # a full copy was interrupted: the store is partial
            self._wipe()
            return
        self.epoch = int(get_meta(st, "epoch") or 0)
        base = get_meta(st, "rlog_base") or [0, 0]
        self.base_seq, self.base_epoch = int(base[0]), int(base[1])
        self.seq, self.last_epoch = self.base_seq, self.base_epoch
        with st.env.begin() as txn:
            cur = txn.cursor(db=self.rlog)
            if cur.last():
                self.seq = from_u64(cur.key())
                self.last_epoch = msgpack.unpackb(cur.value())[0]

    def _wipe(self) -> None:
        self.core.storage.close()
        shutil.rmtree(self.path, ignore_errors=True)
        # The old core was frozen out of the collector when it opened, and refers to itself:
        # give it back and let go of it, so the new core's freeze collects it (gcpause).
        gcpause.unfreeze()
        del self.core
        self.core = ShardCore(self.shard_id, self.path, self.dim, **self.shard_kwargs)
        st = self.core.storage
        self.rlog = st.env.open_db(b"rlog")
        set_meta(st, "format", FORMAT_VERSION)
        self.migrated_from = None
        self.epoch = 0
        self.base_seq = self.base_epoch = self.seq = self.last_epoch = 0

    def set_epoch(self, epoch: int) -> None:
        if epoch > self.epoch:
            set_meta(self.core.storage, "epoch", epoch)
            self.epoch = epoch

    # -- the log ---------------------------------------------------------------------------------
    def _seal(self, seq: int, op: str, payload: Any) -> bytes:
        data = msgpack.packb([op, _pack_payload(op, payload)], use_bin_type=True)
        return self.core.storage.sealer.seal(data, b"rlog:" + u64(seq))

    def _unseal(self, seq: int, blob: bytes) -> tuple[str, Any]:
        op, packed = msgpack.unpackb(self.core.storage.sealer.open(blob, b"rlog:" + u64(seq)),
                                     raw=False)
        return op, _unpack_payload(op, packed)

    def epoch_at(self, seq: int) -> int | None:
        if seq == self.base_seq:
            return self.base_epoch
        if seq < self.base_seq or seq > self.seq:
            return None
        with self.core.storage.env.begin() as txn:
            raw = txn.get(u64(seq), db=self.rlog)
        return None if raw is None else msgpack.unpackb(raw)[0]

    def apply(self, seq: int, epoch: int, op: str, payload: Any, *, strict: bool = False) -> Any:
        """Log entry `seq` and apply it, in one LMDB transaction. Callers hold self.lock.
        `strict` (the primary, ordering a new write): an update of a missing record is refused
        with NOT_FOUND and nothing is logged, as ShardCore.update_record does; a replica
        replaying the log applies it as a no-op (the record was deleted later)."""
        if op not in WRITE_OPS:
            raise ValueError(f"not a write op: {op}")
        if seq != self.seq + 1:
            raise NeedsResync(f"entry {seq} after {self.seq}")
        if strict and op == "update_record" and \
                self.core.storage.label_of(payload["id"]) is None:
            raise MemorayError(ErrorCode.NOT_FOUND, f"memory {payload['id']} not found")
        value = msgpack.packb([epoch, self._seal(seq, op, payload)], use_bin_type=True)
        st = self.core.storage

        def hook(txn) -> None:
            txn.put(u64(seq), value, db=self.rlog)

        st.txn_extra = hook  # commits with the op's first write
        try:
            result = self._apply_op(op, payload)
        except BaseException:
            if st.txn_extra is None:  # the entry committed with a first write: it is applied
                self.seq, self.last_epoch = seq, epoch
            st.txn_extra = None
            raise
        if st.txn_extra is not None:  # the op wrote nothing (a merge of a deleted record)
            st._write(lambda txn: None)
        self.seq, self.last_epoch = seq, epoch
        if seq % TRIM_EVERY == 0:
            self._trim()
        return result

    def _apply_op(self, op: str, payload: Any) -> Any:
        core = self.core
        if op == "put":
            records, vectors = payload
            return core.put(records, vectors)
        if op == "merge":
            record, vector = payload
            return core.merge(record, vector)
        if op == "update_record":
            if core.storage.label_of(payload["id"]) is None:
                # Replayed after the record's delete: nothing to update, but the entry is logged.
                return None  # apply() logs the entry on its own
            return core.update_record(payload)
        if op == "set_placement":
            return core.set_placement(payload)
        if op == "import_moved":
            records, vectors, wordings = payload
            return core.import_moved(records, vectors, wordings)
        if op == "drop_moved":
            return core.drop_moved(payload)
        return core.purge(payload) if op == "purge" else core.delete(payload)

    def _trim(self) -> None:
        upto = self.seq - RLOG_KEEP
        if upto <= self.base_seq:
            return
        ep = self.epoch_at(upto)
        st = self.core.storage

        def tx(txn) -> None:
            cur = txn.cursor(db=self.rlog)
            while cur.first() and from_u64(cur.key()) <= upto:
                cur.delete()
            txn.put(b"m:rlog_base", msgpack.packb([upto, ep]), db=st.meta)

        st._write(tx)
        self.base_seq, self.base_epoch = upto, ep

    def entries_after(self, seq: int, epoch: int, limit: int = 256) -> list | None:
        """Entries after (seq, epoch) if the caller's log matches ours there, else None (the caller
        needs a full copy). Entries: (seq, epoch, op, payload)."""
        if seq > self.seq or seq < self.base_seq or self.epoch_at(seq) != epoch:
            return None
        out = []
        with self.core.storage.env.begin() as txn:
            cur = txn.cursor(db=self.rlog)
            if not cur.set_range(u64(seq + 1)):
                return out
            for k, v in cur:
                s = from_u64(k)
                ep, blob = msgpack.unpackb(v)
                op, payload = self._unseal(s, blob)
                out.append((s, ep, op, payload))
                if len(out) >= limit:
                    break
        return out

    # -- full copy -------------------------------------------------------------------------------
    def dump_page(self, after: str | None, limit: int = 256) -> tuple[list[dict], np.ndarray]:
        """Records in id order after `after`, with their vectors (the source side of a copy)."""
        st = self.core.storage
        records = st.scan(after, limit)
        vecs = [vector_of(st, st.label_of(r["id"])) for r in records]
        mat = np.vstack(vecs) if vecs else np.empty((0, self.dim), np.float32)
        return records, mat

    def begin_copy(self) -> None:
        """Drop everything local; mark the store partial until finish_copy."""
        self._wipe()
        set_meta(self.core.storage, "copying", 1)

    def copy_page(self, records: list[dict], vectors: np.ndarray) -> None:
        if records:  # a copy announces nothing: the source announced these records already
            st = self.core.storage
            st.outbox_enabled = False
            try:
                self.core.put(records, vectors)
            finally:
                st.outbox_enabled = True

    def moved_marks(self) -> list[str]:
        """Ids this shard dropped after a reshard moved them (ShardCore.drop_moved), which a
        rerun's drop must hear as moved, not deleted: a full copy takes them too."""
        moved = self.core._moved_db()
        with self.core.storage.env.begin() as txn:
            return [bytes(k).decode() for k in txn.cursor(db=moved).iternext(values=False)]

    def copy_moved(self, ids: list[str]) -> None:
        if ids:
            moved = self.core._moved_db()
            self.core.storage._write(lambda txn: [txn.put(i.encode(), b"", db=moved)
                                                  for i in ids])

    def finish_copy(self, seq: int, epoch: int, my_epoch: int) -> None:
        st = self.core.storage
        set_meta(st, "rlog_base", [seq, epoch])
        set_meta(st, "epoch", my_epoch)
        set_meta(st, "copying", 0)
        self.base_seq = self.seq = seq
        self.base_epoch = self.last_epoch = epoch
        self.epoch = my_epoch

    def position(self) -> dict:
        return {"seq": self.seq, "last_epoch": self.last_epoch, "epoch": self.epoch,
                "records": len(self.core.postings)}

    def close(self) -> None:
        self.core.close()


def _pack_payload(op: str, payload: Any) -> Any:
    if op == "import_moved":
        records, vectors, wordings = payload
        packed = _pack_payload("put", (records, vectors))
        return [*packed, {k: _pack_rows(v) for k, v in wordings.items()}]
    if op == "merge":
        record, vector = payload
        return [record, np.ascontiguousarray(vector, dtype=np.float32).tobytes()]
    if op == "put":
        records, vectors = payload
        arr = np.ascontiguousarray(vectors, dtype=np.float32)
        return [records, arr.tobytes(), arr.shape[1] if arr.ndim == 2 else 0]
    return payload


def _pack_rows(rows: Any) -> list:
    arr = np.ascontiguousarray(rows, dtype=np.float32)
    return [arr.tobytes(), list(arr.shape)]


def _unpack_rows(packed: list) -> np.ndarray:
    raw, shape = packed
    return np.frombuffer(raw, np.float32).reshape(shape).copy()


def _unpack_payload(op: str, packed: Any) -> Any:
    if op == "import_moved":
        records, vectors = _unpack_payload("put", packed[:3])
        return records, vectors, {k: _unpack_rows(v) for k, v in packed[3].items()}
    if op == "merge":
        record, raw = packed
        return record, np.frombuffer(raw, np.float32).copy()
    if op == "put":
        records, raw, dim = packed
        arr = np.frombuffer(raw, np.float32).reshape(-1, dim) if dim else np.empty((0, 0))
        return records, arr.copy()
    return packed

"""VectorShard: one shard of the memory store, a plain class the Ray actor is made from.

ShardCore owns one LMDB environment (ShardStorage), the in-memory vector index, the secondary
indexes (Postings) and the lexical index. Writes commit to LMDB first and reach the in-memory
indexes only after the commit, so an acknowledged write survives any crash; on start everything
in memory is recovered from LMDB. The read path lives in actors/shard_search.py, the background
graph rebuild in actors/graph_rebuild.py; callers reach a shard through actors/shard_client.py.
"""

from __future__ import annotations

import atexit
import hashlib
import json
import logging
import math
import os
import threading
import time
import weakref
from pathlib import Path
from typing import Any

import msgpack
import numpy as np
from sortedcontainers import SortedList

from memoray import filters as flt
from memoray import gcpause, heap
from memoray.actors.graph_rebuild import GraphRebuild, worth_rebuilding
from memoray.actors.shard_search import Memo, SearchRequest, SearchResult, ShardSearch, pack, unpack
from memoray.actors.shard_storage import OP_DEL, OP_PUT, ShardStorage, u64
from memoray.actors.snapshot_export import SnapshotChunk, export_chunk
from memoray.actors.vector_index import MAX_PENDING, VectorIndex
from memoray.errors import ErrorCode, MemorayError
from memoray.lexical import LexicalIndex
from memoray.logs import Timer
from memoray.postings import Postings
from memoray.records import Record, slim
from memoray.routing import WRONG_SHARD, Placement, home_keys

log = logging.getLogger(__name__)

ACTOR_OPTIONS = {"max_restarts": -1, "max_task_retries": 3, "num_cpus": 0}
# Webhook events nobody acknowledged for this long are dropped at the next snapshot (a backup
# replica's copies; the dispatcher drains the primary's within seconds).
OUTBOX_KEEP_S = 7 * 86400


class ShardCore:
    def __init__(self, shard_id: int, path: Path | str, dim: int, *, map_size: int = 8 << 30,
                 durable: bool = True, snapshot_every: int = 5000, keyring: Any = None,
                 encryption: str | None = None, background_inserts: bool = True):
        """`encryption`: the keyring as text (what crosses Ray to a shard actor); `keyring`: an
        already parsed Keyring (in-process callers). `background_inserts`: graph inserts after
        the acknowledgement (see VectorIndex)."""
        heap.mmap_big_buffers()  # RAM per memory: memoray/heap.py
        heap.start_trimmer()  # also where no setup hook ran (`serve deploy`)
        if encryption and keyring is None:
            from memoray.crypto import Keyring

            keyring = Keyring.parse(encryption)
        self.shard_id = shard_id
        self.path = Path(path)
        self.dim = dim
        self.snapshot_every = snapshot_every
        self.background_inserts = background_inserts
        self.storage = ShardStorage(self.path, map_size=map_size, durable=durable,
                                    keyring=keyring)
        self.index = self._new_index()
        self.postings = Postings()
        self.lexical = LexicalIndex()
        self.parents: dict[str, set[int]] = {}
        self.expiry: SortedList = SortedList()  # (expires_at, label)
        self._rebuild: GraphRebuild | None = None  # the background graph rebuild in flight
        self._bg_snapshot: BackgroundSnapshot | None = None  # the graph snapshot in flight
        self.snapshots = 0
        self.rebuilds = 0
        self.started_at = time.time()
        self.recovery: dict[str, Any] = {}
        self._spawn = {"dim": dim, "map_size": map_size, "durable": durable,
                       "snapshot_every": snapshot_every, "encryption": encryption}
        self._placement = load_placement(self.path)  # None: never resharded, nothing to fence
        # Write-path stage totals, [seconds, calls] per stage (stats()["stages"]): the replica
        # sees one `commit` around a put; these say what the shard did inside it.
        self.stage_totals: dict[str, list[float]] = {}
        self._recover()
        self.reader = ShardSearch(shard_id, self.index, self.lexical, self.postings,
                                  self.storage.get_by_labels)
        # what recovery built stays for the actor's life: out of the collector's full scans,
        # which would otherwise stop a search for ~12 ms even in process (memoray/gcpause.py)
        gcpause.settle()

    def _new_index(self) -> VectorIndex:
        return VectorIndex(self.dim, self.path,
                           fetch=lambda labels: self.storage.vectors_of(labels, self.dim))

    # -- recovery ---------------------------------------------------------------------------
    def _recover(self) -> None:
        t0 = time.perf_counter()
        labels: list[int] = []
        # Vectors are copied into one preallocated matrix as they are read (each record's bytes
        # freed at once): a list of 100K small buffers would leave the heap fragmented, and the
        # process larger after recovery than after the same records were written.
        mat = np.empty((self.storage.count(), self.dim), np.float32)
        for label, record, vec in self.storage.iter_all():
            if len(labels) == len(mat):
                mat = np.concatenate([mat, np.empty_like(mat[: max(1, len(mat))])])
            mat[len(labels)] = vec
            labels.append(label)
            self._index_record(label, record)
        t_scan = time.perf_counter()
        snapshot_seq = self.index.load_snapshot()
        t_snap = time.perf_counter()
        arr = np.asarray(labels, dtype=np.int64)
        mat = mat[: len(labels)]
        replayed = background = 0
        # Nothing is served until recovery ends, so graph inserts done here may use every core.
        threads = max(1, os.cpu_count() or 1)
        if snapshot_seq is None or snapshot_seq > self.storage.seq:
            # No snapshot, a corrupt one, or one from another store: rebuild from LMDB.
            self.index = self._new_index()
            self.index.add(arr, mat, to_graph=False)
            if len(arr):
                self.index.graph.add_items(mat, arr, num_threads=threads)
            mode = "rebuild"
        else:
            self.index.add(arr, mat, to_graph=False)
            in_graph = self.index.graph_labels()
            live = set(labels)
            # The log after the snapshot, folded to its net effect (labels are never reused),
            # then applied in one batch: re-put vectors go in, deleted ones are marked.
            puts: set[int] = set()
            dels: set[int] = set()
            for _seq, op, label in self.storage.iter_log(snapshot_seq):
                replayed += 1
                if op == OP_PUT:
                    puts.add(label)
                elif op == OP_DEL:
                    dels.add(label)
            for label in sorted(dels & in_graph - live):
                try:
                    self.index.graph.mark_deleted(label)
                except RuntimeError:
                    pass
            # re-put labels (a new vector) and anything live the graph lacks
            redo = np.array(sorted((puts & live) | (live - in_graph)), dtype=np.int64)
            if len(redo):
                order = np.argsort(arr)
                rows = order[np.searchsorted(arr, redo, sorter=order)]
                if self.background_inserts and len(redo) <= MAX_PENDING:
                    # The tail after the snapshot (a kill -9 leaves up to snapshot_every
                    # writes) goes to the insert worker: the shard serves at once, and
                    # searches score these vectors exactly until they are in the graph.
                    self.index.add(redo, mat[rows], background=True)
                    background = len(redo)
                else:
                    self.index.graph.add_items(mat[rows], redo, num_threads=threads)
            mode = "snapshot+replay"
        t_end = time.perf_counter()
        # where recovery's time went: reading and indexing the records, loading the graph
        # snapshot, bringing the graph up to date (rebuild or replay)
        self.recovery = {"mode": mode, "records": len(labels), "replayed": replayed,
                         "seconds": round(t_end - t0, 3), "scan_s": round(t_scan - t0, 3),
                         "snapshot_s": round(t_snap - t_scan, 3),
                         "graph_s": round(t_end - t_snap, 3),
                         "replay_in_background": background}
        log.info("shard %d recovered: %s", self.shard_id, self.recovery)

    def _index_record(self, label: int, record: Record) -> None:
        self.postings.add(label, slim(record))
        self.lexical.add(label, record.get("content", ""))
        parent = record.get("parent_id")
        if parent:
            self.parents.setdefault(parent, set()).add(label)
        if record.get("expires_at"):
            self.expiry.add((float(record["expires_at"]), label))

    def _unindex(self, label: int) -> None:
        if label in self.postings:
            row = self.postings.row(label)
            if row.get("expires_at"):
                self.expiry.discard((float(row["expires_at"]), label))
            parent = row.get("parent_id")
            if parent and parent in self.parents:
                self.parents[parent].discard(label)
                if not self.parents[parent]:
                    del self.parents[parent]
            self.postings.remove(label)
        self.lexical.remove(label)

    # -- writes -----------------------------------------------------------------------------
    def put(self, records: list[Record], vectors: np.ndarray) -> list[tuple[str, bool]]:
        """Commit, then index. Returns (id, created) per record."""
        if len(records) != len(vectors):
            raise ValueError("records and vectors differ in length")
        if self._placement is not None:
            self._fence(records)
        t0 = time.perf_counter()
        timer = Timer()
        results = self.storage.put_many(records, vectors)  # durable from here on
        t1 = time.perf_counter()
        new_labels, new_vecs = [], []
        for (_mid, label, created), record, vec in zip(results, records, vectors):
            if label < 0:
                continue  # idempotent replay: already stored under this key
            if not created:
                self._unindex(label)
            self._index_record(label, record)
            new_labels.append(label)
            new_vecs.append(vec)
        t2 = time.perf_counter()
        if new_labels:
            self._swap_if_rebuilt()
            # Into the graph off the acknowledgement path: the LMDB log holds the write, and
            # searches score vectors not yet in the graph exactly (actors/vector_index.py).
            self.index.add(np.asarray(new_labels, np.int64), np.vstack(new_vecs),
                           background=self.background_inserts)
            if self._rebuild is not None:
                self._rebuild.record("put", new_labels)
        t3 = time.perf_counter()
        self._maybe_snapshot()
        self._stage("commit", t1 - t0)  # the LMDB transaction, its fsync included
        self._stage("index_postings_lexical", t2 - t1)
        self._stage("index_vector", t3 - t2)
        log.info("shard write", extra={"op": "put", "shard": self.shard_id,
                                       "records": len(new_labels), "duration_ms": timer.ms()})
        return [(mid, label >= 0) for mid, label, _ in results]

    def _stage(self, name: str, seconds: float) -> None:
        tot = self.stage_totals.setdefault(name, [0.0, 0])
        tot[0] += seconds
        tot[1] += 1

    def merge(self, record: Record, vector: np.ndarray) -> bool:
        """Replace a record (and its vector) only if it still exists: a merge racing a delete
        never brings the deleted record back (the shard runs one call at a time, so the check
        and the write are one step). False when the record is gone."""
        label = self.storage.label_of(record["id"])
        if label is None:
            return False
        absorbed = self.index.vectors(np.array([label]))[0]  # the wording being replaced
        self.put([record], vector[None, :])
        self.storage.add_wording(label, absorbed)
        return True

    def best_match(self, vector: np.ndarray, node: Any, k: int = 8,
                   now: float | None = None) -> tuple[Record, float] | None:
        """The live memory under `node` most similar to `vector`, comparing against every
        wording each memory absorbed in merges (not only its newest), so the order paraphrases
        arrive in matters less. Exact over the filter's candidates (upserts are scoped)."""
        cand = flt.evaluate(node, self.postings)
        if len(cand) == 0:
            return None
        labels, sims = self.index.exact(vector, cand, k)
        now = now or time.time()
        wordings = self.storage.wordings_of(labels.tolist(), self.dim)
        best: tuple[int, float] | None = None
        for label, sim in zip(labels.tolist(), sims.tolist()):
            row = self.postings.row(label)
            if (row.get("expires_at") or math.inf) <= now:
                continue
            if label in wordings:
                sim = max(sim, float(np.max(wordings[label] @ vector)))
            if best is None or sim > best[1]:
                best = (label, sim)
        if best is None:
            return None
        record = self.storage.get_by_labels([best[0]])[0]
        return (record, best[1]) if record is not None else None

    def update_record(self, record: Record) -> None:
        """Rewrite a record body in place (sharing, anonymizing); the vector stays. Its webhook
        event (memory.shared when the visibility changed, else memory.updated) commits with it."""
        timer = Timer()
        label = self.storage.label_of(record["id"])
        self.storage.replace_record(record)
        if label is not None:
            self._unindex(label)
            self._index_record(label, record)
        log.info("shard write", extra={"op": "update", "shard": self.shard_id, "records": 1,
                                       "duration_ms": timer.ms()})

    def delete(self, ids: list[str]) -> list[str]:
        """Hard delete; announced as memory.deleted."""
        return self._delete(ids, "memory.deleted")

    def _delete(self, ids: list[str], kind: str) -> list[str]:
        timer = Timer()
        gone = self.storage.delete_many(ids, kind)
        labels = [label for _, label in gone]
        for label in labels:
            self._unindex(label)
        self._swap_if_rebuilt()
        self.index.remove(labels)
        if self._rebuild is not None:
            self._rebuild.record("del", labels)
        self._maybe_snapshot()
        self._maybe_start_rebuild()
        log.info("shard write", extra={"op": "delete" if kind == "memory.deleted" else "purge",
                                       "shard": self.shard_id, "records": len(gone),
                                       "duration_ms": timer.ms()})
        return [mid for mid, _ in gone]

    # -- expiry -----------------------------------------------------------------------------
    def expired(self, now: float, limit: int = 10000) -> list[Record]:
        """Rows (no content) whose expires_at has passed, oldest first."""
        out = []
        for _exp, label in self.expiry.irange(maximum=(now, math.inf)):
            if len(out) >= limit:
                break
            out.append(self.postings.row(label))
        return out

    def purge(self, ids: list[str]) -> list[str]:
        """Hard delete (expiry, retention): LMDB, vector index, lexical index, postings;
        announced as memory.expired."""
        return self._delete(ids, "memory.expired")

    # -- webhook outbox (drained by actors/webhook_dispatcher.py) ---------------------------
    def outbox_read(self, limit: int = 256) -> list[tuple[int, dict]]:
        return self.storage.outbox_read(limit)

    def outbox_ack(self, upto: int) -> int:
        return self.storage.outbox_ack(upto)

    # -- background graph rebuild -----------------------------------------------------------
    def _maybe_start_rebuild(self) -> None:
        if self._rebuild is None and worth_rebuilding(self.index):
            self.start_rebuild()

    def start_rebuild(self) -> bool:
        """Rebuild the graph without its deleted nodes, in the background (see GraphRebuild)."""
        if self._rebuild is not None:
            return False
        self._rebuild = GraphRebuild(self.index, name=f"rebuild-{self.shard_id}")
        return True

    def _swap_if_rebuilt(self, wait: bool = False) -> bool:
        state = self._rebuild
        if state is None:
            return False
        if wait:
            state.thread.join()
        if not state.done:
            return False
        self._rebuild = None
        self.index.flush()
        with self.index.lock:
            swapped = state.swap_into(self.index)
        if not swapped:
            return False
        self.rebuilds += 1
        self.snapshot()
        return True

    def finish_rebuild(self) -> bool:
        return self._swap_if_rebuilt(wait=True)

    def _maybe_snapshot(self) -> None:
        """Every `snapshot_every` writes, snapshot the graph on a thread (the write that crosses
        the mark does not wait for it), so a kill -9 replays at most about that many writes."""
        bg = self._bg_snapshot
        if bg is not None:
            if bg.thread.is_alive():
                return
            self._finish_bg_snapshot()
        if self.storage.seq - self.index.covered_seq >= self.snapshot_every:
            self._bg_snapshot = BackgroundSnapshot(self.index, self.storage.seq,
                                                   name=f"snapshot-{self.shard_id}")

    def _finish_bg_snapshot(self) -> None:
        """Join the background snapshot; once it is durable, drop the log it covers (here, on
        the shard's own thread: LMDB writes go through storage._write and its one-shot hook)."""
        bg, self._bg_snapshot = self._bg_snapshot, None
        if bg is None:
            return
        bg.thread.join()
        if bg.error is not None:
            log.error("shard %d: background index snapshot failed: %s", self.shard_id, bg.error)
            return
        self.snapshots += 1
        self.storage.trim_log(bg.seq)
        self.storage.outbox_trim(time.time() - OUTBOX_KEEP_S)

    def snapshot(self) -> dict:
        """A snapshot now, waited for (close, backups, after a rebuild)."""
        self._finish_bg_snapshot()
        t0 = time.perf_counter()
        seq = self.storage.seq
        self.index.save_snapshot(seq)
        self.snapshots += 1
        trimmed = self.storage.trim_log(seq)
        self.storage.outbox_trim(time.time() - OUTBOX_KEEP_S)
        return {"seq": seq, "trimmed": trimmed, "seconds": round(time.perf_counter() - t0, 3)}

    # -- reads ------------------------------------------------------------------------------
    def get(self, ids: list[str]) -> list[Record | None]:
        return [self.storage.get(i) for i in ids]

    def document(self, parent_id: str) -> list[Record]:
        labels = sorted(self.parents.get(parent_id, ()))
        recs = [r for r in self.storage.get_by_labels(labels) if r is not None]
        return sorted(recs, key=lambda r: r.get("chunk_index") or 0)

    def scan(self, after: str | None, limit: int = 256) -> list[dict]:
        return self.storage.scan(after, limit)

    def backup(self, dest: str) -> dict:
        """LMDB hot copy plus a fresh index snapshot beside it."""
        t0 = time.perf_counter()
        size = self.storage.backup(Path(dest) / "lmdb")
        return {"shard": self.shard_id, "bytes": size, "records": len(self.postings),
                "seq": self.storage.seq, "seconds": round(time.perf_counter() - t0, 3)}

    def export_snapshot(self, token: str, offset: int, size: int) -> SnapshotChunk:
        """A chunk of a consistent LMDB copy, streamed to a backup job wherever it runs
        (actors/snapshot_export.py)."""
        return export_chunk(self.storage, self.path, token, offset, size)

    def labels_matching(self, node: Any) -> np.ndarray:
        return flt.evaluate(node, self.postings)

    def select(self, node: Any, limit: int | None = None) -> list[Record]:
        """Records (without content) matching a filter: the expiry worker's and stats' view."""
        labels = self.labels_matching(node)
        if limit is not None:
            labels = labels[:limit]
        return [self.postings.row(int(label)) for label in labels]

    def recent(self, node: Any, limit: int, before: tuple[float, str] | None = None
               ) -> list[Record]:
        """Full records matching a filter, newest first (the viewer's browse view), paged by a
        (timestamp, id) cursor."""
        labels = self.postings.newest(self.labels_matching(node), limit, before)
        return [r for r in self.storage.get_by_labels(labels) if r is not None]

    def day_counts(self, node: Any) -> dict[str, dict[str, int]]:
        """Records per UTC day and event type matching a filter (no contents read)."""
        return self.postings.day_counts(self.labels_matching(node))

    def search(self, req: SearchRequest) -> SearchResult:
        return self.search_many([req])[0]

    def search_many(self, reqs: list[SearchRequest]) -> list[SearchResult]:
        """Several searches in one call, answered in order: build-context's three cost one
        actor round trip per shard, not three, and decode each row and record they share
        once (shard_search.Memo). Each result carries the call's wall-clock window."""
        began = time.time()
        self._swap_if_rebuilt()
        memo = Memo()
        out = [self.reader.run(req, memo) for req in reqs]
        ended = time.time()
        for res in out:
            res["wall"] = (began, ended)
        return out

    def search_packed(self, blob: bytes) -> bytes:
        """`search_many` over the wire: the requests and the results each one pickled blob
        (shard_search.pack says why); ShardClient packs and unpacks."""
        return pack(self.search_many(unpack(blob)))

    # -- stats ------------------------------------------------------------------------------
    def stats(self) -> dict:
        st = self.postings.stats()
        return {
            "shard": self.shard_id,
            "records": len(self.postings),
            "indexed": self.index.count,
            "deleted_in_graph": self.index.deleted_in_graph,
            "graph_pending": self.index.pending,
            "seq": self.storage.seq,
            "snapshot_seq": self.index.covered_seq,
            "snapshots": self.snapshots,
            "snapshotting": self._bg_snapshot is not None,
            "disk_bytes": self.storage.disk_bytes(),
            "index_bytes": self.index.nbytes(),
            "lexical": self.lexical.stats(),
            "postings": st,
            "recovery": self.recovery,
            "rebuilds": self.rebuilds,
            "rebuilding": self._rebuild is not None,
            "expiring": len(self.expiry),
            "heap": heap.status(),
            "gc": gcpause.WATCH.stats(),
            "stages": {k: {"seconds": round(v[0], 6), "calls": int(v[1])}
                       for k, v in self.stage_totals.items()},
        }

    def planner_stats(self, known_seq: int) -> dict | None:
        """Postings statistics for the planner, or None when nothing changed since known_seq."""
        seq = self.storage.seq
        if seq == known_seq:
            return None
        return {"seq": seq, "stats": self.postings.stats()}

    def reseal(self) -> int:
        """Re-encrypt every record under the current key (rotate-encryption)."""
        return self.storage.reseal_all()

    def pid(self) -> int:
        return os.getpid()

    def health(self) -> dict:
        return {"status": "ok", "shard": self.shard_id, "records": len(self.postings),
                "seq": self.storage.seq}

    def close(self) -> None:
        self._swap_if_rebuilt(wait=True)
        try:
            self.snapshot()
        finally:
            self.index.stop_worker()
            self.storage.close()

    # -- resharding (cluster/jobs/reshard.py; routing in memoray/routing.py) ----------------
    def _fence(self, records: list[Record]) -> None:
        """Refuse a new record this shard does not own under its placement (the client routed
        with an older one and retries after re-reading it); existing records update in place."""
        owner = self._placement.writes.owner
        for rec, home in zip(records, home_keys(records)):
            if owner(home) != self.shard_id and self.storage.label_of(rec["id"]) is None:
                raise MemorayError(ErrorCode.UNAVAILABLE,
                                   f"{WRONG_SHARD}: epoch {self._placement.epoch} routes this "
                                   f"record to shard {owner(home)}, not {self.shard_id}")

    def placement(self) -> dict | None:
        return self._placement.to_dict() if self._placement else None

    def set_placement(self, placement: dict) -> dict:
        """Adopt a newer placement (the reshard job pushes each step to every shard before any
        client may use it), kept durably beside the LMDB environment."""
        new = Placement.from_dict(placement)
        if self._placement is None or new.epoch >= self._placement.epoch:
            save_placement(self.path, new)
            if not new.moving:  # cut over: the moved-out marks of the reshard are done with
                moved = self._moved_db()  # (opening a database is a transaction of its own)
                self.storage._write(lambda txn: txn.drop(moved, delete=False))
            self._placement = new
        return self._placement.to_dict()

    def idem_lookup(self, keys: list[str]) -> list[str | None]:
        """The ids stored under idempotency keys (workspace\x00key): a capture retried while a
        reshard runs asks the key's old owner before writing to its new one."""
        with self.storage.env.begin() as txn:
            raw = [txn.get(k.encode(), db=self.storage.idem) for k in keys]
        return [r.decode() if r is not None else None for r in raw]

    def _export(self, records: list[Record]) -> dict:
        labels = [self.storage.label_of(r["id"]) for r in records]
        keep = [(r, lb) for r, lb in zip(records, labels) if lb is not None]
        words = self.storage.wordings_of([lb for _, lb in keep], self.dim)
        return {"records": [r for r, _ in keep],
                "vectors": (self.index.vectors(np.array([lb for _, lb in keep])) if keep
                            else np.empty((0, self.dim), np.float32)),
                "wordings": {r["id"]: words[lb] for r, lb in keep if lb in words},
                "fingerprints": {r["id"]: fingerprint(r) for r, _ in keep}}

    def export_moving(self, after: str | None, limit: int = 256) -> dict:
        """The next page (in id order after `after`) of records whose owner under the target
        placement is another shard, whole documents together, with vectors, absorbed wordings
        and fingerprints (for drop_moved); `next` is the scan cursor, None at the end."""
        if self._placement is None or not self._placement.moving:
            raise MemorayError(ErrorCode.INVALID_INPUT, "no reshard in progress on this shard")
        page = self.storage.scan(after, limit)
        docs = {r["parent_id"] for r in page if r.get("parent_id")}
        whole = [r for r in page if not r.get("parent_id")]
        for parent in sorted(docs):
            whole.extend(self.document(parent))
        owner = self._placement.writes.owner
        moving = [r for r, home in zip(whole, home_keys(whole)) if owner(home) != self.shard_id]
        out = self._export(moving)
        out["next"] = page[-1]["id"] if len(page) == limit else None
        out["scanned"] = len(page)
        return out

    def export_ids(self, ids: list[str]) -> dict:
        return self._export([r for r in self.get(ids) if r is not None])

    def import_moved(self, records: list[Record], vectors: np.ndarray,
                     wordings: dict[str, np.ndarray]) -> list[tuple[str, bool]]:
        """Store records moved here under their own ids, with the wordings they absorbed. A move
        is not a change: no webhook event is written for it."""
        self.storage.outbox_enabled = False
        try:
            out = self.put(records, vectors)
        finally:
            self.storage.outbox_enabled = True
        for mid, rows in wordings.items():
            label = self.storage.label_of(mid)
            if label is not None:
                blob = np.ascontiguousarray(rows, dtype=np.float32).tobytes()
                self.storage._write(lambda txn, lb=label, b=blob: txn.put(
                    u64(lb), b, db=self.storage.wordings))
        return out

    def drop_moved(self, fingerprints: dict[str, str]) -> dict:
        """Delete the source copies of moved records, each only if unchanged since it was
        exported (one step: the shard runs one call at a time), marking them moved in the same
        transaction. `changed` ones are exported again; `gone` ones were deleted meanwhile (not
        moved: a mover that crashed after dropping asks again and hears `dropped`), so the
        mover deletes its copy too."""
        moved = self._moved_db()
        with self.storage.env.begin() as txn:
            before = {i for i in fingerprints if txn.get(i.encode(), db=moved) is not None}
        current = dict(zip(fingerprints, self.get(list(fingerprints))))
        same = [i for i, fp in fingerprints.items()
                if current[i] is not None and fingerprint(current[i]) == fp]
        dropped: list[str] = []
        if same:
            prior = self.storage.txn_extra  # a replica's log entry commits with it too
            self.storage.txn_extra = lambda txn: [prior and prior(txn)] + [
                txn.put(i.encode(), b"", db=moved) for i in same]
            self.storage.outbox_enabled = False  # the record lives on: no memory.deleted event
            try:
                dropped = self.delete(same)
            finally:
                self.storage.outbox_enabled = True
        return {"dropped": dropped + sorted(i for i in before if current[i] is None),
                "changed": [i for i, r in current.items() if r is not None and i not in same],
                "gone": [i for i, r in current.items() if r is None and i not in before]}

    def _moved_db(self) -> Any:
        if getattr(self, "_moved", None) is None:
            self._moved = self.storage.env.open_db(b"moved")
        return self._moved

    def spawn_options(self) -> dict:
        """What a new shard of this store is started with (the reshard job adds shards)."""
        return {**self._spawn, "outbox": self.storage.outbox_size()}


# Snapshots in flight: joined at exit, so no thread is inside hnswlib when the interpreter
# finalizes (see vector_index._stop_workers).
_SNAPSHOTS: weakref.WeakSet = weakref.WeakSet()


@atexit.register
def _join_snapshots() -> None:
    for snap in list(_SNAPSHOTS):
        snap.thread.join(120)


class BackgroundSnapshot:
    """One graph snapshot covering `seq`, saved on a thread: it waits for the inserts queued
    before it (a barrier, not the whole queue), then VectorIndex.save_snapshot holds the graph
    lock only while hnswlib writes the file."""

    def __init__(self, index: VectorIndex, seq: int, name: str):
        self.seq = seq
        self.error: str | None = None
        self.seconds = 0.0
        barrier = index.barrier()
        self.thread = threading.Thread(target=self._run, args=(index, barrier), name=name,
                                       daemon=True)
        self.thread.start()
        _SNAPSHOTS.add(self)

    def _run(self, index: VectorIndex, barrier: threading.Event) -> None:
        t0 = time.perf_counter()
        try:
            index.save_snapshot(self.seq, barrier)
        except Exception as exc:  # the previous snapshot stays; the next mark tries again
            self.error = repr(exc)
        self.seconds = time.perf_counter() - t0


def fingerprint(record: Record) -> str:
    return hashlib.blake2b(msgpack.packb(record, use_bin_type=True), digest_size=16).hexdigest()


PLACEMENT_FILE = "placement.json"


def load_placement(path: Path) -> Placement | None:
    f = Path(path) / PLACEMENT_FILE
    return Placement.from_dict(json.loads(f.read_text())) if f.exists() else None


def save_placement(path: Path, placement: Placement) -> None:
    f = Path(path) / PLACEMENT_FILE
    tmp = f.with_suffix(".tmp")
    with open(tmp, "w", encoding="utf-8") as fh:
        fh.write(json.dumps(placement.to_dict()))
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, f)
    fd = os.open(f.parent, os.O_RDONLY)  # the rename durable too
    try:
        os.fsync(fd)
    finally:
        os.close(fd)

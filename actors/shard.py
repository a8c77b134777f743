"""VectorShard: one shard of the memory store, a plain class the Ray actor is made from.

ShardCore owns one LMDB environment (ShardStorage), the in-memory vector index, the secondary
indexes (Postings) and the lexical index. Writes commit to LMDB first and reach the in-memory
indexes only after the commit, so an acknowledged write survives any crash; on start everything
in memory is recovered from LMDB. The read path lives in actors/shard_search.py, the background
graph rebuild in actors/graph_rebuild.py; callers reach a shard through actors/shard_client.py.
"""

from __future__ import annotations

import logging
import math
import os
import time
from pathlib import Path
from typing import Any

import numpy as np
from sortedcontainers import SortedList

from memoray import filters as flt
from memoray.actors.graph_rebuild import GraphRebuild, worth_rebuilding
from memoray.actors.shard_search import SearchRequest, SearchResult, ShardSearch
from memoray.actors.shard_storage import OP_DEL, OP_PUT, ShardStorage
from memoray.actors.snapshot_export import SnapshotChunk, export_chunk
from memoray.actors.vector_index import VectorIndex
from memoray.lexical import LexicalIndex
from memoray.logs import Timer
from memoray.postings import Postings
from memoray.records import Record, slim

log = logging.getLogger(__name__)

ACTOR_OPTIONS = {"max_restarts": -1, "max_task_retries": 3, "num_cpus": 0}
# Webhook events nobody acknowledged for this long are dropped at the next snapshot (a backup
# replica's copies; the dispatcher drains the primary's within seconds).
OUTBOX_KEEP_S = 7 * 86400


class ShardCore:
    def __init__(self, shard_id: int, path: Path | str, dim: int, *, map_size: int = 8 << 30,
                 durable: bool = True, snapshot_every: int = 5000, keyring: Any = None,
                 encryption: str | None = None):
        """`encryption`: the keyring as text (what crosses Ray to a shard actor); `keyring`: an
        already parsed Keyring (in-process callers)."""
        if encryption and keyring is None:
            from memoray.crypto import Keyring

            keyring = Keyring.parse(encryption)
        self.shard_id = shard_id
        self.path = Path(path)
        self.dim = dim
        self.snapshot_every = snapshot_every
        self.storage = ShardStorage(self.path, map_size=map_size, durable=durable,
                                    keyring=keyring)
        self.index = VectorIndex(dim, self.path)
        self.postings = Postings()
        self.lexical = LexicalIndex()
        self.parents: dict[str, set[int]] = {}
        self.expiry: SortedList = SortedList()  # (expires_at, label)
        self._rebuild: GraphRebuild | None = None  # the background graph rebuild in flight
        self.rebuilds = 0
        self.started_at = time.time()
        self.recovery: dict[str, Any] = {}
        self._recover()
        self.reader = ShardSearch(shard_id, self.index, self.lexical, self.postings,
                                  self.storage.get_by_labels)

    # -- recovery ---------------------------------------------------------------------------
    def _recover(self) -> None:
        t0 = time.perf_counter()
        labels: list[int] = []
        vectors: list[np.ndarray] = []
        for label, record, vec in self.storage.iter_all():
            labels.append(label)
            vectors.append(vec)
            self._index_record(label, record)
        snapshot_seq = self.index.load_snapshot()
        arr = np.asarray(labels, dtype=np.int64)
        mat = np.vstack(vectors) if vectors else np.empty((0, self.dim), np.float32)
        replayed = 0
        if snapshot_seq is None or snapshot_seq > self.storage.seq:
            # No snapshot, a corrupt one, or one from another store: rebuild from LMDB.
            self.index = VectorIndex(self.dim, self.path)
            self.index.add(arr, mat)
            mode = "rebuild"
        else:
            self.index.add(arr, mat, to_graph=False)
            in_graph = self.index.graph_labels()
            live = set(labels)
            for _seq, op, label in self.storage.iter_log(snapshot_seq):
                replayed += 1
                if op == OP_PUT and label in live:
                    vec = self.index.matrix[label][None, :]
                    self.index.graph.add_items(vec, np.array([label]), num_threads=1)
                    in_graph.add(label)
                elif op == OP_DEL and label in in_graph:
                    try:
                        self.index.graph.mark_deleted(label)
                    except RuntimeError:
                        pass
            missing = np.array(sorted(live - in_graph), dtype=np.int64)
            if len(missing):  # belt and braces: anything live the graph lacks goes in
                self.index.graph.add_items(self.index.matrix[missing], missing, num_threads=1)
            mode = "snapshot+replay"
        self.recovery = {"mode": mode, "records": len(labels), "replayed": replayed,
                         "seconds": round(time.perf_counter() - t0, 3)}
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
        timer = Timer()
        results = self.storage.put_many(records, vectors)  # durable from here on
        new_labels, new_vecs = [], []
        for (_mid, label, created), record, vec in zip(results, records, vectors):
            if label < 0:
                continue  # idempotent replay: already stored under this key
            if not created:
                self._unindex(label)
            self._index_record(label, record)
            new_labels.append(label)
            new_vecs.append(vec)
        if new_labels:
            self._swap_if_rebuilt()
            self.index.add(np.asarray(new_labels, np.int64), np.vstack(new_vecs))
            if self._rebuild is not None:
                self._rebuild.record("put", new_labels)
        self._maybe_snapshot()
        log.info("shard write", extra={"op": "put", "shard": self.shard_id,
                                       "records": len(new_labels), "duration_ms": timer.ms()})
        return [(mid, label >= 0) for mid, label, _ in results]

    def merge(self, record: Record, vector: np.ndarray) -> bool:
        """Replace a record (and its vector) only if it still exists: a merge racing a delete
        never brings the deleted record back (the shard runs one call at a time, so the check
        and the write are one step). False when the record is gone."""
        label = self.storage.label_of(record["id"])
        if label is None:
            return False
        absorbed = self.index.matrix[label].copy()  # the wording being replaced
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
        if not state.swap_into(self.index):
            return False
        self.rebuilds += 1
        self.snapshot()
        return True

    def finish_rebuild(self) -> bool:
        return self._swap_if_rebuilt(wait=True)

    def _maybe_snapshot(self) -> None:
        if self.storage.seq - self.index.covered_seq >= self.snapshot_every:
            self.snapshot()

    def snapshot(self) -> dict:
        t0 = time.perf_counter()
        seq = self.storage.seq
        self.index.save_snapshot(seq)
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
        self._swap_if_rebuilt()
        return self.reader.run(req)

    # -- stats ------------------------------------------------------------------------------
    def stats(self) -> dict:
        st = self.postings.stats()
        return {
            "shard": self.shard_id,
            "records": len(self.postings),
            "indexed": self.index.count,
            "deleted_in_graph": self.index.deleted_in_graph,
            "seq": self.storage.seq,
            "snapshot_seq": self.index.covered_seq,
            "disk_bytes": self.storage.disk_bytes(),
            "index_bytes": int(self.index.capacity * self.dim * 4),
            "lexical": self.lexical.stats(),
            "postings": st,
            "recovery": self.recovery,
            "rebuilds": self.rebuilds,
            "rebuilding": self._rebuild is not None,
            "expiring": len(self.expiry),
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
            self.storage.close()



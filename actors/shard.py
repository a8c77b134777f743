"""VectorShard: one shard of the memory store, and the thin Ray actor around it.

ShardCore is a plain class (tests use it directly): it owns one LMDB environment (ShardStorage),
the in-memory vector index, the secondary indexes (Postings) and the lexical index. Writes
commit to LMDB first and reach the in-memory indexes only after the commit, so an acknowledged
write survives any crash; on start everything in memory is recovered from LMDB.
"""

from __future__ import annotations

import logging
import math
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from sortedcontainers import SortedList

from actors.shard_storage import OP_DEL, OP_PUT, ShardStorage
from actors.vector_index import VectorIndex
from memoray import filters as flt
from memoray.lexical import LexicalIndex
from memoray.lexical import normalize as lexical_normalize
from memoray.lifecycle import TIER_WEIGHT
from memoray.postings import Postings

log = logging.getLogger(__name__)

EXACT = "exact"
ANN = "ann"
ANN_ADAPTIVE = "ann_adaptive"
STRATEGIES = (EXACT, ANN, ANN_ADAPTIVE)
MAX_OVERSAMPLE_K = 4096
REBUILD_DELETED_FRACTION = 0.2   # rebuild the graph when this share of its nodes is deleted
REBUILD_MIN_DELETED = 500        # ...and at least this many, so small shards don't churn


@dataclass
class SearchRequest:
    """What the replica sends every shard for one retrieve (picklable, no Ray types)."""

    vector: np.ndarray | None
    query: str
    k: int
    filter: Any = field(default_factory=flt.All)
    strategy: str = EXACT
    oversample: float = 3.0
    mode: str = "hybrid"  # hybrid | vector | lexical
    alpha: float = 0.5  # weight of the vector score in hybrid mode
    ef: int | None = None
    now: float | None = None
    recency_weight: float = 0.0
    half_life_days: float = 30.0
    include_content: bool = True
    tier_weighting: bool = True


@dataclass
class Hit:
    score: float
    vector_score: float
    lexical_score: float
    record: dict


def _slim(record: dict) -> dict:
    """What postings keep per label: everything but the content."""
    return {k: v for k, v in record.items() if k != "content"}


class ShardCore:
    def __init__(self, shard_id: int, path: Path | str, dim: int, *, map_size: int = 8 << 30,
                 durable: bool = True, snapshot_every: int = 5000, keyring: Any = None):
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
        self._rebuild: dict[str, Any] | None = None  # the background graph rebuild in flight
        self.rebuilds = 0
        self.started_at = time.time()
        self.recovery: dict[str, Any] = {}
        self._recover()

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

    def _index_record(self, label: int, record: dict) -> None:
        self.postings.add(label, _slim(record))
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
    def put(self, records: list[dict], vectors: np.ndarray) -> list[tuple[str, bool]]:
        """Commit, then index. Returns (id, created) per record."""
        if len(records) != len(vectors):
            raise ValueError("records and vectors differ in length")
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
                self._rebuild["delta"].extend(("put", lb) for lb in new_labels)
        self._maybe_snapshot()
        return [(mid, label >= 0) for mid, label, _ in results]

    def update_record(self, record: dict) -> None:
        """Rewrite a record body in place (merge, re-encryption); the vector stays."""
        label = self.storage.label_of(record["id"])
        self.storage.replace_record(record)
        if label is not None:
            self._unindex(label)
            self._index_record(label, record)

    def delete(self, ids: list[str]) -> list[str]:
        gone = self.storage.delete_many(ids)
        labels = [label for _, label in gone]
        for label in labels:
            self._unindex(label)
        self._swap_if_rebuilt()
        self.index.remove(labels)
        if self._rebuild is not None:
            self._rebuild["delta"].extend(("del", lb) for lb in labels)
        self._maybe_snapshot()
        self._maybe_start_rebuild()
        return [mid for mid, _ in gone]

    # -- expiry -----------------------------------------------------------------------------
    def expired(self, now: float, limit: int = 10000) -> list[dict]:
        """Rows (no content) whose expires_at has passed, oldest first."""
        out = []
        for _exp, label in self.expiry.irange(maximum=(now, math.inf)):
            if len(out) >= limit:
                break
            out.append(self.postings.row(label))
        return out

    def purge(self, ids: list[str]) -> list[str]:
        """Hard delete (expiry, retention): LMDB, vector index, lexical index, postings."""
        return self.delete(ids)

    # -- background graph rebuild -----------------------------------------------------------
    def _maybe_start_rebuild(self) -> None:
        dead = self.index.deleted_in_graph
        total = dead + self.index.count
        if (self._rebuild is None and dead >= REBUILD_MIN_DELETED
                and total and dead / total >= REBUILD_DELETED_FRACTION):
            self.start_rebuild()

    def start_rebuild(self) -> bool:
        """Build a fresh graph (without deleted nodes) in a thread from a copy of the live
        vectors; reads and writes go on against the old graph and are logged as a delta that is
        replayed on the new graph at the swap. hnswlib releases the GIL while it builds."""
        if self._rebuild is not None:
            return False
        labels = np.flatnonzero(self.index.live)
        vectors = self.index.matrix[labels].copy()
        state: dict[str, Any] = {"delta": [], "graph": None, "error": None,
                                 "started": time.time(), "labels": len(labels)}

        def build() -> None:
            try:
                g = self.index._new_graph(max(self.index.capacity, len(labels) + 1))
                if len(labels):
                    g.add_items(vectors, labels, num_threads=1)
                state["graph"] = g
            except Exception as exc:  # keep serving from the old graph
                state["error"] = repr(exc)

        state["thread"] = threading.Thread(target=build, name=f"rebuild-{self.shard_id}",
                                           daemon=True)
        self._rebuild = state
        state["thread"].start()
        return True

    def _swap_if_rebuilt(self, wait: bool = False) -> bool:
        state = self._rebuild
        if state is None:
            return False
        if wait:
            state["thread"].join()
        if state["thread"].is_alive():
            return False
        self._rebuild = None
        if state["error"] or state["graph"] is None:
            log.error("shard %d rebuild failed: %s", self.shard_id, state["error"])
            return False
        g = state["graph"]
        if g.get_max_elements() < self.index.capacity:
            g.resize_index(self.index.capacity)
        for op, label in state["delta"]:  # replay what happened during the build
            if op == "put" and self.index.live[label]:
                g.add_items(self.index.matrix[label][None, :], np.array([label]), num_threads=1)
            elif op == "del":
                try:
                    g.mark_deleted(label)
                except RuntimeError:
                    pass
        g.set_ef(self.index.graph.ef)
        self.index.graph = g
        self.index.deleted_in_graph = sum(1 for op, _ in state["delta"] if op == "del")
        self.rebuilds += 1
        log.info("shard %d swapped in a rebuilt graph (%d labels, %d delta ops, %.1fs)",
                 self.shard_id, state["labels"], len(state["delta"]),
                 time.time() - state["started"])
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
        return {"seq": seq, "trimmed": trimmed, "seconds": round(time.perf_counter() - t0, 3)}

    # -- reads ------------------------------------------------------------------------------
    def get(self, ids: list[str]) -> list[dict | None]:
        return [self.storage.get(i) for i in ids]

    def document(self, parent_id: str) -> list[dict]:
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

    def labels_matching(self, node: Any) -> np.ndarray:
        return flt.evaluate(node, self.postings)

    def select(self, node: Any, limit: int | None = None) -> list[dict]:
        """Records (without content) matching a filter: the expiry worker's and stats' view."""
        labels = self.labels_matching(node)
        if limit is not None:
            labels = labels[:limit]
        return [self.postings.row(int(label)) for label in labels]

    def recent(self, node: Any, limit: int, before: tuple[float, str] | None = None
               ) -> list[dict]:
        """Full records matching a filter, newest first (the viewer's browse view), paged by a
        (timestamp, id) cursor."""
        labels = self.postings.newest(self.labels_matching(node), limit, before)
        return [r for r in self.storage.get_by_labels(labels) if r is not None]

    def day_counts(self, node: Any) -> dict[str, dict[str, int]]:
        """Records per UTC day and event type matching a filter (no contents read)."""
        return self.postings.day_counts(self.labels_matching(node))

    def search(self, req: SearchRequest) -> dict:
        t0 = time.perf_counter()
        self._swap_if_rebuilt()
        node = req.filter if req.filter is not None else flt.All()
        k = max(1, req.k)
        pool_k = min(max(k * 4, 20), MAX_OVERSAMPLE_K)
        used = req.strategy
        cand: np.ndarray | None = None
        vec_labels = lex_labels = np.empty(0, np.int64)
        want_vec = req.mode != "lexical" and req.vector is not None
        want_lex = req.mode != "vector" and bool(req.query)

        if req.strategy != EXACT and not isinstance(node, flt.All):
            factor = req.oversample if req.strategy == ANN else req.oversample * 2
            kprime = min(int(math.ceil(pool_k * factor)), MAX_OVERSAMPLE_K)
            while True:
                vl = self._ann(req, kprime) if want_vec else np.empty(0, np.int64)
                ll = (self.lexical.search(req.query, kprime)[0] if want_lex
                      else np.empty(0, np.int64))
                vec_labels = self._post_filter(node, vl)[:pool_k]
                lex_labels = self._post_filter(node, ll)[:pool_k]
                enough = (len(vec_labels) >= k or len(vl) < kprime) and (
                    len(lex_labels) >= k or len(ll) < kprime)
                if enough:
                    break
                if req.strategy == ANN or kprime >= MAX_OVERSAMPLE_K:
                    used = EXACT + "_fallback"
                    break
                kprime = min(kprime * 4, MAX_OVERSAMPLE_K)
        elif req.strategy != EXACT:
            vec_labels = self._ann(req, pool_k) if want_vec else vec_labels
            lex_labels = self.lexical.search(req.query, pool_k)[0] if want_lex else lex_labels

        if used.startswith(EXACT):
            cand = None if isinstance(node, flt.All) else self.labels_matching(node)
            if want_vec:
                vec_labels = self.index.exact(req.vector, cand, pool_k)[0]
            if want_lex:
                lex_labels = self.lexical.search(req.query, pool_k, candidates=cand)[0]

        pool = np.union1d(vec_labels, lex_labels).astype(np.int64)
        hits = self._score(req, pool, k)
        return {
            "shard": self.shard_id,
            "hits": hits,
            "strategy": used,
            "candidates": None if cand is None else int(len(cand)),
            "pool": int(len(pool)),
            "seconds": time.perf_counter() - t0,
        }

    def _ann(self, req: SearchRequest, k: int) -> np.ndarray:
        return self.index.ann(req.vector, k, ef=req.ef)[0]

    def _post_filter(self, node: Any, labels: np.ndarray) -> np.ndarray:
        if isinstance(node, flt.All):
            return labels
        keep = [lb for lb in labels.tolist()
                if lb in self.postings and flt.matches(node, self.postings.row(lb))]
        return np.asarray(keep, dtype=np.int64)

    def _score(self, req: SearchRequest, pool: np.ndarray, k: int) -> list[Hit]:
        if len(pool) == 0:
            return []
        if req.vector is not None and req.mode != "lexical":
            vec = np.clip(self.index.similarity(req.vector, pool), 0.0, 1.0)
        else:
            vec = np.zeros(len(pool), np.float32)
        if req.mode != "vector" and req.query:
            ll, ls = self.lexical.search(req.query, len(pool), candidates=pool)
            lex = np.zeros(len(pool), np.float32)
            if len(ll):
                pos = np.searchsorted(pool, ll)
                lex[pos] = lexical_normalize(ls, self.lexical.query_scale(req.query))
        else:
            lex = np.zeros(len(pool), np.float32)
        if req.mode == "vector":
            score = vec
        elif req.mode == "lexical":
            score = lex
        else:
            score = req.alpha * vec + (1.0 - req.alpha) * lex
        now = req.now or time.time()
        rows = [self.postings.row(int(lb)) for lb in pool]
        if req.recency_weight > 0:
            ages = np.array([max(0.0, now - (r.get("timestamp") or now)) for r in rows])
            decay = np.power(0.5, ages / (req.half_life_days * 86400.0))
            score = score * (1.0 - req.recency_weight + req.recency_weight * decay)
        if req.tier_weighting:
            score = score * np.array([TIER_WEIGHT.get(r.get("tier"), 0.9) for r in rows])
        expired = np.array([(r.get("expires_at") or math.inf) <= now for r in rows])
        score = np.where(expired, -1.0, score)
        order = np.argsort(-score, kind="stable")[: k]
        order = order[score[order] >= 0]
        top = pool[order]
        records = (self.storage.get_by_labels(top.tolist()) if req.include_content
                   else [rows[i] for i in order])
        return [Hit(float(score[i]), float(vec[i]), float(lex[i]), rec)
                for i, rec in zip(order, records) if rec is not None]

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

    def health(self) -> dict:
        return {"status": "ok", "shard": self.shard_id, "records": len(self.postings),
                "seq": self.storage.seq}

    def close(self) -> None:
        self._swap_if_rebuilt(wait=True)
        try:
            self.snapshot()
        finally:
            self.storage.close()


def actor_class():
    """The Ray actor: built lazily so importing this module never imports ray."""
    import ray

    @ray.remote(max_restarts=-1, max_task_retries=3, num_cpus=0)
    class VectorShard:
        def __init__(self, shard_id: int, path: str, dim: int, options: dict):
            keyring = None
            if options.get("encryption"):
                from memoray.crypto import Keyring

                keyring = Keyring.parse(options["encryption"])
            self.core = ShardCore(shard_id, path, dim, map_size=options.get("map_size", 8 << 30),
                                  durable=options.get("durable", True),
                                  snapshot_every=options.get("snapshot_every", 5000),
                                  keyring=keyring)

        def put(self, records, vectors):
            return self.core.put(records, vectors)

        def update_record(self, record):
            return self.core.update_record(record)

        def delete(self, ids):
            return self.core.delete(ids)

        def get(self, ids):
            return self.core.get(ids)

        def document(self, parent_id):
            return self.core.document(parent_id)

        def select(self, node, limit=None):
            return self.core.select(node, limit)

        def search(self, req):
            return self.core.search(req)

        def recent(self, node, limit, before=None):
            return self.core.recent(node, limit, before)

        def day_counts(self, node):
            return self.core.day_counts(node)

        def stats(self):
            return self.core.stats()

        def planner_stats(self, known_seq: int):
            seq = self.core.storage.seq
            if seq == known_seq:
                return None
            return {"seq": seq, "stats": self.core.postings.stats()}

        def health(self):
            return self.core.health()

        def snapshot(self):
            return self.core.snapshot()

        def scan(self, after, limit=256):
            return self.core.scan(after, limit)

        def backup(self, dest):
            return self.core.backup(dest)

        def expired(self, now, limit=10000):
            return self.core.expired(now, limit)

        def purge(self, ids):
            return self.core.purge(ids)

        def start_rebuild(self):
            return self.core.start_rebuild()

        def finish_rebuild(self):
            return self.core.finish_rebuild()

        def reseal(self):
            return self.core.storage.reseal_all()

        def pid(self):
            import os

            return os.getpid()

    return VectorShard

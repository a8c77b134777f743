"""The embedding worker's CPU thread policy: batches use the cores it was given, queries one.

Ray starts `num_cpus=0` actors with OMP_NUM_THREADS=1; without the policy the worker's model ran
on one core whatever the machine had (capture at a third of the embedder's in-process speed).
"""

from __future__ import annotations

import os

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


def test_the_model_runs_a_batch_on_the_policys_threads_even_under_omp_1(monkeypatch):
    """The real MiniLM under OMP_NUM_THREADS=1 (as Ray sets it): a batch call sets torch's
    intra-op threads on the calling thread; a lone query sets one."""
    torch = pytest.importorskip("torch")
    from memoray.embedding import MiniLMEmbedder

    emb = MiniLMEmbedder(device="cpu", threads=2)
    torch.set_num_threads(1)
    seen: list[int] = []
    real = emb.model.encode

    def spy(*a, **kw):
        seen.append(torch.get_num_threads())
        return real(*a, **kw)

    monkeypatch.setattr(emb.model, "encode", spy)
    assert emb.embed(["a fix for the login page"] * 16).shape == (16, emb.dim)
    assert emb.embed(["why did we pin pandas"]).shape == (1, emb.dim)
    assert seen == [2, 1]

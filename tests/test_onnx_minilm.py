"""MiniLM's ONNX export: made once, checked, never loaded torn or altered; the embedder falls
back to torch (saying so) only where `auto` allows it."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from memoray import onnx_minilm
from memoray.embedding import MiniLMEmbedder
from memoray.settings import Settings

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def exported() -> Path:
    """The machine's export (make install makes it; made here otherwise)."""
    return onnx_minilm.ensure_exported()


def test_an_export_is_made_checked_and_recorded(tmp_path):
    path = onnx_minilm.ensure_exported(cache=tmp_path)
    record = json.loads(path.with_suffix(".json").read_text())
    assert record["sha256"] == onnx_minilm.file_digest(path)
    assert record["max_abs_diff"] <= onnx_minilm.MAX_DIFF
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(
        [path.name, path.with_suffix(".json").name, path.with_suffix(".lock").name])  # no tmp
    t0 = os.stat(path).st_mtime_ns
    assert onnx_minilm.ensure_exported(cache=tmp_path) == path  # found, not made again
    assert os.stat(path).st_mtime_ns == t0


def _copy_export(src: Path, cache: Path) -> Path:
    dst = cache / src.name
    shutil.copy(src, dst)
    shutil.copy(src.with_suffix(".json"), dst.with_suffix(".json"))
    return dst


def test_an_altered_or_unrecorded_export_is_made_again(tmp_path, exported, monkeypatch):
    made: list[Path] = []

    def export(model_dir, path, max_seq_length=256):  # a copy of the good export
        made.append(path)
        _copy_export(exported, path.parent)

    monkeypatch.setattr(onnx_minilm, "export", export)
    path = _copy_export(exported, tmp_path)
    with open(path, "r+b") as f:  # one byte flipped in the middle of the weights
        f.seek(path.stat().st_size // 2)
        byte = f.read(1)
        f.seek(-1, 1)
        f.write(bytes([byte[0] ^ 0xFF]))
    assert onnx_minilm.ensure_exported(cache=tmp_path) == path
    assert made == [path]
    assert onnx_minilm.file_digest(path) == onnx_minilm.file_digest(exported)
    path.with_suffix(".json").unlink()  # a file without its record (a crash between renames)
    assert onnx_minilm.ensure_exported(cache=tmp_path) == path
    assert made == [path, path]


def test_processes_starting_at_once_export_once(tmp_path, exported, monkeypatch):
    calls: list[float] = []

    def slow_export(model_dir, path, max_seq_length=256):
        calls.append(time.monotonic())
        time.sleep(0.5)  # the others arrive while this one holds the lock
        _copy_export(exported, path.parent)

    monkeypatch.setattr(onnx_minilm, "export", slow_export)
    got: list[Path] = []
    threads = [threading.Thread(target=lambda: got.append(
        onnx_minilm.ensure_exported(cache=tmp_path))) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert len(calls) == 1 and len(got) == 3 and len(set(got)) == 1


def test_a_failed_check_leaves_nothing_behind(tmp_path, monkeypatch):
    monkeypatch.setattr(onnx_minilm, "MAX_DIFF", -1.0)  # no export can pass
    with pytest.raises(RuntimeError, match="differs from sentence-transformers"):
        onnx_minilm.ensure_exported(cache=tmp_path)
    assert [p.suffix for p in tmp_path.iterdir()] == [".lock"]


def test_the_onnx_vectors_are_sentence_transformers(exported):
    texts = ["why did we pin pandas", "decision: retry in the sync worker " * 3, "",
             "naïve café 東京 ошибка 🚀", "fix flaky login " * 200]
    onnx = MiniLMEmbedder(device="cpu", runtime="onnx")
    torch = MiniLMEmbedder(device="cpu", runtime="torch")
    assert (onnx.runtime, torch.runtime, onnx.dim) == ("onnx", "torch", 384)
    got, want = onnx.embed(texts), torch.embed(texts)
    np.testing.assert_allclose(got, want, atol=1e-5)
    np.testing.assert_allclose(np.linalg.norm(got, axis=1), 1.0, atol=1e-5)
    # the order is the input's, whatever the length sort inside did
    np.testing.assert_allclose(onnx.embed(texts[::-1]), got[::-1], atol=1e-6)


def test_a_process_on_the_onnx_runtime_never_imports_torch(exported):
    code = ("import sys; from memoray.embedding import make_embedder; "
            "e = make_embedder('minilm', device='cpu', threads=1); e.embed(['hi']); "
            "print(e.runtime, [m for m in ('torch', 'transformers', 'sentence_transformers') "
            "if m in sys.modules])")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         env={**os.environ, "PYTHONPATH": str(ROOT)}, timeout=120)
    assert out.stdout.strip() == "onnx []", out.stderr[-2000:]


def test_auto_falls_back_to_torch_and_says_why_onnx_does_not(monkeypatch):
    def broken(*a, **kw):
        raise OSError("read-only file system")

    monkeypatch.setattr(onnx_minilm, "ensure_exported", broken)
    emb = MiniLMEmbedder(device="cpu", runtime="auto")
    assert emb.runtime == "torch" and "read-only file system" in (emb.fallback or "")
    assert emb.embed(["still works"]).shape == (1, 384)
    with pytest.raises(OSError, match="read-only"):
        MiniLMEmbedder(device="cpu", runtime="onnx")


def test_bad_runtimes_are_refused():
    with pytest.raises(ValueError, match="runtime must be one of"):
        MiniLMEmbedder(device="cpu", runtime="tensorrt")
    with pytest.raises(ValueError, match="CPU only"):
        MiniLMEmbedder(device="cuda", runtime="onnx")
    with pytest.raises(ValueError):
        Settings(embedding_runtime="tensorrt")
    with pytest.raises(ValueError, match="runs MiniLM on the CPU"):
        Settings(embedding_runtime="onnx", embedding_gpus=1)
    assert Settings(embedding_runtime="auto", embedding_gpus=1).embedding_gpus == 1


def test_the_cache_directory_follows_the_environment(monkeypatch, tmp_path):
    monkeypatch.setenv("MEMORAY_MODEL_CACHE", str(tmp_path / "m"))
    assert onnx_minilm.cache_dir() == tmp_path / "m"
    monkeypatch.delenv("MEMORAY_MODEL_CACHE")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert onnx_minilm.cache_dir() == tmp_path / "xdg" / "memoray" / "models"


def test_doctor_says_whether_the_export_is_there(monkeypatch, tmp_path, exported):
    from memoray.doctor import _model_check

    monkeypatch.setenv("MEMORAY_MODEL_CACHE", str(exported.parent))
    status, name, detail = _model_check()
    assert (status, name) == ("ok", "model") and str(exported) in detail, detail
    monkeypatch.setenv("MEMORAY_MODEL_CACHE", str(tmp_path))
    status, _, detail = _model_check()
    assert status == "warn" and "python -m memoray.onnx_minilm" in detail, detail
    assert list(tmp_path.iterdir()) == []  # the check makes nothing

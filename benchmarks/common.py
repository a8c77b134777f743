"""Shared helpers for the benchmark harness: percentiles, progress lines, results on disk,
and the in-process service stack (ShardCores + MicroBatcher, no Ray).

Everything here is plain Python; importing it never imports ray, torch or matplotlib.
"""

from __future__ import annotations

import json
import math
import os
import platform
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")

RESULTS_DIR = Path(__file__).resolve().parent / "results"


# -- statistics -------------------------------------------------------------------------------

def percentile(values: list[float] | np.ndarray, q: float) -> float:
    """Linear-interpolated percentile (numpy's default); NaN for no values."""
    arr = np.asarray(values, dtype=np.float64)
    if arr.size == 0:
        return math.nan
    return float(np.percentile(arr, q))


def latency_summary(seconds: list[float] | np.ndarray) -> dict[str, float]:
    """p50/p95/mean/max in milliseconds, rounded for JSON."""
    arr = np.asarray(seconds, dtype=np.float64) * 1000.0
    if arr.size == 0:
        return {"n": 0, "p50_ms": math.nan, "p95_ms": math.nan, "mean_ms": math.nan,
                "max_ms": math.nan}
    return {"n": int(arr.size), "p50_ms": round(percentile(arr, 50), 3),
            "p95_ms": round(percentile(arr, 95), 3), "mean_ms": round(float(arr.mean()), 3),
            "max_ms": round(float(arr.max()), 3)}


def mean(values: list[float]) -> float:
    return float(np.mean(values)) if len(values) else math.nan


# -- progress ---------------------------------------------------------------------------------

class Progress:
    """A single updating stderr line: `label  done/total  rate/s  ETA`."""

    def __init__(self, label: str, total: int, unit: str = "items", every_s: float = 0.5):
        self.label = label
        self.total = max(int(total), 0)
        self.unit = unit
        self.every_s = every_s
        self.done = 0
        self.t0 = time.perf_counter()
        self._last = 0.0
        self._decile = -1
        self._tty = sys.stderr.isatty()

    def update(self, n: int = 1) -> None:
        self.done += n
        now = time.perf_counter()
        if now - self._last >= self.every_s or self.done >= self.total:
            self._last = now
            self._print(final=False)

    def _print(self, final: bool) -> None:
        elapsed = time.perf_counter() - self.t0
        rate = self.done / elapsed if elapsed > 0 else 0.0
        left = (self.total - self.done) / rate if rate > 0 else math.inf
        eta = "" if final or not math.isfinite(left) else f"  ETA {left:5.0f}s"
        pct = 100.0 * self.done / self.total if self.total else 100.0
        line = (f"{self.label:<28} {self.done:>7}/{self.total:<7} {pct:5.1f}%  "
                f"{rate:8.1f} {self.unit}/s  {elapsed:6.1f}s{eta}")
        if self._tty:
            sys.stderr.write("\r" + line + ("\n" if final else ""))
        elif final or int(pct) // 10 > self._decile:
            self._decile = int(pct) // 10
            sys.stderr.write(line + "\n")
        sys.stderr.flush()

    def close(self) -> float:
        self._print(final=True)
        return time.perf_counter() - self.t0


def log(msg: str) -> None:
    sys.stderr.write(msg + "\n")
    sys.stderr.flush()


# -- results ----------------------------------------------------------------------------------

def environment() -> dict[str, Any]:
    """What the figures were measured on."""
    try:
        load = os.getloadavg()
    except OSError:
        load = None
    return {"python": platform.python_version(), "platform": platform.platform(),
            "cpus": os.cpu_count(), "loadavg_at_save": load,
            "numpy": np.__version__, "time": time.strftime("%Y-%m-%dT%H:%M:%S%z")}


def _jsonable(obj: Any) -> Any:
    if isinstance(obj, dict):
        return {str(k): _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_jsonable(v) for v in obj]
    if isinstance(obj, np.generic):
        return _jsonable(obj.item())
    if isinstance(obj, np.ndarray):
        return _jsonable(obj.tolist())
    if isinstance(obj, float) and not math.isfinite(obj):
        return None  # strict JSON has no NaN/Infinity
    if isinstance(obj, Path):
        return str(obj)
    return obj


def result_path(name: str) -> Path:
    """benchmarks/results/<name>; a quick (smoke) run writes <stem>_quick<suffix> instead, so it
    never overwrites the figures the README quotes."""
    RESULTS_DIR.mkdir(parents=True, exist_ok=True)
    p = Path(name)
    if os.environ.get("MEMORAY_BENCH_QUICK") == "1" and not p.stem.endswith("_quick"):
        p = p.with_name(f"{p.stem}_quick{p.suffix}")
    return RESULTS_DIR / p


def save_json(name: str, data: dict[str, Any]) -> Path:
    """Write benchmarks/results/<name> (strict JSON, NaN as null) and return its path."""
    path = result_path(name)
    payload = {"environment": environment(), **data}
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(_jsonable(payload), indent=2, allow_nan=False) + "\n")
    os.replace(tmp, path)
    return path


def fmt_table(headers: list[str], rows: list[list[Any]]) -> str:
    """A plain fixed-width table (floats to 3 decimals)."""
    def cell(v: Any) -> str:
        if isinstance(v, float):
            return "nan" if math.isnan(v) else f"{v:.3f}"
        return str(v)

    cells = [[cell(v) for v in r] for r in rows]
    widths = [max(len(h), *(len(r[i]) for r in cells)) if cells else len(h)
              for i, h in enumerate(headers)]
    out = ["  ".join(h.ljust(w) for h, w in zip(headers, widths)),
           "  ".join("-" * w for w in widths)]
    out += ["  ".join(c.rjust(w) if i else c.ljust(w) for i, (c, w) in enumerate(zip(r, widths)))
            for r in cells]
    return "\n".join(out)


# -- the in-process stack ---------------------------------------------------------------------

def make_embedder(kind: str):
    from memoray.embedding import HashEmbedder, MiniLMEmbedder

    if kind == "hash":
        return HashEmbedder()
    if kind == "minilm":
        return MiniLMEmbedder(device="cpu")
    raise SystemExit(f"unknown embedder {kind!r} (expected minilm or hash)")


def build_service(root: Path, embedder: Any, shards: int = 2, **settings: Any):
    """MemoryService over in-process ShardCores (durable=False) and a MicroBatcher: the same
    code path a Serve replica runs, minus Ray's actor hops."""
    from memoray.actors.backend import Backend
    from memoray.actors.embedding_worker import MicroBatcher
    from memoray.actors.planner import QueryPlanner
    from memoray.actors.shard import ShardCore
    from memoray.serve.service import MemoryService
    from memoray.settings import Settings

    cores = [ShardCore(i, Path(root) / f"shard-{i}", embedder.dim, map_size=2 << 30,
                       durable=False, snapshot_every=10**9) for i in range(shards)]
    batcher = MicroBatcher(embedder)
    backend = Backend.local(cores, batcher)
    cfg = Settings(durable=False, shards=shards, embedder=embedder.name, **settings)
    planner = QueryPlanner()
    service = MemoryService(cfg, backend, planner=planner)
    return service, cores, batcher, planner


def refresh_planner(planner: Any, cores: list) -> None:
    """What the QueryPlanner actor does every second in production."""
    for i, core in enumerate(cores):
        planner.update_stats(i, core.postings.stats())


# -- embedding cache --------------------------------------------------------------------------

CACHE_DIR = Path(__file__).resolve().parent / ".cache"


class CachedEmbedder:
    """Wraps an embedder with an on-disk cache keyed by sha1(text), so a benchmark iteration
    re-embeds nothing it has embedded before (the machine is shared and slow). Vectors are
    the wrapped model's own output; `save()` writes benchmarks/.cache/emb-<name>.npz.
    Capture throughput measured through it is therefore not model throughput."""

    def __init__(self, embedder: Any, cache_dir: Path = CACHE_DIR):
        import hashlib

        self._sha1 = hashlib.sha1
        self.inner = embedder
        self.name = embedder.name
        self.dim = embedder.dim
        self.path = Path(cache_dir) / f"emb-{embedder.name}.npz"
        self._vecs: dict[str, np.ndarray] = {}
        self._dirty = False
        self.hits = self.misses = 0
        if self.path.exists():
            with np.load(self.path) as z:
                for key, vec in zip(z["keys"].tolist(), z["vecs"]):
                    self._vecs[key] = vec

    def _key(self, text: str) -> str:
        return self._sha1(text.encode("utf-8")).hexdigest()

    def embed(self, texts: list[str]) -> np.ndarray:
        keys = [self._key(t) for t in texts]
        missing = list(dict.fromkeys(k_t for k_t in zip(keys, texts) if k_t[0] not in self._vecs))
        self.hits += len(texts) - len(missing)
        self.misses += len(missing)
        if missing:
            vecs = self.inner.embed([t for _, t in missing])
            for (k, _), v in zip(missing, vecs):
                self._vecs[k] = np.asarray(v, np.float32)
            self._dirty = True
        if not texts:
            return np.empty((0, self.dim), np.float32)
        return np.vstack([self._vecs[k] for k in keys]).astype(np.float32)

    def save(self) -> None:
        if not self._dirty:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        keys = np.asarray(list(self._vecs), dtype="U40")
        vecs = np.vstack(list(self._vecs.values())).astype(np.float32)
        tmp = self.path.with_name(self.path.name + ".tmp.npz")
        np.savez(tmp, keys=keys, vecs=vecs)
        os.replace(tmp, self.path)
        self._dirty = False


class LazyEmbedder:
    """Loads the real model only on the first cache miss (a warm run never loads torch)."""

    def __init__(self, kind: str, dim: int = 384):
        self.kind = kind
        self.name = kind
        self.dim = dim if kind == "minilm" else make_embedder(kind).dim
        self._model: Any = None

    def embed(self, texts: list[str]) -> np.ndarray:
        if self._model is None:
            self._model = make_embedder(self.kind)
        return self._model.embed(texts)

"""Shard recovery after a clean stop and after kill -9, in process (issue 14), one shard.

The sequence bench_scale runs through a server, without Ray: a child process puts N records
(hash-embedded corpus texts) into one ShardCore and closes it (a clean stop); a second child
opens it (recovery after a clean stop), puts `--tail` more records and SIGKILLs itself right
after the last put is acknowledged; a third opens it again (recovery after kill -9) and checks
that every acknowledged record is there and searchable. Each child reports the shard's own
recovery breakdown (scan, snapshot load, graph replay) and its wall time.

Run: python -m benchmarks.bench_shard_recovery [--n 100000] [--tail 2500] [--dir DIR]
With --dir an existing store of at least N records is reused (the load is skipped).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from benchmarks.common import log, save_json

BATCH = 500
SNAPSHOT_EVERY = 5000  # the server's default (memoray.settings)


def _open(path: Path):
    from memoray.actors.shard import ShardCore
    from memoray.embedding import HashEmbedder

    dim = HashEmbedder().dim
    t = time.perf_counter()
    core = ShardCore(0, path, dim, map_size=16 << 30, durable=True,
                     snapshot_every=SNAPSHOT_EVERY)
    return core, time.perf_counter() - t


def _put(core, start: int, n: int) -> None:
    from benchmarks.bench_shard_memory import _record
    from benchmarks.corpus import corpus
    from memoray.embedding import HashEmbedder

    emb = HashEmbedder()
    texts = corpus(start + n)
    for i in range(start, start + n, BATCH):
        recs = [_record(j, texts[j]) for j in range(i, min(start + n, i + BATCH))]
        core.put(recs, emb.embed([r["content"] for r in recs]))


def _report(out: dict) -> None:
    print("RESULT " + json.dumps(out), flush=True)


def phase_load(path: Path, n: int) -> None:
    core, _ = _open(path)
    have = len(core.postings)
    t = time.perf_counter()
    if have < n:
        _put(core, have, n - have)
    load_s = time.perf_counter() - t
    t = time.perf_counter()
    core.close()
    _report({"records": len(core.postings), "loaded": n - min(have, n),
             "open_recovery": dict(core.recovery), "load_s": round(load_s, 1),
             "close_s": round(time.perf_counter() - t, 2)})


def phase_tail(path: Path, tail: int) -> None:
    core, wall = _open(path)
    rec = dict(core.recovery)
    start = len(core.postings)
    _put(core, start, tail)
    _report({"open_wall_s": round(wall, 2), "recovery": rec, "acknowledged": start + tail,
             "pending_at_kill": core.index.pending, "seq": core.storage.seq,
             "snapshot_seq": core.index.covered_seq})
    os.kill(os.getpid(), signal.SIGKILL)  # no close, no snapshot, no flush


def phase_open(path: Path, expect: int) -> None:
    import numpy as np

    core, wall = _open(path)
    rec = dict(core.recovery)
    pending = getattr(core.index, "pending", 0)  # the tail still queued for the graph
    getattr(core.index, "flush", lambda: None)()
    live = np.flatnonzero(core.index.live)
    in_graph = set(core.index.graph.get_ids_list())
    missing_graph = sum(1 for lb in live.tolist() if lb not in in_graph)
    # records are found again by their own vectors (in the top 5: the corpus repeats texts)
    probe = live[np.linspace(0, len(live) - 1, 50).astype(int)]
    found = sum(int(lb in core.index.ann(core.index.vectors(np.array([lb]))[0], 5)[0])
                for lb in probe.tolist())
    _report({"open_wall_s": round(wall, 2), "recovery": rec, "records": len(core.postings),
             "pending_after_open": pending,
             "expected": expect, "live_not_in_graph": missing_graph,
             "probes_found": f"{found}/{len(probe)}"})
    core.close()


def _child(args: list[str]) -> dict:
    env = dict(os.environ)
    env.setdefault("PYTHONPATH", str(Path(__file__).resolve().parents[1]))
    t = time.perf_counter()
    p = subprocess.run([sys.executable, "-m", "benchmarks.bench_shard_recovery", *args],
                       capture_output=True, text=True, env=env)
    wall = time.perf_counter() - t
    lines = [ln for ln in p.stdout.splitlines() if ln.startswith("RESULT ")]
    if not lines:
        raise RuntimeError(f"child {args} failed (rc {p.returncode}): {p.stderr[-2000:]}")
    out = json.loads(lines[-1][len("RESULT "):])
    out["process_wall_s"] = round(wall, 1)
    out["returncode"] = p.returncode
    return out


def run(n: int, tail: int, directory: str | None) -> dict:
    tmp = None
    if directory is None:
        tmp = tempfile.mkdtemp(prefix="memoray-recovery-")
        directory = tmp
    path = Path(directory) / "shard"
    res: dict = {"n": n, "tail": tail, "loadavg_at_start": os.getloadavg()}
    try:
        log(f"load {n} records into one shard (durable) ...")
        res["load"] = _child(["--phase", "load", "--dir", str(path), "--n", str(n)])
        log("reopen after a clean stop, put the tail, kill -9 ...")
        res["clean"] = _child(["--phase", "tail", "--dir", str(path), "--tail", str(tail)])
        assert res["clean"]["returncode"] == -signal.SIGKILL, res["clean"]
        log("reopen after kill -9 ...")
        res["kill9"] = _child(["--phase", "open", "--dir", str(path),
                               "--expect", str(res["clean"]["acknowledged"])])
    finally:
        if tmp is not None:
            shutil.rmtree(tmp, ignore_errors=True)
    res["loadavg_at_end"] = os.getloadavg()
    name = f"shard_recovery_{n}.json"
    saved = save_json(name, res)
    c, k = res["clean"], res["kill9"]
    print(f"{n} records, one shard: recovery after clean stop {c['recovery']['seconds']} s "
          f"{c['recovery']}; after kill -9 with {tail} records past the snapshot "
          f"{k['recovery']['seconds']} s {k['recovery']}; records {k['records']}/{k['expected']}"
          f", live not in graph {k['live_not_in_graph']}, probes {k['probes_found']}; "
          f"load avg {res['loadavg_at_start'][0]:.1f}-{res['loadavg_at_end'][0]:.1f}; "
          f"saved {saved}")
    return res


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=100000)
    ap.add_argument("--tail", type=int, default=2500)
    ap.add_argument("--dir", default=None)
    ap.add_argument("--phase", choices=["load", "tail", "open"], default=None)
    ap.add_argument("--expect", type=int, default=0)
    a = ap.parse_args()
    if a.phase == "load":
        phase_load(Path(a.dir), a.n)
    elif a.phase == "tail":
        phase_tail(Path(a.dir), a.tail)
    elif a.phase == "open":
        phase_open(Path(a.dir), a.expect)
    else:
        run(a.n, a.tail, a.dir)
        log("done")


if __name__ == "__main__":
    main()

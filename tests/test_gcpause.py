"""memoray/gcpause.py: the collector's pauses timed per process, and a freeze that takes what
a process holds out of the full collections' scans (run in child processes: a freeze in the
test process would keep its cyclic garbage for good)."""

from __future__ import annotations

import gc
import json
import os
import subprocess
import sys
from pathlib import Path

from memoray import gcpause

ROOT = Path(__file__).resolve().parents[1]


def _child(code: str, **env: str) -> dict:
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         cwd=ROOT, timeout=120, env={**os.environ, **env})
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout.strip().splitlines()[-1])


FREEZE = """
import gc, json
from memoray import gcpause
held = [{"n": i, "items": [i]} for i in range(50_000)]  # what a shard keeps: 100,000 containers
gcpause.watch()
before = len(gc.get_objects(generation=2)) + len(gc.get_objects(generation=1))
frozen = gcpause.freeze()
gc.collect()
after = len(gc.get_objects(generation=2))
print(json.dumps({"before": before, "frozen": frozen, "count": gc.get_freeze_count(),
                  "after": after, "stats": gcpause.WATCH.stats()}))
"""


def test_a_freeze_takes_what_the_process_holds_out_of_full_collections():
    r = _child(FREEZE)
    assert r["frozen"] == r["count"] >= 100_000
    assert r["before"] >= 100_000
    assert r["after"] < 1_000  # a full collection now scans next to nothing
    st = r["stats"]
    assert st["freezes"] == 1 and st["frozen"] == r["frozen"] and st["freezeEnabled"]
    assert st["collections"][2] == 1  # the collection after the freeze; the freeze's own is not
    assert st["freezeSeconds"] > 0


def test_the_freeze_can_be_turned_off():
    r = _child(FREEZE, MEMORAY_GC_FREEZE="0")
    assert r["frozen"] == r["count"] == 0
    assert r["after"] >= 100_000
    assert r["stats"]["freezes"] == 0 and not r["stats"]["freezeEnabled"]


def test_outside_an_actor_settle_only_times():
    """Tests, jobs and the CLI make and drop stores: they are never frozen."""
    r = _child("import gc, json\nfrom memoray import gcpause\n"
               "print(json.dumps({'frozen': gcpause.settle(), 'count': gc.get_freeze_count(),"
               " 'installed': gcpause.WATCH.installed}))")
    assert r == {"frozen": 0, "count": 0, "installed": True}
    assert not gcpause.in_actor()


def test_every_collection_is_counted_by_generation():
    w = gcpause.watch()
    n0, s0 = list(w.collections), list(w.seconds)
    gc.collect(0)
    gc.collect(2)
    assert w.collections[0] >= n0[0] + 1 and w.collections[2] >= n0[2] + 1
    assert w.seconds[2] > s0[2]
    assert w.longest[2] > 0
    assert gcpause.watch() is w and gc.callbacks.count(w._callback) == 1  # installed once


def test_the_replica_metrics_follow_the_collector():
    from memoray.serve.observability import Metrics

    m = Metrics()
    gcpause.watch()
    gc.collect(2)
    text = m.render().decode()
    line = next(x for x in text.splitlines()
                if x.startswith('memoray_gc_collections_total{generation="2"}'))
    first = float(line.split()[-1])
    assert first >= 1
    gc.collect(2)
    text = m.render().decode()
    line = next(x for x in text.splitlines()
                if x.startswith('memoray_gc_collections_total{generation="2"}'))
    assert float(line.split()[-1]) >= first + 1
    assert 'memoray_gc_pause_seconds_total{generation="2"}' in text


WIPE = """
import gc, json, tempfile, weakref
import numpy as np
from memoray import gcpause
gcpause.in_actor = lambda: True  # as in a replica shard's actor process
from memoray.actors.replica_core import ReplicaCore
with tempfile.TemporaryDirectory() as tmp:
    rc = ReplicaCore(0, tmp + "/s", 8, durable=False)
    first = gcpause.WATCH.frozen
    old = weakref.ref(rc.core)
    rc.begin_copy()  # a full copy: the store wiped, a new ShardCore opened (and frozen)
    gc.collect()
    print(json.dumps({"first": first, "old_alive": old() is not None,
                      "new_frozen": gcpause.WATCH.frozen, "freezes": gcpause.WATCH.freezes}))
    rc.core.close()
"""


def test_a_wiped_replica_shard_lets_its_frozen_core_go():
    """A replica shard's full copy drops its ShardCore, which refers to itself: frozen, it would
    stay in memory for good; it is given back to the collector first."""
    r = _child(WIPE)
    assert r["first"] > 0 and r["freezes"] == 2 and r["new_frozen"] > 0
    assert not r["old_alive"]

"""A shard's first search after it opens imports nothing: what the read path needs is loaded at
start, not on a user's first retrieve (np.unique's lazy `numpy.ma` import cost the first
retrieve after a start ~56 ms per shard on the 2-core machine)."""

from __future__ import annotations

import ast
import subprocess
import sys
import textwrap
from pathlib import Path

from memoray.actors.shard import ShardCore
from tests.test_shard import EMB, put, rec

ROOT = Path(__file__).resolve().parents[1]


def _first_search_imports(path: Path) -> list[str]:
    """Modules a fresh process imports during its first two searches of the store at `path`."""
    script = textwrap.dedent(f"""
        import sys
        from tests.test_shard import EMB
        from memoray import filters as flt
        from memoray.actors.shard import ShardCore
        from memoray.actors.shard_search import ANN, EXACT, SearchRequest

        core = ShardCore(0, {str(path)!r}, EMB.dim, map_size=64 << 20, durable=False)
        vector = EMB.embed(["deploy caching"])[0]
        before = set(sys.modules)
        for strategy in (ANN, EXACT):
            core.search(SearchRequest(vector=vector, query="deploy caching note", k=5,
                                      strategy=strategy, neighbor_weight=0.25, pool=30,
                                      filter=flt.eq("workspace_id", "ws")))
        print(sorted(set(sys.modules) - before))
    """)
    out = subprocess.run([sys.executable, "-c", script], cwd=ROOT, capture_output=True,
                         text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    return ast.literal_eval(out.stdout.strip().splitlines()[-1])


def test_a_shards_first_search_imports_no_module(tmp_path):
    assert _first_search_imports(tmp_path / "empty") == []  # a new store
    core = ShardCore(0, tmp_path / "full", EMB.dim, map_size=64 << 20, durable=False)
    put(core, [rec(f"deploy note {i} about caching", session_id=f"s{i % 7}")
               for i in range(200)])
    core.close()
    assert _first_search_imports(tmp_path / "full") == []  # one reopened after a stop

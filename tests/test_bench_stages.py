"""benchmarks/stages.py: a phase's breakdown counts that phase's calls only."""

from __future__ import annotations

from benchmarks.stages import breakdown


def _snap(metrics: dict) -> dict:
    return {"metrics": metrics, "shard_stages": {}, "embed_busy_s": 0.0, "embed_batches": 0,
            "query_busy_s": 0.0, "query_texts": 0, "query_batches": 0,
            "gc": {"replica": (0.0, 0.0, 0.0), "shards": (0.0, 0.0, 0.0),
                   "workers": (0.0, 0.0, 0.0)}}


def test_the_tool_row_counts_the_phase_not_every_call_since_the_start():
    # 80 retrieves before the phase (0.4 s), 60 in it (0.6 s more): the row is 10 ms a call
    before = _snap({("tool", "retrieve-memories"): (0.4, 80.0),
                    ("retrieve", "fanout"): (0.2, 80.0)})
    after = _snap({("tool", "retrieve-memories"): (1.0, 140.0),
                   ("retrieve", "fanout"): (0.5, 140.0),
                   ("capture", "embed"): (9.0, 10.0)})
    rows = breakdown(before, after, "retrieve", 60, tool="retrieve-memories")
    assert rows["tool (replica)"] == {"ms_per_request": 10.0, "ms_per_call": 10.0, "calls": 60}
    assert rows["fanout"]["calls"] == 60 and rows["fanout"]["ms_per_call"] == 5.0
    assert "embed" not in rows  # another path's stage
    assert rows["mcp layer (derived)"]["ms_per_call"] == 5.0  # the tool's time outside fanout

"""Where a request's time goes, read from a running server: the `memoray_stage_seconds`
histogram on /metrics (replica stages, and the shard search stages each shard returns), the
shards' write-path stage totals (memory-stats) and the embedding workers' compute time
(health-check, detailed). Snapshot before and after a phase; the difference is that phase.
"""

from __future__ import annotations

from typing import Any

import httpx

from benchmarks.common import fmt_table

STAGE_METRIC = "memoray_stage_seconds"
# The use case's own consecutive stages (their sum is its wall time); shard_* overlap fanout.
REPLICA_STAGES = ("validation", "auth", "rate_limit", "prepare", "embed", "commit", "audit",
                  "serialization", "plan", "embed_query", "fanout", "merge")
TOOL_METRIC = "memoray_tool_latency_seconds"  # the whole tool call inside the replica


def scrape(base_url: str) -> dict[tuple[str, str], tuple[float, float]]:
    """(path, stage) -> (seconds summed, observations) from /metrics."""
    from prometheus_client.parser import text_string_to_metric_families

    text = httpx.get(base_url + "/metrics", timeout=30).text
    out: dict[tuple[str, str], list[float]] = {}
    for fam in text_string_to_metric_families(text):
        if fam.name not in (STAGE_METRIC, TOOL_METRIC):
            continue
        for s in fam.samples:
            key = ((s.labels.get("path", ""), s.labels.get("stage", "")) if fam.name ==
                   STAGE_METRIC else ("tool", s.labels.get("tool", "")))
            cur = out.setdefault(key, [0.0, 0.0])
            if s.name.endswith("_sum"):
                cur[0] = s.value
            elif s.name.endswith("_count"):
                cur[1] = s.value
    return {k: (v[0], v[1]) for k, v in out.items()}


async def snapshot(client: Any, base_url: str) -> dict[str, Any]:
    """Everything a breakdown needs, at one moment (`client`: an open mcp_client)."""
    stats = await client.call("memory-stats")
    health = await client.call("health-check", detailed=True)
    embedder = health.get("components", {}).get("embedder", {}) or {}
    workers = embedder.get("workers", [])
    local = embedder.get("queries") or {}  # the replica's own query model (query_embedding)
    shard_stages: dict[str, list[float]] = {}
    gc_reports = {"replica": [(health.get("replica") or {}).get("gc")],
                  "shards": [sh.get("gc") for sh in stats.get("shards", [])],
                  "workers": [w.get("gc") for w in workers]}
    gc = {who: _gc_totals(reports) for who, reports in gc_reports.items()}
    for sh in stats.get("shards", []):
        for name, v in (sh.get("stages") or {}).items():
            cur = shard_stages.setdefault(name, [0.0, 0.0])
            cur[0] += v["seconds"]
            cur[1] += v["calls"]
    return {"metrics": scrape(base_url), "shard_stages": shard_stages,
            "embed_busy_s": sum(w.get("busy_seconds", 0.0) for w in workers),
            "embed_texts": sum(w.get("texts", 0) for w in workers),
            "embed_batches": sum(w.get("batches", 0) for w in workers),
            "query_busy_s": local.get("busySeconds", 0.0),
            "query_texts": local.get("embedded", 0), "query_batches": local.get("batches", 0),
            "gc": gc, "gc_reports": gc_reports}


def _gc_totals(reports: list[dict | None]) -> tuple[float, float, float]:
    """(seconds, collections, full collections) summed over processes' gcpause reports."""
    seconds = collections = full = 0.0
    for r in reports:
        if r:
            seconds += sum(r.get("seconds", []))
            collections += sum(r.get("collections", []))
            full += (r.get("collections") or [0, 0, 0])[-1]
    return seconds, collections, full


def breakdown(before: dict, after: dict, path: str, requests: int,
              tool: str | None = None) -> dict[str, Any]:
    """Per stage: ms per request (sum over the phase / requests) and ms per observation.
    `tool`: also the MCP tool's whole time inside the replica (row "tool (replica)")."""
    rows: dict[str, dict[str, float]] = {}
    for (p, stage), (s1, c1) in after["metrics"].items():
        s0, c0 = before["metrics"].get((p, stage), (0.0, 0.0))
        if p == "tool" and stage == tool:
            stage = "tool (replica)"  # (looked up before by its own key: the phase's calls only)
        elif p != path:
            continue
        if c1 - c0 <= 0:
            continue
        rows[stage] = {"ms_per_request": round(1000 * (s1 - s0) / requests, 3),
                       "ms_per_call": round(1000 * (s1 - s0) / (c1 - c0), 3),
                       "calls": int(c1 - c0)}
    if path == "capture":
        for name, (s1, c1) in after["shard_stages"].items():
            s0, c0 = before["shard_stages"].get(name, (0.0, 0.0))
            if c1 - c0 > 0:
                rows[f"shard_{name}"] = {"ms_per_request": round(1000 * (s1 - s0) / requests, 3),
                                         "ms_per_call": round(1000 * (s1 - s0) / (c1 - c0), 3),
                                         "calls": int(c1 - c0)}
    tool = rows.get("tool (replica)")
    if tool is not None and path in ("capture", "retrieve"):
        # Per call (each replica stage is timed once per call): what the tool call spent
        # outside the use case: argument validation (pydantic), authentication, result
        # encoding (the MCP layer).
        own = sum(v["ms_per_call"] for k, v in rows.items() if k in REPLICA_STAGES)
        rows["mcp layer (derived)"] = {"ms_per_request": "",
                                       "ms_per_call": round(tool["ms_per_call"] - own, 3),
                                       "calls": ""}
    busy = after["embed_busy_s"] - before["embed_busy_s"]
    batches = after["embed_batches"] - before["embed_batches"]
    if batches > 0:
        rows["embed_compute (worker)"] = {
            "ms_per_request": round(1000 * busy / requests, 3),
            "ms_per_call": round(1000 * busy / batches, 3), "calls": int(batches),
            "texts": int(after["embed_texts"] - before["embed_texts"])}
    busy = after.get("query_busy_s", 0.0) - before.get("query_busy_s", 0.0)
    batches = after.get("query_batches", 0) - before.get("query_batches", 0)
    if batches > 0:
        rows["embed_compute (replica)"] = {
            "ms_per_request": round(1000 * busy / requests, 3),
            "ms_per_call": round(1000 * busy / batches, 3), "calls": int(batches),
            "texts": int(after["query_texts"] - before["query_texts"])}
    for who in ("replica", "shards", "workers"):  # the collector's pauses (memoray/gcpause.py)
        (s1, c1, f1), (s0, c0, f0) = after.get("gc", {}).get(who, (0, 0, 0)), before.get(
            "gc", {}).get(who, (0, 0, 0))
        if c1 - c0 > 0:
            rows[f"gc ({who})"] = {"ms_per_request": round(1000 * (s1 - s0) / requests, 3),
                                   "ms_per_call": round(1000 * (s1 - s0) / (c1 - c0), 3),
                                   "calls": int(c1 - c0), "full": int(f1 - f0)}
    return rows


def table(rows: dict[str, dict[str, float]], total_ms: float | None = None) -> str:
    """Stages in request order, with the client's total beside them."""
    order = ["validation", "auth", "rate_limit", "prepare", "embed", "embed_compute (worker)",
             "commit", "shard_commit", "shard_index_postings_lexical", "shard_index_vector",
             "plan", "embed_query", "embed_compute (replica)", "fanout", "fanout_send",
             "shard_search", "fanout_reply", "shard_filter", "shard_vector", "shard_lexical",
             "shard_neighbours", "shard_score", "shard_fetch", "merge",
             "serialization", "audit", "mcp layer (derived)", "tool (replica)"]
    names = [n for n in order if n in rows] + sorted(set(rows) - set(order))
    out = [[n, rows[n]["ms_per_request"], rows[n]["ms_per_call"], rows[n]["calls"]]
           for n in names]
    if total_ms is not None:
        out.append(["client round trip (mean)", round(total_ms, 3), "", ""])
    return fmt_table(["stage", "ms/request", "ms/call", "calls"], out)


async def wait_query_model(c: Any, timeout: float = 600.0) -> float:
    """Wait until the replica has loaded its own copy of the query model (a background thread
    at start: importing transformers and loading MiniLM took about one core for 9 s here),
    so nothing timed next shares the CPU with a server still starting; returns the seconds
    waited. Returns at once when queries go to the workers (no `queries` entry) or the load
    failed (an `error`, the workers answer instead)."""
    import asyncio
    import time

    t0 = time.perf_counter()
    while time.perf_counter() - t0 < timeout:
        health = await c.call("health-check", detailed=True)
        queries = (health.get("components", {}).get("embedder") or {}).get("queries")
        if not queries or queries.get("ready") or queries.get("error"):
            return time.perf_counter() - t0
        await asyncio.sleep(0.5)
    raise TimeoutError(f"the replica's query model did not load in {timeout:.0f}s")


async def wait_indexed(c: Any) -> float:
    """Wait until no shard has graph inserts pending (they run behind the acknowledgement), so
    what is timed next runs on a settled server; returns the seconds waited."""
    import asyncio
    import time

    t0 = time.perf_counter()
    while True:
        stats = await c.call("memory-stats")
        if all(s.get("graphPending", 0) == 0 for s in stats.get("shards", [])):
            return time.perf_counter() - t0
        await asyncio.sleep(0.2)

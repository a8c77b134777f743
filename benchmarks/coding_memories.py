"""Coding memories: recall@5 and filter violations on a labelled set of coding-session records.

    python -m benchmarks.coding_memories [--embedder minilm|hash]

The set (issue 15): benchmarks/data/coding_facts.py holds 75 hand-written facts from coding
sessions in five repositories and ten branches, each with two paraphrased questions an agent
would ask later (150 queries). Every fact sits in a session of four records captured a minute
apart: a generic prompt, the fact, and two pieces of tool chatter (tests run, files edited),
so a fact is surrounded by records of its own session; 60 more chatter records are spread over
the repositories. Every query carries the filters an agent would send: always its workspace;
the fact's branch when it is not main (first paraphrase), the fact's event type (first
paraphrase of every third main-branch fact, second paraphrase of every other fact), and
`startTime` = 8 days before "now" for facts of the last week (first paraphrase). A query is
found when its fact is in the top 5 (one relevant record, so recall@5 = hit@5); a filter
violation is any returned record the filter rejects.
"""

from __future__ import annotations

import argparse
import asyncio
import random
import sys
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from benchmarks.common import (
    CachedEmbedder,
    LazyEmbedder,
    build_service,
    fmt_table,
    latency_summary,
    log,
    refresh_planner,
    save_json,
)
from benchmarks.data.coding_facts import FACTS

NOW = datetime(2026, 6, 1, 12, 0, tzinfo=UTC)
K = 5
FILES = {
    "ml-pipeline": ["features/store.py", "train/ranker.py", "dags/train_ranker.py",
                    "configs/lgbm.yaml", "requirements.txt", "export/onnx.py"],
    "shop-api": ["app/auth/routes.py", "app/orders/api.py", "app/payments/stripe.py",
                 "migrations/env.py", "app/settings.py", "tests/conftest.py"],
    "infra": ["eks/nodes.tf", "dns/route53.tf", "charts/api/values.yaml", "ci/plan.yml",
              "modules/vpc/main.tf", "monitoring/alerts.yaml"],
    "mobile-app": ["ios/Podfile", "android/app/build.gradle", "src/checkout/Cart.tsx",
                   "src/push/register.ts", "e2e/cart.test.ts", "app.json"],
    "docs-site": ["astro.config.mjs", "src/pages/index.mdx", ".github/workflows/build.yml",
                  "public/_headers", "src/components/Diagram.astro"],
}
PROMPTS = ["continue where we left off on {branch}", "pick up the next item on the {repo} board",
           "look at the failing check on {branch}", "let's keep going with the task from the "
           "standup", "can you take the ticket assigned to me in {repo}"]
CHATTER = ["Ran `pytest -q` in {repo}: {n} passed, {m} skipped",
           "Edited {file}: {n} lines changed", "Ran `git status` on {branch}: {m} files modified",
           "Opened {file} to read the surrounding code", "Ran the linter on {file}: clean",
           "Committed on {branch}: wip, {n} lines", "Searched the codebase for usages in {file}"]


def build_set(seed: int = 15) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """(memories, queries): deterministic for a seed. A memory's `key` names its fact."""
    rng = random.Random(seed)
    memories: list[dict[str, Any]] = []
    queries: list[dict[str, Any]] = []
    for i, (key, repo, branch, etype, days, content, qs) in enumerate(FACTS):
        t = NOW - timedelta(days=days, hours=rng.randint(0, 8))
        sid = f"{repo}-{key}"

        def add(text: str, event_type: str, minutes: int, fact: str | None = None,
                repo: str = repo, branch: str = branch, sid: str = sid,
                t: datetime = t) -> None:
            memories.append({"content": text, "event_type": event_type, "workspace_id": repo,
                             "git_branch": branch, "session_id": sid, "key": fact,
                             "timestamp": (t + timedelta(minutes=minutes)).isoformat()})

        fmt = {"repo": repo, "branch": branch, "file": rng.choice(FILES[repo]),
               "n": rng.randint(2, 400), "m": rng.randint(0, 30)}
        add(f"User prompt: {rng.choice(PROMPTS).format(**fmt)}", "prompt", 0)
        add(content, etype, 1, key)
        add(rng.choice(CHATTER).format(**fmt), "tool_use", 2)
        add(rng.choice(CHATTER).format(**{**fmt, "file": rng.choice(FILES[repo])}), "tool_use",
            3)
        for j, q in enumerate(qs):
            filters: dict[str, Any] = {"workspaceId": repo}
            if j == 0 and branch != "main":
                filters["gitBranch"] = branch
            elif (j == 0 and i % 3 == 0) or (j == 1 and i % 2 == 0):
                filters["eventType"] = etype
            if j == 0 and days <= 7:
                filters["startTime"] = (NOW - timedelta(days=8)).isoformat()
            queries.append({"query": q, "key": key, "filters": filters})
    for j in range(60):
        repo = rng.choice(sorted(FILES))
        branch = rng.choice(sorted({f[2] for f in FACTS if f[1] == repo}))
        fmt = {"repo": repo, "branch": branch, "file": rng.choice(FILES[repo]),
               "n": rng.randint(2, 400), "m": rng.randint(0, 30)}
        memories.append({"content": rng.choice(CHATTER).format(**fmt), "event_type": "tool_use",
                         "workspace_id": repo, "git_branch": branch,
                         "session_id": f"{repo}-misc-{j // 6}", "key": None,
                         "timestamp": (NOW - timedelta(days=rng.randint(0, 60),
                                                       minutes=j)).isoformat()})
    return memories, queries


async def evaluate(service: Any, caller: Any, queries: list[dict[str, Any]],
                   key_of: dict[str, str]) -> dict[str, Any]:
    from memoray import filters as flt

    found, violations, lat, misses = 0, 0, [], []
    for q in queries:
        t0 = time.perf_counter()
        records, _ = await service.search(caller, q["query"], K, q["filters"])
        lat.append(time.perf_counter() - t0)
        node = flt.parse_filter(q["filters"])
        violations += sum(1 for r in records if not flt.matches(node, r))
        keys = [key_of.get(r["id"]) for r in records]
        if q["key"] in keys:
            found += 1
        else:
            misses.append(q["query"])
    return {"queries": len(queries), "recall@5": round(found / len(queries), 4),
            "filter_violations": violations, "latency": latency_summary(lat), "misses": misses}


async def run(embedder_kind: str, variants: dict[str, dict[str, Any]]) -> dict[str, Any]:
    from benchmarks.locomo import apply
    from memoray.auth import LOCAL_PRINCIPAL
    from memoray.models import CaptureItem
    from memoray.serve.service import Caller

    memories, queries = build_set()
    embedder = CachedEmbedder(LazyEmbedder(embedder_kind))
    caller = Caller(principal=LOCAL_PRINCIPAL)
    out: dict[str, Any] = {"benchmark": "coding_memories", "embedder": embedder_kind,
                           "memories": len(memories), "facts": len(FACTS),
                           "queries": len(queries),
                           "repositories": sorted({m["workspace_id"] for m in memories}),
                           "branches": sorted({(m["workspace_id"], m["git_branch"])
                                               for m in memories}),
                           "filter_kinds": {
                               "workspaceId only": sum(len(q["filters"]) == 1 for q in queries),
                               "with gitBranch": sum("gitBranch" in q["filters"]
                                                     for q in queries),
                               "with eventType": sum("eventType" in q["filters"]
                                                     for q in queries),
                               "with startTime": sum("startTime" in q["filters"]
                                                     for q in queries)}}
    with tempfile.TemporaryDirectory(prefix="memoray-coding-") as tmp:
        service, cores, _batcher, planner = build_service(Path(tmp), embedder, 2)
        key_of: dict[str, str] = {}
        for m in memories:  # one at a time, in session order: how hooks capture
            res = await service.capture([CaptureItem(
                content=m["content"], event_type=m["event_type"], workspace_id=m["workspace_id"],
                git_branch=m["git_branch"], session_id=m["session_id"],
                timestamp=m["timestamp"])], caller)
            if m["key"]:
                key_of[res[0]["ids"][0]] = m["key"]
        embedder.save()
        refresh_planner(planner, cores)
        results = {}
        for name, overrides in variants.items():
            apply(service, overrides, cores)
            results[name] = await evaluate(service, caller, queries, key_of)
            results[name]["overrides"] = overrides
            log(f"{name}: recall@5 {results[name]['recall@5']}, violations "
                f"{results[name]['filter_violations']}")
        embedder.save()
        for core in cores:
            core.storage.close()
    out["results"] = results
    return out


def main(argv: list[str] | None = None) -> int:
    from benchmarks.locomo import FEATURES_OFF

    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--embedder", choices=("minilm", "hash"), default="minilm")
    ap.add_argument("--out", default="coding_memories")
    args = ap.parse_args(argv)
    variants = {"baseline (features off)": FEATURES_OFF, "default": {},
                "rrf": {**FEATURES_OFF, "retrieval_fusion": "rrf"},
                "neighbor 0.5": {**FEATURES_OFF, "neighbor_weight": 0.5},
                "session 0.25": {**FEATURES_OFF, "session_weight": 0.25},
                "stemmer snowball": {**FEATURES_OFF, "lexical_stemmer": "snowball"},
                "date terms": {**FEATURES_OFF, "lexical_dates": True},
                "temporal 0.15": {**FEATURES_OFF, "temporal_weight": 0.15},
                "neighbor 0.25 x2": {**FEATURES_OFF, "neighbor_weight": 0.25,
                                     "neighbor_turns": 2},
                "prf 3 docs": {**FEATURES_OFF, "prf_docs": 3},
                "vector prf 0.3": {**FEATURES_OFF, "vector_prf": 0.3}}
    out = asyncio.run(run(args.embedder, variants))
    import os

    out["environment_load"] = [round(x, 1) for x in os.getloadavg()]
    print(f"\ncoding memories: {out['memories']} memories, {out['queries']} queries, "
          f"{len(out['repositories'])} repositories, {len(out['branches'])} branches, "
          f"embedder {out['embedder']}, load {out['environment_load']}")
    print(fmt_table(["settings", "recall@5", "filter violations", "p50 ms", "p95 ms"],
                    [[n, r["recall@5"], r["filter_violations"], r["latency"]["p50_ms"],
                      r["latency"]["p95_ms"]] for n, r in out["results"].items()]))
    misses = out["results"]["default"]["misses"]
    print(f"\ndefault settings missed {len(misses)}: " + "; ".join(misses[:20]))
    path = save_json(f"{args.out}.json", out)
    print(f"saved {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

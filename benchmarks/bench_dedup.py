"""Dedup under a duplicate-heavy capture stream (issue 5): 50% distinct facts, 30% exact
duplicates, 20% paraphrased duplicates. Measures the stored count, recall@5 on the distinct
facts (asked as questions in a third wording) with dedup off (capture) and on (upsert), and
capture throughput both ways. In-process service (real shards and LMDB, no Ray/HTTP).

Run: python -m benchmarks.bench_dedup [--facts 400] [--embedder minilm]
"""

from __future__ import annotations

import argparse
import asyncio
import random
import tempfile
from pathlib import Path

from benchmarks.common import Progress, fmt_table, log, save_json

SUBJECTS = ["the auth service", "the billing worker", "the search API", "the mobile app",
            "the data pipeline", "the admin dashboard", "the notification service",
            "the payments gateway", "the user profile page", "the export job",
            "the image resizer", "the audit trail", "the session store", "the report builder",
            "the webhook dispatcher", "the feature flags", "the CSV importer", "the chat widget",
            "the GraphQL gateway", "the cron scheduler"]
CHOICES = [("PostgreSQL", "database"), ("Redis", "cache"), ("Kafka", "message queue"),
           ("S3", "object storage"), ("gRPC", "transport"), ("JWT", "token format"),
           ("Celery", "task queue"), ("Elasticsearch", "search engine"),
           ("Prometheus", "metrics system"), ("Terraform", "provisioning tool"),
           ("RabbitMQ", "broker"), ("SQLite", "embedded store"), ("Nginx", "reverse proxy"),
           ("Sentry", "error tracker"), ("OAuth2", "login protocol"), ("Protobuf", "wire format"),
           ("MinIO", "blob store"), ("ClickHouse", "analytics database"),
           ("Vault", "secret store"), ("Envoy", "sidecar proxy")]


def facts(n: int) -> list[tuple[str, str, str]]:
    """(canonical wording, paraphrase, question) per fact."""
    out = []
    for i in range(n):
        subj = SUBJECTS[i % len(SUBJECTS)]
        tech, role = CHOICES[(i // len(SUBJECTS)) % len(CHOICES)]
        out.append((f"We decided that {subj} uses {tech} as its {role}.",
                    f"Decision: {tech} is the {role} for {subj}.",
                    f"Which {role} does {subj} use?"))
    return out


def stream(fs: list[tuple[str, str, str]], seed: int = 3) -> list[tuple[int, str]]:
    rng = random.Random(seed)
    n = len(fs)
    items = [(i, fs[i][0]) for i in range(n)]  # 50% distinct
    items += [(i, fs[i][0]) for i in rng.choices(range(n), k=int(n * 0.6))]  # 30% exact
    items += [(i, fs[i][1]) for i in rng.choices(range(n), k=int(n * 0.4))]  # 20% paraphrased
    first, rest = items[:n], items[n:]
    rng.shuffle(rest)
    return first + rest


async def _one(mode: str, root: Path, embedder, fs, st) -> dict:
    from memoray.models import CaptureItem
    from tests.service_harness import caller, make_service

    svc = make_service(root / mode, embedder=embedder)
    prog = Progress(f"{mode}", len(st), "items")
    batch = 50
    for i in range(0, len(st), batch):
        items = [CaptureItem(content=text, event_type="decision", workspace_id="bench")
                 for _, text in st[i:i + batch]]
        if mode == "dedup-on":
            await svc.upsert(items, caller())
        else:
            await svc.capture(items, caller())
        prog.update(len(items))
    seconds = prog.close()
    stored = sum(len(c.postings) for c in svc.cores)
    hits = 0
    for canonical, paraphrase, question in fs:
        res = await svc.retrieve(caller(), question, limit=5, filters={"workspaceId": "bench"})
        if any(r.content in (canonical, paraphrase) for r in res):
            hits += 1
    return {"stored": stored, "stream": len(st), "seconds": round(seconds, 2),
            "items_per_s": round(len(st) / seconds, 1), "recall_at_5": round(hits / len(fs), 4)}


def run(n_facts: int = 400, embedder_kind: str = "minilm") -> dict:
    from benchmarks.common import make_embedder

    embedder = make_embedder(embedder_kind)
    fs = facts(n_facts)
    st = stream(fs)
    res = {"facts": n_facts, "stream": len(st), "embedder": embedder_kind,
           "mix": {"distinct": 0.5, "exact_duplicates": 0.3, "paraphrased_duplicates": 0.2}}
    with tempfile.TemporaryDirectory() as tmp:
        for mode in ("dedup-off", "dedup-on"):
            log(f"{mode}: {len(st)} items")
            res[mode] = asyncio.run(_one(mode, Path(tmp), embedder, fs, st))
    path = save_json("dedup.json", res)
    off, on = res["dedup-off"], res["dedup-on"]
    print(fmt_table(["", "dedup off (capture)", "dedup on (upsert)"], [
        ["stored memories", off["stored"], on["stored"]],
        ["distinct facts", n_facts, n_facts],
        ["recall@5 on distinct facts", off["recall_at_5"], on["recall_at_5"]],
        ["capture throughput (items/s)", off["items_per_s"], on["items_per_s"]],
    ]))
    print(f"saved {path}")
    return res


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--facts", type=int, default=400)
    ap.add_argument("--embedder", default="minilm", choices=["minilm", "hash"])
    a = ap.parse_args()
    run(a.facts, a.embedder)


if __name__ == "__main__":
    main()

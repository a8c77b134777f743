"""What the protections cost: retrieve-memories and capture-memory latency over the real MCP
client, with every protection on against all of them off.

Two servers, one after the other (hash embedder, 2 shards, the same seeded data):
  on   tokens (a bearer token on every call), rate limits (high enough that nothing is refused,
       so every call still goes through the limiter's leases), PII redaction (redact), encryption
       at rest (MEMORAY_ENCRYPTION_KEY)
  off  no tokens file, MEMORAY_RATE_LIMIT_ENABLED=false, MEMORAY_REDACT_PII=off, no key.
Secret redaction cannot be turned off (it always runs before storage), and the audit log is
always written: both are in both runs, so they are not part of the difference measured here.

Each server is seeded with the same memories (a tenth carry a secret, a tenth an email), warmed
up, then measured sequentially from one MCP session: `samples` retrieves (limit 10, filtered
to the workspace) and `samples` captures. Goal: < 10% added at p95.

    python -m benchmarks.bench_security [--samples 200] [--memories 2000]

Writes benchmarks/results/security.json.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import random
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from benchmarks.common import fmt_table, latency_summary, log, save_json

WS = "bench-security"
HIGH = str(10**9)
TECH = ["postgres", "redis", "kafka", "react", "vite", "django", "fastapi", "grpc", "lmdb",
        "terraform", "kubernetes", "celery", "pytest", "mypy", "ruff", "nginx", "s3", "sqs"]
AREA = ["billing", "auth", "search", "checkout", "payments", "notifications", "onboarding",
        "reporting", "ingest", "the admin panel", "the CLI", "the mobile app", "ci"]
VERB = ["decided to use", "migrated to", "found a bug in", "refactored", "benchmarked",
        "reverted the change to", "documented", "added retries around", "pinned the version of"]
WHY = ["because it is faster", "after the outage on friday", "to cut costs",
       "since the old client leaked connections", "as the review asked", "for the audit",
       "to unblock the release", "because tests were flaky"]


def _memory(rng: random.Random, i: int) -> dict[str, Any]:
    text = (f"We {rng.choice(VERB)} {rng.choice(TECH)} in {rng.choice(AREA)} "
            f"{rng.choice(WHY)}; see ticket {rng.randint(100, 9999)}.")
    if i % 10 == 3:
        text += f" Deploy used AWS_ACCESS_KEY_ID=AKIA{rng.randrange(16**16):016X}."
    elif i % 10 == 7:
        text += f" Ping dev{rng.randint(1, 99)}@example.com about it."
    return {"content": text, "workspaceId": WS, "eventType": rng.choice(
        ["decision", "code_change", "review", "note"]), "sessionId": f"s{i % 17}",
        "metadata": {"files": [f"src/{rng.choice(AREA).replace(' ', '_')}.py"]}}


def _queries(rng: random.Random, n: int) -> list[str]:
    return [f"{rng.choice(VERB)} {rng.choice(TECH)} {rng.choice(AREA)}" for _ in range(n)]


def _token(data: Path) -> str:
    out = subprocess.run(
        [sys.executable, "-m", "memoray.cli", "token", "create", "--data-dir", str(data),
         "--principal", "bench", "--workspaces", WS, "--scopes", "read,write"],
        capture_output=True, text=True, check=True)
    return out.stdout.strip().splitlines()[-1]


async def _measure(url: str, token: str | None, *, samples: int, memories: int,
                   seed: int) -> dict[str, Any]:
    from tests.server_process import mcp_client

    rng = random.Random(seed)
    data = [_memory(rng, i) for i in range(memories)]
    queries = _queries(random.Random(seed + 1), samples + 20)
    captures = [_memory(random.Random(seed + 2 + i), 10_000 + i) for i in range(samples + 10)]
    out: dict[str, Any] = {}
    async with mcp_client(url, token) as c:
        t0 = time.perf_counter()
        for i in range(0, len(data), 100):
            res = await c.call("capture-memories", items=data[i:i + 100])
            assert res["count"] == len(data[i:i + 100])
        out["seed_s"] = round(time.perf_counter() - t0, 2)
        stats = await c.call("memory-stats", workspaceId=WS)
        out["stored"] = stats["total"]
        filters = {"workspaceId": WS}
        for q in queries[:20]:  # warm-up: embed cache, planner stats, leases, connections
            await c.call("retrieve-memories", query=q, limit=10, filters=filters)
        for item in captures[:10]:
            await c.call("capture-memory", **item)
        lat: list[float] = []
        for q in queries[20:]:
            t = time.perf_counter()
            res = await c.call("retrieve-memories", query=q, limit=10, filters=filters)
            lat.append(time.perf_counter() - t)
            assert res["count"] > 0
        out["retrieve"] = latency_summary(lat)
        lat = []
        redactions = 0
        for item in captures[10:]:
            t = time.perf_counter()
            res = await c.call("capture-memory", **item)
            lat.append(time.perf_counter() - t)
            redactions += sum(res["redactions"].values())
        out["capture"] = latency_summary(lat)
        out["redactions_in_measured_captures"] = redactions
    return out


def _phase(name: str, env: dict[str, str], with_token: bool, **kw: Any) -> dict[str, Any]:
    from tests.server_process import ServerProcess

    with tempfile.TemporaryDirectory(prefix=f"bench-security-{name}-") as tmp:
        data = Path(tmp) / "data"
        data.mkdir()
        token = _token(data) if with_token else None
        log(f"[{name}] starting server ...")
        t0 = time.perf_counter()
        srv = ServerProcess(data, embedder="hash", shards=2, env=env).start()
        started = time.perf_counter() - t0
        try:
            log(f"[{name}] seeding {kw['memories']} memories, measuring {kw['samples']} "
                "retrieves and captures ...")
            res = asyncio.run(_measure(srv.mcp_url, token, **kw))
        finally:
            srv.stop()
        res["startup_s"] = round(started, 1)
        # sanity check of the setting: is the seeded text readable in the shard files?
        raw = b"".join(p.read_bytes() for p in data.glob("shards/*/lmdb/data.mdb"))
        res["plaintext_on_disk"] = any(v.encode() in raw for v in VERB)
    return res


def _pct(on: float, off: float) -> float:
    return round(100.0 * (on - off) / off, 1) if off else float("nan")


def run(samples: int = 200, memories: int = 2000, seed: int = 7) -> dict[str, Any]:
    key = base64.b64encode(random.Random(seed).randbytes(32)).decode()
    limits = {"MEMORAY_RATE_LIMIT_ENABLED": "true",
              "MEMORAY_RATE_LIMIT_CAPTURES_PER_MINUTE": HIGH,
              "MEMORAY_RATE_LIMIT_REQUESTS_PER_HOUR": HIGH,
              "MEMORAY_RATE_LIMIT_BULK_ITEMS_PER_MINUTE": HIGH}
    on_env = {**limits, "MEMORAY_REDACT_PII": "redact", "MEMORAY_ENCRYPTION_KEY": key}
    off_env = {"MEMORAY_RATE_LIMIT_ENABLED": "false", "MEMORAY_REDACT_PII": "off"}
    kw = dict(samples=samples, memories=memories, seed=seed)
    off = _phase("off", off_env, with_token=False, **kw)
    on = _phase("on", on_env, with_token=True, **kw)
    overhead = {f"{op}_{q}_pct": _pct(on[op][f"{q}_ms"], off[op][f"{q}_ms"])
                for op in ("retrieve", "capture") for q in ("p50", "p95")}
    result = {
        "benchmark": "security",
        "params": {"samples": samples, "memories": memories, "seed": seed, "embedder": "hash",
                   "shards": 2, "replicas": 1, "client": "mcp streamable HTTP, one session, "
                   "sequential calls"},
        "on": {"protections": ["bearer token", "rate limits (high, nothing refused)",
                               "PII redaction (redact)", "encryption at rest (AES-256-GCM)"],
               **on},
        "off": {"protections": ["none configurable; secret redaction and the audit log always "
                                "run"], **off},
        "overhead": overhead,
        "goal": "retrieve p95 overhead < 10%",
        "goal_met": bool(overhead["retrieve_p95_pct"] < 10.0),
        "notes": [
            "secret redaction is always on (it cannot be disabled), so 'off' still redacts "
            "secrets; only PII redaction is switched off",
            "the audit log (one fsync per mutation) is written in both runs",
            "captures are durable (LMDB fsync per commit) in both runs",
            "servers run one after the other on a shared machine: compare within one run",
        ],
    }
    return result


def _print(result: dict[str, Any]) -> None:
    on, off, ov = result["on"], result["off"], result["overhead"]
    rows = []
    for op in ("retrieve", "capture"):
        for q in ("p50", "p95"):
            rows.append([f"{op} {q} (ms)", off[op][f"{q}_ms"], on[op][f"{q}_ms"],
                         f"{ov[f'{op}_{q}_pct']:+.1f}%"])
    print(fmt_table(["metric", "all off", "all on", "added"], rows))
    print(f"samples per metric: {result['params']['samples']}; seeded memories: "
          f"{result['params']['memories']} (stored: off {off['stored']}, on {on['stored']})")
    print(f"goal ({result['goal']}): {'met' if result['goal_met'] else 'NOT met'}")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--samples", type=int, default=200)
    p.add_argument("--memories", type=int, default=2000)
    p.add_argument("--seed", type=int, default=7)
    args = p.parse_args(argv)
    result = run(samples=args.samples, memories=args.memories, seed=args.seed)
    path = save_json("security.json", result)
    _print(result)
    print(f"saved {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

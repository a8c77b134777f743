"""What the protections cost: retrieve-memories and capture-memory latency over the real MCP
client, with every protection on against all of them off.

Two servers, started one after the other (hash embedder, 2 shards, the same seeded data):
  on   tokens (a bearer token on every call), rate limits (high enough that nothing is refused,
       so every call still goes through the limiter's leases), PII redaction (redact), encryption
       at rest (MEMORAY_ENCRYPTION_KEY)
  off  no tokens file, MEMORAY_RATE_LIMIT_ENABLED=false, MEMORAY_REDACT_PII=off, no key.
Secret redaction cannot be turned off (it always runs before storage), and the audit log is
always written: both are in both runs, so they are not part of the difference measured here.

Each server is seeded with the same memories (a tenth carry a secret, a tenth an email) and
warmed up. Then, from one MCP session per server, `samples` retrieves (limit 10, filtered to the
workspace) and `samples` captures are measured per server, in alternating blocks (off, on, on,
off, ...): the machine is shared, and load that comes and goes then falls on both alike.
Goal: < 10% added at p95.

    python -m benchmarks.bench_security [--samples 200] [--memories 2000] [--blocks 10]

Writes benchmarks/results/security.json.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
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


async def _seed(c: Any, data: list[dict]) -> float:
    t0 = time.perf_counter()
    for i in range(0, len(data), 100):
        res = await c.call("capture-memories", items=data[i:i + 100])
        assert res["count"] == len(data[i:i + 100])
    return round(time.perf_counter() - t0, 2)


async def _retrieve(c: Any, queries: list[str], lat: list[float]) -> None:
    for q in queries:
        t = time.perf_counter()
        res = await c.call("retrieve-memories", query=q, limit=10, filters={"workspaceId": WS})
        lat.append(time.perf_counter() - t)
        assert res["count"] > 0


async def _capture(c: Any, items: list[dict], lat: list[float]) -> int:
    redactions = 0
    for item in items:
        t = time.perf_counter()
        res = await c.call("capture-memory", **item)
        lat.append(time.perf_counter() - t)
        redactions += sum(res["redactions"].values())
    return redactions


async def _measure(servers: dict[str, tuple[str, str | None]], *, samples: int, memories: int,
                   seed: int, blocks: int) -> dict[str, Any]:
    """Seed every server, warm it up, then measure in alternating blocks."""
    from tests.server_process import mcp_client

    rng = random.Random(seed)
    data = [_memory(rng, i) for i in range(memories)]
    queries = _queries(random.Random(seed + 1), samples + 20)
    captures = [_memory(random.Random(seed + 2 + i), 10_000 + i) for i in range(samples + 10)]
    names = list(servers)
    out: dict[str, Any] = {n: {} for n in names}
    lat: dict[str, dict[str, list[float]]] = {n: {"retrieve": [], "capture": []} for n in names}
    redactions = {n: 0 for n in names}
    async with contextlib.AsyncExitStack() as stack:
        clients = {}
        for n in names:
            url, token = servers[n]
            clients[n] = c = await stack.enter_async_context(mcp_client(url, token))
            log(f"[{n}] seeding {memories} memories ...")
            out[n]["seed_s"] = await _seed(c, data)
            out[n]["stored"] = (await c.call("memory-stats", workspaceId=WS))["total"]
            await _retrieve(c, queries[:20], [])  # warm-up: caches, planner stats, leases
            await _capture(c, captures[:10], [])
        log(f"measuring {samples} retrieves and {samples} captures per server in {blocks} "
            "alternating blocks ...")
        bounds = [round(b * samples / blocks) for b in range(blocks + 1)]
        for b in range(blocks):
            order = names if b % 2 == 0 else names[::-1]
            qs = queries[20 + bounds[b]: 20 + bounds[b + 1]]
            items = captures[10 + bounds[b]: 10 + bounds[b + 1]]
            for n in order:
                await _retrieve(clients[n], qs, lat[n]["retrieve"])
            for n in order:
                redactions[n] += await _capture(clients[n], items, lat[n]["capture"])
    for n in names:
        out[n]["retrieve"] = latency_summary(lat[n]["retrieve"])
        out[n]["capture"] = latency_summary(lat[n]["capture"])
        out[n]["redactions_in_measured_captures"] = redactions[n]
    return out


def _pct(on: float, off: float) -> float:
    return round(100.0 * (on - off) / off, 1) if off else float("nan")


def run(samples: int = 200, memories: int = 2000, seed: int = 7, blocks: int = 10
        ) -> dict[str, Any]:
    from tests.server_process import ServerProcess

    key = base64.b64encode(random.Random(seed).randbytes(32)).decode()
    envs = {
        "off": {"MEMORAY_RATE_LIMIT_ENABLED": "false", "MEMORAY_REDACT_PII": "off"},
        "on": {"MEMORAY_RATE_LIMIT_ENABLED": "true",
               "MEMORAY_RATE_LIMIT_CAPTURES_PER_MINUTE": HIGH,
               "MEMORAY_RATE_LIMIT_REQUESTS_PER_HOUR": HIGH,
               "MEMORAY_RATE_LIMIT_BULK_ITEMS_PER_MINUTE": HIGH,
               "MEMORAY_REDACT_PII": "redact", "MEMORAY_ENCRYPTION_KEY": key},
    }
    with tempfile.TemporaryDirectory(prefix="bench-security-") as tmp, \
            contextlib.ExitStack() as stack:
        servers: dict[str, tuple[str, str | None]] = {}
        started: dict[str, float] = {}
        dirs: dict[str, Path] = {}
        for name, env in envs.items():  # started one after the other
            data = dirs[name] = Path(tmp) / name / "data"
            data.mkdir(parents=True)
            token = _token(data) if name == "on" else None
            log(f"[{name}] starting server ...")
            t0 = time.perf_counter()
            srv = ServerProcess(data, embedder="hash", shards=2, env=env).start()
            stack.callback(srv.stop)
            started[name] = round(time.perf_counter() - t0, 1)
            servers[name] = (srv.mcp_url, token)
        res = asyncio.run(_measure(servers, samples=samples, memories=memories, seed=seed,
                                   blocks=blocks))
        for name in envs:
            res[name]["startup_s"] = started[name]
            # the settings took effect: is the seeded text readable in the shard files?
            raw = b"".join(p.read_bytes() for p in dirs[name].glob("shards/*/lmdb/data.mdb"))
            res[name]["plaintext_on_disk"] = any(v.encode() in raw for v in VERB)
    on, off = res["on"], res["off"]
    overhead = {f"{op}_{q}_pct": _pct(on[op][f"{q}_ms"], off[op][f"{q}_ms"])
                for op in ("retrieve", "capture") for q in ("p50", "p95")}
    return {
        "benchmark": "security",
        "params": {"samples": samples, "memories": memories, "seed": seed, "embedder": "hash",
                   "shards": 2, "replicas": 1, "blocks": blocks,
                   "client": "mcp streamable HTTP, one session per server, sequential calls"},
        "on": {"protections": ["bearer token", "rate limits (high, nothing refused)",
                               "PII redaction (redact)", "encryption at rest (AES-256-GCM)"],
               **on},
        "off": {"protections": ["none of the configurable ones; secret redaction and the audit "
                                "log always run"], **off},
        "overhead": overhead,
        "goal": "retrieve p95 overhead < 10%",
        "goal_met": bool(overhead["retrieve_p95_pct"] < 10.0),
        "notes": [
            "secret redaction is always on (it cannot be disabled), so 'off' still redacts "
            "secrets; only PII redaction is switched off",
            "the audit log (one fsync per mutation) is written in both runs",
            "captures are durable (LMDB fsync per commit) in both runs",
            "both servers run side by side and are measured in alternating blocks, so other "
            "load on the machine falls on both alike; compare figures within one run",
        ],
    }


def _print(result: dict[str, Any]) -> None:
    on, off, ov = result["on"], result["off"], result["overhead"]
    rows = []
    for op in ("retrieve", "capture"):
        for q in ("p50", "p95"):
            rows.append([f"{op} {q} (ms)", off[op][f"{q}_ms"], on[op][f"{q}_ms"],
                         f"{ov[f'{op}_{q}_pct']:+.1f}%"])
    print(fmt_table(["metric", "all off", "all on", "added"], rows))
    p = result["params"]
    print(f"{p['samples']} samples per metric and server, {p['blocks']} alternating blocks; "
          f"seeded memories: {p['memories']} (stored: off {off['stored']}, on {on['stored']}); "
          f"plaintext in shard files: off {off['plaintext_on_disk']}, "
          f"on {on['plaintext_on_disk']}")
    print(f"goal ({result['goal']}): {'met' if result['goal_met'] else 'NOT met'}")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--samples", type=int, default=200)
    p.add_argument("--memories", type=int, default=2000)
    p.add_argument("--seed", type=int, default=7)
    p.add_argument("--blocks", type=int, default=10)
    args = p.parse_args(argv)
    result = run(samples=args.samples, memories=args.memories, seed=args.seed,
                 blocks=args.blocks)
    path = save_json("security.json", result)
    _print(result)
    print(f"saved {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

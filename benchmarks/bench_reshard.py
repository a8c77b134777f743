"""What an online reshard costs: its rate, the share of records it moves, and retrieve latency
while it runs, on a real server (hash embedder, durable LMDB) on this machine.

For each case (2 -> 3 and 4 -> 5 shards by default): a store is seeded with `records` memories
through MCP, retrieve-memories latency is sampled (`samples` calls, limit 10), then the reshard
job (cluster/jobs/reshard.py, as a driver on the server's Ray cluster) runs while one client
keeps calling retrieve-memories back to back. Reported: records moved and scanned, the fraction
moved against the ideal 1/(N+1), the move rate (records moved per second of the job's move
phase) and retrieve p50/p95 before and during.

    python -m benchmarks.bench_reshard [--records 5000] [--samples 100] [--cases 2:3,4:5]

Writes benchmarks/results/reshard.json and reshard.png, with the machine's load.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from benchmarks.common import fmt_table, latency_summary, log, result_path, save_json
from tests.server_process import ROOT, ServerProcess, free_port, mcp_client


async def seed(url: str, n: int) -> None:
    async with mcp_client(url) as c:
        for b in range(0, n, 100):
            await c.call("capture-memories", items=[
                {"content": f"benchmark memory {i} about service {i % 50} and its deploy",
                 "workspaceId": "bench", "eventType": "decision",
                 **({"idempotencyKey": f"k{i}"} if i % 4 == 0 else {})}
                for i in range(b, min(b + 100, n))])


async def retrieves(url: str, samples: int | None = None,
                    until: asyncio.Event | None = None) -> list[float]:
    out: list[float] = []
    async with mcp_client(url) as c:
        i = 0
        while (samples is None or i < samples) and not (until is not None and until.is_set()):
            t0 = time.perf_counter()
            await c.call("retrieve-memories", query=f"service {i % 50} deploy", limit=10,
                         filters={"workspaceId": "bench"})
            out.append(time.perf_counter() - t0)
            i += 1
    return out


async def reshard_under_reads(srv: ServerProcess, shards: int) -> tuple[dict, list[float]]:
    done = asyncio.Event()
    reader = asyncio.create_task(retrieves(srv.mcp_url, until=done))
    env = {**os.environ, "PYTHONPATH": str(ROOT), "RAY_AUTH_MODE": "token"}
    t0 = time.time()
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "memoray.cluster.jobs.reshard", "--data-dir", str(srv.data_dir),
        "--shards", str(shards), cwd=ROOT, env=env, stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE)
    out, err = await proc.communicate()
    done.set()
    lat = await reader
    if proc.returncode != 0:
        raise RuntimeError(f"reshard failed: {err.decode()[-2000:]}")
    report = json.loads([ln for ln in out.decode().splitlines() if ln.startswith("{")][-1])
    report["wall_s"] = round(time.time() - t0, 2)
    return report, lat


def run_case(root: Path, before: int, after: int, records: int, samples: int) -> dict[str, Any]:
    (root / f"s{before}to{after}").mkdir(parents=True, exist_ok=True)
    srv = ServerProcess(root / f"s{before}to{after}" / "data", embedder="hash", shards=before,
                        env={"MEMORAY_DASHBOARD": "true",
                             "MEMORAY_DASHBOARD_PORT": str(free_port()),
                             "MEMORAY_RATE_LIMIT_ENABLED": "false"})
    srv.start(timeout=300)
    try:
        log(f"{before}->{after}: seeding {records} memories")
        asyncio.run(seed(srv.mcp_url, records))
        normal = asyncio.run(retrieves(srv.mcp_url, samples))
        load_before = os.getloadavg()
        log(f"{before}->{after}: resharding under a retrieve loop")
        report, during = asyncio.run(reshard_under_reads(srv, after))
        load_after = os.getloadavg()
        moved = report["moved"]
        return {"from": before, "to": after, "records": records, "moved": moved,
                "scanned": report["scanned"], "fraction_moved": round(moved / records, 4),
                "ideal_fraction": round(abs(after - before) / max(after, before), 4),
                "move_seconds": report["seconds"], "job_wall_s": report["wall_s"],
                "moved_per_s": round(moved / max(report["seconds"], 1e-9), 1),
                "retrieve_normal": latency_summary(normal),
                "retrieve_during": latency_summary(during),
                "loadavg_before": load_before, "loadavg_after": load_after}
    finally:
        srv.stop()


def plot(res: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cases = res["cases"]
    labels = [f"{c['from']}→{c['to']}" for c in cases]
    fig, ax = plt.subplots(1, 3, figsize=(13, 3.8))
    x = range(len(cases))
    ax[0].bar([i - 0.2 for i in x], [c["fraction_moved"] for c in cases], 0.4, label="measured")
    ax[0].bar([i + 0.2 for i in x], [c["ideal_fraction"] for c in cases], 0.4,
              label="1/(N+1)")
    ax[0].set_xticks(list(x), labels)
    ax[0].set_title("fraction of records moved")
    ax[0].legend()
    ax[1].bar(labels, [c["moved_per_s"] for c in cases])
    ax[1].set_title("records moved per second")
    for off, key, lab in ((-0.2, "retrieve_normal", "normal"),
                          (0.2, "retrieve_during", "during reshard")):
        ax[2].bar([i + off for i in x], [c[key]["p95_ms"] for c in cases], 0.4, label=lab)
    ax[2].set_xticks(list(x), labels)
    ax[2].set_title("retrieve p95 (ms)")
    ax[2].legend()
    fig.suptitle(f"memoray online reshard, one {os.cpu_count()}-core machine "
                 f"(load {os.getloadavg()[0]:.1f} at save)", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--records", type=int, default=5000)
    ap.add_argument("--samples", type=int, default=100)
    ap.add_argument("--cases", default="2:3,4:5", help="from:to pairs")
    args = ap.parse_args(argv)
    from memoray.routing import JUMP, MODULO, Routing, moved_fraction

    keys = [f"key-{i}" for i in range(50000)]
    res: dict[str, Any] = {"config": vars(args), "cases": [], "computed": {
        "jump_2_to_3": moved_fraction(keys, Routing(JUMP, 2), Routing(JUMP, 3)),
        "jump_4_to_5": moved_fraction(keys, Routing(JUMP, 4), Routing(JUMP, 5)),
        "modulo_2_to_3": moved_fraction(keys, Routing(MODULO, 2), Routing(MODULO, 3)),
        "legacy_modulo_2_to_jump_3": moved_fraction(keys, Routing(MODULO, 2),
                                                    Routing(JUMP, 3)),
        "note": "owners of 50,000 random keys under each routing (no server)"}}
    root = Path(tempfile.mkdtemp(prefix="memoray-bench-reshard-"))
    for pair in args.cases.split(","):
        a, b = (int(x) for x in pair.split(":"))
        res["cases"].append(run_case(root, a, b, args.records, args.samples))
    path = save_json("reshard.json", res)
    plot(res, result_path("reshard.png"))
    print(fmt_table(["case", "moved", "fraction", "ideal", "moved/s", "retrieve p95 normal ms",
                     "p95 during ms", "load"],
                    [[f"{c['from']}->{c['to']}", c["moved"], c["fraction_moved"],
                      c["ideal_fraction"], c["moved_per_s"], c["retrieve_normal"]["p95_ms"],
                      c["retrieve_during"]["p95_ms"], round(c["loadavg_after"][0], 1)]
                     for c in res["cases"]]))
    comp = res["computed"]
    print(f"computed over random keys: jump 2->3 {comp['jump_2_to_3']:.3f}, 4->5 "
          f"{comp['jump_4_to_5']:.3f}; modulo 2->3 {comp['modulo_2_to_3']:.3f}; an older "
          f"(modulo) store's first reshard 2->3 {comp['legacy_modulo_2_to_jump_3']:.3f}")
    print(f"saved {path} and reshard.png")
    return 0


if __name__ == "__main__":
    sys.exit(main())

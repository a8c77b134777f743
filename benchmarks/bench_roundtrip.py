"""The do-nothing round trip (issue 14), with Ray Serve's proxy in front and with direct ingress
(the one replica serving HTTP itself), alternating servers so load swings hit both alike:

- GET /metrics: HTTP + the ASGI app, no MCP, no actor call (the transport floor);
- a raw JSON-RPC POST of tools/call `ping` (adds the MCP layer);
- the same through the real `mcp` client (adds the client's own work).

Run: python -m benchmarks.bench_roundtrip [--samples 200] [--rounds 3]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import tempfile
import time
from pathlib import Path

import httpx

from benchmarks.common import fmt_table, latency_summary, log, save_json

BODY = {"jsonrpc": "2.0", "id": 1, "method": "tools/call",
        "params": {"name": "ping", "arguments": {}}}
HEADERS = {"accept": "application/json, text/event-stream", "content-type": "application/json",
           "mcp-protocol-version": "2025-06-18"}


async def _measure(url: str, samples: int) -> dict[str, list[float]]:
    from tests.server_process import mcp_client

    base = url.rsplit("/mcp", 1)[0]
    out: dict[str, list[float]] = {"metrics": [], "raw_ping": [], "mcp_ping": []}
    async with httpx.AsyncClient(timeout=30) as h:
        calls = {"metrics": lambda: h.get(base + "/metrics"),
                 "raw_ping": lambda: h.post(url, json=BODY, headers=HEADERS)}
        for name, fn in calls.items():
            for _ in range(5):
                await fn()
            for _ in range(samples):
                t = time.perf_counter()
                r = await fn()
                out[name].append(time.perf_counter() - t)
                assert r.status_code == 200, r.text
    async with mcp_client(url) as c:
        for _ in range(5):
            await c.call("ping")
        for _ in range(samples):
            t = time.perf_counter()
            await c.call("ping")
            out["mcp_ping"].append(time.perf_counter() - t)
    return out


def run(samples: int = 200, rounds: int = 3) -> dict:
    from tests.server_process import ServerProcess

    lat: dict[str, dict[str, list[float]]] = {"proxy": {}, "direct": {}}
    loads = [os.getloadavg()]
    with tempfile.TemporaryDirectory() as tmp:
        for r in range(rounds):
            for mode in ("proxy", "direct"):
                log(f"round {r + 1}/{rounds}: {mode}")
                env = {"MEMORAY_RATE_LIMIT_ENABLED": "false",
                       "MEMORAY_DIRECT_INGRESS": "true" if mode == "direct" else "false"}
                server = ServerProcess(Path(tmp) / f"{mode}-{r}", embedder="hash",
                                       env=env).start(timeout=600)
                try:
                    got = asyncio.run(_measure(server.mcp_url, samples))
                finally:
                    server.stop()
                for k, v in got.items():
                    lat[mode].setdefault(k, []).extend(v)
                loads.append(os.getloadavg())
    res = {"samples": samples, "rounds": rounds, "loadavg": loads,
           "proxy": {k: latency_summary(v) for k, v in lat["proxy"].items()},
           "direct": {k: latency_summary(v) for k, v in lat["direct"].items()}}
    path = save_json("roundtrip.json", res)
    rows = [[name, f"{res['proxy'][name]['p50_ms']:.1f} / {res['proxy'][name]['p95_ms']:.1f}",
             f"{res['direct'][name]['p50_ms']:.1f} / {res['direct'][name]['p95_ms']:.1f}"]
            for name in ("metrics", "raw_ping", "mcp_ping")]
    print(fmt_table(["call", "Serve proxy p50 / p95 ms", "direct ingress p50 / p95 ms"], rows))
    print(f"load averages {[round(x[0], 1) for x in loads]}; saved {path}")
    return res


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--samples", type=int, default=200)
    ap.add_argument("--rounds", type=int, default=3)
    a = ap.parse_args()
    run(a.samples, a.rounds)


if __name__ == "__main__":
    main()

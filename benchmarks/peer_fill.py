"""Fill the peer's (mcp-memory-service) sqlite-vec store in process, for bench_peer.

Run by bench_peer with the peer's own virtualenv python (never memoray's), with the same
environment its server gets (MCP_MEMORY_BASE_DIR, MCP_EMBEDDING_MODEL, ...), while that server is
stopped. It opens the store the way the server does (create_storage_instance(SQLITE_VEC_PATH):
SqliteVecMemoryStorage, the same MiniLM weights) and writes through
SqliteVecMemoryStorage.store_batch, the package's own batch call: one embedding call and one
transaction per batch.

Each Memory is built as the peer's MCP tool memory_store builds it for the call bench_peer makes
(`memory_store(content, conversation_id=tag, metadata={"tags": [tag], "type": "note"})` ->
MemoryService.store_memory): content hash of the text, tags normalized, type "note", metadata
{conversation_id} (+ agent id / hostname when the peer's settings would stamp them), exact
duplicates refused, recreate=False. What it skips is memory_store's per-call work: one embedding
per call, and the conflict scan after each commit (which tags "conflict:unresolved" on pairs at
cosine >= 0.95 with text divergence >= 0.2). It is how the store gets to N memories in
reasonable time; capture throughput is measured through the peer's MCP server, not here.

Input: JSON lines {"content": str, "tag": str}. Output: JSON lines {"hash", "ok", "message"}, one
per input line in order, then {"summary": {...}}. Progress goes to stderr.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time


async def fill(inp: str, out: str, batch: int) -> dict:
    from mcp_memory_service.config import SQLITE_VEC_PATH
    from mcp_memory_service.models.memory import Memory
    from mcp_memory_service.server.handlers.memory import _resolve_hostname
    from mcp_memory_service.services.memory_service import normalize_tags
    from mcp_memory_service.storage.factory import create_storage_instance
    from mcp_memory_service.utils.agent_context import resolve_agent_id
    from mcp_memory_service.utils.hashing import generate_content_hash

    with open(inp, encoding="utf-8") as f:
        items = [json.loads(line) for line in f if line.strip()]
    t0 = time.perf_counter()
    storage = await create_storage_instance(SQLITE_VEC_PATH, server_type="mcp")
    open_s = time.perf_counter() - t0
    limit = storage.max_content_length
    too_long = [i for i, it in enumerate(items) if limit and len(it["content"]) > limit]
    if too_long:
        # memory_store would split these into chunks; this filler does not, so refuse.
        await storage.close()
        raise SystemExit(f"{len(too_long)} items exceed the peer's max_content_length "
                         f"{limit} (first: line {too_long[0] + 1})")
    hostname = _resolve_hostname(None)

    def memory(content: str, tag: str) -> Memory:
        tags = normalize_tags(normalize_tags(None) + normalize_tags([tag]))
        meta: dict = {}
        if hostname:
            if f"source:{hostname}" not in tags:
                tags.append(f"source:{hostname}")
            meta["hostname"] = hostname
        meta["conversation_id"] = tag
        agent = resolve_agent_id(explicit=None, metadata=meta).agent_id
        if agent:
            meta["agent_id"] = agent
        return Memory(content=content, content_hash=generate_content_hash(content), tags=tags,
                      memory_type="note", metadata=meta)

    stored = 0
    t1 = time.perf_counter()
    last = 0.0
    with open(out, "w", encoding="utf-8") as f:
        for i in range(0, len(items), batch):
            mems = [memory(it["content"], it["tag"]) for it in items[i:i + batch]]
            results = await storage.store_batch(mems, store="default", recreate=False)
            for m, (ok, msg) in zip(mems, results):
                stored += bool(ok)
                f.write(json.dumps({"hash": m.content_hash, "ok": bool(ok),
                                    "message": str(msg)}) + "\n")
            done = min(i + batch, len(items))
            now = time.perf_counter()
            if now - last >= 10 or done == len(items):
                last = now
                el = now - t1
                sys.stderr.write(f"peer fill (store_batch)   {done:>7}/{len(items):<7} "
                                 f"{done / el:8.1f} memories/s  {el:6.1f}s\n")
                sys.stderr.flush()
        store_s = time.perf_counter() - t1
        count = storage.conn.execute(
            "SELECT COUNT(*) FROM memories WHERE deleted_at IS NULL").fetchone()[0]
        await storage.close()
        summary = {"items": len(items), "stored": stored, "memories_in_store": count,
                   "open_s": round(open_s, 1), "store_s": round(store_s, 1),
                   "per_s": round(len(items) / store_s, 1) if store_s else None,
                   "batch": batch, "db": SQLITE_VEC_PATH,
                   "call": "SqliteVecMemoryStorage.store_batch"}
        f.write(json.dumps({"summary": summary}) + "\n")
    return summary


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("input")
    ap.add_argument("output")
    ap.add_argument("--batch", type=int, default=128)
    a = ap.parse_args()
    print(json.dumps(asyncio.run(fill(a.input, a.output, a.batch))))


if __name__ == "__main__":
    main()

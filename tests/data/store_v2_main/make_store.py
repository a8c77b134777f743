"""How this fixture was made: a store written by main at 2363d95 (the last landed version
before layout version 3: modulo routing, layout version 2), in process, without Ray.

    git archive 2363d95 | tar -x -C /tmp/oldmain
    PYTHONPATH=/tmp/oldmain HNSWLIB_NO_NATIVE=1 python tests/data/store_v2_main/make_store.py OUT

OUT gets memoray.json, compacted LMDB copies of both shards and expected.json (every id, the
ids of keyed captures, the documents' parent ids). Used by tests/test_routing_reshard.py.
"""

from __future__ import annotations

import asyncio
import json
import shutil
import sys
from pathlib import Path

import lmdb

from memoray.actors.backend import Backend
from memoray.actors.embedding_worker import MicroBatcher
from memoray.actors.shard import ShardCore
from memoray.auth import LOCAL_PRINCIPAL
from memoray.embedding import HashEmbedder
from memoray.layout import open_layout
from memoray.models import CaptureItem
from memoray.redaction import Redactor
from memoray.serve.service import Caller, MemoryService
from memoray.settings import Settings


def main(out: Path) -> None:
    work = out / "work"
    emb = HashEmbedder()
    open_layout(work, shards=2, dim=emb.dim, embedder="hash")
    cores = [ShardCore(i, work / "shards" / f"{i:03d}", emb.dim, map_size=64 << 20,
                       durable=True) for i in range(2)]
    svc = MemoryService(Settings(data_dir=work, shards=2),
                        Backend.local(cores, MicroBatcher(emb)), redactor=Redactor())
    caller = Caller(principal=LOCAL_PRINCIPAL, agent_id=None)
    items = [CaptureItem(content=f"fact {i}: the service {i % 7} uses port {8000 + i}",
                         workspace_id="ws", event_type="decision",
                         **({"idempotency_key": f"k{i}"} if i % 3 == 0 else {}))
             for i in range(60)]
    items.append(CaptureItem(content="\n\n".join(
        f"Section {j}. " + "lorem ipsum dolor sit amet " * 40 for j in range(12)),
        workspace_id="ws", idempotency_key="doc-keyed"))
    items.append(CaptureItem(content="\n\n".join(
        f"Part {j}. " + "consectetur adipiscing elit " * 40 for j in range(10)),
        workspace_id="ws"))
    res = asyncio.run(svc.capture(items, caller))
    for c in cores:
        c.close()
    for i in range(2):  # compacted copies: small files to keep in the repository
        env = lmdb.open(str(work / "shards" / f"{i:03d}" / "lmdb"), max_dbs=16, readonly=True,
                        lock=False, map_size=64 << 20)
        dest = out / "shards" / f"{i:03d}" / "lmdb"
        dest.mkdir(parents=True)
        env.copy(str(dest), compact=True)
        env.close()
    (out / "memoray.json").write_text((work / "memoray.json").read_text())
    expected = {"ids": [i for r in res for i in r["ids"]],
                "keyed": {f"k{i}": res[i]["ids"][0] for i in range(0, 60, 3)},
                "documents": [r["parentId"] for r in res if r["parentId"]],
                "made_by": "main 2363d95"}
    (out / "expected.json").write_text(json.dumps(expected, indent=1))
    shutil.rmtree(work)


if __name__ == "__main__":
    main(Path(sys.argv[1]))

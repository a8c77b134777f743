"""Writes a v2 store with the code of main at 2363d95 (modulo routing, layout version 2)."""
import asyncio, json, sys
from pathlib import Path
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

out = Path(sys.argv[1]); work = out / "work"
emb = HashEmbedder()
layout = open_layout(work, shards=2, dim=emb.dim, embedder="hash")
cores = [ShardCore(i, work / "shards" / f"{i:03d}", emb.dim, map_size=64 << 20, durable=True) for i in range(2)]
svc = MemoryService(Settings(data_dir=work, shards=2), Backend.local(cores, MicroBatcher(emb)), redactor=Redactor())
caller = Caller(principal=LOCAL_PRINCIPAL, agent_id=None)
items = []
for i in range(60):
    kw = {"idempotency_key": f"k{i}"} if i % 3 == 0 else {}
    items.append(CaptureItem(content=f"fact {i}: the service {i % 7} uses port {8000 + i}", workspace_id="ws", event_type="decision", **kw))
items.append(CaptureItem(content="\n\n".join(f"Section {j}. " + "lorem ipsum dolor sit amet " * 40 for j in range(12)), workspace_id="ws", idempotency_key="doc-keyed"))
items.append(CaptureItem(content="\n\n".join(f"Part {j}. " + "consectetur adipiscing elit " * 40 for j in range(10)), workspace_id="ws"))
res = asyncio.run(svc.capture(items, caller))
for c in cores:
    c.close()
# compact copies: small files to keep in the repository
for i in range(2):
    import lmdb
    env = lmdb.open(str(work / "shards" / f"{i:03d}" / "lmdb"), max_dbs=16, readonly=True, lock=False, map_size=64 << 20)
    dest = out / "shards" / f"{i:03d}" / "lmdb"; dest.mkdir(parents=True)
    env.copy(str(dest), compact=True); env.close()
(out / "memoray.json").write_text((work / "memoray.json").read_text())
expected = {"ids": [i for r in res for i in r["ids"]], "keyed": {f"k{i}": res[i]["ids"][0] for i in range(0, 60, 3)},
            "documents": [r["parentId"] for r in res if r["parentId"]], "made_by": "main 2363d95"}
(out / "expected.json").write_text(json.dumps(expected, indent=1))
import shutil; shutil.rmtree(work)
print(json.dumps({"records": len(expected["ids"]), "layout": json.loads((out / "memoray.json").read_text())}))

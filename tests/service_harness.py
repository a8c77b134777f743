"""An in-process MemoryService over real ShardCores (real LMDB, hnswlib) without Ray."""

from __future__ import annotations

from pathlib import Path

from memoray.actors.backend import Backend
from memoray.actors.embedding_worker import MicroBatcher
from memoray.actors.expiry import ExpiryClient, ExpiryWorker
from memoray.actors.shard import ShardCore
from memoray.auth import LOCAL_PRINCIPAL, Principal
from memoray.embedding import HashEmbedder
from memoray.models import CaptureItem
from memoray.redaction import Redactor
from memoray.serve.service import Caller, MemoryService
from memoray.settings import Settings


def make_service(tmp: Path, *, shards: int = 2, embedder=None, policies=None,
                 durable: bool = False) -> MemoryService:
    embedder = embedder or HashEmbedder()
    cores = [ShardCore(i, tmp / f"shard{i}", embedder.dim, map_size=256 << 20, durable=durable)
             for i in range(shards)]
    backend = Backend.local(cores, MicroBatcher(embedder))
    settings = Settings(data_dir=tmp, shards=shards, durable=durable)
    worker = ExpiryWorker(backend.shards, policies=policies or [], archive_dir=tmp / "archive",
                          redactor=Redactor(pii="redact"))
    svc = MemoryService(settings, backend, redactor=Redactor(), expiry=ExpiryClient(worker))
    svc.cores = cores  # for assertions on the raw stores
    return svc


def caller(agent: str | None = None, principal: Principal = LOCAL_PRINCIPAL) -> Caller:
    return Caller(principal=principal, agent_id=agent)


def item(content: str, **kw) -> CaptureItem:
    kw.setdefault("workspace_id", "ws")
    return CaptureItem(content=content, **kw)

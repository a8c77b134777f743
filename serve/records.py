"""Single records by id: get-memory, delete-memory, get-document, share-memory. Each path reads
top to bottom: validate, authorize, rate-limit, work (which checks the record's workspace and
visibility: another workspace's id answers exactly like a missing one), audit."""

from __future__ import annotations

from memoray.errors import ErrorCode, MemorayError, invalid, not_found
from memoray.ids import is_valid_id
from memoray.models import RetrievedMemory
from memoray.records import Record
from memoray.serve.request import Caller, UseCase
from memoray.serve.retrieve import to_retrieved
from memoray.timeutil import now as utc_now


def check_id(memory_id: str) -> None:
    if not is_valid_id(memory_id):
        raise invalid("id: not a memory id (26 Crockford base32 characters)")


class Records(UseCase):
    async def _visible_record(self, caller: Caller, memory_id: str, action: str) -> Record:
        rec = await self.backend.shards.get_one(memory_id)
        if rec is None or not self.can_see(caller, rec):
            if rec is not None:  # exists where the caller can't see: the same answer
                await self.audited(caller, action, ids=[memory_id], outcome="denied",
                                   code="NOT_FOUND")
            raise not_found(f"memory {memory_id} not found")
        return rec

    async def get(self, caller: Caller, memory_id: str) -> RetrievedMemory:
        check_id(memory_id)
        await self.authorize(caller, "read", "get")
        await self.rate_limit(caller, None)
        rec = await self._visible_record(caller, memory_id, "get")
        return to_retrieved({**rec, "score": 1.0})

    async def delete(self, caller: Caller, memory_id: str) -> dict:
        """A hard delete; a chunk id deletes its whole document."""
        check_id(memory_id)
        await self.authorize(caller, "write", "delete")
        await self.rate_limit(caller, None)
        rec = await self._visible_record(caller, memory_id, "delete")
        await self.authorize(caller, "write", "delete", rec["workspace_id"])
        shards = self.backend.shards
        ids = [memory_id]
        if rec.get("parent_id"):
            ids = [r["id"] for r in await shards.document(rec["parent_id"])]
        gone = await shards.delete(ids)
        self.metrics.deletes.inc(len(gone))
        await self.audited(caller, "delete", workspace=rec["workspace_id"], ids=gone)
        return {"id": memory_id, "deleted": memory_id in gone,
                "chunksDeleted": len(gone) if len(gone) > 1 else 0}

    async def get_document(self, caller: Caller, memory_id: str) -> dict:
        """Reassemble a chunked document from its parent id or any chunk id."""
        from memoray.chunking import reassemble

        check_id(memory_id)
        await self.authorize(caller, "read", "get-document")
        await self.rate_limit(caller, None)
        shards = self.backend.shards  # chunks share a shard (their document's home)
        parent = memory_id
        doc = await shards.document(parent)
        if not doc:
            rec = await self._visible_record(caller, memory_id, "get-document")
            if not rec.get("parent_id"):
                return {"parentId": None, "content": rec["content"], "chunks": 1,
                        "expectedChunks": 1, "complete": True, "missing": [],
                        "workspaceId": rec["workspace_id"]}
            parent = rec["parent_id"]
            doc = await shards.document(parent)
        doc = [r for r in doc if self.can_see(caller, r)]
        if not doc:  # another workspace's document answers like a missing id
            await self.audited(caller, "get-document", ids=[memory_id], outcome="denied",
                               code="NOT_FOUND")
            raise not_found(f"memory {memory_id} not found")
        expected = int(doc[0].get("chunk_count") or len(doc))
        present = {int(r["chunk_index"]) for r in doc}
        missing = sorted(set(range(expected)) - present)
        text = reassemble([(int(r["chunk_index"]), r["content"], int(r.get("chunk_overlap") or 0))
                           for r in doc])
        return {"parentId": parent, "content": text, "chunks": len(doc),
                "expectedChunks": expected, "complete": not missing, "missing": missing,
                "workspaceId": doc[0]["workspace_id"]}

    async def share(self, caller: Caller, memory_id: str, visibility: str) -> dict:
        """Only the owning agent (or an admin) changes who sees a private memory."""
        check_id(memory_id)
        if visibility not in ("private", "shared"):
            raise invalid("visibility: must be 'private' or 'shared'")
        await self.authorize(caller, "write", "share")
        await self.rate_limit(caller, None)
        rec = await self._visible_record(caller, memory_id, "share")
        await self.authorize(caller, "write", "share", rec["workspace_id"])
        owner = rec.get("agent_id")
        if owner and owner != caller.agent_id and not caller.principal.can("admin"):
            await self.audited(caller, "share", ids=[memory_id], outcome="denied",
                               code="FORBIDDEN")
            raise MemorayError(ErrorCode.FORBIDDEN,
                               "only the agent that owns a memory may share it")
        if visibility == "private" and not owner:
            raise invalid("visibility: a memory without an agentId cannot be private")
        rec = {**rec, "visibility": visibility, "updated_at": utc_now()}
        await self.backend.shards.update_record(rec)
        await self.audited(caller, "share", workspace=rec["workspace_id"], ids=[memory_id],
                           detail=visibility)
        return {"id": memory_id, "visibility": visibility}

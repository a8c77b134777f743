"""Webhook subscriptions: create-webhook, list-webhooks, test-webhook, delete-webhook,
list-dead-letters, replay-dead-letters. Each path reads top to bottom: validate, authorize,
rate-limit, work, audit. Admin scope on the subscription's workspace is required throughout.

Subscriptions live with the store's webhook dispatcher (actors/webhook_dispatcher.py, one per
store, on the head in cluster mode), reached only through its typed client: never a file on this
replica's node. Targets are checked here before anything is stored (memoray/webhooks/ssrf.py),
and again by the dispatcher at every delivery.
"""

from __future__ import annotations

import asyncio
from typing import Any

from pydantic import ValidationError

from memoray.errors import ErrorCode, MemorayError, invalid, not_found
from memoray.serve.request import Caller, UseCase
from memoray.webhooks import ssrf
from memoray.webhooks.models import MAX_SUBSCRIPTIONS_PER_WORKSPACE, SubscriptionSpec


class Webhooks(UseCase):
    def _dispatcher(self) -> Any:
        if self.webhooks is None:
            raise MemorayError(ErrorCode.UNAVAILABLE, "the webhook dispatcher is not running")
        return self.webhooks

    def policy(self) -> ssrf.Policy:
        s = self.settings
        return ssrf.Policy(allow_loopback=s.webhook_allow_loopback,
                           allow_http=s.webhook_allow_http,
                           allow_private=s.webhook_allow_private)

    async def create_webhook(self, caller: Caller, spec: dict) -> dict:
        # validate
        try:
            parsed = SubscriptionSpec.model_validate(spec)
        except ValidationError as exc:
            e = exc.errors()[0]
            loc = ".".join(str(p) for p in e["loc"]) or "arguments"
            raise invalid(f"{loc}: {e['msg'].removeprefix('Value error, ')}") from None
        # authorize, rate-limit
        await self.authorize(caller, "admin", "create-webhook", parsed.workspace_id)
        await self.rate_limit(caller, parsed.workspace_id)
        policy = self.policy()
        try:
            target = ssrf.parse(parsed.url, policy)
            await asyncio.to_thread(ssrf.resolve, target, policy)
        except ssrf.TargetRefused as exc:
            await self.audited(caller, "create-webhook", workspace=parsed.workspace_id,
                               outcome="denied", code="INVALID_INPUT", detail=str(exc))
            raise invalid(str(exc)) from None
        dispatcher = self._dispatcher()
        existing = await dispatcher.list([parsed.workspace_id])
        if len(existing) >= MAX_SUBSCRIPTIONS_PER_WORKSPACE:
            raise invalid(f"workspace {parsed.workspace_id} has {len(existing)} subscriptions "
                          f"(at most {MAX_SUBSCRIPTIONS_PER_WORKSPACE})")
        # work
        created = await dispatcher.create(parsed.model_dump(), caller.principal.name)
        # audit: the id and the host, never the secret or a URL's path and query
        await self.audited(caller, "create-webhook", workspace=parsed.workspace_id,
                           detail=f"{created['id']} {target.scheme}://{target.host}")
        return created

    async def list_webhooks(self, caller: Caller, workspace_id: str | None) -> dict:
        await self.authorize(caller, "admin", "list-webhooks", workspace_id)
        await self.rate_limit(caller, workspace_id)
        allowed = caller.principal.visible_workspaces()
        if workspace_id is not None:
            scope: list[str] | None = [workspace_id]
        else:
            scope = sorted(allowed) if allowed is not None else None
        subs = await self._dispatcher().list(scope)
        return {"subscriptions": subs, "count": len(subs)}

    async def _subscription(self, caller: Caller, sub_id: str, action: str) -> dict:
        """The subscription, if the caller administers its workspace; another workspace's
        subscription answers NOT_FOUND like a missing one."""
        if not isinstance(sub_id, str) or not sub_id.startswith("sub_") or len(sub_id) > 64:
            raise invalid("id: a subscription id (sub_...)")
        await self.authorize(caller, "admin", action)
        await self.rate_limit(caller, None)
        sub = await self._dispatcher().get(sub_id)
        if sub is None or not caller.principal.allows_workspace(sub["workspaceId"]):
            raise not_found(f"subscription {sub_id} not found")
        await self.authorize(caller, "admin", action, sub["workspaceId"])
        return sub

    async def test_webhook(self, caller: Caller, sub_id: str) -> dict:
        sub = await self._subscription(caller, sub_id, "test-webhook")
        out = await self._dispatcher().test(sub_id)
        await self.audited(caller, "test-webhook", workspace=sub["workspaceId"],
                           detail=f"{sub_id} delivered={out['delivered']}")
        return out

    async def delete_webhook(self, caller: Caller, sub_id: str) -> dict:
        sub = await self._subscription(caller, sub_id, "delete-webhook")
        deleted = await self._dispatcher().delete(sub_id)
        await self.audited(caller, "delete-webhook", workspace=sub["workspaceId"],
                           detail=sub_id)
        return {"id": sub_id, "deleted": deleted}

    async def dead_letters(self, caller: Caller, sub_id: str, limit: int = 100) -> dict:
        if not 1 <= limit <= 1000:
            raise invalid("limit: must be between 1 and 1000")
        await self._subscription(caller, sub_id, "list-dead-letters")
        rows = await self._dispatcher().dead_letters(sub_id, limit)
        return {"id": sub_id, "deadLetters": rows, "count": len(rows)}

    async def replay_dead_letters(self, caller: Caller, sub_id: str,
                                  delivery_ids: list[str] | None = None) -> dict:
        if delivery_ids is not None and (len(delivery_ids) > 1000 or not all(
                isinstance(d, str) and d.startswith("msg_") for d in delivery_ids)):
            raise invalid("deliveryIds: at most 1000 delivery ids (msg_...)")
        sub = await self._subscription(caller, sub_id, "replay-dead-letters")
        n = await self._dispatcher().replay(sub_id, delivery_ids)
        await self.audited(caller, "replay-dead-letters", workspace=sub["workspaceId"],
                           detail=f"{sub_id} replayed={n}")
        return {"id": sub_id, "replayed": n}

"""Webhooks: what a subscription is (models), how a delivery is signed (signing), which targets
may be called (ssrf) and what a shard writes to its outbox when a memory changes (events).

Pure core code: no ray, no network at import time. The dispatcher actor is
actors/webhook_dispatcher.py; the admin use case is serve/webhooks.py.
"""

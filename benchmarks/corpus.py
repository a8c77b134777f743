"""Deterministic, varied coding-agent memories for load tests (no external data)."""

from __future__ import annotations

import random

SUBJECTS = ["the auth middleware", "the billing service", "the search indexer", "the CLI",
            "the payment retry loop", "the websocket gateway", "the cache layer",
            "the migration runner", "the React dashboard", "the job scheduler",
            "the rate limiter", "the S3 uploader", "the feature-flag client", "the ORM models",
            "the CI pipeline", "the logging setup", "the GraphQL resolvers", "the test fixtures"]
ACTIONS = ["was refactored to", "now needs to", "failed because it did not", "should always",
           "was changed so it can", "must never", "was reviewed and we agreed to",
           "broke in production when it tried to"]
OBJECTS = ["retry with exponential backoff", "validate tokens before parsing the body",
           "batch writes in one transaction", "close database connections on shutdown",
           "log request ids", "use the read replica for reports", "respect the 30 s timeout",
           "stream large responses", "cache results for five minutes",
           "run migrations before the app starts", "pin dependency versions",
           "sanitize user input", "emit Prometheus metrics", "handle SIGTERM gracefully"]
FILES = ["src/auth.py", "billing/retry.py", "web/app.tsx", "cmd/main.go", "lib/cache.rb",
         "api/routes.py", "infra/main.tf", "tests/test_api.py", "scripts/deploy.sh"]
EVENTS = ["decision", "code_change", "tool_event", "review", "note", "error"]


def memory_text(i: int, rng: random.Random) -> str:
    return (f"{rng.choice(SUBJECTS).capitalize()} {rng.choice(ACTIONS)} {rng.choice(OBJECTS)} "
            f"(see {rng.choice(FILES)}, change #{i}).")


def corpus(n: int, seed: int = 7) -> list[dict]:
    rng = random.Random(seed)
    return [{"content": memory_text(i, rng), "eventType": rng.choice(EVENTS)} for i in range(n)]


def queries(n: int, seed: int = 11) -> list[str]:
    rng = random.Random(seed)
    return [f"how does {rng.choice(SUBJECTS)} {rng.choice(OBJECTS)}?" for _ in range(n)]

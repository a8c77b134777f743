"""Hook settings from MEMORAY_* environment variables (stdlib only: no pydantic at hook time)."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

DEFAULT_URL = "http://127.0.0.1:8000"


def _float(name: str, default: float) -> float:
    try:
        value = float(os.environ.get(name, ""))
    except ValueError:
        return default
    return value if value > 0 else default


def _int(name: str, default: int) -> int:
    try:
        value = int(os.environ.get(name, ""))
    except ValueError:
        return default
    return value if value > 0 else default


@dataclass(frozen=True)
class HookConfig:
    url: str  # server base URL; tools live at url + "/mcp"
    token: str | None
    timeout_s: float  # total budget for one network round of a hook
    connect_timeout_s: float
    spool_dir: Path
    spool_max_bytes: int
    prompt_budget: int  # tokens of context added to each prompt
    session_budget: int  # tokens of context added at session start
    agent_id: str

    @property
    def mcp_url(self) -> str:
        return self.url.rstrip("/") + "/mcp"

    @classmethod
    def from_env(cls) -> HookConfig:
        timeout = _float("MEMORAY_HOOK_TIMEOUT", 2.0)
        spool = os.environ.get("MEMORAY_SPOOL_DIR") or os.path.join("~", ".memoray", "spool")
        return cls(
            url=(os.environ.get("MEMORAY_URL") or DEFAULT_URL).strip(),
            token=os.environ.get("MEMORAY_TOKEN") or None,
            timeout_s=timeout,
            connect_timeout_s=min(0.5, timeout),
            spool_dir=Path(spool).expanduser(),
            spool_max_bytes=_int("MEMORAY_SPOOL_MAX_BYTES", 50 * 1024 * 1024),
            prompt_budget=_int("MEMORAY_PROMPT_BUDGET", 600),
            session_budget=_int("MEMORAY_SESSION_BUDGET", 1500),
            agent_id=os.environ.get("MEMORAY_AGENT_ID") or "claude-code",
        )

"""Hook settings from MEMORAY_* environment variables (stdlib only: no pydantic at hook time)."""

from __future__ import annotations

import os
from collections import namedtuple
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


def server_spool_dir(base: Path, url: str) -> Path:
    """The default spool is one per server (~/.memoray/spool/<host>-<port>), so what a hook
    could not deliver goes to the server it was meant for, never to whichever server another
    project's next hook reaches. A spool left by an earlier version in `base` itself moves into
    the first server's directory that finds it (where its items would have gone anyway)."""
    rest = url.split("://", 1)[-1].split("/", 1)[0]
    key = "".join(c if c.isalnum() or c in ".-" else "-" for c in rest.replace(":", "-"))
    target = base / (key or "default")
    if (base / "spool.jsonl").exists() and not target.exists():
        try:
            target.mkdir(parents=True, exist_ok=True)
            for name in os.listdir(base):
                if name.startswith("spool") and (base / name).is_file():
                    os.replace(base / name, target / name)
        except OSError:
            return base  # cannot move it: keep using the old shared spool
    return target


class HookConfig(namedtuple("HookConfig", (
    "url",  # str: server base URL; tools live at url + "/mcp"
    "token",  # str | None
    "timeout_s",  # float: total budget for one network round of a hook
    "connect_timeout_s",  # float
    "spool_dir",  # Path
    "spool_max_bytes",  # int
    "prompt_budget",  # int: tokens of context added to each prompt
    "session_budget",  # int: tokens of context added at session start
    "agent_id",  # str
    # bool, default True: send captured items from a detached child after the hook has
    # answered (the agent waits on the hook, not on the server's embedding and commit); off:
    # the hook sends them itself.
    "background",
    "flush_timeout_s",  # float, default 10.0: the detached child's budget for the spool
), defaults=(True, 10.0))):
    """Hook settings (collections.namedtuple, not typing.NamedTuple: typing's import costs
    every hook ~5 ms)."""

    __slots__ = ()

    @property
    def mcp_url(self) -> str:
        return self.url.rstrip("/") + "/mcp"

    @classmethod
    def from_env(cls) -> HookConfig:
        timeout = _float("MEMORAY_HOOK_TIMEOUT", 2.0)
        url = (os.environ.get("MEMORAY_URL") or DEFAULT_URL).strip()
        spool = os.environ.get("MEMORAY_SPOOL_DIR") or server_spool_dir(
            Path(os.path.join("~", ".memoray", "spool")).expanduser(), url)
        return cls(
            url=url,
            token=os.environ.get("MEMORAY_TOKEN") or None,
            timeout_s=timeout,
            connect_timeout_s=min(0.5, timeout),
            spool_dir=Path(spool).expanduser(),
            spool_max_bytes=_int("MEMORAY_SPOOL_MAX_BYTES", 50 * 1024 * 1024),
            prompt_budget=_int("MEMORAY_PROMPT_BUDGET", 600),
            session_budget=_int("MEMORAY_SESSION_BUDGET", 1500),
            agent_id=os.environ.get("MEMORAY_AGENT_ID") or "claude-code",
            background=os.environ.get("MEMORAY_HOOK_BACKGROUND", "1").strip().lower()
            not in ("0", "false", "no", "off"),
            flush_timeout_s=_float("MEMORAY_HOOK_FLUSH_TIMEOUT", 10.0),
        )

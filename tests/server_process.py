"""A real `memoray serve` in a subprocess, and the real MCP client to talk to it."""

from __future__ import annotations

import asyncio
import json
import os
import random
import signal
import socket
import subprocess
import sys
import time
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import httpx2
from mcp import ClientSession
from mcp.client.streamable_http import streamable_http_client

ROOT = Path(__file__).resolve().parents[1]


# Ports the tests hand to servers come from below the kernel's ephemeral range (32768-60999
# here) and above Ray's worker ports (10002-19999). A port the kernel picked with bind(0) lies
# in the ephemeral range, where Ray's own bind(0) calls and every outgoing connection draw too;
# CI once lost a server start that way ("Failed to bind to address '127.0.0.1:32985'").
def _ephemeral_start() -> int:
    try:
        return int(open("/proc/sys/net/ipv4/ip_local_port_range").read().split()[0])
    except (OSError, ValueError, IndexError):
        return 32768


_PORTS = range(20000, max(min(32000, _ephemeral_start()), 21000))
_rng = random.Random(os.getpid() ^ time.time_ns())


def free_port() -> int:
    for _ in range(200):
        port = _rng.choice(_PORTS)
        with socket.socket() as s:
            try:
                s.bind(("0.0.0.0", port))
            except OSError:
                continue
            return port
    raise RuntimeError(f"no free port in {_PORTS.start}-{_PORTS.stop - 1}")


def _children() -> dict[int, list[int]]:
    tree: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                ppid = int(f.read().rsplit(")", 1)[1].split()[1])
        except (OSError, IndexError, ValueError):
            continue
        tree.setdefault(ppid, []).append(int(entry))
    return tree


def descendants(pid: int) -> list[int]:
    tree, out, todo = _children(), [], [pid]
    while todo:
        for child in tree.get(todo.pop(), []):
            out.append(child)
            todo.append(child)
    return out


def _reap(pids: list[int]) -> None:
    for pid in pids:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


class ServerProcess:
    def __init__(self, data_dir: Path, *, embedder: str = "hash", shards: int = 2,
                 port: int | None = None, env: dict[str, str | None] | None = None,
                 extra_args: list[str] | None = None):
        self.data_dir = Path(data_dir)
        self.embedder = embedder
        self.shards = shards
        self._pick_port = port is None  # a port the test chose is kept on a retry
        self.port = port or free_port()
        self.env = env or {}
        self.extra_args = extra_args or []
        self.proc: subprocess.Popen | None = None
        self.log_path = self.data_dir.parent / f"server-{self.port}.log"

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def mcp_url(self) -> str:
        return self.url + "/mcp"

    def start(self, timeout: float = 180) -> ServerProcess:
        try:
            return self._start(timeout)
        except RuntimeError as e:
            # Another process took the port between free_port() and the proxy's bind: the
            # server exits before it is ready, so a fresh port and a second start are safe.
            lost_port = ("Failed to bind to address" in str(e)
                         or f"port {self.port} is in use" in str(e))
            if not self._pick_port or not lost_port:
                raise
            if self.proc is not None:  # what the failed start left in its session (Ray's)
                try:
                    os.killpg(self.proc.pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
            self.kill9()
            self.port = free_port()
            self.log_path = self.data_dir.parent / f"server-{self.port}.log"
            return self._start(timeout)

    def _start(self, timeout: float) -> ServerProcess:
        env = {**os.environ, "RAY_USAGE_STATS_ENABLED": "0", "HF_HUB_OFFLINE": "1",
               "PYTHONUNBUFFERED": "1", "MEMORAY_DASHBOARD": "false",
               "MEMORAY_DASHBOARD_AGENT_PORT": str(free_port()),
               "PATH": f"{Path(sys.executable).parent}:{os.environ.get('PATH', '')}",
               **self.env}
        env = {k: v for k, v in env.items() if v is not None}  # None: leave the variable unset
        cmd = [sys.executable, "-m", "memoray.cli", "serve", "--data-dir", str(self.data_dir),
               "--port", str(self.port), "--shards", str(self.shards),
               "--embedder", self.embedder, *self.extra_args]
        self.log = open(self.log_path, "ab")
        offset = self.log.tell()
        self.proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=self.log,
                                     stderr=subprocess.STDOUT, start_new_session=True)
        deadline = time.time() + timeout
        while time.time() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"server exited early:\n{self.tail()}")
            if b"memoray ready at" in self.log_path.read_bytes()[offset:]:
                return self
            time.sleep(0.5)
        self.kill9()
        raise TimeoutError(f"server did not start in {timeout}s:\n{self.tail()}")

    def tail(self, n: int = 4000) -> str:
        return self.log_path.read_bytes()[-n:].decode(errors="replace")

    def run_info(self) -> dict[str, Any]:
        return json.loads((self.data_dir / "run.json").read_text())

    def kill9(self) -> None:
        """SIGKILL the server, then reap what Ray leaves behind (its agents outlive the driver)."""
        if self.proc is None:
            return
        family = descendants(self.proc.pid)
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(30)
        time.sleep(1.0)
        _reap(family)
        self.proc = None

    def stop(self, timeout: float = 90) -> None:
        if self.proc is None:
            return
        family = descendants(self.proc.pid)
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(10)
        _reap(family)
        self.proc = None


class ToolError(Exception):
    def __init__(self, body: dict):
        super().__init__(body)
        self.body = body
        self.code = body.get("code")


class Client:
    """Thin convenience over the real mcp ClientSession: call(tool, **args) -> dict."""

    def __init__(self, session: ClientSession):
        self.session = session

    async def call(self, tool: str, **args: Any) -> dict:
        res = await self.session.call_tool(tool, args)
        text = res.content[0].text if res.content else "{}"
        body = res.structured_content if res.structured_content is not None else json.loads(text)
        if res.is_error:
            raise ToolError(body if isinstance(body, dict) else {"message": text})
        return body

    async def call_many(self, tool: str, args: list[dict[str, Any]],
                        concurrency: int = 8, return_exceptions: bool = False) -> list[Any]:
        """call(tool, **a) for each a, `concurrency` at a time on this one session; results in
        order. For checks that read back thousands of records: one at a time, they were most of
        the reshard tests' time (a round trip each, the server mostly idle)."""
        gate = asyncio.Semaphore(concurrency)

        async def one(a: dict[str, Any]) -> dict:
            async with gate:
                return await self.call(tool, **a)

        return list(await asyncio.gather(*(one(a) for a in args),
                                         return_exceptions=return_exceptions))

    async def unreadable(self, ids: list[str]) -> dict[str, str]:
        """{id: error code} for each id that get-memory refuses; other failures raise."""
        got = await self.call_many("get-memory", [{"id": mid} for mid in ids],
                                   return_exceptions=True)
        for g in got:
            if isinstance(g, BaseException) and not isinstance(g, ToolError):
                raise g
        return {mid: g.code for mid, g in zip(ids, got) if isinstance(g, ToolError)}

    async def raw(self, tool: str, args: dict) -> tuple[bool, dict]:
        res = await self.session.call_tool(tool, args)
        text = res.content[0].text if res.content else "{}"
        try:
            body = json.loads(text)
        except ValueError:
            body = {"message": text}
        return bool(res.is_error), body


@asynccontextmanager
async def mcp_client(url: str, token: str | None = None, headers: dict[str, str] | None = None):
    headers = {**(headers or {}), **({"Authorization": f"Bearer {token}"} if token else {})}
    http = httpx2.AsyncClient(headers=headers, timeout=httpx2.Timeout(60.0))
    async with http:
        async with streamable_http_client(url, http_client=http) as (read, write, *_):
            async with ClientSession(read, write) as session:
                await session.initialize()
                yield Client(session)

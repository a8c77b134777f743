"""`memoray doctor`: what stands between this machine and a working memoray, one line per check
(ok / warn / FAIL), exit status 1 when anything failed. Reads only; changes nothing."""

from __future__ import annotations

import json
import os
import platform
import shutil
import socket
import sys
from importlib.metadata import PackageNotFoundError
from importlib.metadata import version as dist_version
from pathlib import Path

OK, WARN, FAIL = "ok", "warn", "FAIL"


def _dist(name: str) -> str:
    try:
        return dist_version(name)
    except PackageNotFoundError:
        return "missing"


def port_free(host: str, port: int) -> bool:
    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as s:
        try:
            s.bind((host, port))
        except OSError:
            return False
    return True


def hooks_installed(project: Path) -> list[Path]:
    """Claude Code settings files that run `memoray hook`."""
    candidates = [project / ".claude" / "settings.local.json",
                  project / ".claude" / "settings.json", Path.home() / ".claude" / "settings.json"]
    found = []
    for path in candidates:
        try:
            data = json.loads(path.read_text())
        except (OSError, ValueError):
            continue
        if "memoray" in json.dumps(data.get("hooks", {})):
            found.append(path)
    return found


def _model_check() -> tuple[str, str, str]:
    """MiniLM's ONNX export (memoray/onnx_minilm.py): present and intact, or what happens
    without it."""
    try:
        import onnxruntime  # noqa: F401

        from memoray import onnx_minilm

        path = onnx_minilm.find_export()
    except Exception as exc:  # no runtime, no model package: the server runs torch
        return WARN, "model", (f"MiniLM runs on PyTorch ({type(exc).__name__}: {exc}); "
                               "`pip install onnxruntime onnx` for ONNX Runtime")
    if path is None:
        return WARN, "model", (f"no ONNX export of MiniLM in {onnx_minilm.cache_dir()}: the "
                               "first server start makes it (about 10 s); "
                               "`python -m memoray.onnx_minilm` makes it now")
    return OK, "model", f"MiniLM on ONNX Runtime: {path} (digest checked)"


def run_doctor(url: str | None = None, token: str | None = None,
               project: Path | None = None) -> int:
    from memoray.client import ApiClient, ClientError
    from memoray.settings import ConfigFileError, Settings, config_path
    from memoray.version import version

    results: list[tuple[str, str, str]] = []

    def check(status: str, name: str, detail: str) -> None:
        results.append((status, name, detail))
        print(f"{status:<4}  {name:<12} {detail}", flush=True)

    check(OK, "versions", f"memoray {version()}, Python {platform.python_version()} "
          f"({sys.executable}), ray {_dist('ray')}, mcp {_dist('mcp')}, {platform.system()}")

    path = config_path()
    try:
        settings = Settings()
        check(OK, "config", f"{path}" + ("" if path.is_file() else " (absent: defaults and "
                                         "MEMORAY_* apply)"))
    except (ConfigFileError, ValueError) as exc:
        check(FAIL, "config", " ".join(str(exc).split())[:300])
        settings = Settings.model_construct()

    data = Path(settings.data_dir).expanduser()
    if data.exists():
        writable = os.access(data, os.W_OK)
        free = shutil.disk_usage(data).free / 2**30
        layout = data / "memoray.json"
        shape = json.loads(layout.read_text()) if layout.is_file() else None
        detail = f"{data} ({free:.1f} GiB free" + (
            f", {shape['shards']} shards, {shape['embedder']} embedder)" if shape else
            ", no store yet)")
        check(OK if writable and free > 1 else (WARN if writable else FAIL), "data dir",
              detail + ("" if writable else ": not writable"))
    else:
        parent = next((p for p in data.parents if p.exists()), Path("/"))
        check(OK if os.access(parent, os.W_OK) else FAIL, "data dir",
              f"{data} (will be created on first start)")

    tokens = settings.resolved_tokens_file()
    has_tokens = False
    if tokens and tokens.is_file():
        try:
            has_tokens = any(not t.get("revoked") for t in json.loads(tokens.read_text()))
        except (OSError, ValueError, AttributeError):
            check(WARN, "tokens", f"{tokens} is unreadable")
    token = token or settings.token
    if has_tokens:
        check(OK if token else WARN, "tokens", f"{tokens} holds tokens: " + (
            "MEMORAY_TOKEN is set" if token else "set MEMORAY_TOKEN (or --token) for the CLI "
            "and the hooks"))
    else:
        check(OK, "tokens", "none: open to this machine only (loopback)")

    target = (url or settings.client_url()).rstrip("/")
    api = ApiClient(target, token, timeout=5.0)
    try:
        code, health = api.healthz()
        bad = [n for n, c in health.get("components", {}).items() if c.get("status") != "ok"]
        check(OK if code == 200 else FAIL, "server", f"{target}: {health.get('status')}"
              + (f" (down: {', '.join(bad)})" if bad else ""))
        try:
            info = api.get("/api/info")
            same = info.get("version") == version()
            check(OK if same else WARN, "server ver", f"server {info.get('version')}, "
                  f"client {version()}" + ("" if same else ": restart the server after upgrading"))
        except ClientError as exc:
            check(WARN, "server ver", str(exc))
    except ClientError:
        host, port = settings.host, settings.port
        if port_free(host, port):
            check(WARN, "server", f"nothing answers at {target}; port {port} on {host} is free: "
                  "start it with `memoray serve`")
        else:
            check(FAIL, "server", f"nothing answers at {target} but port {port} on {host} is "
                  "taken by another program: pick another with --port")
    finally:
        api.close()

    for name, port in (("ray dash", settings.dashboard_port or 8265),
                       ("ray agent", settings.dashboard_agent_port or 52365)):
        if port_free("127.0.0.1", port):
            check(OK, name, f"port {port} free")
        else:
            check(WARN, name, f"port {port} in use (a running memoray or another Ray); a new "
                  "server picks a free one")

    if settings.embedder == "minilm" and settings.embedding_runtime != "torch":
        check(*_model_check())

    proj = (project or Path.cwd()).resolve()
    found = hooks_installed(proj)
    check(OK if found else WARN, "hooks", ", ".join(map(str, found)) if found else
          f"not installed for {proj}: `memoray hooks install --project {proj}`")

    failed = [r for r in results if r[0] == FAIL]
    print(f"{len(results)} checks: {len(failed)} failed, "
          f"{sum(1 for r in results if r[0] == WARN)} warnings")
    return 1 if failed else 0

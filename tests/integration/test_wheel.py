"""The wheel, installed into a fresh virtualenv, gives a working `memoray`: `--version`, and
`memoray serve` answering /healthz and the viewer (whose assets must ship in the wheel).

Offline: the wheel is built from a copy of the checkout with this environment's pip
(`--no-build-isolation`), and installed with `--no-deps`; the fresh venv reaches the dependencies
through a .pth line naming this environment's site-packages (a plain path entry: the
editable install's own .pth files there are not processed, so the checkout is not importable and
only the wheel's code runs). Nothing runs with PYTHONPATH or from the checkout's directory."""

from __future__ import annotations

import os
import shutil
import signal
import site
import subprocess
import sys
import time
import zipfile
from pathlib import Path

import httpx
import pytest

from tests.server_process import ROOT, _reap, descendants, free_port


def _clean_env() -> dict:
    env = {k: v for k, v in os.environ.items()
           if k not in ("PYTHONPATH", "VIRTUAL_ENV", "PYTHONHOME") and not k.startswith("MEMORAY_")}
    env.update(RAY_USAGE_STATS_ENABLED="0", HF_HUB_OFFLINE="1", PYTHONUNBUFFERED="1")
    env["PATH"] = os.pathsep.join(p for p in env.get("PATH", "").split(os.pathsep)
                                  if ".venv" not in p)
    return env


@pytest.fixture(scope="module")
def installed(tmp_path_factory):
    base = tmp_path_factory.mktemp("wheel")
    src = base / "src"
    files = subprocess.run(["git", "ls-files", "-co", "--exclude-standard"], cwd=ROOT,
                           capture_output=True, text=True, check=True).stdout.split("\n")
    for name in filter(None, files):
        if (ROOT / name).is_file() and not name.startswith(".venv"):
            (src / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(ROOT / name, src / name)
    dist = base / "dist"
    subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps",
                    "--no-build-isolation", "-w", str(dist), str(src)], check=True,
                   capture_output=True, timeout=300, env=_clean_env(), cwd=base)
    wheel = next(dist.glob("memoray-*.whl"))
    venv = base / "venv"
    subprocess.run([sys._base_executable, "-m", "venv", "--without-pip", str(venv)],
                   check=True, timeout=120)
    py = venv / "bin" / "python"
    inst = subprocess.run([sys.executable, "-m", "pip", "--python", str(py), "install",
                           "--no-deps", "--no-index", str(wheel)], capture_output=True,
                          text=True, timeout=300, env=_clean_env(), cwd=base)
    assert inst.returncode == 0 and (venv / "bin" / "memoray").is_file(), inst.stdout + inst.stderr
    purelib = subprocess.run([str(py), "-c", "import sysconfig; print(sysconfig.get_paths()"
                              "['purelib'])"], capture_output=True, text=True,
                             check=True).stdout.strip()
    deps = [p for p in site.getsitepackages() if Path(p).is_dir()]
    Path(purelib, "zz_memoray_test_deps.pth").write_text("\n".join(deps) + "\n")
    return {"wheel": wheel, "venv": venv, "py": py, "bin": venv / "bin" / "memoray",
            "purelib": Path(purelib), "cwd": base}


def test_wheel_ships_the_viewer_and_the_command(installed):
    names = zipfile.ZipFile(installed["wheel"]).namelist()
    for asset in ("index.html", "app.js", "app.css", "favicon.svg"):
        assert f"memoray/web/{asset}" in names
    entry = [n for n in names if n.endswith("entry_points.txt")]
    assert entry and "memoray = memoray.entry:main" in zipfile.ZipFile(
        installed["wheel"]).read(entry[0]).decode()


def test_version_from_the_fresh_venv(installed):
    out = subprocess.run([str(installed["bin"]), "--version"], capture_output=True, text=True,
                         env=_clean_env(), cwd=installed["cwd"], timeout=60)
    assert out.returncode == 0 and out.stdout.strip() == "memoray 0.1.0", out
    where = subprocess.run([str(installed["py"]), "-c", "import memoray.cli as m; "
                            "print(m.__file__)"], capture_output=True, text=True,
                           env=_clean_env(), cwd=installed["cwd"], timeout=60)
    assert Path(where.stdout.strip()).is_relative_to(installed["purelib"]), where


def test_serve_from_the_fresh_venv(installed, tmp_path):
    port = free_port()
    log = tmp_path / "serve.log"
    env = {**_clean_env(), "MEMORAY_DASHBOARD": "false",
           "MEMORAY_DASHBOARD_AGENT_PORT": str(free_port()),
           "MEMORAY_CONFIG": str(tmp_path / "none.toml")}
    with open(log, "wb") as out:
        proc = subprocess.Popen([str(installed["bin"]), "serve", "--port", str(port),
                                 "--data-dir", str(tmp_path / "data"), "--embedder", "hash"],
                                stdout=out, stderr=subprocess.STDOUT, env=env,
                                cwd=installed["cwd"], start_new_session=True)
    try:
        deadline = time.time() + 240
        while b"memoray ready at" not in log.read_bytes():
            assert proc.poll() is None, log.read_text()[-3000:]
            assert time.time() < deadline, log.read_text()[-3000:]
            time.sleep(0.5)
        url = f"http://127.0.0.1:{port}"
        health = httpx.get(url + "/healthz", timeout=30)
        assert health.status_code == 200 and health.json()["status"] == "ok"
        page = httpx.get(url + "/", timeout=30)
        assert page.status_code == 200 and "/viewer/app.js" in page.text
        assert httpx.get(url + "/viewer/app.js", timeout=30).status_code == 200
        info = httpx.get(url + "/api/info", timeout=30).json()
        assert info["version"] == "0.1.0" and info["embedder"] == "hash"
    finally:
        family = descendants(proc.pid)
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(90)
        except subprocess.TimeoutExpired:
            proc.kill()
        _reap(family)

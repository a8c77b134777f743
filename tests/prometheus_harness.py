"""A real Prometheus (Debian's `prometheus` package, `make prometheus`) scraping a running memoray
through the repo's own cluster/prometheus/prometheus.yml, pointed at the Ray session's file_sd
file, with the repo's alert rules loaded."""

from __future__ import annotations

import json
import shutil
import subprocess
import time
from pathlib import Path
from typing import Any

import httpx2
import yaml

from tests.server_process import ROOT, free_port

CONFIG = ROOT / "cluster" / "prometheus" / "prometheus.yml"
ALERTS = ROOT / "cluster" / "prometheus" / "alerts.yaml"
DASHBOARD = ROOT / "cluster" / "grafana" / "memoray-dashboard.json"


def missing() -> str | None:
    for tool in ("prometheus", "promtool"):
        if shutil.which(tool) is None:
            return f"{tool} not installed (make prometheus: Debian's prometheus package)"
    return None


def dashboard_queries() -> list[tuple[str, str]]:
    panels = json.loads(DASHBOARD.read_text())["panels"]
    return [(p["title"], t["expr"]) for p in panels for t in p.get("targets", [])]


class Prometheus:
    def __init__(self, root: Path, sd_file: Path, interval: str = "1s"):
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)
        cfg = yaml.safe_load(CONFIG.read_text())
        cfg["global"].update(scrape_interval=interval, evaluation_interval=interval)
        cfg["rule_files"] = [str(ALERTS)]
        ray_job = next(j for j in cfg["scrape_configs"] if j["job_name"] == "ray")
        ray_job["file_sd_configs"] = [{"files": [str(sd_file)], "refresh_interval": "1s"}]
        self.config = self.root / "prometheus.yml"
        self.config.write_text(yaml.safe_dump(cfg))
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.proc: subprocess.Popen | None = None

    def check_config(self) -> subprocess.CompletedProcess:
        return subprocess.run(["promtool", "check", "config", str(self.config)],
                              capture_output=True, text=True, timeout=60)

    def start(self) -> Prometheus:
        self.log = open(self.root / "prometheus.log", "ab")
        self.proc = subprocess.Popen(
            ["prometheus", f"--config.file={self.config}",
             f"--storage.tsdb.path={self.root / 'tsdb'}",
             f"--web.listen-address=127.0.0.1:{self.port}"],
            stdout=self.log, stderr=subprocess.STDOUT, start_new_session=True)
        self.wait_for(lambda: httpx2.get(self.url + "/-/ready", timeout=5).status_code == 200,
                      60, "prometheus did not become ready")
        return self

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.terminate()
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
            self.proc = None

    def tail(self) -> str:
        return (self.root / "prometheus.log").read_bytes()[-3000:].decode(errors="replace")

    def api(self, path: str, **params: Any) -> Any:
        res = httpx2.get(self.url + "/api/v1/" + path, params=params, timeout=30)
        body = res.json()
        assert body["status"] == "success", body
        return body["data"]

    def query(self, expr: str) -> list[dict]:
        data = self.api("query", query=expr)
        assert data["resultType"] == "vector", data
        return data["result"]

    @staticmethod
    def wait_for(check, timeout: float, message: str) -> None:
        deadline = time.time() + timeout
        last: Exception | None = None
        while time.time() < deadline:
            try:
                if check():
                    return
            except Exception as exc:  # not up yet
                last = exc
            time.sleep(1.0)
        raise AssertionError(f"{message} ({last!r})")


def session_dir_of(log_text: str) -> Path:
    """The Ray session dir `memoray serve` printed ("Ray's logs: <session>/logs")."""
    for line in log_text.splitlines():
        if "Ray's logs: " in line:
            return Path(line.split("Ray's logs: ", 1)[1].split()[0]).parent
    raise AssertionError("the server did not print its Ray session dir")

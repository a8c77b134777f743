"""serve/launcher.py's direct-ingress set-up: which Ray Serve variables it sets for the processes
Ray starts (they read them from the environment), without starting Ray."""

from __future__ import annotations

import os

import pytest

from memoray.serve.launcher import _INGRESS_VARS, _direct_ingress, _ingress_env, heap_env
from memoray.settings import Settings

DRAIN = "RAY_SERVE_DIRECT_INGRESS_MIN_DRAINING_PERIOD_S"


@pytest.fixture(autouse=True)
def clean_env(monkeypatch):
    for var in _INGRESS_VARS:
        monkeypatch.delenv(var, raising=False)


def test_one_local_replica_serves_on_the_port_and_stops_without_a_drain_period(tmp_path):
    proxy_port = _direct_ingress(Settings(data_dir=tmp_path, port=41234))
    assert proxy_port != 41234  # Serve's proxy gets a port nobody uses
    assert os.environ["RAY_SERVE_ENABLE_DIRECT_INGRESS"] == "1"
    assert os.environ["RAY_SERVE_DIRECT_INGRESS_MIN_HTTP_PORT"] == "41234"
    # No load balancer in front of the replica to deregister it: a stop does not sit out
    # Serve's 30 s minimum draining period (in-flight requests are still drained).
    assert os.environ[DRAIN] == "0"
    assert _ingress_env()[DRAIN] == "0"  # the actors get it through the runtime env too


def test_an_operator_set_drain_period_is_kept(tmp_path, monkeypatch):
    monkeypatch.setenv(DRAIN, "15")
    _direct_ingress(Settings(data_dir=tmp_path, port=41234))
    assert os.environ[DRAIN] == "15" and _ingress_env()[DRAIN] == "15"


@pytest.mark.parametrize("kw", [{"replicas": 2}, {"direct_ingress": False},
                                {"address": "10.0.0.1:6379"}])
def test_without_direct_ingress_nothing_is_set(tmp_path, kw):
    assert _direct_ingress(Settings(data_dir=tmp_path, port=41234, **kw)) == 41234
    assert _ingress_env() == {}



def test_the_heap_trim_interval_reaches_the_actors_when_set(monkeypatch):
    monkeypatch.delenv("MEMORAY_HEAP_TRIM_S", raising=False)
    assert heap_env() == {}
    monkeypatch.setenv("MEMORAY_HEAP_TRIM_S", "0")
    assert heap_env() == {"MEMORAY_HEAP_TRIM_S": "0"}



def test_warm_up_reaches_healthz_and_never_fails_the_start(monkeypatch):
    """serve/launcher.py warm_up: one GET /healthz on the bound port (loopback for a wildcard
    bind), True on 200 or 503 (answered), False when nothing answers."""
    import http.server
    import threading

    from memoray.serve.launcher import warm_up
    from memoray.settings import Settings

    seen: list[str] = []
    status = {"code": 200}

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self):  # noqa: N802
            seen.append(self.path)
            self.send_response(status["code"])
            self.end_headers()

        def log_message(self, *a):
            pass

    srv = http.server.HTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    try:
        port = srv.server_address[1]
        assert warm_up(Settings(host="0.0.0.0", port=port, insecure=True))
        status["code"] = 503
        assert warm_up(Settings(port=port))
        assert seen == ["/healthz", "/healthz"]
    finally:
        srv.shutdown()
        srv.server_close()
    assert not warm_up(Settings(port=port), timeout=2)  # nothing listens any more

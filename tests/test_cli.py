"""The CLI without a server: version, help with defaults, one-line errors (never a traceback),
settings precedence (flags > MEMORAY_* > config file > defaults), the rate-limit exemption for one
local user, and the configuration reference listing every setting."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from memoray import cli
from memoray.auth import LOCAL_PRINCIPAL, Principal
from memoray.ratelimit import exempt
from memoray.settings import ConfigFileError, Settings
from tests.server_process import ROOT, free_port


def memoray(*args: str, env: dict | None = None, stdin: str | None = None):
    full = {**os.environ, "PYTHONPATH": str(ROOT), **(env or {})}
    full.pop("MEMORAY_DEBUG", None)
    return subprocess.run([sys.executable, "-m", "memoray.cli", *args], capture_output=True,
                          text=True, env=full, input=stdin, timeout=60, cwd=ROOT)


@pytest.fixture
def no_config(tmp_path, monkeypatch):
    monkeypatch.setenv("MEMORAY_CONFIG", str(tmp_path / "config.toml"))
    for k in list(os.environ):
        if k.startswith("MEMORAY_") and k != "MEMORAY_CONFIG":
            monkeypatch.delenv(k)
    return tmp_path / "config.toml"


def test_version():
    out = memoray("--version")
    assert out.returncode == 0 and out.stdout.startswith("memoray ")
    from memoray.version import version

    assert out.stdout.split()[1] == version()


@pytest.mark.parametrize("args,needle", [
    (["serve", "--port", "99999"], "99999 is not a port"),
    (["serve", "--shards", "zero"], "not a whole number"),
    (["search"], "required: query"),
    (["frobnicate"], "invalid choice"),
])
def test_usage_errors_are_one_line(args, needle):
    out = memoray(*args)
    assert out.returncode == 2
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1 and needle in lines[0] and "Traceback" not in out.stderr


def test_bad_environment_and_config_are_one_line(tmp_path):
    out = memoray("serve", env={"MEMORAY_PORT": "99999"})
    assert out.returncode == 1 and len(out.stderr.strip().splitlines()) == 1
    assert "port" in out.stderr and "65535" in out.stderr
    cfg = tmp_path / "config.toml"
    cfg.write_text("prot = 8100\n")
    out = memoray("serve", env={"MEMORAY_CONFIG": str(cfg)})
    assert out.returncode == 1 and "unknown setting(s) prot" in out.stderr
    assert len(out.stderr.strip().splitlines()) == 1
    cfg.write_text("port = [\n")
    out = memoray("status", env={"MEMORAY_CONFIG": str(cfg)})
    assert out.returncode == 1 and str(cfg) in out.stderr and "Traceback" not in out.stderr


def test_unreachable_server_is_one_line():
    url = f"http://127.0.0.1:{free_port()}"
    for args in (["status"], ["search", "anything"], ["export"]):
        out = memoray(*args, "--url", url)
        assert out.returncode == 1, out
        assert out.stderr.strip().count("\n") == 0, out.stderr
        assert "cannot reach the memoray server at " + url in out.stderr


def test_import_refuses_a_file_that_is_not_an_export(tmp_path):
    f = tmp_path / "x.jsonl"
    f.write_text('{"hello": 1}\n')
    out = memoray("import", str(f), "--url", f"http://127.0.0.1:{free_port()}")
    assert out.returncode == 1 and "not a memoray export" in out.stderr
    out = memoray("import", str(tmp_path / "missing.jsonl"))
    assert out.returncode == 1 and "no such file" in out.stderr


def test_help_shows_every_default():
    text = memoray("serve", "--help").stdout
    for flag, default in [("--host", "127.0.0.1"), ("--port", "8000"),
                          ("--data-dir", "~/.memoray"), ("--shards", "2"),
                          ("--embedder", "minilm"), ("--replicas", "1")]:
        assert flag in text and f"default: {default}" in text, flag
    for cmd in ("search", "export", "import", "status", "doctor"):
        assert "default" in memoray(cmd, "--help").stdout


def test_help_defaults_match_settings(no_config):
    s = Settings()
    for key, value in cli.DEFAULTS.items():
        assert str(getattr(s, key)) == str(value), key
    assert cli.DEFAULT_URL == s.client_url()


def test_precedence_flags_env_config_defaults(no_config, monkeypatch):
    assert Settings().port == 8000
    no_config.write_text('port = 8100\nhost = "127.0.0.1"\nembedder = "hash"\n'
                         'url = "http://127.0.0.1:8100"\n[ttl_overrides]\ntool_event = 60\n')
    s = Settings()
    assert (s.port, s.embedder, s.ttl_overrides) == (8100, "hash", {"tool_event": 60})
    assert s.client_url() == "http://127.0.0.1:8100"
    monkeypatch.setenv("MEMORAY_PORT", "8200")
    assert Settings().port == 8200
    assert Settings(port=8300).port == 8300
    no_config.write_text("shards = 0\n")
    with pytest.raises(ValueError):
        Settings()
    no_config.write_text("nonsense = 1\n")
    with pytest.raises(ConfigFileError):
        Settings()


def test_client_url_follows_host_and_port(no_config):
    assert Settings(port=9001).client_url() == "http://127.0.0.1:9001"
    assert Settings(host="0.0.0.0", port=9002).client_url() == "http://127.0.0.1:9002"
    assert Settings(url="http://h:1/").client_url() == "http://h:1"


def test_local_user_is_not_rate_limited_but_tokens_and_remote_are(no_config):
    alice = Principal("alice", frozenset({"w"}), frozenset({"read", "write"}))
    assert exempt(Settings(), LOCAL_PRINCIPAL)
    assert exempt(Settings(host="localhost"), LOCAL_PRINCIPAL)
    assert not exempt(Settings(), alice)  # authenticated: limits kept
    assert not exempt(Settings(host="0.0.0.0", insecure=True), LOCAL_PRINCIPAL)  # remote
    assert not exempt(Settings(rate_limit_local=True), LOCAL_PRINCIPAL)
    # A token whose principal happens to be named "local" is still limited.
    assert not exempt(Settings(), Principal("local", frozenset({"*"}), frozenset({"read"})))


def test_configuration_reference_lists_every_setting():
    doc = (ROOT / "docs" / "configuration.md").read_text()
    for name in Settings.model_fields:
        assert f"`{name}`" in doc and f"MEMORAY_{name.upper()}" in doc, name


def test_hook_path_stays_light():
    """`memoray hook` must not pay for pydantic, httpx or numpy at import time."""
    code = ("import sys; import memoray.cli as c; c.build_parser(); "
            "bad = [m for m in ('pydantic', 'httpx', 'numpy', 'ray') if m in sys.modules]; "
            "print(bad)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         env={**os.environ, "PYTHONPATH": str(ROOT)}, cwd=Path(ROOT))
    assert out.stdout.strip() == "[]", out.stderr


def test_the_hook_entry_skips_argparse_and_the_cli(tmp_path):
    """`memoray hook <Event>` (the console script's entry) imports neither argparse nor
    memoray.cli, runs the hook and leaves through os._exit (no interpreter teardown); an
    unknown event still exits 0 through the CLI."""
    code = ("import os, sys\n"
            "real_exit = os._exit\n"
            "def report(rc):\n"
            "    bad = [m for m in ('argparse', 'memoray.cli', 'dataclasses', 'pydantic',\n"
            "           'numpy', 'typing') if m in sys.modules]\n"
            "    print(rc, bad, flush=True)\n"
            "    real_exit(rc)\n"
            "os._exit = report\n"
            "import memoray.entry as e\n"
            "sys.argv = ['memoray', 'hook', 'Stop']\n"
            "e.main()\n"
            "print('returned', flush=True)\n")
    env = {**os.environ, "PYTHONPATH": str(ROOT), "MEMORAY_URL": "http://127.0.0.1:1",
           "MEMORAY_SPOOL_DIR": str(tmp_path / "spool")}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         input="{}", env=env, cwd=tmp_path)
    assert out.stdout.strip() == "0 []", (out.stdout, out.stderr)
    assert out.returncode == 0, out.stderr
    real = subprocess.run([sys.executable, "-m", "memoray.entry", "hook", "Stop"],
                          capture_output=True, text=True, input="{}", env=env, cwd=tmp_path)
    assert real.returncode == 0, real.stderr
    other = subprocess.run([sys.executable, "-m", "memoray.entry", "hook", "NoSuchEvent"],
                           capture_output=True, text=True, input="{}", env=env, cwd=tmp_path)
    assert other.returncode == 0, other.stderr


def test_client_waits_out_rate_limits_and_explains_refusals(monkeypatch):
    import httpx

    from memoray.client import ApiClient, ClientError

    calls = []

    def handler(request):
        calls.append(request)
        if request.url.path == "/api/import" and len(calls) < 3:
            return httpx.Response(429, headers={"Retry-After": "0"},
                                  json={"code": "RATE_LIMIT_EXCEEDED", "message": "slow down"})
        if request.url.path == "/api/stats":
            return httpx.Response(401, json={"code": "UNAUTHORIZED", "message": "invalid token"})
        return httpx.Response(200, json={"received": 1, "created": 1})

    monkeypatch.setattr("time.sleep", lambda s: None)
    api = ApiClient("http://memoray.test", "tok", transport=httpx.MockTransport(handler))
    assert api.import_batch(None, [{"id": "x"}])["created"] == 1
    assert len(calls) == 3 and calls[0].headers["authorization"] == "Bearer tok"
    assert calls[0].headers["x-memoray-client"] == "cli"
    with pytest.raises(ClientError) as err:
        api.get("/api/stats")
    assert "refused the token" in str(err.value) and "MEMORAY_TOKEN" in str(err.value)

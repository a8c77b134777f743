"""Tokens, principals, authentication and the bind check (no Ray, no server)."""

from __future__ import annotations

import json
import pickle
import re
import stat

import pytest

from memoray import auth, cli
from memoray.auth import (
    LOCAL_PRINCIPAL,
    Principal,
    TokenStore,
    authenticate,
    check_bind,
    hash_token,
)
from memoray.errors import ErrorCode, MemorayError


class Clock:
    def __init__(self, t: float = 0.0):
        self.t = t

    def __call__(self) -> float:
        return self.t


@pytest.fixture
def store(tmp_path):
    return TokenStore(tmp_path / "tokens.json", reload_interval=0)


def test_token_format_and_hashed_storage(store):
    token = store.create("alice", "ws1,ws2", "read,write")
    assert re.fullmatch(r"mr_[A-Za-z0-9_-]{43}", token)
    raw = store.path.read_text()
    assert token not in raw
    doc = json.loads(raw)
    assert doc["version"] == 1
    (entry,) = doc["tokens"]
    assert entry["hash"] == hash_token(token)
    assert entry["principal"] == "alice"
    assert entry["workspaces"] == ["ws1", "ws2"]
    assert entry["scopes"] == ["read", "write"]
    assert entry["revoked"] is False and entry["created"].endswith("Z")
    assert stat.S_IMODE(store.path.stat().st_mode) == 0o600
    assert [p.name for p in store.path.parent.iterdir() if p.name.endswith(".tmp")] == []


def test_verify_and_principal(store):
    token = store.create("bob", ["ws1"], ["read"])
    p = store.verify(token)
    assert p == Principal("bob", frozenset({"ws1"}), frozenset({"read"}), p.token_id,
                          agent="bob")  # the agent defaults to the principal
    assert p.token_id and p.token_id in {t["id"] for t in store.list()}
    assert store.verify(token[:-1] + ("A" if token[-1] != "A" else "B")) is None
    assert store.verify("not-a-token") is None
    assert store.verify("") is None
    assert pickle.loads(pickle.dumps(p)) == p


def test_revoke_by_id_and_by_token(store):
    t1 = store.create("a", "*", "read")
    t2 = store.create("b", "*", "read")
    assert store.enabled
    id1 = store.verify(t1).token_id
    assert store.revoke(id1) is True
    assert store.revoke(id1) is False  # already revoked
    assert store.verify(t1) is None
    assert store.enabled  # t2 is still live
    assert store.revoke(t2) is True
    assert store.verify(t2) is None
    assert store.enabled  # every token revoked: still closed (issue 13), until opened
    assert store.revoke("nope") is False
    store.open_store()
    assert not store.enabled


def test_list_leaks_no_hash(store):
    store.create("a", "*", "read,write,admin")
    (entry,) = store.list()
    assert "hash" not in entry
    assert set(entry) == {"id", "principal", "workspaces", "scopes", "created", "revoked"}


@pytest.mark.parametrize("principal,workspaces,scopes", [
    ("", "ws", "read"),
    ("a", "", "read"),
    ("a", "*,ws", "read"),
    ("a", "ws", ""),
    ("a", "ws", "read,root"),
])
def test_create_validates(store, principal, workspaces, scopes):
    with pytest.raises(MemorayError) as e:
        store.create(principal, workspaces, scopes)
    assert e.value.code is ErrorCode.INVALID_INPUT
    assert not store.path.exists()


def test_principal_scopes_and_workspaces():
    admin = Principal("root", frozenset({"*"}), frozenset({"admin"}))
    assert admin.can("read") and admin.can("write") and admin.can("admin")
    assert not admin.can("superuser")
    assert admin.allows_workspace("anything") and admin.visible_workspaces() is None
    reader = Principal("r", frozenset({"ws1"}), frozenset({"read"}))
    assert reader.can("read") and not reader.can("write") and not reader.can("admin")
    assert reader.visible_workspaces() == frozenset({"ws1"})
    reader.require("read", "ws1")
    reader.require("read")
    with pytest.raises(MemorayError) as e:
        reader.require("write", "ws1")
    assert e.value.code is ErrorCode.FORBIDDEN and "'write'" in e.value.message
    with pytest.raises(MemorayError) as e:
        reader.require("read", "secret-project-x")
    assert e.value.code is ErrorCode.FORBIDDEN
    assert "secret-project-x" not in e.value.message  # never echo another workspace
    assert "outside" in e.value.message


def test_authenticate_open_without_tokens(tmp_path):
    assert authenticate(None, None) is LOCAL_PRINCIPAL
    s = TokenStore(tmp_path / "tokens.json", reload_interval=0)
    assert authenticate(s, None) is LOCAL_PRINCIPAL
    assert LOCAL_PRINCIPAL.name == "local" and LOCAL_PRINCIPAL.can("admin")
    t = s.create("a", "*", "read")
    s.revoke(t)
    with pytest.raises(MemorayError):  # only revoked tokens: auth stays on (issue 13)
        authenticate(s, None)
    s.open_store()  # the operator's explicit step
    assert authenticate(s, None) is LOCAL_PRINCIPAL


def test_authenticate_with_tokens(store):
    token = store.create("alice", "ws1", "read,write")
    revoked = store.create("eve", "ws1", "read")
    store.revoke(revoked)
    assert authenticate(store, f"Bearer {token}").name == "alice"
    assert authenticate(store, f"bearer  {token} ").name == "alice"
    messages = {}
    for label, header in [("missing", None), ("empty", " "), ("basic", "Basic abc"),
                          ("noscheme", token), ("extra", f"Bearer {token} x"),
                          ("unknown", "Bearer mr_" + "A" * 43), ("garbage", "Bearer xyz"),
                          ("revoked", f"Bearer {revoked}")]:
        with pytest.raises(MemorayError) as e:
            authenticate(store, header)
        assert e.value.code is ErrorCode.UNAUTHORIZED
        messages[label] = e.value.message
    assert messages["unknown"] == messages["revoked"] == messages["garbage"]
    assert "Bearer" in messages["missing"] and "malformed" in messages["basic"]
    assert token not in "".join(messages.values())


def test_reload_sees_new_and_revoked_tokens_within_interval(tmp_path):
    clock = Clock()
    server = TokenStore(tmp_path / "tokens.json", clock=clock)  # 1 s reload interval
    cli_store = TokenStore(tmp_path / "tokens.json", reload_interval=0)
    assert not server.enabled
    token = cli_store.create("a", "*", "read")
    assert server.verify(token) is None  # checked less than a second ago: cached
    clock.t = 1.0
    assert server.verify(token).name == "a"
    cli_store.revoke(token)
    clock.t = 1.5
    assert server.verify(token) is not None
    clock.t = 2.5
    assert server.verify(token) is None


def test_malformed_tokens_file_fails_closed(tmp_path):
    path = tmp_path / "tokens.json"
    path.write_text("{not json")
    s = TokenStore(path, reload_interval=0)
    with pytest.raises(MemorayError) as e:
        authenticate(s, None)
    assert e.value.code is ErrorCode.UNAVAILABLE
    path.write_text(json.dumps({"version": 1, "tokens": []}))
    assert authenticate(s, None) is LOCAL_PRINCIPAL


@pytest.mark.parametrize("host", ["127.0.0.1", "127.0.0.2", "::1", "[::1]", "localhost",
                                  "LOCALHOST", "app.localhost"])
def test_check_bind_loopback_is_always_fine(host):
    check_bind(host, store_enabled=False, insecure=False)


@pytest.mark.parametrize("host", ["0.0.0.0", "::", "192.168.1.10", "example.com", ""])
def test_check_bind_refuses_open_public_bind(host):
    with pytest.raises(MemorayError) as e:
        check_bind(host, store_enabled=False, insecure=False)
    assert e.value.code is ErrorCode.UNAVAILABLE
    assert "--insecure" in e.value.message and "token" in e.value.message
    check_bind(host, store_enabled=True, insecure=False)
    check_bind(host, store_enabled=False, insecure=True)


def test_cli_create_list_revoke(tmp_path, capsys):
    d = str(tmp_path)
    assert cli.main(["token", "create", "--data-dir", d, "--principal", "ci",
                     "--workspaces", "ws1,ws2", "--scopes", "read"]) == 0
    out = capsys.readouterr().out.strip().splitlines()
    token = out[-1]
    assert token.startswith("mr_") and "ci" in out[0]
    store = TokenStore(tmp_path / "tokens.json", reload_interval=0)
    p = store.verify(token)
    assert p.workspaces == {"ws1", "ws2"} and p.scopes == {"read"}

    assert cli.main(["token", "list", "--data-dir", d]) == 0
    listing = capsys.readouterr().out
    assert p.token_id in listing and "active" in listing
    assert hash_token(token) not in listing and token not in listing

    assert cli.main(["token", "revoke", "--data-dir", d, p.token_id]) == 0
    assert cli.main(["token", "revoke", "--data-dir", d, p.token_id]) == 1
    capsys.readouterr()
    assert cli.main(["token", "list", "--data-dir", d]) == 0
    assert "revoked" in capsys.readouterr().out

    assert cli.main(["token", "create", "--data-dir", d, "--principal", "x",
                     "--workspaces", "ws", "--scopes", "read,sudo"]) == 2
    assert "unknown scope" in capsys.readouterr().err


def test_tokens_path_resolution(tmp_path, monkeypatch):
    monkeypatch.setenv("MEMORAY_TOKENS_FILE", str(tmp_path / "env" / "t.json"))
    assert auth.tokens_path(tmp_path / "dd") == (tmp_path / "dd" / "tokens.json").resolve()
    assert auth.tokens_path(None) == (tmp_path / "env" / "t.json").resolve()
    monkeypatch.delenv("MEMORAY_TOKENS_FILE")
    monkeypatch.setenv("MEMORAY_DATA_DIR", str(tmp_path / "data"))
    assert auth.tokens_path(None) == (tmp_path / "data" / "tokens.json").resolve()

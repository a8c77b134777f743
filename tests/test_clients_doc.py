"""docs/clients.md: every JSON and TOML snippet parses, and each names the server's MCP URL and,
where it sends a token, the header the server expects."""

from __future__ import annotations

import json
import re
import tomllib

from tests.server_process import ROOT

DOC = (ROOT / "docs" / "clients.md").read_text()
BLOCKS = re.findall(r"```(json|toml)\n(.*?)```", DOC, flags=re.S)


def test_every_snippet_parses_and_points_at_the_server():
    assert len(BLOCKS) >= 5
    for lang, body in BLOCKS:
        data = json.loads(body) if lang == "json" else tomllib.loads(body)
        text = json.dumps(data)
        assert "http://127.0.0.1:8000/mcp" in text, body
        if "Authorization" in text:
            assert re.search(r"Authorization\"?: ?\"?Bearer ", text), body


def test_each_client_has_its_section():
    for client in ("Cursor", "VS Code", "Codex CLI", "Claude Desktop", "Claude Code"):
        assert f"## {client}" in DOC
    codex = tomllib.loads(next(b for lang, b in BLOCKS if lang == "toml"))
    assert codex["mcp_servers"]["memoray"]["bearer_token_env_var"] == "MEMORAY_TOKEN"
    vscode = next(json.loads(b) for lang, b in BLOCKS if lang == "json" and '"servers"' in b)
    assert vscode["servers"]["memoray"]["type"] == "http"

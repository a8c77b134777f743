"""The layers, enforced: serve -> actors -> memoray (the core), and cluster jobs above actors.

An AST read of every module (no import side effects), so a forbidden import fails here whether
it sits at the top of a file or inside a function. import-linter was weighed: its graph builder
finds modules through the import system, and this checkout maps three top-level folders into the
`memoray` package (see memoray/__init__.py), which it does not follow; the rules are few enough
to state here.
"""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
FOLDERS = {"memoray": "core", "actors": "actors", "serve": "serve", "cluster": "cluster"}

# layer -> layers it must never import
FORBIDDEN = {
    "core": {"actors", "serve", "cluster", "ray", "bare"},
    "actors": {"serve", "cluster", "bare"},
    "cluster": {"serve", "bare"},
    "serve": {"cluster", "bare"},
}
# (file, imported layer): lazy imports the design allows (`memoray serve` starts the server).
ALLOWED_LAZY = {("memoray/cli.py", "serve")}


def layer_of_import(name: str) -> str | None:
    """The layer an import reaches, or "bare" for a top-level actors/serve/cluster import (the
    folders are packages of memoray: a bare import would load a second copy of a module)."""
    parts = name.split(".")
    if parts[0] == "ray":
        return "ray"
    if parts[0] == "memoray":
        return parts[1] if len(parts) > 1 and parts[1] in ("actors", "serve", "cluster") else (
            "core")
    if parts[0] in ("actors", "serve", "cluster"):
        return "bare"
    return None


def imports(path: Path) -> list[tuple[str, int, bool]]:
    """(module, line, lazy) for every import in a file; lazy = inside a function."""
    tree = ast.parse(path.read_text(encoding="utf-8"), str(path))
    out: list[tuple[str, int, bool]] = []

    def visit(node: ast.AST, lazy: bool) -> None:
        for child in ast.iter_child_nodes(node):
            inner = lazy or isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef))
            if isinstance(child, ast.Import):
                out.extend((a.name, child.lineno, lazy) for a in child.names)
            elif isinstance(child, ast.ImportFrom) and child.module and child.level == 0:
                out.append((child.module, child.lineno, lazy))
            visit(child, inner)

    visit(tree, False)
    return out


def violations(root: Path = ROOT) -> list[str]:
    found = []
    for folder, layer in FOLDERS.items():
        for path in sorted((root / folder).rglob("*.py")):
            rel = path.relative_to(root).as_posix()
            for module, line, lazy in imports(path):
                target = layer_of_import(module)
                if target in FORBIDDEN[layer] and not (lazy and (rel, target) in ALLOWED_LAZY):
                    found.append(f"{rel}:{line}: {layer} imports {module} ({target})")
    return found


def test_no_layer_is_crossed():
    assert violations() == []


def test_tests_and_benchmarks_use_the_package_names():
    # Hidden folders are not the project's code (bench-peer's virtualenv lives in
    # benchmarks/.peer: scanning its 1,600 files took 17 s of every unit run here).
    bare = [f"{path.relative_to(ROOT)}:{line}: {module}"
            for folder in ("tests", "benchmarks") for path in sorted((ROOT / folder).rglob("*.py"))
            if not any(part.startswith(".") for part in path.relative_to(ROOT).parts)
            for module, line, _ in imports(path) if layer_of_import(module) == "bare"]
    assert bare == []


def test_the_check_catches_a_forbidden_import(tmp_path):
    """The rule itself: a core module importing the server, or an actor importing serve, fails."""
    for folder in FOLDERS:
        (tmp_path / folder).mkdir()
    (tmp_path / "memoray" / "bad.py").write_text("def f():\n    from memoray.serve import app\n")
    (tmp_path / "actors" / "bad.py").write_text("import memoray.serve.request\n")
    (tmp_path / "cluster" / "ok.py").write_text(
        "from memoray.actors.shard_client import ShardSet\n")
    (tmp_path / "cluster" / "bare.py").write_text("from actors.shard import ShardCore\n")
    (tmp_path / "memoray" / "worse.py").write_text("import ray\n")
    assert sorted(violations(tmp_path)) == [
        "actors/bad.py:1: actors imports memoray.serve.request (serve)",
        "cluster/bare.py:1: cluster imports actors.shard (bare)",
        "memoray/bad.py:2: core imports memoray.serve (serve)",
        "memoray/worse.py:1: core imports ray (ray)",
    ]

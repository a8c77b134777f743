"""The wheel's package list (pyproject.toml) names every package of the checkout, under the one
top-level name memoray."""

from __future__ import annotations

import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
MAPPED = {"memoray": "memoray", "actors": "memoray.actors", "serve": "memoray.serve",
          "cluster": "memoray.cluster"}


def checkout_packages() -> set[str]:
    out = set()
    for folder, name in MAPPED.items():
        for init in (ROOT / folder).rglob("__init__.py"):
            rel = init.parent.relative_to(ROOT / folder).parts
            out.add(".".join((name, *rel)))
    return out


def test_every_package_is_in_the_wheel_and_only_memoray_is_top_level():
    conf = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    listed = set(conf["packages"])
    assert listed == checkout_packages()
    assert {p.split(".")[0] for p in listed} == {"memoray"}
    assert conf["package-dir"] == {v: k for k, v in MAPPED.items()}

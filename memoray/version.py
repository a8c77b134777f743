"""The installed distribution's version (one source: pyproject.toml)."""

from __future__ import annotations

from functools import cache


@cache
def version() -> str:
    from importlib.metadata import PackageNotFoundError
    from importlib.metadata import version as dist_version

    try:
        return dist_version("memoray")
    except PackageNotFoundError:  # a source checkout that was never installed
        return "0+source"

"""memoray: persistent memory for AI coding agents, an MCP server on Ray.

The checkout keeps the design's top-level folders (actors/, serve/, cluster/ beside memoray/);
the wheel installs them as memoray.actors, memoray.serve and memoray.cluster, so that memoray
is the only top-level name it adds to site-packages. In a checkout, the repository root joins
this package's search path so the same import names resolve to those folders.
"""

import os as _os

_root = _os.path.dirname(_os.path.dirname(_os.path.abspath(__file__)))
if (_os.path.isfile(_os.path.join(_root, "pyproject.toml"))
        and _os.path.isdir(_os.path.join(_root, "actors"))
        and not _os.path.isdir(_os.path.join(_os.path.dirname(__file__), "actors"))):
    __path__.append(_root)  # noqa: F821 - the package's own search path

"""The `memoray` command. Subcommands import their modules lazily so `memoray hook` starts fast
(it must not import ray, torch or numpy)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

HOOK_EVENTS = (
    "SessionStart", "UserPromptSubmit", "PostToolUse", "PostToolUseFailure", "Stop",
    "SessionEnd", "PreCompact", "PostCompact",
)


def _add_serve(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("serve", help="start (or join) Ray and deploy the MCP server")
    p.add_argument("--host")
    p.add_argument("--port", type=int)
    p.add_argument("--data-dir", type=Path)
    p.add_argument("--shards", type=int)
    p.add_argument("--embedder", choices=["minilm", "hash"])
    p.add_argument("--address", help="join this Ray cluster instead of starting a local one")
    p.add_argument("--replicas", type=int)
    p.add_argument("--insecure", action="store_true", default=None,
                   help="allow a non-loopback bind without tokens (not for shared networks)")


def _serve(args: argparse.Namespace) -> int:
    from memoray.settings import Settings

    overrides = {k: v for k, v in vars(args).items()
                 if k not in ("cmd", "func") and v is not None}
    settings = Settings(**overrides)
    from memoray.serve.launcher import serve_forever  # lazy: imports ray

    return serve_forever(settings)


def _hook(args: argparse.Namespace) -> int:
    from memoray.hooks.runner import run_hook

    return run_hook(args.event)


def _hooks_install(args: argparse.Namespace) -> int:
    from memoray.hooks.install import main_install

    return main_install(project_dir=args.project, user=args.user, uninstall=args.uninstall,
                        url=args.url)


def _token(args: argparse.Namespace) -> int:
    from memoray import auth

    return auth.main_token(args)


def _audit(args: argparse.Namespace) -> int:
    from memoray import audit

    return audit.main_audit(args)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="memoray", description=__doc__)
    sub = parser.add_subparsers(dest="cmd", required=True)
    _add_serve(sub)
    sub.choices["serve"].set_defaults(func=_serve)

    h = sub.add_parser("hook", help="run one Claude Code hook (reads its JSON payload on stdin)")
    # No argparse choices: an event this version does not handle (a newer Claude Code's) must
    # exit 0 with a note, never 2, since a hook must never get in the agent's way.
    h.add_argument("event", help="one of " + ", ".join(HOOK_EVENTS))
    h.set_defaults(func=_hook)

    hs = sub.add_parser("hooks", help="manage Claude Code hook entries")
    hs_sub = hs.add_subparsers(dest="hooks_cmd", required=True)
    hi = hs_sub.add_parser("install", help="write hooks and the MCP server entry")
    scope = hi.add_mutually_exclusive_group()
    scope.add_argument("--project", type=Path, default=None,
                       help="project directory (default: cwd)")
    scope.add_argument("--user", action="store_true", help="install into ~/.claude/settings.json")
    hi.add_argument("--uninstall", action="store_true")
    hi.add_argument("--url", default=None, help="server URL (default: MEMORAY_URL or http://127.0.0.1:8000)")
    hi.set_defaults(func=_hooks_install)

    t = sub.add_parser("token", help="create, revoke or list bearer tokens")
    t_sub = t.add_subparsers(dest="token_cmd", required=True)
    tc = t_sub.add_parser("create")
    tc.add_argument("--data-dir", type=Path)
    tc.add_argument("--principal", required=True)
    tc.add_argument("--workspaces", required=True, help="comma-separated workspace ids, or *")
    tc.add_argument("--scopes", default="read,write", help="comma-separated: read,write,admin")
    tc.add_argument("--agent", default=None,
                    help="the agent identity bound to the token (default: the principal name); "
                         "it owns the token's private memories")
    tr = t_sub.add_parser("revoke")
    tr.add_argument("--data-dir", type=Path)
    tr.add_argument("token_or_id")
    tl = t_sub.add_parser("list")
    tl.add_argument("--data-dir", type=Path)
    to = t_sub.add_parser("open", help="switch authentication off: remove every (revoked) "
                                       "token; refused while a live token exists")
    to.add_argument("--data-dir", type=Path)
    t.set_defaults(func=_token)

    a = sub.add_parser("audit", help="read the audit log")
    a.add_argument("--data-dir", type=Path)
    a.add_argument("--limit", type=int, default=50)
    a.add_argument("--principal")
    a.add_argument("--action")
    a.add_argument("--json", action="store_true")
    a.set_defaults(func=_audit)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return int(args.func(args) or 0)


if __name__ == "__main__":
    sys.exit(main())

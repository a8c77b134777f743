"""The `memoray` command. Subcommands import their modules lazily so `memoray hook` starts fast
(it must not import ray, torch, numpy or pydantic). Errors print one line, never a traceback
(MEMORAY_DEBUG=1 shows it)."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from memoray.hooks import HOOK_EVENTS

# The defaults help text shows (kept equal to memoray.settings.Settings by a test: importing
# pydantic here would slow every `memoray hook`).
DEFAULTS = {
    "host": "127.0.0.1", "port": 8000, "data_dir": "~/.memoray", "shards": 2,
    "embedder": "minilm", "replicas": 1,
}
DEFAULT_URL = "http://127.0.0.1:8000"
PRECEDENCE = "flags override MEMORAY_* variables, which override ~/.memoray/config.toml"


class Parser(argparse.ArgumentParser):
    """argparse, but a usage error is one line naming the command and where help is."""

    def error(self, message: str) -> None:  # type: ignore[override]
        self.exit(2, f"{self.prog}: error: {message} (see `{self.prog} --help`)\n")


def _port(value: str) -> int:
    try:
        port = int(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{value!r} is not a port number") from None
    if not 0 <= port <= 65535:
        raise argparse.ArgumentTypeError(f"{port} is not a port (0-65535)")
    return port


def _positive(value: str) -> int:
    try:
        n = int(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{value!r} is not a whole number") from None
    if n < 1:
        raise argparse.ArgumentTypeError(f"{n} must be at least 1")
    return n


def _version() -> str:
    from memoray.version import version

    return version()


# -- serve ---------------------------------------------------------------------------------------

def _add_serve(sub: argparse._SubParsersAction) -> None:
    d = DEFAULTS
    p = sub.add_parser("serve", help="start (or join) Ray and deploy the server",
                       description=f"Start the server. {PRECEDENCE}.")
    p.add_argument("--host", help=f"bind address (default: {d['host']}; a non-loopback address "
                   "needs tokens or --insecure)")
    p.add_argument("--port", type=_port, help=f"HTTP port (default: {d['port']})")
    p.add_argument("--data-dir", type=Path, help=f"where data lives (default: {d['data_dir']})")
    p.add_argument("--shards", type=_positive,
                   help=f"vector shards, fixed per store (default: {d['shards']})")
    p.add_argument("--embedder", choices=["minilm", "hash"],
                   help=f"embedding model (default: {d['embedder']}; hash is for tests)")
    p.add_argument("--address", help="join this Ray cluster instead of starting a local one "
                   "(default: start one)")
    p.add_argument("--replicas", type=_positive,
                   help=f"Serve replicas (default: {d['replicas']})")
    p.add_argument("--replication", type=_positive,
                   help="replicas of every shard, on distinct storage nodes (cluster mode; "
                   "default: 1)")
    p.add_argument("--dashboard-port", type=_port, help="Ray dashboard / job API port "
                   "(default: 8265 when free, else a free port)")
    p.add_argument("--log-format", choices=["auto", "json", "text"],
                   help="log lines: json (one object per line), text, or auto: text on a "
                   "terminal, JSON otherwise (default: auto; MEMORAY_LOG_FORMAT)")
    p.add_argument("--insecure", action="store_true", default=None,
                   help="allow a non-loopback bind without tokens (default: off; not for "
                   "shared networks)")
    p.set_defaults(func=_serve)


def load_settings(**overrides):
    from memoray.settings import Settings

    return Settings(**{k: v for k, v in overrides.items() if v is not None})


def _serve(args: argparse.Namespace) -> int:
    overrides = {k: v for k, v in vars(args).items() if k not in ("cmd", "func")}
    settings = load_settings(**overrides)
    from memoray.serve.launcher import serve_forever  # lazy: imports ray

    return serve_forever(settings)


# -- client commands -----------------------------------------------------------------------------

def _client(args: argparse.Namespace):
    from memoray.client import ApiClient

    settings = load_settings()
    url = args.url or settings.client_url()
    token = args.token or settings.token
    return ApiClient(url, token)


def _add_client_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument("--url", help=f"the server (default: MEMORAY_URL, else `url` in the config "
                   f"file, else http://HOST:PORT from the settings: {DEFAULT_URL})")
    p.add_argument("--token", help="bearer token (default: MEMORAY_TOKEN)")


def _status(args: argparse.Namespace) -> int:
    import json

    from memoray.client import ClientError

    with _client(args) as api:
        code, health = api.healthz()
        info = api.get("/api/info")
        stats = api.get("/api/stats")
        try:  # each shard's replicas (node, role, lag): details need an admin token
            detail = api.get("/api/health")
        except ClientError:
            detail = {}
    if args.json:
        print(json.dumps({"url": api.url, "health": health, "info": info, "stats": stats,
                          "detail": detail}, indent=2))
        return 0 if health.get("status") == "ok" else 1
    print(f"memoray {info['version']} at {api.url}: {health.get('status')} "
          f"(up {health.get('uptimeSeconds', 0):.0f}s)")
    detailed = detail.get("components", {})
    for name, comp in sorted(health.get("components", {}).items()):
        print(f"  {name:<12} {comp.get('status')}")
        for r in detailed.get(name, {}).get("replicas", []):
            print("    " + replica_line(r))
    print(f"memories     {stats.get('total', 0)} in {len(stats.get('workspaces', {}))} "
          f"workspace(s), {info['shards']} shards, {info['embedder']} embedder")
    for ws, n in sorted(stats.get("workspaces", {}).items(), key=lambda kv: -kv[1])[:10]:
        print(f"  {n:>8}  {ws}")
    if stats.get("eventTypes"):
        print("event types  " + ", ".join(f"{k} {v}" for k, v in sorted(
            stats["eventTypes"].items(), key=lambda kv: -kv[1])))
    if "storageBytes" in stats:
        print(f"storage      {stats['storageBytes'] / 2**20:.1f} MiB on disk, "
              f"{stats.get('indexBytes', 0) / 2**20:.1f} MiB of index")
    if info.get("dataDir"):
        print(f"data         {info['dataDir']}")
    print(f"viewer       {api.url}/")
    return 0 if health.get("status") == "ok" else 1


def replica_line(r: dict) -> str:
    """One shard replica for `memoray status`: node, role, in sync, lag."""
    lag = "lag ?" if r.get("lag") is None else f"lag {r['lag']}"
    sync = "in sync" if r.get("inSync") else "NOT in sync"
    state = f", {r['state']}" if r.get("state") not in (None, "primary", "backup") else ""
    return f"{r.get('role', '?'):<8} on {r.get('node', '?'):<12} {sync}, {lag}{state}"


def _search(args: argparse.Namespace) -> int:
    import json
    import shutil

    with _client(args) as api:
        res = api.get("/api/search", q=args.query, workspace=args.workspace, branch=args.branch,
                      eventType=args.event_type, limit=args.limit)
    if args.json:
        print(json.dumps(res, indent=2, ensure_ascii=False))
        return 0
    rows = res["memories"]
    if not rows:
        print("no memories match", file=sys.stderr)
        return 0
    width = shutil.get_terminal_size((120, 20)).columns
    head = f"{'score':>5}  {'when':<16}  {'type':<12}  {'workspace / branch':<28}  content"
    print(head)
    print("-" * min(width, 120))
    for m in rows:
        where = m["workspaceId"] + (f" @{m['gitBranch']}" if m.get("gitBranch") else "")
        text = " ".join(m["content"].split())
        room = max(20, width - 72)
        text = text if len(text) <= room else text[:room - 1] + "…"
        print(f"{m.get('score', 0):>5.2f}  {m['timestamp'][:16].replace('T', ' '):<16}  "
              f"{m['eventType'][:12]:<12}  {where[:28]:<28}  {text}")
    print(f"{len(rows)} result(s); ids: memoray search --json", file=sys.stderr)
    return 0


def _export(args: argparse.Namespace) -> int:
    import time

    t0 = time.time()
    out = open(args.output, "w", encoding="utf-8") if args.output else sys.stdout
    n = -1  # the header is not a record
    try:
        with _client(args) as api:
            for line in api.export_lines(args.workspace):
                out.write(line + "\n")
                n += 1
    finally:
        if args.output:
            out.close()
    print(f"exported {max(n, 0)} memories in {time.time() - t0:.1f}s", file=sys.stderr)
    return 0


def _import(args: argparse.Namespace) -> int:
    from memoray.transfer import import_file

    with _client(args) as api:
        summary = import_file(api, args.file, batch=args.batch, progress=not args.quiet)
    print(summary.line(), file=sys.stderr)
    return 0 if not summary.failed else 1


def _restore(args: argparse.Namespace) -> int:
    import json

    from memoray.backup import restore_backup, verify_backup

    if args.verify_only:
        manifest = verify_backup(args.backup)
        print(f"backup {args.backup} is intact: {manifest.get('records', '?')} records in "
              f"{manifest['layout']['shards']} shards, {len(manifest['files'])} files, taken "
              f"{manifest.get('created', '?')}")
        return 0
    data_dir = args.data_dir or load_settings().resolved_data_dir()
    report = restore_backup(args.backup, data_dir, force=args.force,
                            keep_store_id=args.keep_store_id)
    if args.json:
        print(json.dumps(report, indent=2))
        return 0
    print(f"restored {report['records']} records in {report['shards']} shards (backup of "
          f"{report['created']}) into {report['restored']}; start it with `memoray serve "
          f"--data-dir {report['restored']} --shards {report['shards']}`")
    if report["replaced_kept_at"]:
        print(f"the previous contents are kept at {report['replaced_kept_at']}")
    return 0


def _doctor(args: argparse.Namespace) -> int:
    from memoray.doctor import run_doctor

    return run_doctor(url=args.url, token=args.token, project=args.project)


# -- webhooks ------------------------------------------------------------------------------------

def _webhook(args: argparse.Namespace) -> int:
    import json

    from memoray.webhooks.admin_client import call_tool

    cmd = args.webhook_cmd
    with _client(args) as api:
        if cmd == "create":
            events = [e.strip() for e in args.events.split(",")] if args.events else None
            out = call_tool(api, "create-webhook", {
                "url": args.target_url, "workspaceId": args.workspace, "events": events,
                "includeContent": args.include_content, "description": args.description})
            if args.json:
                print(json.dumps(out, indent=2))
                return 0
            print(f"created {out['id']} for {out['workspaceId']}: {', '.join(out['events'])}"
                  f"{' (with redacted content)' if out['includeContent'] else ''}")
            print("signing secret (shown once; verify deliveries with it):", file=sys.stderr)
            print(out["secret"])
            return 0
        if cmd == "list":
            out = call_tool(api, "list-webhooks", {"workspaceId": args.workspace})
            if args.json:
                print(json.dumps(out, indent=2))
                return 0
            if not out["subscriptions"]:
                print("no webhook subscriptions", file=sys.stderr)
            for s in out["subscriptions"]:
                print(f"{s['id']}  {s['workspaceId']}  {s['url']}  events={','.join(s['events'])}"
                      f"  pending={s.get('pending', 0)} dead={s.get('dead', 0)}"
                      + (f"  last error: {s['lastError']}" if s.get("lastError") else ""))
            return 0
        if cmd == "test":
            out = call_tool(api, "test-webhook", {"id": args.id})
            print(json.dumps(out, indent=2) if args.json else
                  (f"delivered: HTTP {out['status']} in {out['durationMs']} ms" if out["delivered"]
                   else f"not delivered: {out['error']}"))
            return 0 if out["delivered"] else 1
        if cmd == "delete":
            out = call_tool(api, "delete-webhook", {"id": args.id})
            print(f"deleted {args.id}" if out["deleted"] else f"{args.id}: already gone")
            return 0
        if cmd == "dead-letters":
            out = call_tool(api, "list-dead-letters", {"id": args.id, "limit": args.limit})
            if args.json:
                print(json.dumps(out, indent=2))
                return 0
            for d in out["deadLetters"]:
                print(f"{d['deliveryId']}  {d['type']}  {d.get('memoryId') or '-'}  "
                      f"attempts={d['attempts']}  {d.get('lastError')}")
            print(f"{out['count']} dead letter(s)", file=sys.stderr)
            return 0
        out = call_tool(api, "replay-dead-letters", {"id": args.id,
                                                     "deliveryIds": args.delivery or None})
        print(f"queued {out['replayed']} dead letter(s) again")
        return 0


def _add_webhook(sub: argparse._SubParsersAction) -> None:
    w = sub.add_parser("webhook", help="manage webhook subscriptions (admin)",
                       description="Webhook subscriptions of a workspace: events signed the "
                       "Standard Webhooks way (docs/webhooks.md).")
    w_sub = w.add_subparsers(dest="webhook_cmd", required=True, parser_class=Parser)
    c = w_sub.add_parser("create", help="subscribe a URL; prints the signing secret once")
    c.add_argument("--url", dest="target_url", required=True, help="the receiver (https://...)")
    c.add_argument("--workspace", help="the workspace (default: the token's only one)")
    c.add_argument("--events", help="comma-separated (default: all): memory.captured, "
                   "memory.updated, memory.deleted, memory.expired, memory.shared")
    c.add_argument("--include-content", action="store_true",
                   help="send redacted content with captured/updated/shared (default: ids only)")
    c.add_argument("--description", help="a note for operators")
    ls = w_sub.add_parser("list", help="subscriptions, pending and dead-letter counts")
    ls.add_argument("--workspace", help="only this workspace (default: all you administer)")
    t = w_sub.add_parser("test", help="send one signed test delivery now")
    t.add_argument("id")
    d = w_sub.add_parser("delete", help="delete a subscription and its queue")
    d.add_argument("id")
    dl = w_sub.add_parser("dead-letters", help="deliveries that failed every attempt")
    dl.add_argument("id")
    dl.add_argument("--limit", type=_positive, default=100, help="rows (default: 100)")
    r = w_sub.add_parser("replay", help="queue dead letters again")
    r.add_argument("id")
    r.add_argument("--delivery", action="append", help="only this delivery id (repeatable; "
                   "default: all)")
    for p in (c, ls, t, d, dl, r):
        p.add_argument("--json", action="store_true", help="print JSON")
        # --url names the receiver on `create`; the server is then MEMORAY_URL or --server
        p.add_argument("--server", dest="url", help="the server (default: MEMORAY_URL, else "
                       f"{DEFAULT_URL})")
        p.add_argument("--token", help="bearer token (default: MEMORAY_TOKEN)")
        p.set_defaults(func=_webhook)


# -- hooks, tokens, audit (owned elsewhere; wiring only) -----------------------------------------

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


class _Version(argparse.Action):
    """--version, resolved only when asked (reading package metadata costs a few ms)."""

    def __init__(self, option_strings, dest, **kw):
        super().__init__(option_strings, dest, nargs=0, help="print the version and exit")

    def __call__(self, parser, namespace, values, option_string=None):
        print(f"memoray {_version()}")
        parser.exit(0)


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(prog="memoray", description="Persistent memory for AI coding agents: an MCP "
                    "server on Ray, its web viewer at http://127.0.0.1:8000/, and this CLI.",
                    epilog=PRECEDENCE + "; see docs/configuration.md.")
    parser.add_argument("--version", action=_Version)
    sub = parser.add_subparsers(dest="cmd", required=True, parser_class=Parser)
    _add_serve(sub)

    st = sub.add_parser("status", help="the server's health, counts and where data lives")
    _add_client_flags(st)
    st.add_argument("--json", action="store_true", help="print JSON (default: a summary)")
    st.set_defaults(func=_status)

    se = sub.add_parser("search", help="hybrid search, printed as a table")
    se.add_argument("query")
    se.add_argument("--workspace", help="only this workspace (default: all you may read)")
    se.add_argument("--branch", help="only this git branch (default: any)")
    se.add_argument("--event-type", help="only this event type (default: any)")
    se.add_argument("--limit", type=_positive, default=10, help="results (default: 10, max 100)")
    se.add_argument("--json", action="store_true", help="print JSON (default: a table)")
    _add_client_flags(se)
    se.set_defaults(func=_search)

    ex = sub.add_parser("export", help="every memory as JSON lines (header first) on stdout")
    ex.add_argument("--workspace", help="only this workspace (default: all you may read)")
    ex.add_argument("-o", "--output", type=Path, help="write here (default: stdout)")
    _add_client_flags(ex)
    ex.set_defaults(func=_export)

    im = sub.add_parser("import", help="load an export: ids, timestamps and every field kept; "
                        "re-importing changes nothing")
    im.add_argument("file", help="an export file, or - for stdin")
    im.add_argument("--batch", type=_positive, default=500,
                    help="records per request (default: 500, max 1000)")
    im.add_argument("--quiet", action="store_true", help="no progress bar (default: shown)")
    _add_client_flags(im)
    im.set_defaults(func=_import)

    rs = sub.add_parser("restore", help="restore a backup (from the backup job) into a data "
                        "dir; checksums are verified first and a failure changes nothing")
    rs.add_argument("backup", type=Path, help="the backup directory (holds manifest.json)")
    rs.add_argument("--data-dir", type=Path, help="where to restore (default: the configured "
                    "data dir, ~/.memoray); must be new or empty")
    rs.add_argument("--force", action="store_true", help="replace a non-empty data dir (its "
                    "contents are moved aside, not deleted; refused while a server runs on it)")
    rs.add_argument("--keep-store-id", action="store_true", help="keep the backed-up store's "
                    "id (default: a new id, so the restored store never shares Ray actors with "
                    "the original)")
    rs.add_argument("--verify-only", action="store_true",
                    help="check the backup's checksums and stop (default: restore)")
    rs.add_argument("--json", action="store_true", help="print JSON (default: a summary)")
    rs.set_defaults(func=_restore)

    _add_webhook(sub)

    dr = sub.add_parser("doctor", help="check ports, data dir, server, hooks and versions")
    dr.add_argument("--project", type=Path, default=None,
                    help="project whose hooks to check (default: current directory)")
    _add_client_flags(dr)
    dr.set_defaults(func=_doctor)

    h = sub.add_parser("hook", help="run one Claude Code hook (reads its JSON payload on stdin)")
    # No argparse choices: an event this version does not handle (a newer Claude Code's) must
    # exit 0 with a note, never 2, since a hook must never get in the agent's way.
    h.add_argument("event", help="one of " + ", ".join(HOOK_EVENTS))
    h.set_defaults(func=_hook)

    hs = sub.add_parser("hooks", help="manage Claude Code hook entries")
    hs_sub = hs.add_subparsers(dest="hooks_cmd", required=True, parser_class=Parser)
    hi = hs_sub.add_parser("install", help="write hooks and the MCP server entry")
    scope = hi.add_mutually_exclusive_group()
    scope.add_argument("--project", type=Path, default=None,
                       help="project directory (default: cwd)")
    scope.add_argument("--user", action="store_true", help="install into ~/.claude/settings.json")
    hi.add_argument("--uninstall", action="store_true")
    hi.add_argument("--url", default=None, help="server URL (default: MEMORAY_URL or http://127.0.0.1:8000)")
    hi.set_defaults(func=_hooks_install)

    t = sub.add_parser("token", help="create, revoke or list bearer tokens")
    t_sub = t.add_subparsers(dest="token_cmd", required=True, parser_class=Parser)
    tc = t_sub.add_parser("create")
    tc.add_argument("--data-dir", type=Path, help="default: ~/.memoray")
    tc.add_argument("--principal", required=True)
    tc.add_argument("--workspaces", required=True, help="comma-separated workspace ids, or *")
    tc.add_argument("--scopes", default="read,write",
                    help="comma-separated: read,write,admin (default: read,write)")
    tc.add_argument("--agent", default=None,
                    help="the agent identity bound to the token (default: the principal name); "
                         "it owns the token's private memories")
    tr = t_sub.add_parser("revoke")
    tr.add_argument("--data-dir", type=Path, help="default: ~/.memoray")
    tr.add_argument("token_or_id")
    tl = t_sub.add_parser("list")
    tl.add_argument("--data-dir", type=Path, help="default: ~/.memoray")
    to = t_sub.add_parser("open", help="switch authentication off: remove every (revoked) "
                                       "token; refused while a live token exists")
    to.add_argument("--data-dir", type=Path, help="default: ~/.memoray")
    t.set_defaults(func=_token)

    a = sub.add_parser("audit", help="read the audit log")
    a.add_argument("--data-dir", type=Path, help="default: ~/.memoray")
    a.add_argument("--limit", type=int, default=50, help="entries (default: 50)")
    a.add_argument("--principal")
    a.add_argument("--action")
    a.add_argument("--json", action="store_true")
    a.set_defaults(func=_audit)
    return parser


def one_line(exc: BaseException) -> str:
    """What went wrong, in one line a user can act on."""
    name = type(exc).__name__
    if name == "ValidationError":  # pydantic: settings from flags, env or the config file
        errs = exc.errors()  # type: ignore[attr-defined]
        parts = []
        for e in errs[:3]:
            field = ".".join(str(p) for p in e["loc"])
            flag = "--" + field.replace("_", "-")
            parts.append(f"{field} ({flag} / MEMORAY_{field.upper()} / config.toml): "
                         f"{e['msg'].removeprefix('Value error, ')}")
        return "invalid setting: " + "; ".join(parts)
    message = getattr(exc, "message", None) or str(exc) or name
    return " ".join(str(message).split())


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if len(argv) == 2 and argv[0] == "hook" and argv[1] in HOOK_EVENTS:
        # The hot path (every agent event): skip building the whole parser.
        from memoray.hooks.runner import run_hook

        return int(run_hook(argv[1]) or 0)
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except KeyboardInterrupt:
        print("memoray: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # `memoray export | head`
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
    except Exception as exc:  # every failure is one line; MEMORAY_DEBUG=1 for the traceback
        if os.environ.get("MEMORAY_DEBUG"):
            raise
        print(f"memoray: {one_line(exc)}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())

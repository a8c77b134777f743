"""Git facts for scoping memories: which project (workspace id) and which branch we stand on.

Runs inside `memoray hook`, so it is stdlib-only, reads `.git` files directly where that is cheap
(HEAD, refs, packed-refs, config; worktrees and submodules through `gitdir:` files) and runs `git`
only for what needs the object graph (merged branches, ahead/behind), each call with a short
timeout. Every failure degrades to None or an empty tuple; nothing here raises.
"""

from __future__ import annotations

import os
import re
from collections import namedtuple
from pathlib import Path

GIT_TIMEOUT_S = float(os.environ.get("MEMORAY_GIT_TIMEOUT") or 0.3)
TIMEOUTS: list[str] = []  # git subcommands that timed out in this process (facts then degrade)

_SCHEME_RE = re.compile(r"^([a-zA-Z][a-zA-Z0-9+.\-]*)://(.*)$")
_SCP_RE = re.compile(r"^(?:[^@/\s]+@)?([^:/\s]+):(?!//)(.*)$")


MAX_MERGED_BRANCHES = 25  # the most recently committed; keeps the filter within its limits


class GitFacts(namedtuple("GitFacts", (
    "root",  # str | None: repository work-tree root (absolute), None outside a repo
    "workspace_id",  # str
    "branch",  # str | None: None when HEAD is detached or unknown
    "commit",  # str | None: full sha of HEAD, None in a repo without commits
    "default_branch",  # str | None
    "upstream",  # str | None, e.g. "origin/main"
    "ahead",  # int | None
    "behind",  # int | None
    "merged_branches",  # tuple[str, ...]: local branches merged into HEAD (HEAD's included)
    "remote_url",  # str | None
    "merged_tips",  # tuple[tuple[str, str], ...], default (): (branch, tip sha), newest first
), defaults=((),))):
    """What a hook knows of the repository (collections.namedtuple, not typing.NamedTuple:
    typing's import costs every hook ~5 ms)."""

    __slots__ = ()

    def branch_filter(self) -> dict:
        """The memories visible from HEAD, as a filter.

        Visible: memories with no branch; this branch's and the default branch's; and, for each
        branch whose tip is merged into HEAD (true merge, fast-forward, or squash detected by
        patch-id), every memory whose work was committed by that tip: those captured at an
        earlier commit of the branch (`gitCommit` != tip: a later commit carries their work)
        and those captured at the tip itself with a clean work tree and commits of its own
        (`metadata.committed`: the branch's outcome, its end-of-session summaries). Never
        visible: what was captured at the tip with uncommitted changes, which is how both a
        fresh branch with no commits of its own and new work on a branch merged earlier look.
        """
        own = [b for b in (self.branch, self.default_branch) if b]
        clauses: list[dict] = [{"gitBranch": {"$exists": False}}]
        if own:
            clauses.append({"gitBranch": {"$in": sorted(set(own))}})
        merged = [(n, t) for n, t in self.merged_tips if n not in own][:MAX_MERGED_BRANCHES]
        if merged:
            clauses.append({"gitBranch": {"$in": sorted({n for n, _ in merged})},
                            "metadata.committed": True})
        for name, tip in merged:
            clauses.append({"gitBranch": name, "gitCommit": {"$ne": tip}})
        return {"$or": clauses}

    def visible_branches(self) -> tuple[str, ...]:
        """Branches whose memories apply here: this one, those merged into it, the default one."""
        seen: dict[str, None] = {}
        for b in (self.branch, *self.merged_branches, self.default_branch):
            if b:
                seen.setdefault(b, None)
        return tuple(seen)


def normalize_remote_url(url: str) -> str | None:
    """One id per repository however it was cloned: host/path, lowercase, no credentials,
    port, scheme or `.git`. Local-path remotes become `file://<absolute path>` (case kept)."""
    url = url.strip()
    if not url:
        return None
    m = _SCHEME_RE.match(url)
    if m:
        scheme, rest = m.group(1).lower(), m.group(2)
        if scheme == "file":
            return _local_id(rest)
        authority, _, path = rest.partition("/")
        host = authority.rsplit("@", 1)[-1]
        if host.startswith("["):  # [ipv6]:port
            host = host.split("]", 1)[0] + "]"
        else:
            host = host.split(":", 1)[0]
    elif _looks_local(url):
        return _local_id(url)
    else:
        m = _SCP_RE.match(url)
        if not m:
            return _local_id(url)
        host, path = m.group(1), m.group(2)
    path = re.sub(r"/+", "/", path.strip("/"))
    if path.startswith("~"):
        path = path[1:].lstrip("/")
    if path.lower().endswith(".git"):
        path = path[:-4].rstrip("/")
    host = host.lower()
    if not host:
        return None
    return f"{host}/{path.lower()}" if path else host


def _looks_local(url: str) -> bool:
    if url.startswith(("/", "./", "../", "~")) or url in (".", ".."):
        return True
    # "C:\repo" or "C:/repo" on Windows; "host:path" only counts as scp-like without a slash first
    if re.match(r"^[a-zA-Z]:[\\/]", url):
        return True
    colon, slash = url.find(":"), url.find("/")
    return colon == -1 or (slash != -1 and slash < colon)


def _local_id(path: str) -> str:
    path = os.path.abspath(os.path.expanduser(path)).rstrip("/") or "/"
    if path.lower().endswith(".git") and len(path) > 4:
        path = path[:-4].rstrip("/") or "/"
    return f"file://{path}"


def _read(path: Path) -> str | None:
    try:
        return path.read_text(encoding="utf-8", errors="replace").strip()
    except OSError:
        return None


def find_repo(cwd: str) -> tuple[Path, Path, Path] | None:
    """(work-tree root, git dir, common git dir) for cwd, or None outside a repository."""
    try:
        here = Path(cwd).resolve()
    except OSError:
        return None
    for d in (here, *here.parents):
        dotgit = d / ".git"
        try:
            if dotgit.is_dir():
                return d, dotgit, _common_dir(dotgit)
            if dotgit.is_file():
                text = _read(dotgit) or ""
                if text.startswith("gitdir:"):
                    gitdir = Path(text[len("gitdir:"):].strip())
                    if not gitdir.is_absolute():
                        gitdir = (d / gitdir).resolve()
                    if gitdir.is_dir():
                        return d, gitdir, _common_dir(gitdir)
        except OSError:
            return None
    return None


def _common_dir(gitdir: Path) -> Path:
    """Linked worktrees keep refs and config in the main repository's git dir."""
    text = _read(gitdir / "commondir")
    if not text:
        return gitdir
    common = Path(text)
    return common if common.is_absolute() else (gitdir / common).resolve()


def _resolve_ref(gitdir: Path, common: Path, ref: str, depth: int = 0) -> str | None:
    if depth > 5:
        return None
    for base in (gitdir, common):
        text = _read(base / ref)
        if text:
            if text.startswith("ref:"):
                return _resolve_ref(gitdir, common, text[4:].strip(), depth + 1)
            return text if re.fullmatch(r"[0-9a-f]{40,64}", text) else None
    packed = _read(common / "packed-refs") or ""
    for line in packed.splitlines():
        if line and line[0] not in "#^":
            sha, _, name = line.partition(" ")
            if name.strip() == ref:
                return sha
    return None


def _ref_exists(gitdir: Path, common: Path, ref: str) -> bool:
    return _resolve_ref(gitdir, common, ref) is not None


def parse_git_config(text: str) -> dict[str, str]:
    """Flat `section.subsection.key -> value` (last value wins); enough for remotes/branches."""
    out: dict[str, str] = {}
    section = ""
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line[0] in "#;":
            continue
        if line.startswith("["):
            m = re.match(r'^\[\s*([^\s\]"]+)(?:\s+"((?:[^"\\]|\\.)*)")?\s*\]', line)
            if m:
                name, sub = m.group(1).lower(), m.group(2)
                if sub is None and "." in name:  # legacy [section.sub]
                    name, _, sub = name.partition(".")
                section = f"{name}.{sub}" if sub is not None else name
            continue
        key, sep, value = line.partition("=")
        value = value.strip() if sep else "true"
        if len(value) >= 2 and value[0] == value[-1] == '"':
            value = value[1:-1]
        out[f"{section}.{key.strip().lower()}"] = value
    return out


def _git(root: Path, *args: str) -> str | None:
    import subprocess  # only the detailed form needs it; hooks that tag records skip the import

    try:
        proc = subprocess.run(
            ["git", "-C", str(root), *args], check=False, capture_output=True, text=True,
            timeout=GIT_TIMEOUT_S, env={**os.environ, "GIT_OPTIONAL_LOCKS": "0", "LC_ALL": "C"},
            stdin=subprocess.DEVNULL,
        )
    except subprocess.TimeoutExpired:
        TIMEOUTS.append(args[0])
        return None
    except (OSError, subprocess.SubprocessError):
        return None
    return proc.stdout if proc.returncode == 0 else None


_CACHE: dict[tuple[str, bool], GitFacts] = {}


def git_facts(cwd: str, *, detailed: bool = True) -> GitFacts:
    """Facts for the repository holding cwd (cached per process).

    detailed=False skips the `git` subprocesses (merged branches, ahead/behind): the cheap form
    for hooks that only tag a record with its branch and commit.
    """
    key = (os.path.abspath(cwd or "."), detailed)
    if key not in _CACHE:
        try:
            _CACHE[key] = _compute(key[0], detailed)
        except Exception:  # noqa: BLE001 - facts are best-effort by contract
            _CACHE[key] = _empty(key[0])
    return _CACHE[key]


def clear_cache() -> None:
    """Forget cached facts (tests; a long-lived process after a checkout)."""
    _CACHE.clear()


# The detailed facts' git work (merged branches, ahead/behind) kept across processes in a small
# JSON file (the hooks point it at their spool dir), keyed by HEAD and the refs' fingerprint:
# a hook that runs after no branch moved reuses it without running git.
DETAIL_CACHE: Path | None = None
DETAIL_CACHE_ENTRIES = 32
_squash_pending = False  # the last squash pass left candidates unchecked (SQUASH_FRESH_PER_RUN)


def refs_fingerprint(common: Path) -> str:
    """Where git keeps refs and the config, by (path, inode, size, mtime): a branch created,
    moved or deleted (loose, packed or reftable refs, remote-tracking ones included) or an
    upstream set changes it. Stat calls only, no git run. Two 32-bit checksums of the list:
    a collision would keep stale merged facts until the next ref change."""
    import zlib

    keys = []
    for rel in ("packed-refs", "config", "reftable/tables.list"):
        keys.append(_stat_key(str(common / rel)))
    for sub in ("refs/heads", "refs/remotes"):
        for dirpath, _dirs, files in sorted(os.walk(common / sub)):
            keys.extend(_stat_key(os.path.join(dirpath, f)) for f in sorted(files))
    blob = "\n".join(keys).encode("utf-8", "surrogateescape")
    return f"{len(keys)}-{zlib.crc32(blob):08x}{zlib.adler32(blob):08x}"


def _stat_key(path: str) -> str:
    try:
        st = os.stat(path)
    except OSError:
        return f"{path} -"
    return f"{path} {st.st_ino} {st.st_size} {st.st_mtime_ns}"


def _read_json(path: Path) -> dict:
    """A small JSON object kept next to the spool; {} when missing or unreadable."""
    import json

    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def _write_json(path: Path, data: dict) -> None:
    """Replace it atomically (a temporary file per process: hooks run concurrently); a cache,
    so a failed write is ignored."""
    import json

    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")
        tmp.write_text(json.dumps(data), encoding="utf-8")
        os.replace(tmp, path)
    except OSError:
        pass


def _detail_cache_get(key: str) -> tuple[int | None, int | None,
                                        tuple[tuple[str, str], ...]] | None:
    entry = _read_json(DETAIL_CACHE).get(key)  # type: ignore[arg-type]
    try:
        ahead, behind, tips = entry  # type: ignore[misc]
        return ahead, behind, tuple((str(n), str(t)) for n, t in tips)
    except (TypeError, ValueError):
        return None


def _detail_cache_put(key: str, ahead: int | None, behind: int | None,
                      tips: tuple[tuple[str, str], ...]) -> None:
    data = _read_json(DETAIL_CACHE)  # type: ignore[arg-type]
    data.pop(key, None)
    data[key] = [ahead, behind, [list(t) for t in tips]]
    _write_json(DETAIL_CACHE, dict(list(data.items())[-DETAIL_CACHE_ENTRIES:]))  # type: ignore[arg-type]


def _empty(cwd: str) -> GitFacts:
    return GitFacts(None, f"local:{cwd}", None, None, None, None, None, None, (), None)


def _compute(cwd: str, detailed: bool) -> GitFacts:
    found = find_repo(cwd)
    if found is None:
        return _empty(cwd)
    root, gitdir, common = found
    head = _read(gitdir / "HEAD") or ""
    branch = None
    if head.startswith("ref:"):
        ref = head[4:].strip()
        branch = ref[len("refs/heads/"):] if ref.startswith("refs/heads/") else None
        commit = _resolve_ref(gitdir, common, ref)
    else:
        commit = head if re.fullmatch(r"[0-9a-f]{40,64}", head) else None

    config = parse_git_config(_read(common / "config") or "")
    remotes = [k[len("remote."):-len(".url")] for k in config
               if k.startswith("remote.") and k.endswith(".url")]
    remote = "origin" if "origin" in remotes else (remotes[0] if remotes else None)
    remote_url = config.get(f"remote.{remote}.url") if remote else None
    workspace_id = (normalize_remote_url(remote_url) if remote_url else None) or f"local:{root}"

    default_branch = _default_branch(gitdir, common, remote, config)
    upstream = None
    if branch:
        up_remote = config.get(f"branch.{branch}.remote")
        up_merge = config.get(f"branch.{branch}.merge", "")
        if up_remote and up_merge.startswith("refs/heads/"):
            name = up_merge[len("refs/heads/"):]
            upstream = name if up_remote == "." else f"{up_remote}/{name}"

    ahead = behind = None
    merged: tuple[str, ...] = ()
    tips: tuple[tuple[str, str], ...] = ()
    if detailed and commit:
        key = (f"{root}\0{commit}\0{refs_fingerprint(common)}" if DETAIL_CACHE is not None
               else None)
        hit = _detail_cache_get(key) if key is not None else None
        if hit is not None:
            ahead, behind, tips = hit
        else:
            timeouts = len(TIMEOUTS)
            ahead, behind = _ahead_behind(root, upstream)
            tips = merged_tips(root, commit)
            if key is not None and len(TIMEOUTS) == timeouts and not _squash_pending:
                _detail_cache_put(key, ahead, behind, tips)  # complete: nothing timed out
        merged = tuple(sorted({name for name, _ in tips}))
    return GitFacts(str(root), workspace_id, branch, commit, default_branch, upstream, ahead,
                    behind, merged, remote_url, tips)


def _ahead_behind(root: Path, upstream: str | None) -> tuple[int | None, int | None]:
    if not upstream:
        return None, None
    out = _git(root, "rev-list", "--left-right", "--count", "HEAD...@{upstream}")
    parts = out.split() if out else []
    if len(parts) == 2 and all(p.isdigit() for p in parts):
        return int(parts[0]), int(parts[1])
    return None, None


_MERGE_SUBJECT = re.compile(
    r"^Merge branch '(?P<a>[^']+)'|^Merge remote-tracking branch '[^/']+/(?P<c>[^']+)'"
    r"|^Merge pull request #\d+ from [^/\s]+/(?P<b>\S+)")


def _ref_name(ref: str) -> str | None:
    """Branch name of a local or remote-tracking ref (`refs/remotes/origin/x` -> `x`)."""
    if ref.startswith("refs/heads/"):
        return ref[len("refs/heads/"):]
    if ref.startswith("refs/remotes/"):
        name = ref[len("refs/remotes/"):].split("/", 1)
        return name[1] if len(name) == 2 and name[1] != "HEAD" else None
    return None


def merged_tips(root: Path, head: str) -> tuple[tuple[str, str], ...]:
    """(branch, tip) of branches whose work is in HEAD, most recent first.

    Local and remote-tracking branches merged into HEAD (so a second clone needs no local
    copy of the branch), branches named by HEAD's merge commits (their second parent is the
    tip: the branch may be deleted since), and squash merges that `squash_merged` detects.
    """
    seen: dict[str, str] = {}
    out = _git(root, "for-each-ref", "--merged", head, "--sort=-committerdate",
               "--format=%(objectname) %(refname)", "refs/heads", "refs/remotes")
    for line in (out or "").splitlines():
        sha, _, ref = line.strip().partition(" ")
        name = _ref_name(ref)
        if name and name not in seen:
            seen[name] = sha
    out = _git(root, "log", "--merges", "--first-parent", "-n", "40", "--format=%P%x09%s", head)
    for line in (out or "").splitlines():
        parents, _, subject = line.partition("\t")
        m = _MERGE_SUBJECT.match(subject)
        ps = parents.split()
        if m and len(ps) >= 2:
            name = m.group("a") or m.group("b") or m.group("c")
            seen.setdefault(name, ps[1])
    for name, tip in squash_merged(root, head, set(seen)):
        seen.setdefault(name, tip)
    return tuple(seen.items())


SQUASH_CANDIDATES = 8
SQUASH_FRESH_PER_RUN = 2  # patch-id checks are ~5 git runs each: a few per hook, rest cached
# Verdicts survive the process in a small JSON file (the hooks point it at their spool dir):
# "tip" -> squash commit found in HEAD's history; "tip:head" -> checked, not found.
SQUASH_CACHE: dict[str, str | bool] = {}


def load_squash_cache(path: Path) -> None:
    SQUASH_CACHE.update({k: v for k, v in _read_json(path).items()
                         if isinstance(v, (str, bool))})


def save_squash_cache(path: Path, limit: int = 2000) -> None:
    _write_json(path, dict(list(SQUASH_CACHE.items())[-limit:]))


def squash_merged(root: Path, head: str, skip: set[str]) -> list[tuple[str, str]]:
    """Branches not merged into HEAD whose whole change is one commit of HEAD (a squash merge).

    git keeps no link from a squash commit to its branch, so this compares patch-ids: the
    branch's diff from its merge base with HEAD, against each HEAD commit since that base.
    It finds a squash merge as long as the branch still exists (locally or as a remote-tracking
    branch) and the squash commit's diff is the branch's diff (no conflict resolution, no other
    edits folded in). A squash-merged branch that was deleted cannot be found. Verdicts are
    cached (SQUASH_CACHE) and only SQUASH_FRESH_PER_RUN new ones are worked out per call, so a
    hook stays fast; a branch not yet checked counts as unmerged (never a leak), and the
    answer is not kept in DETAIL_CACHE (`_squash_pending`).
    """
    global _squash_pending
    _squash_pending = False
    out = _git(root, "for-each-ref", "--no-merged", head, "--sort=-committerdate",
               f"--count={SQUASH_CANDIDATES * 2}", "--format=%(objectname) %(refname)",
               "refs/heads", "refs/remotes")
    found: list[tuple[str, str]] = []
    checked: set[str] = set()
    fresh = 0
    for line in (out or "").splitlines():
        sha, _, ref = line.strip().partition(" ")
        name = _ref_name(ref)
        if not name or name in skip or name in checked or len(checked) >= SQUASH_CANDIDATES:
            continue
        checked.add(name)
        squash = SQUASH_CACHE.get(sha)
        if isinstance(squash, str):  # found before: still in this HEAD's history?
            if _git(root, "merge-base", "--is-ancestor", squash, head) is not None:
                found.append((name, sha))
                continue
        if SQUASH_CACHE.get(f"{sha}:{head}") is False:
            continue
        if fresh >= SQUASH_FRESH_PER_RUN:
            _squash_pending = True
            continue
        fresh += 1
        commit = _squash_commit(root, head, sha)
        if commit:
            SQUASH_CACHE[sha] = commit
            found.append((name, sha))
        else:
            SQUASH_CACHE[f"{sha}:{head}"] = False
    return found


def _squash_commit(root: Path, head: str, tip: str) -> str | None:
    """The commit of HEAD (since the merge base) whose patch-id is the branch's whole diff."""
    base = (_git(root, "merge-base", head, tip) or "").strip()
    if not base:
        return None
    branch = {pid for pid, _ in _patch_ids(root, ["diff", "--no-color", "--no-ext-diff", base,
                                                  tip])}
    if not branch:
        return None
    on_head = _patch_ids(root, ["log", "-p", "--no-color", "--no-merges", "-n", "50",
                                "--format=commit %H", f"{base}..{head}"])
    return next((commit for pid, commit in sorted(on_head) if pid in branch), None)


def _patch_ids(root: Path, args: list[str]) -> set[tuple[str, str]]:
    """(patch-id, commit) pairs of what `git <args>` prints (a bare diff gets a zero commit)."""
    import subprocess

    env = {**os.environ, "GIT_OPTIONAL_LOCKS": "0", "LC_ALL": "C"}
    try:
        diff = subprocess.run(["git", "-C", str(root), *args], capture_output=True,
                              timeout=GIT_TIMEOUT_S, env=env, stdin=subprocess.DEVNULL)
        if diff.returncode != 0 or not diff.stdout.strip():
            return set()
        diff_out = diff.stdout
        if not diff_out.startswith(b"commit "):
            diff_out = b"commit " + b"0" * 40 + b"\n" + diff_out
        ids = subprocess.run(["git", "-C", str(root), "patch-id", "--stable"],
                             input=diff_out, capture_output=True, timeout=GIT_TIMEOUT_S, env=env)
    except subprocess.TimeoutExpired:
        TIMEOUTS.append(args[0])
        return set()
    except (OSError, subprocess.SubprocessError):
        return set()
    return {(ln.split()[0], ln.split()[1]) for ln in ids.stdout.decode().splitlines()
            if len(ln.split()) >= 2}


def work_committed(cwd: str) -> bool | None:
    """Whether the work a memory captured now describes is in HEAD's commit: the work tree has
    no changes (untracked files count) and the branch has commits of its own (or is the
    default branch). None when git cannot tell. Costs two `git` runs: summaries only."""
    facts = git_facts(cwd, detailed=False)
    if facts.root is None or facts.commit is None:
        return None
    root = Path(facts.root)
    status = _git(root, "status", "--porcelain")
    if status is None:
        return None
    # Claude Code's own local files (settings.local.json) are not the project's work.
    if any(line[3:].strip('"') and not line[3:].strip('"').startswith(".claude/")
           for line in status.splitlines()):
        return False
    if not facts.branch or facts.branch == facts.default_branch or not facts.default_branch:
        return True
    out = _git(root, "rev-list", "--count", f"refs/heads/{facts.default_branch}..HEAD")
    if out is None or not out.strip().isdigit():
        out = _git(root, "rev-list", "--count", f"{facts.default_branch}..HEAD")
    return bool(out and out.strip().isdigit() and int(out) > 0)


def _default_branch(gitdir: Path, common: Path, remote: str | None,
                    config: dict[str, str]) -> str | None:
    """The remote's HEAD when cloned; else init.defaultBranch, main or master if present."""
    if remote:
        text = _read(common / "refs" / "remotes" / remote / "HEAD") or ""
        prefix = f"ref: refs/remotes/{remote}/"
        if text.startswith(prefix):
            return text[len(prefix):]
    candidates = [config.get("init.defaultbranch"), "main", "master"]
    for name in candidates:
        if name and _ref_exists(gitdir, common, f"refs/heads/{name}"):
            return name
    return None

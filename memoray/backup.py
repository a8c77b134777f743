"""The backup format and restore: one directory that holds everything a store needs.

    DEST/manifest.json            format, version, store, layout, every file with size + SHA-256
    DEST/memoray.json             the layout file
    DEST/shards/NNN/data.mdb      each shard's LMDB snapshot (LMDB's compacted hot copy)
    DEST/tokens.json              the token store (hashes only, as on the server)
    DEST/webhooks/data.mdb        webhook subscriptions and queued deliveries, when any
    DEST/audit/audit.log[.N]      the audit log, rotated files included
    DEST/archive/...              retention archives, when there are any

The manifest is written last (atomically), so a directory without one is an unfinished backup.
Written by cluster/jobs/backup.py (which streams each shard from wherever it runs); read by
`memoray restore` (restore_backup here). Encryption keys are never in a backup: an encrypted
store's snapshots stay sealed, and the restored store needs the same key.

Never imports ray.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import shutil
import time
from pathlib import Path
from typing import Any, TypedDict

from memoray.errors import ErrorCode, MemorayError

FORMAT = "memoray-backup"
VERSION = 1
MANIFEST = "manifest.json"
LAYOUT_FILE = "memoray.json"
WEBHOOKS_FILE = "webhooks/data.mdb"    # restored to DATA_DIR/webhooks/lmdb/data.mdb
_BLOCK = 1 << 20


class FileEntry(TypedDict):
    path: str      # relative to the backup directory, '/'-separated
    bytes: int
    sha256: str


class Manifest(TypedDict, total=False):
    format: str
    version: int
    created: str
    store_id: str
    layout: dict[str, Any]
    shards: list[dict[str, Any]]
    records: int
    files: list[FileEntry]
    cluster: dict[str, Any] | None
    seconds: float


class BadBackup(MemorayError):
    def __init__(self, message: str):
        super().__init__(ErrorCode.INVALID_INPUT, message)


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(_BLOCK), b""):
            h.update(block)
    return h.hexdigest()


def _safe_rel(rel: str) -> str:
    p = Path(rel)
    if p.is_absolute() or ".." in p.parts or not p.parts:
        raise BadBackup(f"backup names an unsafe path: {rel!r}")
    return p.as_posix()


# -- the store's own files (read on the node that holds them: the head) --------------------------

def state_files(data_dir: str | Path, tokens_file: str | Path | None = None
                ) -> dict[str, bytes]:
    """The layout, the token store, the audit log (every rotated file, read under the audit
    log's shared lock so no rotation runs meanwhile, each cut at its last complete line) and
    the retention archives of a store, as {relative path: bytes}."""
    data = Path(data_dir).expanduser()
    out: dict[str, bytes] = {}
    layout = data / LAYOUT_FILE
    if not layout.exists():
        raise MemorayError(ErrorCode.NOT_FOUND, f"{layout} not found: not a memoray data dir")
    out[LAYOUT_FILE] = layout.read_bytes()
    tokens = Path(tokens_file).expanduser() if tokens_file else data / "tokens.json"
    if tokens.exists():
        out["tokens.json"] = tokens.read_bytes()
    audit_dir = data / "audit"
    if audit_dir.is_dir():
        lock_fd = os.open(audit_dir / "audit.log.lock", os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(lock_fd, fcntl.LOCK_SH)
            for f in sorted(audit_dir.glob("audit.log*")):
                if f.name.endswith(".lock") or not f.is_file():
                    continue
                raw = f.read_bytes()
                cut = raw.rfind(b"\n") + 1  # a line being appended right now is left out
                out[f"audit/{f.name}"] = raw[:cut]
        finally:
            fcntl.flock(lock_fd, fcntl.LOCK_UN)
            os.close(lock_fd)
    hooks = data / "webhooks" / "lmdb"
    if (hooks / "data.mdb").exists():
        out[WEBHOOKS_FILE] = _lmdb_snapshot(hooks)
    archive = data / "archive"
    if archive.is_dir():
        for f in sorted(archive.rglob("*")):
            if f.is_file():
                out[f"archive/{f.relative_to(archive).as_posix()}"] = f.read_bytes()
    return out


def _lmdb_snapshot(path: Path) -> bytes:
    """LMDB's consistent compacted copy of an environment another process owns and writes (the
    webhook dispatcher's): LMDB's locking makes a reader in a second process safe."""
    import tempfile

    import lmdb

    env = lmdb.open(str(path), readonly=True, lock=True, max_dbs=16, subdir=True)
    try:
        with tempfile.TemporaryDirectory(prefix="memoray-backup-") as tmp:
            env.copy(tmp, compact=True)
            return (Path(tmp) / "data.mdb").read_bytes()
    finally:
        env.close()


# -- writing ----------------------------------------------------------------------------------

class BackupWriter:
    """Writes a backup directory; `finish` writes the manifest last. `abort` removes what was
    written (a failed backup leaves nothing that looks like one)."""

    def __init__(self, dest: str | Path):
        self.dest = Path(dest).expanduser().resolve()
        if self.dest.exists() and (not self.dest.is_dir() or any(self.dest.iterdir())):
            raise MemorayError(ErrorCode.INVALID_INPUT, f"{self.dest} exists and is not empty: "
                               "choose a new backup directory")
        self.created_dir = not self.dest.exists()
        self.dest.mkdir(parents=True, exist_ok=True, mode=0o700)
        self.files: list[FileEntry] = []

    def write_bytes(self, rel: str, data: bytes) -> FileEntry:
        path = self.dest / _safe_rel(rel)
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        with open(path, "wb", opener=lambda p, fl: os.open(p, fl, 0o600)) as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        entry = FileEntry(path=_safe_rel(rel), bytes=len(data),
                          sha256=hashlib.sha256(data).hexdigest())
        self.files.append(entry)
        return entry

    def open_stream(self, rel: str) -> StreamedFile:
        path = self.dest / _safe_rel(rel)
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        return StreamedFile(self, _safe_rel(rel), path)

    def finish(self, manifest: Manifest) -> Manifest:
        manifest = Manifest(format=FORMAT, version=VERSION, **{
            k: v for k, v in manifest.items() if k not in ("format", "version", "files")},
            files=sorted(self.files, key=lambda e: e["path"]))
        tmp = self.dest / (MANIFEST + ".tmp")
        tmp.write_text(json.dumps(manifest, indent=2))
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
        os.replace(tmp, self.dest / MANIFEST)
        return manifest

    def abort(self) -> None:
        if self.created_dir:
            shutil.rmtree(self.dest, ignore_errors=True)
        else:
            for child in self.dest.iterdir():
                shutil.rmtree(child) if child.is_dir() else child.unlink()


class StreamedFile:
    """A file written chunk by chunk (a shard snapshot arriving over Ray), hashed as it goes."""

    def __init__(self, writer: BackupWriter, rel: str, path: Path):
        self.writer, self.rel, self.path = writer, rel, path
        self.f = open(path, "wb", opener=lambda p, fl: os.open(p, fl, 0o600))
        self.h = hashlib.sha256()
        self.size = 0

    def write(self, data: bytes) -> None:
        self.f.write(data)
        self.h.update(data)
        self.size += len(data)

    def close(self, expect_sha256: str, expect_bytes: int) -> FileEntry:
        """Fsync and check against what the sender computed: a torn or altered stream fails."""
        self.f.flush()
        os.fsync(self.f.fileno())
        self.f.close()
        digest = self.h.hexdigest()
        if digest != expect_sha256 or self.size != expect_bytes:
            raise MemorayError(ErrorCode.UNAVAILABLE,
                               f"{self.rel}: received {self.size} bytes (sha256 {digest[:12]}) "
                               f"but the shard sent {expect_bytes} (sha256 {expect_sha256[:12]})")
        entry = FileEntry(path=self.rel, bytes=self.size, sha256=digest)
        self.writer.files.append(entry)
        return entry


# -- reading and verifying ----------------------------------------------------------------------

def read_manifest(backup: str | Path) -> Manifest:
    root = Path(backup).expanduser()
    path = root / MANIFEST
    if not root.is_dir():
        raise BadBackup(f"{root} is not a directory")
    if not path.exists():
        raise BadBackup(f"{root} has no {MANIFEST}: not a memoray backup, or an unfinished one")
    try:
        manifest = json.loads(path.read_text())
    except ValueError as exc:
        raise BadBackup(f"{path} is not valid JSON ({exc})") from None
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        raise BadBackup(f"{path} is not a memoray backup manifest")
    version = manifest.get("version")
    if not isinstance(version, int) or version < 1:
        raise BadBackup(f"{path}: bad format version {version!r}")
    if version > VERSION:
        raise BadBackup(f"{path} is backup format {version}; this memoray reads up to {VERSION} "
                        "(upgrade memoray)")
    for key in ("layout", "files", "shards"):
        if key not in manifest:
            raise BadBackup(f"{path} lacks {key!r}")
    return manifest  # type: ignore[return-value]


def verify_backup(backup: str | Path) -> Manifest:
    """Every file the manifest lists is there with its size and SHA-256, every shard of the
    layout has its snapshot, and the layout inside matches the manifest's."""
    root = Path(backup).expanduser()
    manifest = read_manifest(root)
    listed = set()
    for entry in manifest["files"]:
        rel = _safe_rel(entry["path"])
        listed.add(rel)
        path = root / rel
        if not path.is_file():
            raise BadBackup(f"backup file {rel} is missing")
        if path.stat().st_size != entry["bytes"]:
            raise BadBackup(f"backup file {rel} has {path.stat().st_size} bytes; the manifest "
                            f"says {entry['bytes']} (truncated or altered)")
        if sha256_file(path) != entry["sha256"]:
            raise BadBackup(f"backup file {rel} fails its checksum (corrupted or altered)")
    shards = int(manifest["layout"]["shards"])
    for i in range(shards):
        if f"shards/{i:03d}/data.mdb" not in listed:
            raise BadBackup(f"backup lacks shard {i}'s snapshot")
    if LAYOUT_FILE not in listed:
        raise BadBackup(f"backup lacks the layout file {LAYOUT_FILE}")
    inside = json.loads((root / LAYOUT_FILE).read_text())
    if int(inside["shards"]) != shards or inside.get("store_id") != manifest.get("store_id"):
        raise BadBackup("the backup's layout file disagrees with its manifest")
    return manifest


# -- restoring ----------------------------------------------------------------------------------

def _running_server(data_dir: Path) -> int | None:
    run = data_dir / "run.json"
    try:
        pid = int(json.loads(run.read_text())["pid"])
    except (OSError, ValueError, KeyError, TypeError):
        return None
    try:
        os.kill(pid, 0)
    except (ProcessLookupError, PermissionError):
        return None
    return pid


def _write_json(path: Path, value: Any) -> None:
    with open(path, "w", encoding="utf-8") as f:
        f.write(json.dumps(value))
        f.flush()
        os.fsync(f.fileno())


def _check_shard(path: Path, expect_records: int | None) -> int:
    """Open a restored snapshot read-only and count its records: the file is a real LMDB store."""
    import lmdb

    env = lmdb.open(str(path), readonly=True, lock=False, max_dbs=32, subdir=True)
    try:
        with env.begin() as txn:
            if txn.get(b"ids") is None:
                raise BadBackup(f"{path} is an LMDB file without memoray's databases")
            ids = env.open_db(b"ids", txn=txn, create=False)
            n = txn.stat(ids)["entries"]
    finally:
        env.close()
    if expect_records is not None and n != expect_records:
        raise BadBackup(f"{path}: {n} records, the manifest says {expect_records}")
    return n


def restore_backup(backup: str | Path, data_dir: str | Path, *, force: bool = False,
                   keep_store_id: bool = False) -> dict[str, Any]:
    """Restore `backup` into `data_dir`: verified first, built in a staging directory beside the
    target, then moved into place, so a failure at any step changes nothing.

    `force` replaces a non-empty target (which is moved aside to DATA_DIR.replaced-<time>, not
    deleted); a target a live server runs on is refused. The restored store gets a new store
    id unless `keep_store_id`: it is a new store, and must never share Ray actors with the one
    backed up, which may still run on the same cluster."""
    src = Path(backup).expanduser().resolve()
    target = Path(data_dir).expanduser().resolve()
    manifest = verify_backup(src)
    if target == src or src in target.parents or target in src.parents:
        raise MemorayError(ErrorCode.INVALID_INPUT, "the backup and the data dir overlap")
    if target.exists() and not target.is_dir():
        raise MemorayError(ErrorCode.INVALID_INPUT, f"{target} exists and is not a directory")
    non_empty = target.exists() and any(target.iterdir())
    if non_empty and not force:
        raise MemorayError(ErrorCode.INVALID_INPUT, f"{target} is not empty: restore into a new "
                           "data dir, or pass --force to replace it (it is kept aside)")
    if non_empty and (pid := _running_server(target)) is not None:
        raise MemorayError(ErrorCode.INVALID_INPUT,
                           f"a memoray server (pid {pid}) runs on {target}: stop it first")
    target.parent.mkdir(parents=True, exist_ok=True)
    stage = target.parent / f".{target.name}.restoring-{os.getpid()}"
    shutil.rmtree(stage, ignore_errors=True)
    try:
        stage.mkdir(mode=0o700)
        for entry in manifest["files"]:
            rel = entry["path"]
            if rel.startswith("shards/"):
                _, num, _ = rel.split("/")
                dest = stage / "shards" / num / "lmdb" / "data.mdb"
            elif rel == WEBHOOKS_FILE:
                dest = stage / "webhooks" / "lmdb" / "data.mdb"
            else:
                dest = stage / rel
            dest.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
            shutil.copyfile(src / rel, dest)
            os.chmod(dest, 0o600)
        per_shard = {int(s["shard"]): s.get("records") for s in manifest["shards"]}
        records = 0
        for i in range(int(manifest["layout"]["shards"])):
            records += _check_shard(stage / "shards" / f"{i:03d}" / "lmdb", per_shard.get(i))
        # The layout as backed up (whatever its version carries), with the new store id.
        layout = json.loads((src / LAYOUT_FILE).read_text())
        store_id = layout["store_id"] if keep_store_id else os.urandom(4).hex()
        _write_json(stage / LAYOUT_FILE, {**layout, "store_id": store_id})
        moved_aside = None
        if target.exists():
            if non_empty:
                moved_aside = target.with_name(f"{target.name}.replaced-{int(time.time())}")
                os.replace(target, moved_aside)
            else:
                target.rmdir()
        os.replace(stage, target)
    except BaseException:
        shutil.rmtree(stage, ignore_errors=True)
        raise
    return {"restored": str(target), "from": str(src), "records": records,
            "shards": int(manifest["layout"]["shards"]), "store_id": store_id,
            "backup_store_id": manifest.get("store_id"), "created": manifest.get("created"),
            "files": len(manifest["files"]), "replaced_kept_at": str(moved_aside)
            if moved_aside else None}

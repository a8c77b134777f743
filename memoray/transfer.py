"""`memoray import`: send an export to the server in batches, with a progress bar (tqdm, on
stderr) and a summary. The server keeps ids, timestamps and every field, and leaves records it
already holds unchanged, so an interrupted import is finished by running it again."""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

from memoray.client import ApiClient, ClientError

EXPORT_FORMAT = "memoray-export"
EXPORT_VERSION = 1
MAX_BATCH_BYTES = 16 * 1024 * 1024


@dataclass
class ImportSummary:
    received: int = 0
    created: int = 0
    updated: int = 0
    unchanged: int = 0
    skipped: int = 0
    seconds: float = 0.0
    failed: list[str] = field(default_factory=list)

    def add(self, res: dict[str, Any]) -> None:
        for k in ("received", "created", "updated", "unchanged", "skipped"):
            setattr(self, k, getattr(self, k) + int(res.get(k, 0)))

    def line(self) -> str:
        rate = self.received / self.seconds if self.seconds else 0.0
        text = (f"imported {self.received} memories in {self.seconds:.1f}s ({rate:.0f}/s): "
                f"{self.created} created, {self.updated} updated, {self.unchanged} unchanged")
        if self.skipped:
            text += f", {self.skipped} skipped (their idempotency key names another memory)"
        return text


def _open(path: str) -> tuple[IO[str], int | None]:
    """The file and its record count (None for stdin: no total for the bar)."""
    if path == "-":
        return sys.stdin, None
    p = Path(path)
    if not p.is_file():
        raise ClientError(f"{path}: no such file")
    with p.open("rb") as f:
        lines = sum(1 for line in f if line.strip())
    return p.open(encoding="utf-8"), max(0, lines - 1)


def check_header(line: str, path: str) -> dict:
    try:
        header = json.loads(line)
    except ValueError:
        header = None
    if not isinstance(header, dict) or header.get("format") != EXPORT_FORMAT:
        raise ClientError(f"{path}: not a memoray export (the first line must be its header; "
                          "make one with `memoray export`)")
    if header.get("version") != EXPORT_VERSION:
        raise ClientError(f"{path}: export format version {header.get('version')!r}; this "
                          f"memoray reads version {EXPORT_VERSION}")
    return header


def check_shards(api: ApiClient, header: dict, path: str) -> None:
    """Documents need the export's shard count (a chunk lives on its parent's shard): refuse
    up front, before any batch is stored, rather than half way through."""
    theirs = header.get("shards")
    ours = api.get("/api/info").get("shards")
    if theirs is None or theirs == ours:
        return
    with open(path, encoding="utf-8") as f:
        next(f, None)
        if any('"parent_id": "' in line for line in f):
            raise ClientError(f"{path} holds chunked documents from a {theirs}-shard store; this "
                              f"server has {ours} shards: import into a store started with "
                              f"--shards {theirs}")


def batches(stream: IO[str], path: str, size: int) -> Iterator[list[dict]]:
    batch: list[dict] = []
    nbytes = 0
    for lineno, line in enumerate(stream, start=2):
        if not line.strip():
            continue
        try:
            rec = json.loads(line)
        except ValueError as exc:
            raise ClientError(f"{path}:{lineno}: not JSON ({exc.msg})") from None
        if not isinstance(rec, dict):
            raise ClientError(f"{path}:{lineno}: a record must be a JSON object")
        batch.append(rec)
        nbytes += len(line)
        if len(batch) >= size or nbytes >= MAX_BATCH_BYTES:
            yield batch
            batch, nbytes = [], 0
    if batch:
        yield batch


def import_file(api: ApiClient, path: str, *, batch: int = 500,
                progress: bool = True) -> ImportSummary:
    from tqdm import tqdm

    batch = min(batch, 1000)
    stream, total = _open(path)
    summary = ImportSummary()
    t0 = time.time()
    try:
        first = stream.readline()
        if not first.strip():
            raise ClientError(f"{path}: empty file")
        header = check_header(first, path)
        if path != "-":
            check_shards(api, header, path)
        with tqdm(total=total, unit="mem", desc="importing", disable=not progress,
                  file=sys.stderr, dynamic_ncols=True) as bar:
            for chunk in batches(stream, path, batch):
                try:
                    res = api.import_batch(header, chunk)
                except ClientError as exc:
                    done = summary.received
                    raise ClientError(f"{exc} (after {done} of {total or '?'} records; nothing "
                                      "in the failing batch was stored; re-run to resume)",
                                      code=exc.code) from None
                summary.add(res)
                bar.update(len(chunk))
                bar.set_postfix(created=summary.created, unchanged=summary.unchanged,
                                refresh=False)
    finally:
        if stream is not sys.stdin:
            stream.close()
    summary.seconds = time.time() - t0
    return summary

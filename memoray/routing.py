"""Which shard holds a record: the routing scheme, a store's placement (stable, or moving from one
routing to another during a reshard), and each record's home key.

Schemes:
- `modulo`: blake2b(key) mod N, what stores written before layout version 3 use. Changing N
  moves about N/(N+1) of the records, so such a store keeps it only until its first reshard.
- `jump`: jump consistent hash (Lamping & Veach, 2014) of the same 64-bit blake2b digest, via the
  `jump-consistent-hash` package (a C extension with a pure-Python fallback). Going from N to N+1
  shards moves exactly the records that land on the new shard, about 1/(N+1); going from N to
  N-1 moves only the last shard's records. O(ln N) time, no state.
  Weighed against rendezvous (highest-random-weight) hashing, which also moves the minimum but
  costs N hashes per lookup and is only needed when an arbitrary shard (not the last) may be
  removed; shards here are numbered 0..N-1 and grow or shrink at the end, which is jump's case.

A record's home key (`home_key`) is what its shard is chosen by: the idempotency key's scope for a
keyed record (a document's chunks share the document's key), else the document's parent id, else
the record's id. When a record is created its id is minted so that the id's own owner is the
home key's owner; after a reshard only the home key's owner is guaranteed, so lookups by id fall
back to asking every shard (actors/shard_client.py).
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import jump

MODULO = "modulo"
JUMP = "jump"
SCHEMES = (MODULO, JUMP)
MAX_SHARDS = 256  # what `memoray serve --shards` accepts (memoray/settings.py)
# A shard refuses a new record it does not own under its placement (a client with an older
# placement routed it): the client re-reads the placement and routes again.
WRONG_SHARD = "WRONG_SHARD"


def key_hash(key: str) -> int:
    """Stable across processes and restarts (unlike hash())."""
    return int.from_bytes(hashlib.blake2b(key.encode(), digest_size=8).digest(), "big")


@dataclass(frozen=True)
class Routing:
    scheme: str
    shards: int

    def __post_init__(self) -> None:
        if self.scheme not in SCHEMES:
            raise ValueError(f"routing scheme must be one of {SCHEMES}, not {self.scheme!r}")
        if not 1 <= int(self.shards) <= MAX_SHARDS:
            raise ValueError(f"shard count must be between 1 and {MAX_SHARDS}")

    def owner(self, key: str) -> int:
        h = key_hash(key)
        return h % self.shards if self.scheme == MODULO else jump.hash(h, self.shards)

    def to_dict(self) -> dict:
        return {"scheme": self.scheme, "shards": self.shards}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> Routing:
        return cls(str(d["scheme"]), int(d["shards"]))


@dataclass(frozen=True)
class Placement:
    """A store's routing at one epoch: `current`, or, while a reshard runs, moving from `current`
    to `target`. New records always go to their owner under `writes` (the target while moving);
    a record not yet moved is still on its `current` owner, so reads consult both."""

    epoch: int
    current: Routing
    target: Routing | None = None

    @property
    def moving(self) -> bool:
        return self.target is not None

    @property
    def writes(self) -> Routing:
        return self.target or self.current

    @property
    def width(self) -> int:
        """How many shards hold records now (both sets while moving)."""
        return max(self.current.shards, self.target.shards if self.target else 0)

    def to_dict(self) -> dict:
        return {"epoch": self.epoch, "current": self.current.to_dict(),
                "target": self.target.to_dict() if self.target else None}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> Placement:
        target = d.get("target")
        return cls(int(d["epoch"]), Routing.from_dict(d["current"]),
                   Routing.from_dict(target) if target else None)

    @classmethod
    def legacy(cls, shards: int) -> Placement:
        """What a store without a recorded placement uses: modulo over its shard count."""
        return cls(0, Routing(MODULO, shards))


def _strip_chunk_suffix(key: str, index: Any) -> str:
    """A chunk's key names its document's key: chunk 0 carries K, chunk i carries K\\x1fi (or
    K#i in stores written before chunk keys were namespaced)."""
    if index is None:
        return key
    for sep in ("\x1f", "#"):
        suffix = f"{sep}{int(index)}"
        if key.endswith(suffix) and (sep == "\x1f" or int(index) > 0):
            return key[: -len(suffix)]
    return key


def home_key(record: Mapping[str, Any]) -> str:
    key = record.get("idempotency_key")
    if key:
        base = _strip_chunk_suffix(key, record.get("chunk_index"))
        return f"{record.get('workspace_id')}\x00{base}"
    return record.get("parent_id") or record["id"]


def home_keys(records: Iterable[Mapping[str, Any]]) -> list[str]:
    """Home keys of a batch, one document at a time: all of a document's chunks get the home of
    its first chunk present in the batch, so a document never splits (this also settles an old
    store's chunk 0 whose key was K#0)."""
    records = list(records)
    by_doc: dict[str, str] = {}
    for rec in sorted((r for r in records if r.get("parent_id")),
                      key=lambda r: int(r.get("chunk_index") or 0)):
        parent = rec["parent_id"]
        if parent in by_doc:
            continue
        key = rec.get("idempotency_key")
        if key and int(rec.get("chunk_index") or 0) == 0:
            siblings = [r for r in records if r.get("parent_id") == parent and r is not rec]
            if any((r.get("idempotency_key") or "").endswith(f"#{int(r.get('chunk_index') or 0)}")
                   for r in siblings) and key.endswith("#0"):
                key = key[:-2]  # an old-style document: every chunk is K#i
            by_doc[parent] = f"{rec.get('workspace_id')}\x00{key}"
        else:
            by_doc[parent] = home_key(rec)
    return [by_doc[r["parent_id"]] if r.get("parent_id") else home_key(r) for r in records]


def moved_fraction(keys: Iterable[str], before: Routing, after: Routing) -> float:
    """Share of `keys` whose owner differs between two routings."""
    keys = list(keys)
    if not keys:
        return 0.0
    return sum(before.owner(k) != after.owner(k) for k in keys) / len(keys)

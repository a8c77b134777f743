"""Time-sortable ids (ULID layout: 48-bit milliseconds + 80 random bits, Crockford base32).

Sortable ids let LMDB keep records in capture order and let shards route by a stable hash.
"""

from __future__ import annotations

import os
import threading
import time

from memoray.routing import Routing, key_hash

_ALPHABET = "0123456789ABCDEFGHJKMNPQRSTVWXYZ"
_DECODE = {c: i for i, c in enumerate(_ALPHABET)}
_lock = threading.Lock()
_last_ms = 0
_last_rand = 0


def new_id(now_ms: int | None = None) -> str:
    """A 26-character ULID, monotonic within one process even inside the same millisecond."""
    global _last_ms, _last_rand
    with _lock:
        ms = int(time.time() * 1000) if now_ms is None else now_ms
        if ms <= _last_ms:
            ms = _last_ms
            rand = (_last_rand + 1) & ((1 << 80) - 1)
        else:
            rand = int.from_bytes(os.urandom(10), "big")
        _last_ms, _last_rand = ms, rand
    value = (ms << 80) | rand
    chars = []
    for _ in range(26):
        chars.append(_ALPHABET[value & 31])
        value >>= 5
    return "".join(reversed(chars))


def is_valid_id(value: str) -> bool:
    return isinstance(value, str) and len(value) == 26 and all(c in _DECODE for c in value)



def shard_for(memory_id: str, shards: int | Routing) -> int:
    """Stable across processes and restarts (unlike hash()), so a record always has one home.
    `shards`: a Routing (memoray.routing), or a count for the modulo routing of stores written
    before layout version 3."""
    if isinstance(shards, int):
        return key_hash(memory_id) % shards
    return shards.owner(memory_id)


def new_id_on_shard(shard: int, shards: int | Routing) -> str:
    """A fresh id whose home (shard_for) is `shard`: lets related records (a document's chunks,
    an idempotency key's record) live on one shard, so their checks commit in one transaction."""
    count = shards if isinstance(shards, int) else shards.shards
    if count <= 1:
        return new_id()
    while True:
        candidate = new_id()
        if shard_for(candidate, shards) == shard:
            return candidate

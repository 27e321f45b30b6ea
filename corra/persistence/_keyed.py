"""Reads of a few keys at a time, each in the read transaction of its caller
(`corra.persistence._lmdb.Reads`): a page of a history, and the snapshots of many names.
Their cost follows what they return, not what the store holds."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import lmdb


def history_entries(
    txn: lmdb.Transaction, history: Any, prefix: bytes, start: bytes, limit: int | None
) -> tuple[list[tuple[int, bytes]], bool]:
    """Up to ``limit`` (None: all) entries of ``history`` under ``prefix`` (one process's),
    from the key ``start`` on, each with its sequence number (what follows the prefix, big
    endian), and whether more follow."""
    cursor = txn.cursor(db=history)
    entries: list[tuple[int, bytes]] = []
    if cursor.set_range(start):
        for key, value in cursor:
            if not key.startswith(prefix):
                break
            if len(entries) == limit:
                return entries, True
            entries.append((int.from_bytes(key[len(prefix) :], "big"), value))
    return entries, False


def named_snapshots(
    txn: lmdb.Transaction, names: Any, snapshots: Any, keys: Sequence[bytes]
) -> list[tuple[bytes, bytes] | None]:
    """Per name key, its owner's key and latest snapshot; None if the name has no owner, or
    its owner no snapshot."""
    found: list[tuple[bytes, bytes] | None] = []
    for key in keys:
        owner = txn.get(key, db=names)
        snapshot = None if owner is None else txn.get(owner, db=snapshots)
        found.append(None if snapshot is None else (owner, snapshot))
    return found

"""Reads of a few keys at a time, each in the read transaction of its caller
(`corra.persistence._lmdb.Reads`): a page of a history, the snapshots of many names, an entry
of the quarantine, and notes. Their cost follows what they return, not what the store holds.

Notes (the ``notes`` database): process id -> a small value kept apart from the process's
snapshot, with no history (what a backend says of where a program is, for instance). They
are written on their own (`corra.persistence.Store.put_notes`), never by a save, so that no
transition waits for one; removing a process (``set_aside``, ``delete``) removes its note.
A store written before notes existed gets the database, empty, from the first writer that
opens it, and keeps its format version: nothing else depends on it, and a corra that does
not know it leaves it alone. A reader of such a store finds no notes.

Statuses (the ``statuses`` database) are kept the same way: process id -> what its program
said last of how far it is (`corra.processes._statuses`), written on their own
(`corra.persistence.Store.put_statuses`), removed with the process, and absent from an
older store.
"""

from __future__ import annotations

import base64
import json
from collections.abc import Sequence
from typing import Any

import attrs
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


@attrs.frozen
class QuarantinedRecord:
    """A record set aside because it could not be decoded."""

    process_id: str
    raw: bytes
    reason: str
    time: float
    """When it was set aside, in seconds since the epoch."""


def quarantine_entry(process_id: str, stored: bytes) -> QuarantinedRecord:
    """The quarantine's entry of ``process_id``, as stored (JSON)."""
    try:
        entry = json.loads(stored)
        return QuarantinedRecord(
            process_id=process_id,
            raw=base64.b64decode(entry["raw"], validate=True),
            reason=str(entry["reason"]),
            time=float(entry["time"]),
        )
    except (ValueError, KeyError, TypeError) as exc:
        return QuarantinedRecord(process_id, stored, f"unreadable quarantine entry: {exc}", 0.0)


class NoteReads:
    """The reads of notes (see the module doc), mixed into `corra.persistence._lmdb.Reads`."""

    def _environment(self) -> Any:
        raise NotImplementedError

    def _key(self, process_id: str) -> bytes:
        """``process_id`` as a key (`corra.persistence._lmdb.process_key`)."""
        raise NotImplementedError

    def note(self, process_id: str) -> bytes | None:
        """The note of ``process_id``, or None."""
        key = self._key(process_id)
        environment = self._environment()
        notes = environment.databases.notes
        if notes is None:
            return None
        found: bytes | None = environment.read(lambda txn: txn.get(key, db=notes))
        return found

    def notes(self) -> list[tuple[str, bytes]]:
        """Every note, as ``(process_id, value)`` in process id order, in one read
        transaction: there are few (a note is kept while its program runs), but not on the
        loop."""
        environment = self._environment()
        notes = environment.databases.notes
        if notes is None:
            return []
        found = environment.read(lambda txn: list(txn.cursor(db=notes)))
        return [(key.decode("utf-8", "surrogateescape"), value) for key, value in found]

    def status(self, process_id: str) -> bytes | None:
        """The status of ``process_id``, or None."""
        return self.statuses_of([process_id])[0]

    def statuses_of(self, process_ids: Sequence[str]) -> list[bytes | None]:
        """The status of each of ``process_ids`` (None where it has none), in one read
        transaction: a page of a listing's."""
        keys = [self._key(process_id) for process_id in process_ids]
        environment = self._environment()
        statuses = environment.databases.statuses
        if statuses is None or not keys:
            return [None] * len(keys)
        found: list[bytes | None] = environment.read(
            lambda txn: [txn.get(key, db=statuses) for key in keys]
        )
        return found


class EntryReads:
    """The reads of the ``workflows`` database (keyed entries of the layer above processes,
    written by `corra.persistence.Store.put_entries`), mixed into
    `corra.persistence._lmdb.Reads`. A store without the database has no entries."""

    def _environment(self) -> Any:
        raise NotImplementedError

    def entry(self, key: bytes) -> bytes | None:
        """The entry of ``key``, or None."""
        environment = self._environment()
        database = environment.databases.workflows
        if database is None:
            return None
        found: bytes | None = environment.read(lambda txn: txn.get(key, db=database))
        return found

    def entries(
        self, prefix: bytes, *, after: bytes | None = None, limit: int | None = None
    ) -> list[tuple[bytes, bytes]]:
        """Up to ``limit`` (None: all) entries whose keys start with ``prefix``, in key
        order, from the first key after ``after`` (None: from the first), in one read
        transaction (which reads those only: not on the loop for many)."""
        environment = self._environment()
        database = environment.databases.workflows
        if database is None:
            return []

        def read(txn: lmdb.Transaction) -> list[tuple[bytes, bytes]]:
            cursor = txn.cursor(db=database)
            found: list[tuple[bytes, bytes]] = []
            start = prefix if after is None else after + b"\x00"
            if not cursor.set_range(max(start, prefix)):
                return found
            for key, value in cursor:
                if not key.startswith(prefix) or (limit is not None and len(found) >= limit):
                    break
                found.append((key, value))
            return found

        return environment.read(read)

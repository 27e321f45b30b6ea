"""LMDB underneath the store: its layout, keys, the environment, and the reads.

Layout: ``<state_dir>/state.lmdb/`` holds LMDB's ``data.mdb`` and ``lock.mdb``, and
``writer.lock``, which one writing process at a time holds (a second runtime on the same
state directory would run every process twice). Named databases:

- ``snapshots``: process id -> the latest snapshot (bytes, as the caller encoded it);
- ``history``: process id, NUL, big-endian 8-byte sequence number -> one transition, append
  only (the NUL keeps the history of ``"a"`` apart from that of ``"ab"``, so process ids
  cannot contain NUL);
- ``names``: name -> process id;
- ``quarantine``: process id -> JSON ``{"raw": base64, "reason": ..., "time": ...}``;
- ``meta``: ``format`` -> the store format version;
- ``active``: process id -> empty, for the snapshots the caller said are active (``save(...,
  active=True)``), so that a recovery reads those and nothing else. Written in the same
  transaction as the snapshot; ``set_aside`` and ``delete`` remove the id.
- ``terms``, ``index``, ``counts``: the secondary indexes, from the terms each save carries
  (`corra.persistence._indexes`); ``set_aside`` and ``delete`` remove a process from them.
- ``notes``: process id -> a note, apart from its snapshot (`corra.persistence._keyed`).
- ``statuses``: process id -> its program's latest status, apart from its snapshot, as notes.
- ``workflows``: keyed entries of the layer above processes (workflow runs and their steps:
  `corra.workflows`), written by `Store.put_entries` only, never by a save; the keys are the
  caller's (`corra.persistence._keyed`).

Format 1 had no ``active`` database. A writer opening a format-1 store creates it empty and
leaves the format at 1 (`Reads.has_active_index` is False) until the caller has rebuilt the
index (`Store.rebuild_active_index`), which makes it format 2. A store of format 2 is refused
by a corra that knows only format 1, which would not keep the index up to date.

Reads are single read transactions, cheap enough to run on the loop for single keys; a scan
of every snapshot belongs in a worker thread (``trio.to_thread.run_sync``). Growing the map
(only the writer does) invalidates every open transaction of the environment in this
process, so it waits until no read is in progress here; readers in other processes adopt
the new size when their next transaction finds the map grown.
"""

from __future__ import annotations

import fcntl
import os
import threading
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Final, TypeVar

import attrs
import lmdb

from corra._errors import CorruptRecord, StoreError
from corra._statedir import FILE_MODE, check_directory, make_private_dirs, open_private
from corra.persistence._codec import Codec
from corra.persistence._indexes import IndexReads, IndexTerm, IndexWrites, decode_terms
from corra.persistence._keyed import (
    EntryReads,
    NoteReads,
    QuarantinedRecord,
    history_entries,
    named_snapshots,
    quarantine_entry,
)
from corra.persistence._keys import MAX_KEY_BYTES as MAX_KEY_BYTES
from corra.persistence._keys import SEQUENCE_BYTES as SEQUENCE_BYTES
from corra.persistence._keys import history_prefix as history_prefix
from corra.persistence._keys import key_of as key_of
from corra.persistence._keys import process_key as process_key
from corra.persistence._keys import require_bytes as require_bytes
from corra.persistence._keys import text as text

T = TypeVar("T")
R = TypeVar("R")

#: Version of the layout above; a store written by a newer layout is refused.
FORMAT_VERSION: Final = 3
#: The first format with a complete ``active`` index.
ACTIVE_INDEX_FORMAT: Final = 2
#: The first format with complete secondary indexes (``terms``, ``index``, ``counts``).
INDEXES_FORMAT: Final = 3
_FORMAT_KEY: Final = b"format"
_DATABASES: Final = (
    "snapshots",
    "history",
    "names",
    "quarantine",
    "meta",
    "active",
    "terms",
    "index",
    "counts",
    "notes",
    "statuses",
    "workflows",
)
#: Databases that an older store lacks (None when a reader opens such a store).
_LATER_DATABASES: Final = (
    "active",
    "terms",
    "index",
    "counts",
    "notes",
    "statuses",
    "workflows",
)
#: Snapshots read per read transaction by `scan`.
_SCAN_BATCH: Final = 1024


@attrs.frozen
class CorruptSnapshot:
    """A snapshot that `scan_decoded` could not decode; hand it to `Store.set_aside`."""

    process_id: str
    raw: bytes
    reason: str


@attrs.frozen
class SnapshotCounts:
    """How many snapshots a store holds, from LMDB's statistics (no scan)."""

    snapshots: int
    """Every snapshot."""
    active: int
    """The ids in the ``active`` index (0 for a store without one)."""

    @property
    def inactive(self) -> int:
        """Snapshots not in the ``active`` index."""
        return self.snapshots - self.active


def store_error(message: str, cause: BaseException) -> StoreError:
    error = StoreError(message)
    error.__cause__ = cause
    return error


# The environment -------------------------------------------------------------------------


@attrs.frozen
class Databases:
    snapshots: Any
    history: Any
    names: Any
    quarantine: Any
    meta: Any
    active: Any
    """None for a format-1 store opened read-only (it has no such database)."""
    terms: Any
    """None for a store of format 1 or 2 opened read-only, as ``index`` and ``counts``."""
    index: Any
    counts: Any
    notes: Any
    statuses: Any
    workflows: Any
    """None for a store written before workflows, opened read-only."""
    index_writes: IndexWrites = attrs.field(factory=IndexWrites, eq=False, repr=False)
    next_history: dict[bytes, int] = attrs.field(factory=dict, eq=False, repr=False)
    """The writer's memory of the next history sequence number of the processes it wrote
    lately (see `corra.persistence._store`); never read by readers."""


class Environment:
    """An open LMDB environment, its databases, and the guard that keeps reads off a remap.

    Any thread may read; only the writer thread writes, grows the map and closes.
    """

    def __init__(self, env: lmdb.Environment, databases: Databases, path: Path) -> None:
        self.env = env
        self.databases = databases
        self.path = path
        self._guard = threading.Condition()
        self._reading = 0
        self._waiting = 0  # (threads waiting for the reads to end: a remap, the close)
        self._closed = False

    def read(self, function: Callable[[lmdb.Transaction], R]) -> R:
        """``function(txn)`` in a read transaction; LMDB errors become `StoreError`."""
        while True:
            with self._guard:
                if self._closed:
                    raise StoreError(f"the store at {self.path} is closed")
                self._reading += 1
            try:
                with self.env.begin() as txn:
                    return function(txn)
            except lmdb.MapResizedError:
                pass  # another process grew the map: adopt its size, then read again
            except lmdb.Error as exc:
                raise StoreError(f"reading the store at {self.path} failed: {exc}") from exc
            finally:
                self._stop_reading()
            self.resize(0)

    def _stop_reading(self) -> None:
        with self._guard:
            self._reading -= 1
            # (notified only when someone waits: a read is what every lookup costs)
            if not self._reading and self._waiting:
                self._guard.notify_all()

    def _wait_for_readers(self) -> None:
        """Until no read is in progress (the guard held)."""
        while self._reading:
            self._waiting += 1
            try:
                self._guard.wait()
            finally:
                self._waiting -= 1

    def resize(self, map_size: int) -> None:
        """Remap to ``map_size`` bytes (0: the size the data file says), between reads."""
        with self._guard:
            self._wait_for_readers()
            self.env.set_mapsize(map_size)

    def close(self) -> None:
        with self._guard:
            self._closed = True
            self._wait_for_readers()
            self.env.close()


def stored_format(txn: lmdb.Transaction, databases: Databases, path: Path) -> int | None:
    """The store's format version, None if it has none (refusing one newer than ours)."""
    stored = txn.get(_FORMAT_KEY, db=databases.meta)
    if stored is None:
        return None
    try:
        version = int(stored)
    except ValueError:
        raise StoreError(f"{path}: unreadable store format {stored!r}") from None
    if version > FORMAT_VERSION:
        raise StoreError(
            f"{path}: store format {version} is newer than this corra knows ({FORMAT_VERSION})"
        )
    return version


def set_format(txn: lmdb.Transaction, databases: Databases, version: int) -> None:
    txn.put(_FORMAT_KEY, str(version).encode(), db=databases.meta)


def mark_active_index_complete(
    txn: lmdb.Transaction, databases: Databases, version: int = ACTIVE_INDEX_FORMAT
) -> None:
    """Raise the format to ``version``, one whose ``active`` index (and, from
    `INDEXES_FORMAT`, every index) is complete (the format was checked when the store was
    opened)."""
    if int(txn.get(_FORMAT_KEY, b"0", db=databases.meta)) < version:
        set_format(txn, databases, version)


def lmdb_path(state_dir: str | os.PathLike[str]) -> Path:
    return Path(state_dir) / "state.lmdb"


def make_store_dir(path: Path) -> None:
    """Create the store's directory (0700: LMDB would give it the files' mode), or check
    the one there (`corra._statedir.check_directory`)."""
    make_private_dirs(path)
    check_directory(path, "store")


def take_writer_lock(path: Path) -> int:
    descriptor = open_private(path / "writer.lock", os.O_RDWR | os.O_CREAT, what="store lock")
    try:
        fcntl.flock(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(descriptor)
        raise StoreError(f"the store at {path} is open for writing elsewhere") from None
    except BaseException:
        os.close(descriptor)
        raise
    return descriptor


def open_for_writing(path: Path, *, durable: bool, map_size: int) -> Environment:
    """Open (creating) the store in ``path``, a directory made by `make_store_dir`."""
    env = lmdb.open(
        str(path),
        map_size=map_size,
        max_dbs=len(_DATABASES),
        sync=durable,
        metasync=durable,
        lock=True,
        mode=FILE_MODE,  # data.mdb holds every spec's env
    )
    try:
        while True:
            try:
                with env.begin(write=True) as txn:
                    databases = Databases(
                        *(env.open_db(name.encode(), txn=txn, create=True) for name in _DATABASES)
                    )
                    if stored_format(txn, databases, path) is None:
                        set_format(txn, databases, FORMAT_VERSION)  # a new store
                break
            except lmdb.MapFullError:  # a map too small even for the empty databases
                env.set_mapsize(env.info()["map_size"] * 2)
    except BaseException:
        env.close()
        raise
    return Environment(env, databases, path)


def open_for_reading(path: Path) -> Environment:
    if not (path / "data.mdb").is_file():
        raise StoreError(f"no store at {path}")
    check_directory(path, "store")
    # map_size=0: the size the data file records; lock=True: coexist with the writer (whose
    # lock file a reader may create: hence the mode).
    env = lmdb.open(
        str(path),
        map_size=0,
        max_dbs=len(_DATABASES),
        readonly=True,
        lock=True,
        create=False,
        mode=FILE_MODE,
    )
    try:
        # Without txn=: a handle opened in a read transaction outlives it only if that
        # transaction commits, which open_db does for its own.
        handles = []
        for name in _DATABASES:
            try:
                handles.append(env.open_db(name.encode(), create=False))
            except lmdb.NotFoundError:
                if name not in _LATER_DATABASES:  # (an older format has none)
                    raise StoreError(f"{path} is not a corra store") from None
                handles.append(None)
        databases = Databases(*handles)
        with env.begin() as txn:
            if stored_format(txn, databases, path) is None:
                raise StoreError(f"{path} is not a corra store (no format version)")
    except BaseException:
        env.close()
        raise
    return Environment(env, databases, path)


def opening(path: Path, open_environment: Callable[[], Environment]) -> Environment:
    """``open_environment()``, with LMDB and OS errors as `StoreError`."""
    try:
        return open_environment()
    except (lmdb.Error, OSError) as exc:
        raise StoreError(f"cannot open the store at {path}: {exc}") from exc


# Reads -----------------------------------------------------------------------------------


class Reads(IndexReads, NoteReads, EntryReads):
    """The read methods, shared by `Store` and `StoreReader`. Every one is sync and cheap
    for single keys; `scan` and friends read everything."""

    def _environment(self) -> Environment:
        raise NotImplementedError

    _key = staticmethod(process_key)

    def load(self, process_id: str) -> bytes | None:
        """The latest snapshot of ``process_id``, or None."""
        key = process_key(process_id)
        environment = self._environment()
        return environment.read(lambda txn: txn.get(key, db=environment.databases.snapshots))

    def history(self, process_id: str) -> list[bytes]:
        """The transitions of ``process_id``, oldest first."""
        return [entry for _, entry in self.history_page(process_id)[0]]

    def history_page(
        self, process_id: str, *, after: int | None = None, limit: int | None = None
    ) -> tuple[list[tuple[int, bytes]], bool]:
        """Up to ``limit`` (None: all) transitions of ``process_id`` after the sequence
        number ``after`` (None: from the first), oldest first, each with its sequence
        number, and whether more follow; in one read transaction that reads those only."""
        prefix = history_prefix(process_key(process_id))
        if after is not None and after >= (1 << 8 * SEQUENCE_BYTES) - 1:
            return [], False  # (past the last number there can be)
        start = prefix if after is None else prefix + (after + 1).to_bytes(SEQUENCE_BYTES, "big")
        environment = self._environment()
        history = environment.databases.history
        return environment.read(lambda txn: history_entries(txn, history, prefix, start, limit))

    def load_named(self, names: Sequence[str]) -> list[tuple[str, bytes] | None]:
        """Per name, the process that owns it and its latest snapshot (None: no owner, or
        no snapshot), in one read transaction."""
        keys = [key_of(name, "name") for name in names]
        environment = self._environment()
        databases = environment.databases
        found = environment.read(
            lambda txn: named_snapshots(txn, databases.names, databases.snapshots, keys)
        )
        return [None if item is None else (text(item[0]), item[1]) for item in found]

    def id_for_name(self, name: str) -> str | None:
        """The process id the name belongs to, or None."""
        key = key_of(name, "name")
        environment = self._environment()
        owner = environment.read(lambda txn: txn.get(key, db=environment.databases.names))
        return None if owner is None else text(owner)

    def scan(self) -> Iterator[tuple[str, bytes]]:
        """Every snapshot, as ``(process_id, raw bytes)`` in process id order.

        Reads in batches, one read transaction each, so that nothing is held open between
        items: the view is consistent per batch, not across the whole scan. Large scans
        belong in a worker thread.
        """
        environment = self._environment()
        for key, value in _scan(environment, environment.databases.snapshots):
            yield text(key), value

    def scan_active(self) -> Iterator[tuple[str, bytes]]:
        """The snapshots of the ids in the ``active`` index, as ``(process_id, raw bytes)``
        in process id order; no other snapshot is read.

        Batched as `scan` is (consistent per batch, not across the scan); an id removed
        between two batches is not yielded.

        Raises:
            StoreError: the store has no complete index (`has_active_index` is False).
        """
        environment = self._environment()
        if not self.has_active_index():
            raise StoreError(f"the store at {environment.path} has no index of active snapshots")
        databases = environment.databases
        for key, value in _scan(environment, databases.active, snapshots=databases.snapshots):
            yield text(key), value

    def has_active_index(self) -> bool:
        """Whether the ``active`` index is complete: False for a store written by a corra
        that kept none, until `Store.rebuild_active_index` has run."""
        return self._format_reaches("active", ACTIVE_INDEX_FORMAT)

    def has_indexes(self) -> bool:
        """Whether the secondary indexes are complete: False for a store written by a corra
        that kept none, until `Store.rebuild_indexes` has run."""
        return self._format_reaches("terms", INDEXES_FORMAT)

    def _format_reaches(self, database: str, version: int) -> bool:
        """Whether the store has ``database`` and its format is ``version`` or later."""
        environment = self._environment()
        databases = environment.databases
        if getattr(databases, database) is None:
            return False
        stored = environment.read(lambda txn: stored_format(txn, databases, environment.path))
        return stored is not None and stored >= version

    def index_terms(self, process_id: str) -> tuple[IndexTerm, ...]:
        """The terms ``process_id`` last wrote (empty if none)."""
        key = process_key(process_id)
        environment = self._environment()
        if environment.databases.terms is None:
            return ()
        blob = environment.read(lambda txn: txn.get(key, db=environment.databases.terms))
        return decode_terms(blob) if blob else ()

    def counts(self) -> SnapshotCounts:
        """How many snapshots there are, and how many are in the ``active`` index; from
        LMDB's statistics, in one read transaction (no scan: cheap enough for the loop)."""
        environment = self._environment()
        databases = environment.databases

        def read(txn: lmdb.Transaction) -> SnapshotCounts:
            active = 0 if databases.active is None else txn.stat(databases.active)["entries"]
            return SnapshotCounts(txn.stat(databases.snapshots)["entries"], active)

        return environment.read(read)

    def scan_decoded(self, codec: Codec[T]) -> tuple[dict[str, T], list[CorruptSnapshot]]:
        """Every snapshot decoded with ``codec``: the records, and the ones that are corrupt
        (never an exception for a corrupt record)."""
        records: dict[str, T] = {}
        corrupt: list[CorruptSnapshot] = []
        for process_id, raw in self.scan():
            try:
                records[process_id] = codec.decode(raw)
            except CorruptRecord as exc:
                corrupt.append(CorruptSnapshot(process_id, raw, str(exc)))
        return records, corrupt

    def quarantined(self) -> list[QuarantinedRecord]:
        """Every record set aside, in process id order."""
        environment = self._environment()
        return [
            quarantine_entry(text(key), value)
            for key, value in _scan(environment, environment.databases.quarantine)
        ]


def _scan(
    environment: Environment, database: Any, *, snapshots: Any = None
) -> Iterator[tuple[bytes, bytes]]:
    """Every item of ``database``, in key order, `_SCAN_BATCH` keys per read transaction.
    With ``snapshots``, ``database`` is an index: each of its keys comes with its value in
    ``snapshots``, read in the same transaction (a key without one is skipped)."""
    after: bytes | None = None
    while True:

        def read(
            txn: lmdb.Transaction, after: bytes | None = after
        ) -> tuple[list[tuple[bytes, bytes]], bytes | None]:
            cursor = txn.cursor(db=database)
            positioned = cursor.first() if after is None else cursor.set_range(after)
            if positioned and after is not None and cursor.key() == after:
                positioned = cursor.next()
            items = []
            last = None
            for _ in range(_SCAN_BATCH):
                if not positioned:
                    return items, None
                last = cursor.key()
                if snapshots is None:
                    items.append((last, cursor.value()))
                else:
                    value = txn.get(last, db=snapshots)
                    if value is not None:
                        items.append((last, value))
                positioned = cursor.next()
            return items, last if positioned else None

        items, last = environment.read(read)
        yield from items
        if last is None:
            return
        after = last


class StoreReader(Reads):
    """Read access to a store that another process may be writing; see `open_store_readonly`."""

    def __init__(self, environment: Environment) -> None:
        self.path = environment.path
        self._open: Environment | None = environment

    def __repr__(self) -> str:
        return f"<StoreReader {self.path}>"

    def _environment(self) -> Environment:
        if self._open is None:
            raise StoreError(f"the store at {self.path} is closed")
        return self._open


@contextmanager
def open_store_readonly(state_dir: str | os.PathLike[str]) -> Iterator[StoreReader]:
    """Open an existing store to read it, blocking (for the command line, not the loop).

    Readers coexist with the process that writes (LMDB's lock file), and adopt the map
    when the writer grows it. Within one process, a store cannot be open twice.

    Raises:
        StoreError: there is no store, or it cannot be read.
    """
    path = lmdb_path(state_dir)
    environment = opening(path, lambda: open_for_reading(path))
    reader = StoreReader(environment)
    try:
        yield reader
    finally:
        reader._open = None
        environment.close()

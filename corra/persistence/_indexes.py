"""Secondary indexes of the store: kept in the save's own write transaction, read by pages.

The store knows no process: a save hands it the record's index terms, each an
``(index, group, order)`` triple (`IndexTerm`) that the caller computed from the record:

- ``index``: a short name (``"phase"``);
- ``group``: what is selected and counted (``b"running"``, ``b"team=infra"``, ``b""`` for
  an index of one group);
- ``order``: where the record sorts within the group; with the group, unique per record
  (the caller puts the record's id at its end).

None of the three holds NUL or SOH (``\x01``), which separate them where they are stored.

Layout (named databases of `corra.persistence._lmdb`):

- ``terms``: process id -> the entries it last wrote (`encode_terms`), so that the next save
  replaces them and ``delete`` and ``set_aside`` remove them;
- ``index``: ``index NUL group NUL order`` -> process id;
- ``counts``: ``index NUL group`` -> how many processes are in the group (8 bytes, big-endian),
  moved by the saves that change a term: counting a group never scans it. A group that
  empties is removed.

The writes of a transaction note the terms they give (`set_terms`, `remove_terms`); `flush`
applies them last, once per process: a process saved three times in one batch moves its
entries once, from what was stored to what its last write gave, and each count moves once.

A page (`read_page`) walks one or more ranges of ``index`` in the order of what follows each
range's prefix (the *position*), merged, from just after a position: a position is a key, not
a count, so a page read while processes are written neither repeats nor skips one that stays
where it was.
"""

from __future__ import annotations

import collections
import heapq
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import Any, Final, TypeAlias

import attrs
import lmdb

from corra._errors import ConfigError, StoreError

#: One index term of a record: ``(index, group, order)`` (see the module's docstring).
IndexTerm: TypeAlias = tuple[str, bytes, bytes]

_SEP: Final = b"\x00"
_TERM_SEP: Final = b"\x01"
#: LMDB's key limit (`corra.persistence._lmdb`), which an index entry must fit.
_MAX_KEY_BYTES: Final = 511
_INDEX_NAMES: dict[str, bytes] = {}
#: How many processes' terms the writer remembers at most (`committed`), about 3 MB.
_KNOWN_TERMS: Final = 10_000


def _index_name(index: str) -> bytes:
    """The name of an index as an entry starts with it: ``index NUL`` (checked once)."""
    encoded = _INDEX_NAMES.get(index)
    if encoded is None:
        if not isinstance(index, str) or not index or "\x00" in index or "\x01" in index:
            raise ConfigError(f"index: got {index!r}, expected a name without NUL or SOH")
        encoded = _INDEX_NAMES[index] = index.encode() + _SEP
    return encoded


def encode_terms(terms: Sequence[IndexTerm]) -> bytes:
    """The terms as stored in ``terms``: their entry keys (``index NUL group NUL order``),
    joined by SOH (so that splitting them again is one C call: a save at every transition
    of every process does it). Checked here, on the caller's side; a save takes the terms
    so encoded as well (a caller that saves often keeps what does not change encoded:
    `join_terms`, `term_template`).

    Raises:
        ConfigError: an index, group or order holds NUL or SOH, or an entry is longer than
            a key may be.
        TypeError: a group or order is not bytes.
    """
    if not terms:
        return b""
    names = _INDEX_NAMES
    try:
        entries = [
            (names.get(index) or _index_name(index)) + group + _SEP + order
            for index, group, order in terms
        ]
    except TypeError:
        raise TypeError("an index term's group and order must be bytes") from None
    blob = _TERM_SEP.join(entries)
    if blob.count(_SEP) != 2 * len(entries) or blob.count(_TERM_SEP) != len(entries) - 1:
        raise ConfigError(f"index terms: a group or order holds NUL or SOH: {terms!r}")
    if max(map(len, entries)) > _MAX_KEY_BYTES:
        raise ConfigError(f"index terms: an entry is longer than {_MAX_KEY_BYTES} bytes")
    return blob


def join_terms(first: bytes, second: bytes) -> bytes:
    """The terms of both (each encoded by `encode_terms`, or joined by this)."""
    if not first or not second:
        return first or second
    return first + _TERM_SEP + second


def term_template(lasting: bytes, index: str, order: bytes) -> tuple[bytes, bytes]:
    """``(head, tail)`` such that ``head + group + tail`` is ``lasting`` (encoded terms)
    joined with the term ``(index, group, order)``, encoded, for a ``group`` that
    `encode_terms` accepts (the caller checks its groups once): a save that moves a process
    to another group of one index (a phase) is then two concatenations.

    Raises:
        ConfigError, TypeError: as `encode_terms` for ``(index, b"", order)``.
    """
    encode_terms(((index, b"", order),))  # (the checks of the index and the order)
    return (lasting + _TERM_SEP if lasting else b"") + _index_name(index), _SEP + order


def _counted(entry: bytes) -> bytes:
    """The count key of an entry: ``index NUL group`` (the order holds no NUL)."""
    return entry[: entry.rindex(_SEP)]


def decode_terms(blob: bytes) -> tuple[IndexTerm, ...]:
    """The terms of a blob of `encode_terms`."""
    out = []
    for entry in blob.split(_TERM_SEP):
        index, group, order = entry.split(_SEP)
        out.append((index.decode(), group, order))
    return tuple(out)


class IndexWrites:
    """The writer's side of the indexes (`corra.persistence._lmdb.Databases.index_writes`):
    what the transaction under way changes, and what it remembers of committed terms."""

    __slots__ = ("changes", "deltas", "known")

    def __init__(self) -> None:
        self.changes: dict[bytes, bytes] = {}
        """The terms the writes of the transaction under way give, per process."""
        self.deltas: collections.defaultdict[bytes, int] = collections.defaultdict(int)
        """How the transaction under way moves each count."""
        self.known: dict[bytes, bytes] = {}
        """The stored terms of the processes the writer wrote lately (`committed`)."""


def set_terms(databases: Any, process: bytes, blob: bytes) -> None:
    """Make ``blob`` the terms of ``process`` when the transaction ends (`flush`): a
    process saved several times in one batch moves its entries and counts once, from what
    was stored before the batch to what its last write gave (b"": out of every index)."""
    databases.index_writes.changes[process] = blob


def remove_terms(databases: Any, process: bytes) -> None:
    """Take ``process`` out of every index when the transaction ends (``delete``,
    ``set_aside``)."""
    if databases.terms is not None:
        databases.index_writes.changes[process] = b""


def begin(databases: Any) -> None:
    """Forget what an earlier attempt of the transaction noted (the writer calls it before
    each attempt: one that failed wrote nothing)."""
    databases.index_writes.changes.clear()
    databases.index_writes.deltas.clear()


def flush(txn: lmdb.Transaction, databases: Any) -> None:
    """Apply the transaction's term changes, then move each count once; the writer calls it
    last in every transaction."""
    changes = databases.index_writes.changes
    if changes:
        known = databases.index_writes.known
        for process, blob in changes.items():
            _replace(txn, databases, process, blob, known.get(process))
    deltas = databases.index_writes.deltas
    counts = databases.counts
    for key, delta in deltas.items():
        if not delta:
            continue
        stored = txn.get(key, db=counts)
        value = (0 if stored is None else int.from_bytes(stored, "big")) + delta
        if value > 0:
            txn.put(key, value.to_bytes(8, "big"), db=counts)
        else:
            txn.delete(key, db=counts)


def committed(databases: Any) -> None:
    """The transaction committed: remember the terms it wrote, so that the next save of the
    same process need not read them (the writer is the only one that changes them)."""
    known = databases.index_writes.known
    changes = databases.index_writes.changes
    if len(known) + len(changes) > _KNOWN_TERMS:
        known.clear()
    known.update(changes)
    changes.clear()
    databases.index_writes.deltas.clear()


def _replace(
    txn: lmdb.Transaction, databases: Any, process: bytes, blob: bytes, old: bytes | None
) -> None:
    """Move the entries and counts of ``process`` from its stored terms (``old`` if the
    writer knows them, else read) to ``blob``."""
    if old is None:
        old = txn.get(process, db=databases.terms)
    if old == blob:
        return
    index, deltas = databases.index, databases.index_writes.deltas
    if old:
        before = set(old.split(_TERM_SEP))
        after = set(blob.split(_TERM_SEP)) if blob else set()
        for entry in before - after:
            txn.delete(entry, db=index)
            deltas[entry[: entry.rindex(_SEP)]] -= 1  # (`_counted`, inlined)
        added: Iterable[bytes] = after - before
    else:
        added = blob.split(_TERM_SEP) if blob else ()
    for entry in added:
        txn.put(entry, process, db=index)
        deltas[entry[: entry.rindex(_SEP)]] += 1
    if blob:
        txn.put(process, blob, db=databases.terms)
    else:
        txn.delete(process, db=databases.terms)


def rebuild(
    txn: lmdb.Transaction,
    databases: Any,
    describe: Callable[[bytes], tuple[bool, Sequence[IndexTerm]]],
) -> int:
    """Build the ``active`` index and every secondary index again from every snapshot, in
    the writer's transaction; returns how many ids are active."""
    for database in (databases.active, databases.terms, databases.index, databases.counts):
        txn.drop(database, delete=False)
    # What writes before it in the batch noted is in the snapshots it reads, and what the
    # writer remembers is gone.
    databases.index_writes.changes.clear()
    databases.index_writes.known.clear()
    counted = databases.index_writes.deltas
    counted.clear()
    active = 0
    for process, snapshot in txn.cursor(db=databases.snapshots):
        is_active, terms = describe(snapshot)
        if is_active:
            txn.put(process, b"", db=databases.active)
            active += 1
        blob = encode_terms(terms)
        if not blob:
            continue
        txn.put(process, blob, db=databases.terms)
        for entry in blob.split(_TERM_SEP):
            txn.put(entry, process, db=databases.index)
            counted[_counted(entry)] += 1
    return active  # (the counts are written by `flush`, from zero)


# Reads -------------------------------------------------------------------------------------


@attrs.frozen
class IndexRange:
    """The entries of ``index`` whose group and order, as ``group NUL order``, start with
    ``prefix``; their *position* is what follows the prefix. ``low`` and ``high`` bound the
    positions (``low`` <= position < ``high``; None: no bound)."""

    index: str
    prefix: bytes
    low: bytes | None = None
    high: bytes | None = None


@attrs.frozen
class IndexPage:
    """What `read_page` found: ``(process id, snapshot)`` in position order, and the
    position of the last one if more follow (None: the walk reached the end)."""

    items: list[tuple[str, bytes]]
    next_position: bytes | None


def group_prefix(group: bytes) -> bytes:
    """The prefix of `IndexRange` for every entry of one group."""
    return group + _SEP


def _walk(
    txn: lmdb.Transaction, database: Any, selected: IndexRange, after: bytes | None
) -> Iterator[tuple[bytes, bytes]]:
    """``(position, process id)`` of the range's entries, after ``after``, in order."""
    prefix = _index_name(selected.index) + selected.prefix
    start = after if after is not None else selected.low
    if selected.low is not None and start is not None and start < selected.low:
        start = selected.low
    cursor = txn.cursor(db=database)
    if not cursor.set_range(prefix + (start or b"")):
        return
    for key, process in cursor:
        if not key.startswith(prefix):
            return
        position = key[len(prefix) :]
        if after is not None and position <= after:
            continue
        if selected.high is not None and position >= selected.high:
            return
        yield position, process


def read_page(
    txn: lmdb.Transaction,
    databases: Any,
    ranges: Sequence[IndexRange],
    *,
    after: bytes | None,
    limit: int,
    accept: Callable[[tuple[IndexTerm, ...]], bool] | None,
) -> IndexPage:
    """Up to ``limit`` processes of ``ranges``, merged in position order, after ``after``,
    for which ``accept(terms)`` holds (None: all); only their snapshots are read."""
    walks = [_walk(txn, databases.index, selected, after) for selected in ranges]
    merged = walks[0] if len(walks) == 1 else heapq.merge(*walks)
    chosen: list[tuple[bytes, bytes]] = []
    more = False
    for position, process in merged:
        if accept is not None:
            blob = txn.get(process, db=databases.terms)
            if blob is None or not accept(decode_terms(blob)):
                continue
        if len(chosen) == limit:
            more = True
            break
        chosen.append((position, process))
    items = []
    for _, process in chosen:
        snapshot = txn.get(process, db=databases.snapshots)
        if snapshot is not None:
            items.append((process.decode("utf-8", "surrogateescape"), snapshot))
    return IndexPage(items, chosen[-1][0] if more and chosen else None)


def read_counts(txn: lmdb.Transaction, databases: Any, index: str) -> dict[bytes, int]:
    """Every non-empty group of ``index``, with how many processes it has."""
    prefix = _index_name(index)
    cursor = txn.cursor(db=databases.counts)
    out: dict[bytes, int] = {}
    if cursor.set_range(prefix):
        for key, value in cursor:
            if not key.startswith(prefix):
                break
            out[key[len(prefix) :]] = int.from_bytes(value, "big")
    return out


class IndexReads:
    """The reads of the secondary indexes, mixed into `corra.persistence._lmdb.Reads`."""

    def _environment(self) -> Any:
        raise NotImplementedError

    def has_indexes(self) -> bool:
        raise NotImplementedError

    def _complete(self) -> Any:
        environment = self._environment()
        if not self.has_indexes():
            raise StoreError(f"the store at {environment.path} has no complete indexes")
        return environment

    def index_page(
        self,
        ranges: Sequence[IndexRange],
        *,
        after: bytes | None = None,
        limit: int,
        accept: Callable[[tuple[IndexTerm, ...]], bool] | None = None,
    ) -> IndexPage:
        """One page of processes from the secondary indexes, in one read transaction: up to
        ``limit`` of the entries of ``ranges``, merged in the order of their positions, after
        the position ``after``, whose terms ``accept`` (None: all); the snapshots of those
        and of no other (`corra.persistence._indexes.read_page`).

        Raises:
            StoreError: the store has no complete indexes (`has_indexes` is False).
        """
        environment = self._complete()
        if not ranges:
            raise ValueError("index_page needs at least one range")
        return environment.read(
            lambda txn: read_page(
                txn, environment.databases, ranges, after=after, limit=limit, accept=accept
            )
        )

    def index_counts(self, index: str) -> dict[bytes, int]:
        """Every non-empty group of ``index`` with how many processes it holds, from the
        counts that saves keep (no scan).

        Raises:
            StoreError: the store has no complete indexes (`has_indexes` is False).
        """
        environment = self._complete()
        return environment.read(lambda txn: read_counts(txn, environment.databases, index))

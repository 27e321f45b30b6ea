"""One page of processes, read from the store's indexes: what ``corra ps`` and ``GET
/v1/processes`` list, at a cost that follows the page, not the store.

A `Selection` says which processes (any of its phases, all of its labels, a name prefix or
glob); `plan` picks the ranges of the indexes to walk (`corra.processes._terms`): the name
range for a name prefix, or for the literal start of a glob (the page is then in name order),
else the most selective of the phases' groups (merged) or one label's group, by the counts the
store keeps (in creation order). What the walk does not select by itself (the rest of a glob,
a phase, a label, a time) is checked on each candidate's terms, never on its record: a request
decodes the records it returns and no other.

A cursor is opaque: the order (``c``: creation, ``n``: name) and the position of the last
process returned. It names a place in the order, not an item, so that the next page is right
while processes are written: a process created, deleted or moved meanwhile is seen or not
according to where it is, and nothing that stays is repeated or skipped.

A store without indexes (written by an older corra, read without a runtime, which would
build them) is read whole, into `MemoryIndex`, which pages the same way.
"""

from __future__ import annotations

import base64
import binascii
import bisect
import fnmatch
import re
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import attrs
import trio

from corra._errors import ConfigError, CorruptRecord
from corra.persistence import IndexPage, IndexRange, group_prefix
from corra.processes._lifecycle import PHASES
from corra.processes._record import ProcessRecord
from corra.processes._terms import (
    CREATED,
    ENDED,
    LABEL,
    NAME,
    NAME_END,
    PHASE,
    IndexTerm,
    label_group,
    phase_group,
    record_terms,
    time_position,
)

_SEP = b"\x00"  # (as the store lays entries out: `corra.persistence._indexes`)
Accept = Callable[[tuple[IndexTerm, ...]], bool]
_TEXT = ("utf-8", "surrogateescape")
#: Records decoded between two checkpoints by `decode_stepwise` (about 50 µs each).
DECODE_STEP = 10
#: What makes a name selector a glob (no name or id holds one: `corra.processes._spec`).
WILDCARDS = "*?["


def name_glob(text: str) -> tuple[str, re.Pattern[str] | None]:
    """A name selector as its literal start and, for a glob (``train-*-7``, ``job?``,
    ``run[0-3]``: `fnmatch`'s, case-sensitive, matched against the whole name), the
    pattern of the whole name; None for a prefix (no wildcard)."""
    cut = min((i for i in (text.find(c) for c in WILDCARDS) if i >= 0), default=-1)
    if cut < 0:
        return text, None
    return text[:cut], re.compile(fnmatch.translate(text))


def name_selected(selector: str, name: str) -> bool:
    """Whether ``name`` is selected by a name prefix or glob, as a listing selects it."""
    literal, glob = name_glob(selector)
    return name.startswith(literal) if glob is None else glob.match(name) is not None


@attrs.frozen
class Selection:
    """Which processes a listing wants: in any of ``phases`` (empty: any phase), with all
    of ``labels``, whose name starts with ``name``, or matches it if it is a glob (holds
    ``*``, ``?`` or ``[``: `name_glob`; None: any name)."""

    phases: tuple[str, ...] = ()
    labels: tuple[tuple[str, str], ...] = ()
    name: str | None = None
    created_after: float | None = None
    """Created at or after this time (epoch seconds); ``created_before``: strictly before."""
    created_before: float | None = None
    ended_after: float | None = None
    """Ended (terminal) at or after this time; ``ended_before``: strictly before. Either
    selects terminal processes only, listed in the order of their end."""
    ended_before: float | None = None

    def __attrs_post_init__(self) -> None:
        for phase in self.phases:
            if phase not in PHASES:
                raise ConfigError(f"phase: got {phase!r}, expected one of {', '.join(PHASES)}")
        for field in ("created_after", "created_before", "ended_after", "ended_before"):
            value = getattr(self, field)
            if value is not None and (
                isinstance(value, bool) or not isinstance(value, int | float) or not value >= 0
            ):
                raise ConfigError(f"{field}: got {value!r}, expected epoch seconds >= 0")

    @property
    def ended(self) -> bool:
        return self.ended_after is not None or self.ended_before is not None


@attrs.frozen
class Plan:
    """How to read a selection: the ranges to walk, in which order, and what to check."""

    order: str
    """``c`` (creation), ``n`` (name) or ``e`` (end)."""
    ranges: tuple[IndexRange, ...]
    accept: Accept | None


def _bound(at: float | None) -> bytes | None:
    return None if at is None else time_position(at)


def plan(selection: Selection, counts: Callable[[str], dict[bytes, int]]) -> Plan:
    """The cheapest walk for ``selection``, by the group counts of the store (``counts``):
    a name prefix (or a glob's literal start) walks the names, an end time the ends,
    anything else the creation order, through the most selective of the phases' groups
    (merged) and the labels' groups."""
    phases = {phase_group(phase) for phase in selection.phases}
    labels = {label_group(key, value) for key, value in selection.labels}
    check = _Check(
        phases,
        labels,
        selection.name,
        (_bound(selection.created_after), _bound(selection.created_before)),
        (_bound(selection.ended_after), _bound(selection.ended_before)),
    )
    if selection.name is not None:
        literal, glob = name_glob(selection.name)
        prefix = group_prefix(b"") + literal.encode("utf-8", "surrogateescape")
        # (the range guarantees a prefix; the rest of a glob is checked on each name term)
        rest = check.without(name=glob is None)
        return Plan("n", (IndexRange(NAME, prefix),), rest.accept())
    if selection.ended:
        low, high = check.ended
        ranges = (IndexRange(ENDED, group_prefix(b""), low, high),)
        return Plan("e", ranges, check.without(ended=True).accept())
    low, high = check.created
    options: list[tuple[int, tuple[IndexRange, ...], _Check]] = []
    if phases:
        by_phase = counts(PHASE)
        cost = sum(by_phase.get(group, 0) for group in phases)
        ranges = tuple(
            IndexRange(PHASE, group_prefix(group), low, high) for group in sorted(phases)
        )
        options.append((cost, ranges, check.without(phases=True, created=True)))
    if labels:
        by_label = counts(LABEL)
        for group in sorted(labels):
            ranges = (IndexRange(LABEL, group_prefix(group), low, high),)
            rest = check.without(created=True, label=group)
            options.append((by_label.get(group, 0), ranges, rest))
    if not options:
        return Plan("c", (IndexRange(CREATED, group_prefix(b""), low, high),), None)
    _, ranges, rest = min(options, key=lambda option: option[0])
    return Plan("c", ranges, rest.accept())


@attrs.frozen
class _Check:
    """What a candidate's terms must show (`plan` leaves out what its walk guarantees)."""

    phases: set[bytes]
    labels: set[bytes]
    name: str | None
    created: tuple[bytes | None, bytes | None]
    ended: tuple[bytes | None, bytes | None]

    def without(
        self,
        *,
        phases: bool = False,
        created: bool = False,
        ended: bool = False,
        name: bool = False,
        label: bytes | None = None,
    ) -> _Check:
        """The check without what a walk guarantees."""
        return _Check(
            set() if phases else self.phases,
            self.labels - {label} if label is not None else self.labels,
            None if name else self.name,
            (None, None) if created else self.created,
            (None, None) if ended else self.ended,
        )

    def accept(self) -> Accept | None:
        """The check of a candidate's terms, None if there is nothing to check."""
        phases, labels = self.phases, self.labels
        name = glob = None
        if self.name is not None:
            literal, glob = name_glob(self.name)
            name = literal.encode("utf-8", "surrogateescape")
        (created_low, created_high), (ended_low, ended_high) = self.created, self.ended
        timed = self.created != (None, None) or self.ended != (None, None)
        if not (phases or labels or name is not None or timed):
            return None

        def inside(position: bytes | None, low: bytes | None, high: bytes | None) -> bool:
            if position is None:
                return low is None and high is None
            return (low is None or position >= low) and (high is None or position < high)

        def accept(terms: tuple[IndexTerm, ...]) -> bool:
            found_phase = found_name = False
            found_labels = 0
            created = ended = None
            for index, group, order in terms:
                if index == PHASE:
                    found_phase = group in phases
                elif index == LABEL:
                    found_labels += group in labels
                elif index == NAME:
                    found_name = name is None or (
                        order.startswith(name)
                        if glob is None
                        else bool(glob.match(order.partition(NAME_END)[0].decode(*_TEXT)))
                    )
                elif index == CREATED:
                    created = order
                elif index == ENDED:
                    ended = order
            return (
                (found_phase or not phases)
                and found_labels == len(labels)
                and (found_name or name is None)
                and (not timed or inside(created, created_low, created_high))
                and (not timed or inside(ended, ended_low, ended_high))
            )

        return accept


def encode_cursor(order: str, position: bytes) -> str:
    return order + base64.urlsafe_b64encode(position).decode().rstrip("=")


def decode_cursor(cursor: str, order: str) -> bytes:
    """The position a cursor of ``order`` holds.

    Raises:
        ConfigError: it is no cursor of this order (made by a listing with another order,
            or not made by corra).
    """
    if not cursor.startswith(order):
        raise ConfigError(f"cursor: got {cursor!r}, not one of this listing's cursors")
    text = cursor[len(order) :]
    try:
        return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
    except (binascii.Error, ValueError):
        raise ConfigError(f"cursor: got {cursor!r}, not one of this listing's cursors") from None


def read(
    reads: Any, selection: Selection, cursor: str | None, limit: int
) -> tuple[IndexPage, str | None]:
    """One page of ``reads`` (a store with indexes, or a `MemoryIndex`), and the cursor of
    the next (None: this is the last).

    Raises:
        ConfigError: ``cursor`` is not one of this listing's.
    """
    chosen = plan(selection, reads.index_counts)
    after = None if cursor is None else decode_cursor(cursor, chosen.order)
    page = reads.index_page(chosen.ranges, after=after, limit=limit, accept=chosen.accept)
    following = page.next_position
    return page, None if following is None else encode_cursor(chosen.order, following)


def read_records(
    store: Any, codec: Any, selection: Selection, cursor: str | None, limit: int
) -> tuple[list[ProcessRecord], str | None, int]:
    """One page of records of ``store`` (blocking: run it in a thread), the next cursor, and
    how many of the page's records could not be decoded (left out). A store without indexes
    is read whole (see the module's docstring).

    Raises:
        ConfigError: ``cursor`` is not one of this listing's.
    """
    items, following, corrupt = read_undecoded(store, codec, selection, cursor, limit)
    out = []
    for item in items:
        try:
            out.append(codec.decode(item) if type(item) is bytes else item)
        except CorruptRecord:
            corrupt += 1
    return out, following, corrupt


def read_undecoded(
    store: Any, codec: Any, selection: Selection, cursor: str | None, limit: int
) -> tuple[list[Any], str | None, int]:
    """`read_records`, but with the records of a store with indexes as stored (bytes), for
    the caller to decode (`decode_stepwise`: a service decodes them on its event loop, a
    few at a time, rather than in a worker thread that would hold the interpreter's lock
    against it)."""
    if not store.has_indexes():
        records, corrupt = store.scan_decoded(codec)
        page, following = read(MemoryIndex(records.values()), selection, cursor, limit)
        return [record for _, record in page.items], following, len(corrupt)
    page, following = read(store, selection, cursor, limit)
    return [raw for _, raw in page.items], following, 0


async def decode_stepwise(
    codec: Any, items: list[Any], *, step: int = DECODE_STEP
) -> tuple[list[ProcessRecord], int]:
    """The records of `read_undecoded`'s items, decoded ``step`` at a time between
    checkpoints, and how many could not be decoded (left out)."""
    out = []
    corrupt = 0
    for index, item in enumerate(items):
        if index % step == 0:
            await trio.lowlevel.checkpoint()
        try:
            out.append(codec.decode(item) if type(item) is bytes else item)
        except CorruptRecord:
            corrupt += 1
    if not items:
        await trio.lowlevel.checkpoint()
    return out, corrupt


def phase_counts(store: Any, codec: Any) -> dict[str, int]:
    """Processes per phase, every phase (zeros too), from the store's counts (blocking; a
    store without indexes is read whole)."""
    if store.has_indexes():
        counted = store.index_counts(PHASE)
    else:
        counted = MemoryIndex(store.scan_decoded(codec)[0].values()).index_counts(PHASE)
    return {phase: counted.get(phase_group(phase), 0) for phase in PHASES}


class MemoryIndex:
    """The indexes of records held in memory, read as a store's (`index_page`,
    `index_counts`); the items of a page are ``(id, record)``. For a store without indexes."""

    def __init__(self, records: Iterable[ProcessRecord]) -> None:
        self._records: dict[str, ProcessRecord] = {}
        self._terms: dict[str, tuple[IndexTerm, ...]] = {}
        entries: list[tuple[bytes, str]] = []
        self._counts: Counter[bytes] = Counter()
        for record in records:
            self._records[record.id] = record
            terms = self._terms[record.id] = record_terms(record)
            for index, group, order in terms:
                entries.append((index.encode() + _SEP + group + _SEP + order, record.id))
                self._counts[index.encode() + _SEP + group] += 1
        entries.sort()
        self._keys = [key for key, _ in entries]
        self._ids = [process for _, process in entries]

    def index_counts(self, index: str) -> dict[bytes, int]:
        prefix = index.encode() + _SEP
        return {
            key[len(prefix) :]: count
            for key, count in self._counts.items()
            if key.startswith(prefix)
        }

    def index_page(
        self,
        ranges: Sequence[IndexRange],
        *,
        after: bytes | None = None,
        limit: int,
        accept: Accept | None = None,
    ) -> IndexPage:
        found: list[tuple[bytes, str]] = []
        for selected in ranges:
            prefix = selected.index.encode() + _SEP + selected.prefix
            start = bisect.bisect_left(self._keys, prefix)
            for key, process in zip(self._keys[start:], self._ids[start:], strict=True):
                if not key.startswith(prefix):
                    break
                position = key[len(prefix) :]
                if after is not None and position <= after:
                    continue
                if selected.low is not None and position < selected.low:
                    continue
                if selected.high is not None and position >= selected.high:
                    continue
                found.append((position, process))
        found.sort()
        chosen = [
            (position, process)
            for position, process in found
            if accept is None or accept(self._terms[process])
        ]
        more = len(chosen) > limit
        items = [(process, self._records[process]) for _, process in chosen[:limit]]
        return IndexPage(items, chosen[limit - 1][0] if more else None)  # type: ignore[arg-type]

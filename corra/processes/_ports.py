"""The ports of the process domain: what it needs of the store, as protocols.

The domain depends on these, never on the classes that implement them: the store
(`corra.persistence.Store`) and its codecs (`corra.persistence.Codec`) are given to
`ProcessManager`. The store's ports are named ``Record...`` so that they do not read as the
persistence classes they describe. What it needs of a backend is the seam's contract,
`corra.processes._backend.Backend`; backends are chosen above this package.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any, Protocol


class PendingSave(Protocol):
    """A save queued without waiting (`corra.persistence.PendingSave`)."""

    @property
    def done(self) -> bool: ...

    @property
    def error(self) -> BaseException | None: ...


class SnapshotCounts(Protocol):
    """How many snapshots a store holds, and how many of them are indexed as active."""

    @property
    def snapshots(self) -> int: ...

    @property
    def active(self) -> int: ...


class RecordStore(Protocol):
    """The part of `corra.persistence.Store` that processes use."""

    async def save(
        self,
        process_id: str,
        snapshot: bytes,
        *,
        transition: bytes | None = None,
        transitions: Sequence[bytes] = (),
        name: str | None = None,
        active: bool | None = None,
        after: Any = None,
        shielded: bool = False,
        indexes: Sequence[tuple[str, bytes, bytes]] | None = None,
    ) -> None: ...

    def save_nowait(
        self,
        process_id: str,
        snapshot: bytes,
        *,
        transitions: Sequence[bytes] = (),
        active: bool | None = None,
        indexes: Sequence[tuple[str, bytes, bytes]] | None = None,
    ) -> PendingSave: ...

    def load(self, process_id: str) -> bytes | None: ...

    def history(self, process_id: str) -> list[bytes]: ...

    def history_page(
        self, process_id: str, *, after: int | None = None, limit: int | None = None
    ) -> tuple[list[tuple[int, bytes]], bool]: ...

    def id_for_name(self, name: str) -> str | None: ...

    def load_named(self, names: Sequence[str]) -> list[tuple[str, bytes] | None]: ...

    def scan(self) -> Iterator[tuple[str, bytes]]: ...

    def scan_decoded(self, codec: Any) -> tuple[dict[str, Any], list[Any]]: ...

    def scan_active(self) -> Iterator[tuple[str, bytes]]: ...

    def has_active_index(self) -> bool: ...

    def counts(self) -> SnapshotCounts: ...

    async def rebuild_active_index(self, is_active: Callable[[bytes], bool]) -> int: ...

    def has_indexes(self) -> bool: ...

    async def rebuild_indexes(
        self, describe: Callable[[bytes], tuple[bool, Sequence[tuple[str, bytes, bytes]]]]
    ) -> int: ...

    def index_page(
        self, ranges: Sequence[Any], *, after: bytes | None = None, limit: int, accept: Any = None
    ) -> Any: ...

    def index_counts(self, index: str) -> dict[bytes, int]: ...

    async def set_aside(self, process_id: str, raw: bytes, reason: str) -> None: ...

    async def delete(self, process_id: str, *, names: Sequence[str] | None = None) -> None: ...

    def quarantined(self) -> list[Any]: ...

    async def put_notes(self, notes: Mapping[str, bytes | None]) -> None: ...

    def note(self, process_id: str) -> bytes | None: ...

    def notes(self) -> list[tuple[str, bytes]]: ...

    async def put_statuses(self, statuses: Mapping[str, bytes | None]) -> None: ...

    def status(self, process_id: str) -> bytes | None: ...

    def statuses_of(self, process_ids: Sequence[str]) -> list[bytes | None]: ...


class RecordCodec(Protocol):
    """Values as stored bytes and back (`corra.persistence.Codec`)."""

    def encode(self, value: Any) -> bytes: ...

    def decode(self, raw: bytes) -> Any: ...

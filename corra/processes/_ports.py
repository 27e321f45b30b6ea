"""The ports of the process domain: what it needs of a backend and of the store, as protocols.

The domain depends on these, never on the classes that implement them: backends are chosen
above this package, and the store (`corra.persistence.Store`) and its codecs
(`corra.persistence.Codec`) are given to `ProcessManager`. The store's ports are named
``Record...`` so that they do not read as the persistence classes they describe.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any, Protocol

from corra.processes._lifecycle import Result
from corra.processes._spec import ProcessSpec


class Backend(Protocol):
    """Where programs run, as a process actor needs it. Handles are JSON-able mappings.

    Optional: ``try_acquire_slot(key) -> bool``, which takes a slot if one is free now and
    nobody waits for one (never blocks). With it, a process submitted while a slot is free
    is durable as launching at once: one durable write fewer before its launch.

    Optional: ``async pause(handle)`` and ``async resume(handle)``, told after a pause of a
    launched program is durable, and before its resume is (e.g. to hold a queued job and
    release it); a failure of either is logged, never fails the process.

    Optional: ``async log_size(key, stream, host) -> int | None``, how many bytes of the
    output `read_log` can read there are now (None: it cannot tell now); without it, a read
    of the output there is goes on for as long as the program writes.

    Optional, for backends with hosts (``host`` is the spec's): ``async wait_available(host)``,
    which returns once the host answers again after `HostUnavailable`; without it, a process
    whose host is unavailable fails. ``check_spec(spec)``, which refuses (`ConfigError`) a
    spec the backend cannot run, at submission (an unknown host, bad options).
    """

    async def acquire_slot(self, key: str) -> None:
        """Wait (in submission order) until another program may run."""

    def release_slot(self, key: str) -> None:
        """Give the slot of ``key`` back; a no-op if it holds none."""

    def adopt_slot(self, key: str) -> None:
        """Count a program that runs already (reattached), even above the limit."""

    async def launch(self, key: str, spec: ProcessSpec) -> dict[str, Any]:
        """Start the program, once per key: a second call returns the first's handle."""

    async def find(self, key: str, host: str | None = None) -> dict[str, Any] | None:
        """The handle of a program launched with ``key`` (on ``host``), or None."""

    async def wait(self, handle: Mapping[str, Any]) -> Result:
        """Wait for the program's exit. Raises `ProgramLost`."""

    async def kill(self, handle: Mapping[str, Any], grace: float) -> Result | None:
        """SIGTERM its group, SIGKILL after ``grace``; the result once it is gone."""

    async def read_log(
        self, key: str, stream: str, offset: int, size: int, host: str | None = None
    ) -> bytes:
        """Up to ``size`` bytes of the output of the program launched with ``key``."""


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
    ) -> None: ...

    def save_nowait(
        self,
        process_id: str,
        snapshot: bytes,
        *,
        transitions: Sequence[bytes] = (),
        active: bool | None = None,
    ) -> PendingSave: ...

    def load(self, process_id: str) -> bytes | None: ...

    def history(self, process_id: str) -> list[bytes]: ...

    def id_for_name(self, name: str) -> str | None: ...

    def scan(self) -> Iterator[tuple[str, bytes]]: ...

    def scan_decoded(self, codec: Any) -> tuple[dict[str, Any], list[Any]]: ...

    def scan_active(self) -> Iterator[tuple[str, bytes]]: ...

    def has_active_index(self) -> bool: ...

    def counts(self) -> SnapshotCounts: ...

    async def rebuild_active_index(self, is_active: Callable[[bytes], bool]) -> int: ...

    async def set_aside(self, process_id: str, raw: bytes, reason: str) -> None: ...


class RecordCodec(Protocol):
    """Values as stored bytes and back (`corra.persistence.Codec`)."""

    def encode(self, value: Any) -> bytes: ...

    def decode(self, raw: bytes) -> Any: ...

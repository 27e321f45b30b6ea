"""What the store keeps of a process: its record (id, spec, state) and its history.

Both are snapshotted by the codecs of `corra._runtime` (a runtime's ``record_codec``, which
knows its backends' handle classes, and ``HISTORY_CODEC``), through the snapshot converter of
`corra.processes._convert`.
"""

from __future__ import annotations

import attrs

from corra.processes._lifecycle import Phase, ProcessState, Result
from corra.processes._spec import ProcessSpec


@attrs.frozen
class ProcessRecord:
    """A process as snapshotted: its id, spec and state (DESIGN: ``{schema, state}``)."""

    id: str
    spec: ProcessSpec
    state: ProcessState
    created_at: float

    @property
    def name(self) -> str:
        return self.spec.name or self.id

    @property
    def phase(self) -> Phase:
        return self.state.phase

    @property
    def key(self) -> str:
        """The idempotency key of the current attempt's effects."""
        return f"{self.id}.{self.state.attempt}"


@attrs.frozen
class Transition:
    """One entry of a process's append-only history."""

    at: float
    event: str
    source: Phase
    target: Phase
    attempt: int
    reason: str | None = None
    result: Result | None = None
    """The result the event cleared, kept here (a ``rerun``'s: the attempt before's,
    `corra.processes._lifecycle.KEEPS_RESULT`); None for every other event (and not
    stored then)."""

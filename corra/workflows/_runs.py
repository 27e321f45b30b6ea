"""What the store keeps of a workflow run: its record and one entry per step, apart.

A run's record (`RunRecord`) holds what does not grow with the run: its id, name, the frozen
copy of the job definition it started with, its params, its phase. Each step has an entry of
its own (`StepEntry`), keyed by the run and the step's name (``<run id>/work[1]``), never by
its position: an entry is written once when the step is decided (``submitted``, with the name
of its process, before the process is submitted; ``skipped``; a fan-out's ``expanded``, with
its count) and once when it ends, so a run of 1,000 steps writes 2,000 small entries, not a
record that grows with every step (aiidateam/aiida-core#5025, temporalio/temporal#1069).

Keys of the store's ``workflows`` database (`corra.persistence.Store.put_entries`)::

    r\\0<run id>               the run's record (JSON)
    s\\0<run id>\\0<step key>   a step's entry (JSON)
    a\\0<run id>               present while the run is active (running: recovery starts
                              those, and nothing else)
    n\\0<run name>             the run id the name belongs to
"""

from __future__ import annotations

import json
import re
from typing import Any, Final, Literal, TypeAlias

import attrs

from corra.processes._ids import new_process_id

RunPhase: TypeAlias = Literal["running", "paused", "finished", "failed", "killed"]
RUN_PHASES: Final = ("running", "paused", "finished", "failed", "killed")
#: Phases after which nothing more happens in a run.
RUN_TERMINAL: Final = frozenset({"finished", "failed", "killed"})

StepPhase: TypeAlias = Literal["submitted", "expanded", "finished", "failed", "killed", "skipped"]
#: What a step's entry says of its end (a fan-out's ``expanded`` entry ends when its items
#: have: `corra.workflows._plan`).
STEP_ENDED: Final = frozenset({"finished", "failed", "killed", "skipped"})

RUN_PREFIX: Final = b"r\x00"
STEP_PREFIX: Final = b"s\x00"
ACTIVE_PREFIX: Final = b"a\x00"
NAME_PREFIX: Final = b"n\x00"
#: A run's id: ``r`` and then as a process id's (`new_process_id`): sortable by creation.
RUN_ID = re.compile(r"r[0-9a-z]{1,40}")


def new_run_id() -> str:
    """A new run id: short, unique, sortable by creation."""
    return "r" + new_process_id()[1:]


def run_key(run_id: str) -> bytes:
    return RUN_PREFIX + run_id.encode()


def active_key(run_id: str) -> bytes:
    return ACTIVE_PREFIX + run_id.encode()


def name_key(name: str) -> bytes:
    return NAME_PREFIX + name.encode("utf-8", "surrogateescape")


def steps_prefix(run_id: str) -> bytes:
    return STEP_PREFIX + run_id.encode() + b"\x00"


def step_key(run_id: str, key: str) -> bytes:
    return steps_prefix(run_id) + key.encode()


def instance_key(step: str, index: int | None) -> str:
    """The key of a step, or of the item ``index`` of a fan-out step: ``work[1]``."""
    return step if index is None else f"{step}[{index}]"


def process_name(run_id: str, step: str, index: int | None) -> str:
    """The name of the process of a step (`corra.processes._spec.NAME_PATTERN` has no
    brackets): ``<run id>.<step>``, ``<run id>.<step>.<index>`` for a fan-out's item."""
    return f"{run_id}.{step}" if index is None else f"{run_id}.{step}.{index}"


def _dump(data: dict[str, Any]) -> bytes:
    return json.dumps(data, separators=(",", ":"), allow_nan=False).encode()


@attrs.frozen
class RunRecord:
    """A workflow run, as stored (see the module doc)."""

    id: str
    job: str
    """The name of the job it runs."""
    definition: dict[str, Any] = attrs.field(repr=False)
    """The frozen copy of the job's definition it started with
    (`corra.workflows._definition.job_data`)."""
    params: dict[str, Any]
    created_at: float
    phase: RunPhase = "running"
    name: str | None = None
    """The name it was requested with (a second request of it returns this run)."""
    updated_at: float = 0.0
    reason: str | None = None
    """Why it failed or was killed or paused."""
    result: Any = None
    """Its result once finished (its ``result`` template's value, or its last step's)."""
    paused_steps: bool = False
    """Paused with its steps' running processes (resumed with it)."""
    kind: Literal["job", "python"] = "job"
    """``job``: a job file's definition; ``python``: a `corra.workflow` function."""

    @property
    def terminal(self) -> bool:
        return self.phase in RUN_TERMINAL

    def encode(self) -> bytes:
        return _dump(attrs.asdict(self, recurse=False))

    @classmethod
    def decode(cls, raw: bytes) -> RunRecord:
        return cls(**json.loads(raw))

    def json(self, *, definition: bool = False) -> dict[str, Any]:
        """As ``corra show RUN --json`` and ``GET /v1/runs/{id}`` give it."""
        data = attrs.asdict(self, recurse=False)
        if not definition:
            del data["definition"]
        return data


@attrs.frozen
class StepEntry:
    """One step of a run, or one item of a fan-out step, as stored (see the module doc)."""

    key: str
    """``prepare``, ``work[1]``: the step's name, and the item's index in brackets."""
    step: str
    """The step's name in the definition."""
    phase: StepPhase
    at: float
    index: int | None = None
    process: str | None = None
    """The name of its process (`process_name`), once it is submitted."""
    count: int | None = None
    """A fan-out step's ``expanded`` entry: how many items it has."""
    reason: str | None = None
    result: Any = None
    """Its process's result value once it ended (null if it wrote none, or if the value is
    kept in a file: ``result_file``)."""
    result_file: str | None = None
    """Where its process's result value is kept, when it was too large for its record."""
    process_id: str | None = None
    digest: str | None = None
    """A `corra.workflow` function's step: the digest of the spec it was submitted with
    (`corra.workflows._replay.spec_digest`); a replay that makes another spec pauses."""
    proposed: str | None = None
    """The digest of the other spec a replay made, which paused the run: ``resume`` with
    ``accept`` makes it the step's (the step stands as recorded)."""

    @property
    def ended(self) -> bool:
        return self.phase in STEP_ENDED

    def encode(self) -> bytes:
        return _dump({k: v for k, v in attrs.asdict(self, recurse=False).items() if v is not None})

    @classmethod
    def decode(cls, raw: bytes) -> StepEntry:
        return cls(**json.loads(raw))

    def json(self) -> dict[str, Any]:
        return attrs.asdict(self, recurse=False)

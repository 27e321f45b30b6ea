"""What a program's chaperone recorded, read from the state dir without a runtime.

A process's record says what the last runtime saw. When no runtime watches the process (its
runtime was killed, or the process is paused), its program goes on under its chaperone, which
records the exit on its own: the record may still say ``running`` of a program that ended
long ago. `recorded` reads what the chaperone wrote, so that read-only commands (``corra ps``,
``show``, ``logs -f``) and the API's reads of unwatched processes tell the truth, and writes
nothing: collecting the exit (a ``finished`` or ``failed`` record, a rerun) is the next
runtime's job, which finds the same exit record.

Where it reads, per backend:

- ``local``: the run dir's ``exit.json`` (and ``/proc``, whether the chaperone still runs).
- ``ssh``: the logs shipped home; ``complete.json`` beside them says the program exited (its
  exit status stays on the host until a runtime collects it). Without it: ``unknown``.
- anything else (``slurm``): ``unknown``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

import attrs

from corra._errors import BackendError, ConfigError
from corra.processes._lifecycle import Result
from corra.processes._record import ProcessRecord

#: Under the state dir: the run dirs of local programs, and the shipped logs of remote ones.
RUNS = "runs"
REMOTE_LOGS = "remote-logs"
#: Beside a remote program's shipped logs once they are whole (its program exited): the
#: name `corra.backends.ssh._programs` writes, not imported from there (that would import
#: asyncssh into every `corra ps`; a test holds the two equal).
COMPLETE_FILE = "complete.json"

#: The phases in which a program of the current attempt may run unwatched.
_LAUNCHED = frozenset({"launching", "running", "killing"})

RecordedState = Literal["running", "exited", "lost", "unknown"]


@attrs.frozen
class Recorded:
    """What the chaperone of a process's current attempt recorded."""

    state: RecordedState
    """``exited`` (an exit record is there), ``running`` (its chaperone runs, no exit yet),
    ``lost`` (its chaperone is gone without an exit record) or ``unknown`` (not readable
    here: a remote program whose logs did not all come home, a Slurm job)."""
    result: Result | None = None
    """How it ended, where that is known here (a local program's exit record)."""

    @property
    def summary(self) -> str:
        """In words, for the command line: ``exited 0, not yet collected``."""
        if self.state == "running":
            return "running"
        if self.state == "unknown":
            return "not known without its runtime"
        if self.state == "lost":
            return "lost (its chaperone is gone without an exit record), not yet collected"
        return f"{_ended(self.result)}, not yet collected"

    def json(self) -> dict[str, Any]:
        """As the ``recorded`` field of a process's JSON."""
        result = self.result
        return {
            "state": self.state,
            "collected": False,
            "returncode": None if result is None else result.returncode,
            "signal": None if result is None else result.signal,
            "ended_at": None if result is None else result.ended_at,
            "summary": self.summary,
        }


def _ended(result: Result | None) -> str:
    if result is None:
        return "exited"
    if result.error:
        return f"did not run ({result.error})"
    if result.timed_out:
        return "timed out"
    if result.signal is not None:
        return f"killed by signal {result.signal}"
    return f"exited {result.returncode}"


def unwatched_program(record: ProcessRecord) -> bool:
    """Whether ``record`` may have a program of its current attempt that nobody watches if no
    runtime does: launched, or paused after its launch."""
    state = record.state
    if state.phase == "paused":
        return state.paused_from in _LAUNCHED
    return state.phase in _LAUNCHED


def recorded(state_dir: Path, record: ProcessRecord) -> Recorded | None:
    """What the chaperone of ``record``'s current attempt recorded; None if the process has
    no such program (not launched, or terminal: then the record says it all).

    Reads only; never writes the state dir or talks to a host. Blocking (a few small files).
    """
    if not unwatched_program(record):
        return None
    spec = record.spec
    try:
        if spec.backend == "local":
            return _local(Path(state_dir) / RUNS, record)
        if spec.backend == "ssh" and spec.host is not None:
            return _shipped(Path(state_dir) / REMOTE_LOGS / spec.host / record.key)
    except (BackendError, ConfigError, OSError, TypeError):
        pass  # a run dir (or a handle) that cannot be read: nothing is known, say so
    return Recorded("unknown")


def _local(runs: Path, record: ProcessRecord) -> Recorded | None:
    from corra.backends._exits import read_exit_record, result_of
    from corra.backends.local import find_launch, read_status

    handle = record.state.handle or find_launch(runs, record.key)  # (a local Handle)
    if handle is None:
        return None  # a launch that never got as far as a claim on its run dir
    status = read_status(handle)
    if status != "exited":
        return Recorded(status)
    exited = read_exit_record(handle.run_dir)
    return Recorded("exited", None if exited is None else result_of(exited))


def _shipped(directory: Path) -> Recorded:
    return Recorded("exited" if (directory / COMPLETE_FILE).exists() else "unknown")

"""The one exit record of a chaperone (``exit.json``), and the one mapping to `Result`.

The local backend reads ``exit.json`` from a run dir on this machine; the ssh backend gets the
same record from the remote helper's ``status``. Both structure it here (`ExitRecord`) and
turn it into the lifecycle's `Result` here (`result_of`), so that a program that ended on
either side is recorded alike.
"""

from __future__ import annotations

import os

import attrs

from corra._errors import BackendError
from corra.chaperone import _rundir
from corra.processes._lifecycle import Result


@attrs.frozen
class ExitRecord:
    """How a program ended, as its chaperone recorded it in ``exit.json``."""

    returncode: int | None
    """The exit status, or None if a signal ended it (or it never ran)."""
    signal: int | None
    """The signal that ended it, or None."""
    utime: float
    stime: float
    maxrss: int | None
    """The program's own peak resident set in bytes, or None where unknown (see
    `corra.chaperone._run.program_peak`: never the chaperone's)."""
    started_at: float
    ended_at: float
    stdout_size: int
    stderr_size: int
    timed_out: bool = False
    """Its timeout expired, so the chaperone killed it."""
    killed: bool = False
    """A kill was requested before it ended."""
    oom_killed: bool = False
    """The kernel's OOM killer struck in its memory cgroup."""
    error: str | None = None
    """Why the program did not run (``No such file or directory: 'nosuch'``), or None."""
    stdout_dropped: int = 0
    """Bytes of stdout written past the output limit, and dropped (a lower bound)."""
    stderr_dropped: int = 0
    result_size: int | None = None
    """Bytes in the run dir's ``result.json`` (``$CORRA_RESULT``) as the program ended: 0
    for none; None from a chaperone that did not say."""

    @property
    def ok(self) -> bool:
        return self.returncode == 0 and self.error is None

    @classmethod
    def from_json(cls, data: object) -> ExitRecord:
        """Structure ``exit.json``; raises BackendError naming the field that is wrong."""
        if not isinstance(data, dict):
            raise BackendError(f"exit.json: expected an object, got {data!r}")
        if _REQUIRED - data.keys():
            missing = sorted(_REQUIRED - data.keys())
            raise BackendError(f"exit.json: {missing[0]} is missing")
        for name in ("returncode", "signal"):
            if data[name] is not None and not isinstance(data[name], int):
                raise BackendError(f"exit.json: {name}: expected an int or null")
        return cls(**{name: data[name] for name in _FIELDS if name in data})


_FIELDS = {field.name: field for field in attrs.fields(ExitRecord)}
_REQUIRED = {name for name, field in _FIELDS.items() if field.default is attrs.NOTHING}


def read_exit_record(run_dir: str | os.PathLike[str]) -> ExitRecord | None:
    """The exit record in ``run_dir`` (`corra.chaperone._rundir.read_exit`), or None while
    there is none. Blocking.

    Raises:
        BackendError: exit.json is there but unreadable, or not an exit record.
    """
    try:
        data = _rundir.read_exit(os.fspath(run_dir))
    except (OSError, ValueError) as error:
        raise BackendError(f"{os.path.join(run_dir, _rundir.EXIT_FILE)}: {error}") from error
    return None if data is None else ExitRecord.from_json(data)


def result_of(record: ExitRecord) -> Result:
    """The lifecycle's `Result` of an exit record (``maxrss`` in KiB, an OOM kill as its
    error)."""
    error = record.error
    if error is None and record.oom_killed:
        error = "killed by the kernel's OOM killer (memory limit)"
    return Result(
        returncode=record.returncode,
        signal=record.signal,
        started_at=record.started_at,
        ended_at=record.ended_at,
        utime=record.utime,
        stime=record.stime,
        maxrss_kb=None if record.maxrss is None else record.maxrss // 1024,
        stdout_bytes=record.stdout_size,
        stderr_bytes=record.stderr_size,
        timed_out=record.timed_out,
        killed=record.killed,
        error=error,
        stdout_dropped=record.stdout_dropped,
        stderr_dropped=record.stderr_dropped,
    )


class Valueless:
    """The keys whose programs wrote no value, as their exit records said (``result_size``
    0), until the runtime asks for it: a backend's ``read_log`` of the stream ``result``
    then answers without reading (a worker thread's hop, or a host's round trip, at the
    end of most processes). A key not here is read as usual."""

    #: The most keys kept before all are forgotten (reads that never came).
    LIMIT = 100_000

    def __init__(self) -> None:
        self._keys: set[str] = set()

    def note(self, key: str, record: ExitRecord) -> ExitRecord:
        """Remember ``key`` if ``record`` says its program wrote no value; ``record``."""
        if record.result_size == 0:
            if len(self._keys) >= self.LIMIT:
                self._keys.clear()
            self._keys.add(key)
        return record

    def take(self, key: str) -> bool:
        """Whether ``key``'s program wrote no value, as its record said (forgotten now)."""
        if key in self._keys:
            self._keys.discard(key)
            return True
        return False

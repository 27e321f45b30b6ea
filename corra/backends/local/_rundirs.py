"""A local program as its run dir tells it: its `Handle`, its status, its exit, its logs.

Everything here reads files (`corra.chaperone._rundir`, the one reader of the format) and
/proc, and nothing else: any runtime, this one or the next after a crash, and a reader without
a runtime (`corra.backends.recorded`), learns the same from the same files. The blocking
functions are for worker threads; the async ones wait for a chaperone without a connection to
it (a pidfd, else polling).
"""

from __future__ import annotations

import contextlib
import os
import shutil
from pathlib import Path
from typing import Any, Literal

import attrs
import trio

from corra._errors import BackendError, ConfigError, ProgramLost
from corra.backends._exits import ExitRecord, read_exit_record
from corra.chaperone import _proc, _rundir, protocol
from corra.processes._backend import RESULT_STREAM

Status = Literal["running", "exited", "lost"]

#: Polling where there is no pidfd, and while another launch of the same key finishes.
POLL_FIRST, POLL_MAX = 0.005, 0.5


@attrs.frozen
class Handle:
    """Where a launched program is; kept in the process snapshot (its fields are the stored
    JSON: do not rename them)."""

    key: str
    run_dir: str
    chaperone_pid: int
    chaperone_start: int
    """Field 22 of /proc/<pid>/stat: tells the chaperone from a later process with its pid."""
    pid: int | None
    """The program's pid, which is also its process group; None while it is being started, or
    if it never started."""
    cgroup: str | None = None
    """The program's cgroup (one with ``cgroup.kill`` where there is one). A shared chaperone
    reuses it for a later program once this one has ended and it is empty."""
    cgroup_note: str | None = None
    """What could not be arranged (a cgroup, a limit), in words; None if nothing."""
    started_at: float | None = None
    """When the program started (epoch seconds)."""
    shared: bool = False
    """The chaperone is the shared one of the root (it watches many programs, and outlives
    each); False: the program's own. Handles written before there was a shared chaperone lack
    the field, and are own."""


def check_key(key: object) -> str:
    if not isinstance(key, str) or not protocol.KEY.match(key):
        raise ConfigError(
            f"key: expected letters, digits and _.:@+=- (not first), at most 200, got {key!r}"
        )
    return key


def chaperone_alive(handle: Handle) -> bool:
    return _proc.alive(handle.chaperone_pid, handle.chaperone_start)


def group_members(handle: Handle) -> list[int]:
    """Live processes still in the program's group and the chaperone's session (a pgid that
    was reused by someone else has another session)."""
    if handle.pid is None:
        return []
    return _proc.group_members(handle.pid, handle.chaperone_pid)


# reading (blocking) -----------------------------------------------------------------------


def read_claim(run_dir: Path) -> tuple[Any, Any]:
    """(claim, program) of a run dir (`corra.chaperone._rundir.claim_of`); (None, None) if it
    was never claimed."""
    try:
        return _rundir.claim_of(str(run_dir))
    except (OSError, ValueError) as error:
        raise BackendError(f"{run_dir}: {error}") from error


def handle_from(key: str, run_dir: Path, claim: Any, program: Any) -> Handle:
    """The handle of a claim (and its program, once started) as a chaperone reports them."""
    try:
        return Handle(
            key=key,
            run_dir=str(run_dir),
            chaperone_pid=int(claim["pid"]),
            chaperone_start=int(claim["start"]),
            pid=None if program is None else int(program["pid"]),
            cgroup=None if program is None else program.get("cgroup"),
            cgroup_note=None if program is None else program.get("cgroup_note"),
            started_at=None if program is None else float(program["started_at"]),
            shared=bool(claim.get("shared", False)),
        )
    except (KeyError, TypeError, ValueError) as error:
        raise BackendError(f"{run_dir}: unreadable pid file: {error!r}") from error


def remove_run_dir(root: Path, key: str) -> None:
    """Remove the run dir of ``key`` under ``root`` with all in it (without following a
    link out of it); a missing one is fine. Blocking."""
    with contextlib.suppress(FileNotFoundError):
        shutil.rmtree(root / check_key(key))


def find_launch(root: Path, key: str) -> Handle | None:
    """The handle of ``key``'s launch under the run dirs' ``root``, from its pid files; None
    if it was never launched. Blocking."""
    run_dir = root / check_key(key)
    claim, program = read_claim(run_dir)
    if claim is None:
        return None
    return handle_from(key, run_dir, claim, program)


def exit_record(handle: Handle) -> ExitRecord | None:
    """The exit record the chaperone wrote, or None while there is none. Blocking.

    Raises:
        BackendError: exit.json is there but not an exit record.
    """
    return read_exit_record(handle.run_dir)


def read_status(handle: Handle) -> Status:
    """``exited`` (there is an exit record), ``running`` (its chaperone runs) or ``lost``
    (its chaperone is gone, or its pid is another process's now, and left no record)."""
    state: Status = _rundir.status(handle.run_dir, handle.chaperone_pid, handle.chaperone_start)
    return state


def spec_of(handle: Handle) -> dict[str, Any]:
    """The spec the chaperone ran (from the shared one's claim, or an own one's spec.json);
    empty if it cannot be read."""
    run_dir = Path(handle.run_dir)
    try:
        if handle.shared:
            spec = _rundir.claim_of(str(run_dir))[0] or {}
            spec = spec.get("spec")
        else:
            spec = _rundir.read_json(str(run_dir / _rundir.SPEC_FILE))
    except (OSError, ValueError):
        spec = None
    return spec if isinstance(spec, dict) else {}


#: What `log_file` reads for each stream: the logs, and the value of ``$CORRA_RESULT``.
READABLE = {**{stream: stream for stream in _rundir.STREAMS}, RESULT_STREAM: _rundir.RESULT_FILE}


def log_file(root: Path, key: str, stream: str) -> Path | None:
    """Where the program of ``key`` writes ``stream`` (``result``: its value), under the run
    dirs' ``root``."""
    name = READABLE.get(stream)
    if name is None or "/" in key or key.startswith("."):
        return None
    return root / key / name


def pread(path: Path, offset: int, size: int) -> bytes:
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except FileNotFoundError:
        return b""
    try:
        return os.pread(fd, size, offset)
    finally:
        os.close(fd)


def file_size(path: Path) -> int:
    try:
        return path.stat().st_size
    except FileNotFoundError:
        return 0


# waiting without a connection -------------------------------------------------------------


def pidfd(pid: int) -> int | None:
    """A pidfd for ``pid``; None if the process is gone or pidfds are not supported."""
    try:
        return os.pidfd_open(pid)
    except (AttributeError, OSError):
        return None


def close_pidfd(fd: int) -> None:
    trio.lowlevel.notify_closing(fd)
    os.close(fd)


def waitpid(pid: int) -> None:
    with contextlib.suppress(ChildProcessError):
        os.waitpid(pid, 0)


async def reap(pid: int) -> None:
    """Wait for our child ``pid`` to exit, then reap it, without blocking the loop."""
    fd = pidfd(pid)
    if fd is None:
        await trio.to_thread.run_sync(waitpid, pid)
        return
    try:
        await trio.lowlevel.wait_readable(fd)
    finally:
        close_pidfd(fd)
    waitpid(pid)


async def record_or_lost(handle: Handle) -> ExitRecord:
    """The exit record of a program whose chaperone is gone.

    Raises:
        ProgramLost: it left none.
    """
    record = await trio.to_thread.run_sync(exit_record, handle)
    if record is None:
        raise ProgramLost(
            f"{handle.key}: chaperone {handle.chaperone_pid} is gone without an exit record"
        )
    return record


async def poll_until_exit(handle: Handle) -> ExitRecord:
    """Wait for the program's end by looking at its run dir, with backoff."""
    delay = POLL_FIRST
    while await trio.to_thread.run_sync(read_status, handle) == "running":
        await trio.sleep(delay)
        delay = min(delay * 2, POLL_MAX)
    return await record_or_lost(handle)


async def watch_chaperone(handle: Handle) -> ExitRecord:
    """Wait for the program's chaperone to be gone (a pidfd on it; polling where there are
    none), then its exit record."""
    fd = pidfd(handle.chaperone_pid)
    if fd is None:
        return await poll_until_exit(handle)
    try:
        if chaperone_alive(handle):
            await trio.lowlevel.wait_readable(fd)
    finally:
        close_pidfd(fd)
    return await record_or_lost(handle)

"""The local backend: programs on this machine, each under a detached chaperone.

The runtime hands the spec to a chaperone, forked by a long-lived fork server (the *zygote*,
which receives the spec over a socket) or else started directly as ``python -I -S chaperone.py
RUN_DIR`` (after the runtime wrote spec.json, in a worker thread). The chaperone claims
``root/<key>``, starts the program and answers on a pipe; the same pipe later carries the exit
record. Everything about the program is also in files in its run dir (see
`corra.backends.chaperone`), so any runtime, this one or the next after a crash, can find it by
key, wait for it, read its logs and kill it.

Rule 1: a key is launched once. The chaperone's claim on the run dir is exclusive, so a launch
retried after a crash (or twice at once) finds the first one and returns its handle.

Rule 2: a launch that could not start the program raises `LaunchFailed`, and keeps doing so when
retried with the same key: a program whose argv[0] cannot be executed has a claimed run dir
whose ``exit.json`` carries the error (so recovery sees it too, through `exit_record`); a
missing cwd claims nothing.

Rule 3: the event loop never waits on the disk or on a process. Disk work happens in the
chaperone or in a worker thread; the runtime learns that a program ended from its chaperone's
pipe (programs this backend launched) or from a pidfd on the chaperone (programs found by key).
What runs on the loop is non-blocking pipe and socket I/O and reads of /proc.
"""

from __future__ import annotations

import array
import contextlib
import errno
import json
import math
import os
import re
import signal
import socket
import sys
from collections import OrderedDict
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, Literal

import attrs
import trio

from corra._errors import BackendError, ConfigError, LaunchFailed, ProgramLost
from corra.backends import _cgroups, chaperone
from corra.backends._cgroups import CgroupSupport

__all__ = [
    "CgroupSupport",
    "ExitRecord",
    "Handle",
    "LaunchSpec",
    "LocalBackend",
    "SlotStatistics",
]

Stream = Literal["stdout", "stderr"]
Status = Literal["running", "exited", "lost"]

CHAPERONE_PATH = os.path.abspath(chaperone.__file__)
#: A key names a directory and a cgroup: no separators, no leading dot, not too long.
_KEY = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.:@+=-]{0,199}")
_ENV_NAME = re.compile(r"[^=\0]+")
#: Polling where there is no pidfd, and while another launch of the same key finishes.
_POLL_FIRST, _POLL_MAX = 0.005, 0.5


# values ---------------------------------------------------------------------------------


def _argv(value: object) -> tuple[str, ...]:
    if isinstance(value, str | bytes) or not isinstance(value, Sequence):
        raise ConfigError(f"argv: expected a non-empty list of str, got {value!r}")
    if not value or not all(isinstance(arg, str) and "\0" not in arg for arg in value):
        raise ConfigError(f"argv: expected a non-empty list of str without NUL, got {value!r}")
    return tuple(value)


def _env(value: object) -> dict[str, str]:
    if not isinstance(value, Mapping):
        raise ConfigError(f"env: expected a mapping of str to str, got {value!r}")
    for name, setting in value.items():
        if not isinstance(name, str) or not _ENV_NAME.fullmatch(name):
            raise ConfigError(f"env: invalid variable name {name!r}")
        if not isinstance(setting, str) or "\0" in setting:
            raise ConfigError(f"env[{name!r}]: expected a str without NUL, got {setting!r}")
    return dict(value)


def _seconds(name: str, *, positive: bool) -> Callable[[Any, Any, Any], None]:
    def check(instance: Any, attribute: Any, value: Any) -> None:
        if value is None and name == "timeout":
            return
        if (
            isinstance(value, bool)
            or not isinstance(value, int | float)
            or not math.isfinite(value)
            or value < 0
            or (positive and value == 0)
        ):
            expected = "a number of seconds > 0" if positive else "a number of seconds >= 0"
            raise ConfigError(f"{name}: expected {expected}, got {value!r}")

    return check


def _limit(name: str) -> Callable[[Any, Any, Any], None]:
    def check(instance: Any, attribute: Any, value: Any) -> None:
        if value is not None and (
            isinstance(value, bool) or not isinstance(value, int) or value < 1
        ):
            raise ConfigError(f"{name}: expected a positive int or None, got {value!r}")

    return check


def _cwd(instance: Any, attribute: Any, value: Any) -> None:
    if value is not None and (not isinstance(value, str) or not value or "\0" in value):
        raise ConfigError(f"cwd: expected a path or None, got {value!r}")


@attrs.frozen
class LaunchSpec:
    """What to run. Invalid values raise `ConfigError` naming the field, at construction."""

    argv: tuple[str, ...] = attrs.field(converter=_argv)
    """The program and its arguments; argv[0] is looked up on the program's PATH."""
    cwd: str | None = attrs.field(default=None, validator=_cwd)
    """Must exist when launched; None: a fresh ``work`` directory in the run dir."""
    env: dict[str, str] = attrs.field(factory=dict, converter=_env)
    """Added on top of the runtime's environment."""
    timeout: float | None = attrs.field(default=None, validator=_seconds("timeout", positive=True))
    """Seconds from start; then the program is killed (TERM, then KILL after ``kill_grace``)."""
    kill_grace: float = attrs.field(default=10.0, validator=_seconds("kill_grace", positive=False))
    """Seconds between SIGTERM and SIGKILL, when timed out or killed."""
    memory_limit: int | None = attrs.field(default=None, validator=_limit("memory_limit"))
    """Bytes, enforced through a memory cgroup where there is one (else a note in the handle)."""
    pids_limit: int | None = attrs.field(default=None, validator=_limit("pids_limit"))
    """Processes, enforced through a pids cgroup where there is one."""


@attrs.frozen
class Handle:
    """Where a launched program is; plain JSON-able data, kept in the process snapshot."""

    key: str
    run_dir: str
    chaperone_pid: int
    chaperone_start: int
    """Field 22 of /proc/<pid>/stat: tells the chaperone from a later process with its pid."""
    pid: int | None
    """The program's pid, which is also its process group; None while it is being started, or
    if it never started."""
    cgroup: str | None = None
    """The program's cgroup (one with ``cgroup.kill`` where there is one)."""
    cgroup_note: str | None = None
    """What could not be arranged (a cgroup, a limit), in words; None if nothing."""
    started_at: float | None = None
    """When the program started (epoch seconds)."""


@attrs.frozen
class ExitRecord:
    """How a program ended, as its chaperone recorded it in ``exit.json``."""

    returncode: int | None
    """The exit status, or None if a signal ended it (or it never ran)."""
    signal: int | None
    """The signal that ended it, or None."""
    utime: float
    stime: float
    maxrss: int
    """Peak resident set in bytes, as wait4 reports it (at least the chaperone's own size, for
    the kernel counts the spawning process's memory until exec)."""
    started_at: float
    ended_at: float
    stdout_size: int
    stderr_size: int
    timed_out: bool = False
    """Its timeout expired, so the chaperone killed it."""
    killed: bool = False
    """A kill was requested (SIGTERM to the chaperone) before it ended."""
    oom_killed: bool = False
    """The kernel's OOM killer struck in its memory cgroup."""
    error: str | None = None
    """Why the program did not run (``No such file or directory: 'nosuch'``), or None."""

    @property
    def ok(self) -> bool:
        return self.returncode == 0 and self.error is None

    @classmethod
    def from_json(cls, data: object) -> ExitRecord:
        """Structure ``exit.json``; raises BackendError naming the field that is wrong."""
        if not isinstance(data, dict):
            raise BackendError(f"exit.json: expected an object, got {data!r}")
        values = {}
        for field in attrs.fields(cls):
            if field.name not in data:
                if field.default is attrs.NOTHING:
                    raise BackendError(f"exit.json: {field.name} is missing")
                continue
            values[field.name] = data[field.name]
        for name in ("returncode", "signal"):
            if values[name] is not None and not isinstance(values[name], int):
                raise BackendError(f"exit.json: {name}: expected an int or null")
        return cls(**values)


@attrs.frozen
class SlotStatistics:
    """The slot queue at one moment."""

    limit: int
    running: int
    """Keys holding a slot (adopted ones included, even above the limit)."""
    waiting: int


# slots ----------------------------------------------------------------------------------


class _Slots:
    """A FIFO bound on running programs, by key; a key holds at most one slot."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.held: set[str] = set()
        self.waiting: OrderedDict[str, tuple[trio.Event, list[int]]] = OrderedDict()

    async def acquire(self, key: str) -> None:
        if key in self.held:
            await trio.lowlevel.checkpoint()
            return
        if not self.waiting and len(self.held) < self.limit:
            self.held.add(key)
            await trio.lowlevel.checkpoint()
            return
        event, waiters = self.waiting.setdefault(key, (trio.Event(), [0]))
        waiters[0] += 1
        try:
            await event.wait()
        except BaseException:
            waiters[0] -= 1
            if waiters[0] == 0:
                if self.waiting.get(key, (None,))[0] is event:
                    del self.waiting[key]
                elif event.is_set():
                    self.release(key)  # granted as we were cancelled: nobody will use it
            raise

    def release(self, key: str) -> None:
        self.held.discard(key)
        while self.waiting and len(self.held) < self.limit:
            next_key, (event, _) = self.waiting.popitem(last=False)
            self.held.add(next_key)
            event.set()

    def adopt(self, key: str) -> None:
        entry = self.waiting.pop(key, None)
        self.held.add(key)
        if entry is not None:
            entry[0].set()


# the fork server ------------------------------------------------------------------------


class _Zygote:
    """A long-lived ``chaperone.py --zygote``: forks a chaperone per request (about 1 ms)
    instead of starting an interpreter (about 20 ms)."""

    def __init__(self, pid: int, sock: socket.socket) -> None:
        self.pid = pid
        self.sock = sock
        self.alive = True
        self.sending = trio.StrictFIFOLock()  # one task at a time may wait for buffer space

    @classmethod
    def start(cls) -> _Zygote:
        """Blocking: run in a thread."""
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        try:
            pid = os.posix_spawn(
                _python(),
                [_python(), "-I", "-S", CHAPERONE_PATH, "--zygote", "3"],
                dict(os.environ),
                file_actions=[
                    (os.POSIX_SPAWN_OPEN, 0, os.devnull, os.O_RDONLY, 0),
                    (os.POSIX_SPAWN_OPEN, 1, os.devnull, os.O_WRONLY, 0),
                    (os.POSIX_SPAWN_OPEN, 2, os.devnull, os.O_WRONLY, 0),
                    (os.POSIX_SPAWN_DUP2, theirs.fileno(), 3),
                ],
                setsid=True,
                setsigmask=(),
                setsigdef=chaperone.RESET_IN_PROGRAM,
            )
        except BaseException:
            ours.close()
            raise
        finally:
            theirs.close()
        ours.setblocking(False)
        return cls(pid, ours)

    async def send(self, message: bytes, notify_fd: int) -> bool:
        """Hand one request over; False if the zygote is gone or the message too large."""
        fds = array.array("i", [notify_fd])
        async with self.sending:
            while self.alive:
                try:
                    self.sock.sendmsg([message], [(socket.SOL_SOCKET, socket.SCM_RIGHTS, fds)])
                except BlockingIOError:
                    await trio.lowlevel.wait_writable(self.sock)
                    continue
                except OSError as error:
                    if error.errno != errno.EMSGSIZE:
                        self.alive = False
                    return False
                return True
        return False

    async def aclose(self) -> None:
        """Close the socket (the zygote exits on end of file) and reap it."""
        self.alive = False
        trio.lowlevel.notify_closing(self.sock)
        self.sock.close()
        with trio.CancelScope(shield=True):
            await _reap(self.pid)


def _python() -> str:
    return sys.executable or "python3"


async def _reap(pid: int) -> None:
    """Wait for our child ``pid`` to exit, then reap it, without blocking the loop."""
    pidfd = _pidfd(pid)
    if pidfd is None:
        await trio.to_thread.run_sync(_waitpid, pid)
        return
    try:
        await trio.lowlevel.wait_readable(pidfd)
    finally:
        _close_pidfd(pidfd)
    _waitpid(pid)


def _waitpid(pid: int) -> None:
    with contextlib.suppress(ChildProcessError):
        os.waitpid(pid, 0)


def _pidfd(pid: int) -> int | None:
    """A pidfd for ``pid``; None if the process is gone or pidfds are not supported."""
    try:
        return os.pidfd_open(pid)
    except (AttributeError, OSError):
        return None


def _close_pidfd(pidfd: int) -> None:
    trio.lowlevel.notify_closing(pidfd)
    os.close(pidfd)


class _Link:
    """Our end of a chaperone's notify pipe: its reply, then (after ``started``) its exit
    record, one JSON line each; end of file if it died or was started by someone else."""

    def __init__(self, fd: int) -> None:
        os.set_blocking(fd, False)
        self.fd = fd
        self.buffer = b""

    async def receive(self) -> dict[str, Any] | None:
        """The next line; None at end of file. A checkpoint only when it has to wait."""
        while b"\n" not in self.buffer:
            try:
                chunk = os.read(self.fd, 65536)
            except BlockingIOError:
                await trio.lowlevel.wait_readable(self.fd)
                continue
            if not chunk:
                return None
            self.buffer += chunk
        line, _, self.buffer = self.buffer.partition(b"\n")
        message = json.loads(line)
        if not isinstance(message, dict):
            raise BackendError(f"unexpected message from a chaperone: {message!r}")
        return message

    def close(self) -> None:
        if self.fd >= 0:
            trio.lowlevel.notify_closing(self.fd)
            os.close(self.fd)
            self.fd = -1


# processes ------------------------------------------------------------------------------


def _stat(pid: int) -> tuple[int, str, int, int] | None:
    """(start time, state, pgid, session) of ``pid`` from /proc, or None if it is gone."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as file:
            data = file.read()
    except OSError:
        return None
    fields = data[data.rindex(b")") + 2 :].split()
    return int(fields[19]), fields[0].decode(), int(fields[2]), int(fields[3])


def _chaperone_alive(handle: Handle) -> bool:
    stat = _stat(handle.chaperone_pid)
    return stat is not None and stat[0] == handle.chaperone_start and stat[1] not in "ZX"


def _group_members(handle: Handle) -> list[int]:
    """Live processes still in the program's group and the chaperone's session (a pgid that
    was reused by someone else has another session)."""
    if handle.pid is None:
        return []
    return chaperone.group_members(handle.pid, handle.chaperone_pid)


def _read_json(path: Path) -> Any:
    """The JSON in ``path``; None if there is no such file, or an empty one (what a machine
    crash can leave of a file written but not yet fsynced)."""
    try:
        with open(path, "rb") as file:
            data = file.read()
        return json.loads(data) if data else None
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as error:
        raise BackendError(f"{path}: {error}") from error


def _written(path: str) -> bool:
    """Whether ``path`` exists and is not empty (see `_read_json`)."""
    try:
        return os.stat(path).st_size > 0
    except FileNotFoundError:
        return False


def _handle_from(key: str, run_dir: Path, chaperone_info: Any, program: Any) -> Handle:
    try:
        return Handle(
            key=key,
            run_dir=str(run_dir),
            chaperone_pid=int(chaperone_info["pid"]),
            chaperone_start=int(chaperone_info["start"]),
            pid=None if program is None else int(program["pid"]),
            cgroup=None if program is None else program.get("cgroup"),
            cgroup_note=None if program is None else program.get("cgroup_note"),
            started_at=None if program is None else float(program["started_at"]),
        )
    except (KeyError, TypeError, ValueError) as error:
        raise BackendError(f"{run_dir}: unreadable pid file: {error!r}") from error


def _check_key(key: object) -> str:
    if not isinstance(key, str) or not _KEY.fullmatch(key):
        raise ConfigError(
            f"key: expected letters, digits and _.:@+=- (not first), at most 200, got {key!r}"
        )
    return key


# the backend ----------------------------------------------------------------------------


class LocalBackend:
    """Programs on this machine, one run dir each under ``root``.

    Args:
        root: where run dirs go (``root/<key>``); created on first launch.
        max_running: the slot limit (`acquire_slot`); default 4 per CPU.
        cgroups: "auto" uses what `cgroups` found (kill through ``cgroup.kill``, memory and pids
            limits); "off" uses none (kill reaches the process group only).
        zygote: fork chaperones from a fork server (fast) rather than starting an interpreter
            per launch; the direct way remains the fallback.

    Use it as ``async with LocalBackend(root) as backend:`` (or call `aclose`), so that the
    fork server is stopped. Programs are not: they outlive the backend, by design.
    """

    def __init__(
        self,
        root: Path | str,
        *,
        max_running: int | None = None,
        cgroups: Literal["auto", "off"] = "auto",
        zygote: bool = True,
    ) -> None:
        if max_running is None:
            max_running = 4 * (os.cpu_count() or 1)
        if isinstance(max_running, bool) or not isinstance(max_running, int) or max_running < 1:
            raise ConfigError(f"max_running: expected a positive int, got {max_running!r}")
        if cgroups not in ("auto", "off"):
            raise ConfigError(f"cgroups: expected 'auto' or 'off', got {cgroups!r}")
        self.root = Path(root).absolute()
        self._cgroup_suffix = _cgroups.cgroup_suffix(str(self.root))
        self._cgroups = _cgroups.detect_here() if cgroups == "auto" else _cgroups.OFF
        self._prepared = False
        self._preparing = trio.Lock()
        self._use_zygote = zygote
        self._zygote: _Zygote | None = None
        self._launching: dict[str, trio.Event] = {}
        self._links: dict[str, _Link] = {}  # pipes of programs we launched, until waited
        self._slots = _Slots(max_running)
        self._closed = False

    @property
    def cgroups(self) -> CgroupSupport:
        """What cgroups do for programs here (after the first launch: what really worked)."""
        return self._cgroups

    async def __aenter__(self) -> LocalBackend:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        """Stop the fork server. Running programs and their chaperones are not touched.

        A checkpoint; shielded, so it finishes even when cancelled.
        """
        self._closed = True
        links, self._links = self._links, {}
        for link in links.values():
            link.close()
        zygote, self._zygote = self._zygote, None
        if zygote is not None:
            await zygote.aclose()
        else:
            await trio.lowlevel.checkpoint()

    # launching ----------------------------------------------------------------------------

    async def launch(self, key: str, spec: LaunchSpec) -> Handle:
        """Start ``spec`` as the program of ``key``, once: if ``key`` was launched before
        (by this runtime or one before a crash), return that launch's handle instead.

        Returns once the program runs (its pid is known). Cancelling it leaves the launch to
        finish or not; launching the key again tells which.

        Raises:
            ConfigError: ``key`` is not a valid key.
            LaunchFailed: the program could not be started: cwd missing, argv[0] not found or
                not executable (also recorded in ``exit.json``'s ``error``, so a later launch of
                the same key raises again).
        """
        _check_key(key)
        if not isinstance(spec, LaunchSpec):
            raise ConfigError(f"spec: expected a LaunchSpec, got {spec!r}")
        if self._closed:
            raise BackendError("the backend is closed")
        while key in self._launching:
            await self._launching[key].wait()
        self._launching[key] = done = trio.Event()
        try:
            await self._prepare()
            return await self._launch(key, spec)
        finally:
            del self._launching[key]
            done.set()

    async def _prepare(self) -> None:
        if self._prepared:
            return
        async with self._preparing:
            if not self._prepared:
                self._cgroups = await trio.to_thread.run_sync(self._prepare_sync, self._cgroups)
                self._prepared = True

    def _prepare_sync(self, support: CgroupSupport) -> CgroupSupport:
        self.root.mkdir(parents=True, exist_ok=True)
        if support.layout == "off":
            return support
        support = _cgroups.prepare(support)
        self._sweep_cgroups(support)
        return support

    def _sweep_cgroups(self, support: CgroupSupport) -> None:
        """Remove the empty cgroups that lost runs of this root left behind (a chaperone that
        was SIGKILLed cannot remove its own). Cgroups with processes in them stay: `kill`
        is the way to end those."""
        for parent in {support.unified, support.memory, support.pids} - {None}:
            try:
                names = os.listdir(parent)  # type: ignore[arg-type]
            except OSError:
                continue
            for name in names:
                key = name.removesuffix(self._cgroup_suffix)
                if key == name or not _KEY.fullmatch(key):
                    continue
                try:
                    handle = self.find(key)
                    if handle is not None and self.status(handle) == "running":
                        continue
                except BackendError:
                    continue
                with contextlib.suppress(OSError):
                    os.rmdir(os.path.join(parent, name))  # type: ignore[arg-type]

    def _document(self, key: str, spec: LaunchSpec) -> dict[str, Any]:
        """spec.json: the spec as the chaperone needs it, resolved against this runtime."""
        entries, notes = self._cgroups.entries(
            key + self._cgroup_suffix, spec.memory_limit, spec.pids_limit
        )
        return {
            "key": key,
            "argv": list(spec.argv),
            "cwd": None if spec.cwd is None else os.path.abspath(spec.cwd),
            "env": {**os.environ, **spec.env},
            "timeout": spec.timeout,
            "kill_grace": spec.kill_grace,
            "memory_limit": spec.memory_limit,
            "pids_limit": spec.pids_limit,
            "cgroups": entries,
            "cgroup_notes": notes,
        }

    async def _launch(self, key: str, spec: LaunchSpec) -> Handle:
        run_dir = self.root / key
        document = self._document(key, spec)
        link = await self._start(run_dir, document)
        try:
            reply = await link.receive()
            if reply is None:
                # The chaperone died before it said anything (a zygote that was killed, say).
                # If it had claimed the run dir, that launch counts; if not, nothing ran: retry.
                if await trio.to_thread.run_sync(self.find, key) is None:
                    link.close()
                    link = await self._start(run_dir, document, direct=True)
                    reply = await link.receive()
                if reply is None:
                    reply = {"status": "claimed"}
        except BaseException:
            link.close()
            raise
        status = reply.get("status")
        if status == "started":
            handle = _handle_from(key, run_dir, reply["chaperone"], reply["program"])
            self._links[key] = link  # the exit record comes the same way
            return handle
        link.close()
        if status in ("failed", "invalid"):
            raise LaunchFailed(f"{key}: {reply.get('error')}")
        if status == "claimed":
            return await self._existing(key)
        raise BackendError(f"{key}: unexpected reply from the chaperone: {reply!r}")

    async def _start(
        self, run_dir: Path, document: dict[str, Any], *, direct: bool = False
    ) -> _Link:
        """Start a chaperone for ``run_dir``; the pipe on which it will answer."""
        read_fd, write_fd = os.pipe()
        link = _Link(read_fd)
        try:
            sent = False
            if self._use_zygote and not direct:
                zygote = await self._get_zygote()
                if zygote is not None:
                    message = json.dumps({"run_dir": str(run_dir), "spec": document}).encode()
                    sent = await zygote.send(message, write_fd)
            if not sent:
                intermediate = await trio.to_thread.run_sync(
                    _spawn_direct, run_dir, document, write_fd
                )
                os.close(write_fd)
                write_fd = -1
                with trio.CancelScope(shield=True):
                    await _reap(intermediate)  # it exits as soon as the chaperone detached
        except BaseException:
            link.close()
            raise
        finally:
            if write_fd >= 0:
                os.close(write_fd)
        return link

    async def _get_zygote(self) -> _Zygote | None:
        if self._zygote is not None and self._zygote.alive:
            return self._zygote
        async with self._preparing:
            if self._zygote is not None and not self._zygote.alive:
                old, self._zygote = self._zygote, None
                await old.aclose()
            if self._zygote is None and not self._closed:
                try:
                    self._zygote = await trio.to_thread.run_sync(_Zygote.start)
                except OSError:
                    self._use_zygote = False  # the direct way works without it
        return self._zygote

    async def _existing(self, key: str) -> Handle:
        """The handle of an earlier launch of ``key``, once its program is started (or not)."""
        delay = _POLL_FIRST
        while True:
            handle = await trio.to_thread.run_sync(self.find, key)
            if handle is None:
                raise BackendError(f"{key}: claimed but without a chaperone.pid")
            if handle.pid is not None:
                return handle
            record = await trio.to_thread.run_sync(self.exit_record, handle)
            if record is not None and record.error is not None:
                raise LaunchFailed(f"{key}: {record.error}")
            if record is not None or not _chaperone_alive(handle):
                return handle  # never started, or lost: wait() tells which
            await trio.sleep(delay)
            delay = min(delay * 2, _POLL_MAX)

    # looking ------------------------------------------------------------------------------

    def run_dir(self, key: str) -> Path:
        return self.root / _check_key(key)

    def find(self, key: str) -> Handle | None:
        """The handle of ``key``'s launch, from its pid files; None if it was never launched.

        Blocking (reads two small files): for recovery, or call it in a thread.
        """
        run_dir = self.run_dir(key)
        chaperone_info = _read_json(run_dir / chaperone.CHAPERONE_FILE)
        if chaperone_info is None:
            return None
        program = _read_json(run_dir / chaperone.PROGRAM_FILE)
        return _handle_from(key, run_dir, chaperone_info, program)

    def exit_record(self, handle: Handle) -> ExitRecord | None:
        """How the program ended, or None while it has not (or it is lost). Blocking.

        Raises:
            BackendError: exit.json is there but not an exit record.
        """
        data = _read_json(Path(handle.run_dir) / chaperone.EXIT_FILE)
        return None if data is None else ExitRecord.from_json(data)

    def status(self, handle: Handle) -> Status:
        """``exited`` (there is an exit record), ``running`` (its chaperone runs) or ``lost``
        (its chaperone is gone, or its pid is another process's now, and left no record)."""
        exit_file = os.path.join(handle.run_dir, chaperone.EXIT_FILE)
        if _written(exit_file):
            return "exited"
        if _chaperone_alive(handle):
            return "running"
        return "exited" if _written(exit_file) else "lost"

    def log_path(self, handle: Handle, stream: Stream) -> Path:
        if stream not in chaperone.STREAMS:
            raise ConfigError(f"stream: expected 'stdout' or 'stderr', got {stream!r}")
        return Path(handle.run_dir) / stream

    async def read_log(self, handle: Handle, stream: Stream, offset: int, size: int) -> bytes:
        """Up to ``size`` bytes of the program's ``stream`` from byte ``offset`` (fewer at the
        end; empty before the program wrote anything). A checkpoint; reads in a thread."""
        path = self.log_path(handle, stream)
        if offset < 0 or size < 0:
            raise ConfigError(f"offset, size: expected >= 0, got {offset!r}, {size!r}")
        return await trio.to_thread.run_sync(_pread, path, offset, size)

    # waiting and killing --------------------------------------------------------------------

    async def wait(self, handle: Handle) -> ExitRecord:
        """Wait for the program to end; its exit record (exit.json exists by then).

        Woken by the chaperone's pipe for programs this backend launched, else by a pidfd on
        the chaperone; it polls (with backoff) only where there are no pidfds. A checkpoint;
        cancelling it leaves the program alone, and a later wait picks up where it stopped.

        Raises:
            ProgramLost: the chaperone is gone and left no exit record.
        """
        await trio.lowlevel.checkpoint()
        link = self._links.pop(handle.key, None)
        if link is not None:
            try:
                message = await link.receive()
            except trio.Cancelled:
                # Let it go: a paused process must hold nothing, not even this pipe; a
                # later wait uses a pidfd on the chaperone, or the exit file.
                link.close()
                raise
            except BaseException:
                link.close()
                raise
            link.close()
            if message is not None and message.get("status") == "exited":
                return ExitRecord.from_json(message["record"])
        pidfd = _pidfd(handle.chaperone_pid)
        if pidfd is None:
            return await self._poll_until_exit(handle)
        try:
            if _chaperone_alive(handle):
                await trio.lowlevel.wait_readable(pidfd)
        finally:
            _close_pidfd(pidfd)
        return await self._record_or_lost(handle)

    async def _record_or_lost(self, handle: Handle) -> ExitRecord:
        record = await trio.to_thread.run_sync(self.exit_record, handle)
        if record is None:
            raise ProgramLost(
                f"{handle.key}: chaperone {handle.chaperone_pid} is gone without an exit record"
            )
        return record

    async def _poll_until_exit(self, handle: Handle) -> ExitRecord:
        delay = _POLL_FIRST
        while await trio.to_thread.run_sync(self.status, handle) == "running":
            await trio.sleep(delay)
            delay = min(delay * 2, _POLL_MAX)
        return await self._record_or_lost(handle)

    async def kill(self, handle: Handle, grace: float | None = None) -> ExitRecord | None:
        """Kill the program: SIGTERM to its group, SIGKILL after ``grace`` seconds (None: the
        spec's ``kill_grace``), and its cgroup with it.

        The chaperone does it (so a kill survives a runtime crash half-way) and records
        ``killed``; if the chaperone is gone, the runtime kills the group itself. Returns the
        exit record once there is one, or None if the program was lost (and is now gone).
        Cancelling the wait leaves the kill under way.
        """
        if grace is not None:
            _seconds("grace", positive=False)(None, None, grace)
            await trio.to_thread.run_sync(_write_kill_request, handle, grace)
        if _signal_chaperone(handle, signal.SIGTERM):
            try:
                return await self.wait(handle)
            except ProgramLost:
                pass  # SIGKILLed by someone before it could record: finish the job here
        record = await trio.to_thread.run_sync(self.exit_record, handle)
        if record is not None:
            return record
        if grace is None:
            grace = await trio.to_thread.run_sync(_spec_grace, handle)
        await self._kill_orphaned(handle, grace)
        return None

    async def _kill_orphaned(self, handle: Handle, grace: float) -> None:
        """A program without its chaperone: TERM, wait up to ``grace``, then KILL."""
        if await trio.to_thread.run_sync(_group_members, handle):
            _killpg(handle, signal.SIGTERM)
            deadline = trio.current_time() + grace
            delay = _POLL_FIRST
            while await trio.to_thread.run_sync(_group_members, handle):
                if trio.current_time() >= deadline:
                    break
                await trio.sleep(min(delay, max(deadline - trio.current_time(), 0)))
                delay = min(delay * 2, _POLL_MAX)
        if await trio.to_thread.run_sync(_group_members, handle):
            _killpg(handle, signal.SIGKILL)
            delay = _POLL_FIRST
            with trio.move_on_after(chaperone.CGROUP_DRAIN):
                while await trio.to_thread.run_sync(_group_members, handle):
                    await trio.sleep(delay)  # SIGKILLed, but not dead yet
                    delay = min(delay * 2, _POLL_MAX)
        await trio.to_thread.run_sync(_kill_cgroups, handle, self._cgroup_paths(handle.key))

    def _cgroup_paths(self, key: str) -> list[str]:
        """Where this backend would have put the cgroups of ``key``."""
        name = key + self._cgroup_suffix
        parents = (self._cgroups.unified, self._cgroups.memory, self._cgroups.pids)
        return [os.path.join(parent, name) for parent in parents if parent is not None]

    # slots --------------------------------------------------------------------------------

    async def acquire_slot(self, key: str) -> None:
        """Wait for one of ``max_running`` slots, first come first served; at once if ``key``
        holds one already. A checkpoint; cancelling it gives up the place in the queue."""
        await self._slots.acquire(key)

    def release_slot(self, key: str) -> None:
        """Give ``key``'s slot to the next in line (nothing if it holds none)."""
        self._slots.release(key)

    def adopt_slot(self, key: str) -> None:
        """Count ``key`` as running without waiting, even above the limit (for programs found
        running at recovery)."""
        self._slots.adopt(key)

    def slot_statistics(self) -> SlotStatistics:
        return SlotStatistics(
            limit=self._slots.limit,
            running=len(self._slots.held),
            waiting=len(self._slots.waiting),
        )


# blocking helpers (worker threads) --------------------------------------------------------


def _spawn_direct(run_dir: Path, document: dict[str, Any], notify_fd: int) -> int:
    """Write spec.json and start ``chaperone.py RUN_DIR``; the pid of the intermediate process
    (which exits as soon as the chaperone has detached)."""
    run_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    chaperone.write_atomic(str(run_dir / chaperone.SPEC_FILE), chaperone.json_line(document))
    python = _python()
    return os.posix_spawn(
        python,
        [python, "-I", "-S", CHAPERONE_PATH, str(run_dir), "--notify-fd", "3"],
        dict(os.environ),
        file_actions=[
            (os.POSIX_SPAWN_OPEN, 0, os.devnull, os.O_RDONLY, 0),
            (os.POSIX_SPAWN_OPEN, 1, os.devnull, os.O_WRONLY, 0),
            (os.POSIX_SPAWN_OPEN, 2, os.devnull, os.O_WRONLY, 0),
            (os.POSIX_SPAWN_DUP2, notify_fd, 3),
        ],
        setsigmask=(),
        setsigdef=chaperone.RESET_IN_PROGRAM,
    )


def _pread(path: Path, offset: int, size: int) -> bytes:
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except FileNotFoundError:
        return b""
    try:
        return os.pread(fd, size, offset)
    finally:
        os.close(fd)


def _write_kill_request(handle: Handle, grace: float) -> None:
    path = os.path.join(handle.run_dir, chaperone.KILL_FILE)
    chaperone.write_atomic(path, chaperone.json_line({"grace": grace}))


def _spec_grace(handle: Handle) -> float:
    spec = _read_json(Path(handle.run_dir) / chaperone.SPEC_FILE) or {}
    try:
        return float(spec.get("kill_grace", 10.0))
    except (TypeError, ValueError):
        return 10.0


def _signal_chaperone(handle: Handle, number: int) -> bool:
    """Signal the chaperone if it is still itself (not a later process with its pid)."""
    pidfd = _pidfd(handle.chaperone_pid)
    if pidfd is None:
        return False
    try:
        # Checked after the pidfd is open: from here on the pid cannot be reused under us.
        if not _chaperone_alive(handle):
            return False
        signal.pidfd_send_signal(pidfd, number)
        return True
    except ProcessLookupError:
        return False
    finally:
        os.close(pidfd)


def _killpg(handle: Handle, number: int) -> None:
    if handle.pid is not None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(handle.pid, number)


def _kill_cgroups(handle: Handle, candidates: list[str]) -> None:
    """SIGKILL whatever is left in the program's cgroups, and remove them: those its spec.json
    names and the ``candidates`` (spec.json may not have been written yet)."""
    spec = _read_json(Path(handle.run_dir) / chaperone.SPEC_FILE) or {}
    paths = [entry["path"] for entry in spec.get("cgroups") or []] + candidates
    if handle.cgroup is not None:
        paths.append(handle.cgroup)
    cgroups = chaperone.Cgroups([])
    cgroups.entries = [(path, {}) for path in dict.fromkeys(paths) if os.path.isdir(path)]
    cgroups.kill()
    cgroups.remove()

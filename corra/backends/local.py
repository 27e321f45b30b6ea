"""The local backend: programs on this machine, each under a detached chaperone.

By default one chaperone serves the whole root (``chaperone="shared"``): a long-lived
``python -I -S .../corra/chaperone --serve`` that the first backend to need it starts, detached,
and that launches every program of the root as its own child, in one event loop. The backend keeps
one connection to it (a Unix socket in the root, JSON lines): launch requests and their
replies, and an ``exited`` message with the exit record when a program ends, dispatched by one
reader task to whoever waits, by key. With ``chaperone="own"`` every program gets its own
chaperone instead, started as ``python -I -S .../corra/chaperone RUN_DIR`` (after the runtime
wrote spec.json, in a worker thread), which answers on a pipe. The trade-off: a shared
chaperone adds a fraction of a millisecond to a launch where an own one costs an interpreter's
start (tens of milliseconds), but if it is killed every program it watches is lost; an own
chaperone loses only its own. Programs get the launching runtime's environment (as it is at the
launch) and umask (as it was when the backend connected); what else a process inherits
(resource limits, scheduling, the cgroup they are made under) is the chaperone's, so, for a
shared one, that of the runtime that started it.

Either way everything about a program is also in files in its run dir ``root/<key>`` (see
`corra.chaperone._rundir`), so any runtime, this one or the next after a crash, can find it by
key, wait for it, read its logs and kill it. Handles say which kind of chaperone watches the
program (``shared``; handles from before the shared chaperone existed are own ones).

Rule 1: a key is launched once. The chaperone's claim on the run dir is exclusive, so a launch
retried after a crash (or twice at once, by two backends, of either kind) finds the first one
and returns its handle.

Rule 2: a launch that could not start the program raises `LaunchFailed`, and keeps doing so when
retried with the same key: a program whose argv[0] cannot be executed has a claimed run dir
whose ``exit.json`` carries the error (so recovery sees it too, through `exit_record`); a
missing cwd claims nothing.

Rule 3: the event loop never waits on the disk or on a process. Disk work happens in the
chaperone or in a worker thread (which also connects to the shared chaperone, and starts it);
the runtime learns that a program ended from the shared chaperone's connection, or from an own
chaperone's pipe (programs this backend launched) or from a pidfd on it (programs found by key).
What runs on the loop is non-blocking pipe and socket I/O and reads of /proc.

Rule 4: programs outlive the backend and its runtime. Closing the backend (or its runtime
dying) closes the connection; the shared chaperone keeps running its programs, enforcing
their timeouts and kills, and writing their exit records, and leaves by itself once it has had
no program and no connection for a few seconds. A backend that finds it gone starts a new one;
programs of a chaperone that died without writing their exit records are lost
(`ProgramLost`), and `kill` ends what is left of them from their pid files.
"""

from __future__ import annotations

import contextlib
import fcntl
import itertools
import json
import math
import os
import re
import select
import signal
import socket
import sys
import time
from collections import OrderedDict
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, Literal

import attrs
import trio

from corra._errors import BackendError, ConfigError, LaunchFailed, ProgramLost
from corra._statedir import check_directory, check_peer, make_private_dirs
from corra.backends import _cgroups
from corra.backends._cgroups import CgroupSupport
from corra.chaperone import PACKAGE_DIR, _proc, _rundir, protocol
from corra.chaperone._cgroups import CGROUP_DRAIN, Cgroups
from corra.chaperone._run import Run
from corra.chaperone._rundir import ROOT_VARIABLE
from corra.chaperone._shared import IDLE_EXIT
from corra.chaperone._spawn import RESET_IN_PROGRAM
from corra.processes._spec import DEFAULT_OUTPUT_LIMIT, check_output_limit, check_seconds
from corra.processes._spec_content import shown

__all__ = [
    "CgroupSupport",
    "ChaperoneKind",
    "ExitRecord",
    "Handle",
    "LaunchSpec",
    "LocalBackend",
    "SlotStatistics",
]

Stream = Literal["stdout", "stderr"]
Status = Literal["running", "exited", "lost"]
ChaperoneKind = Literal["shared", "own"]

CHAPERONE_PATH = PACKAGE_DIR
_ENV_NAME = re.compile(r"[^=\0]+")
#: Polling where there is no pidfd, and while another launch of the same key finishes.
_POLL_FIRST, _POLL_MAX = 0.005, 0.5
#: Seconds the shared chaperone stays without programs and connections (tests shorten it).
DAEMON_IDLE_EXIT = IDLE_EXIT
#: Seconds to connect to the shared chaperone, starting it if need be, before giving up.
_CONNECT_TIMEOUT = 30.0
#: How often a request is sent again when the shared chaperone went away while it was asked.
_ATTEMPTS = 3


# values ---------------------------------------------------------------------------------


def _argv(value: object) -> tuple[str, ...]:
    if isinstance(value, str | bytes) or not isinstance(value, Sequence):
        raise ConfigError(f"argv: expected a non-empty list of str, got {value!r}")
    if not value or not all(isinstance(arg, str) and "\0" not in arg for arg in value):
        raise ConfigError(f"argv: expected a non-empty list of str without NUL, got {value!r}")
    return tuple(value)


def _env(value: object) -> dict[str, str]:
    # (values are secrets: never shown, `shown`)
    if not isinstance(value, Mapping):
        raise ConfigError(f"env: expected a mapping of str to str, got {shown('env', value)}")
    for name, setting in value.items():
        if not isinstance(name, str) or not _ENV_NAME.fullmatch(name):
            raise ConfigError(f"env: invalid variable name {name!r}")
        if not isinstance(setting, str) or "\0" in setting:
            raise ConfigError(
                f"env[{name!r}]: expected a str without NUL, got {shown('env', setting)}"
            )
    return dict(value)


def _seconds(name: str, *, positive: bool) -> Callable[[Any, Any, Any], None]:
    def check(instance: Any, attribute: Any, value: Any) -> None:
        check_seconds(name, value, positive=positive, optional=name == "timeout")

    return check


def _limit(name: str) -> Callable[[Any, Any, Any], None]:
    def check(instance: Any, attribute: Any, value: Any) -> None:
        if value is not None and (
            isinstance(value, bool) or not isinstance(value, int) or value < 1
        ):
            raise ConfigError(f"{name}: expected a positive int or None, got {value!r}")

    return check


def _output_limit(instance: Any, attribute: Any, value: Any) -> None:
    check_output_limit("output_limit", value, optional=True)


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
    env: dict[str, str] = attrs.field(
        factory=dict, converter=_env, repr=lambda env: shown("env", env)
    )
    """Added on top of the runtime's environment (``os.environ`` at launch)."""
    timeout: float | None = attrs.field(default=None, validator=_seconds("timeout", positive=True))
    """Seconds from start; then the program is killed (TERM, then KILL after ``kill_grace``)."""
    kill_grace: float = attrs.field(default=10.0, validator=_seconds("kill_grace", positive=False))
    """Seconds between SIGTERM and SIGKILL, when timed out or killed."""
    memory_limit: int | None = attrs.field(default=None, validator=_limit("memory_limit"))
    """Bytes, enforced through a memory cgroup where there is one (else a note in the handle)."""
    pids_limit: int | None = attrs.field(default=None, validator=_limit("pids_limit"))
    """Processes, enforced through a pids cgroup where there is one."""
    output_limit: int | None = attrs.field(default=None, validator=_output_limit)
    """Bytes kept of each of stdout and stderr; the chaperone drops what comes later (and
    counts it). None: the backend's ``output_limit``."""


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

    @property
    def ok(self) -> bool:
        return self.returncode == 0 and self.error is None

    @classmethod
    def from_json(cls, data: object) -> ExitRecord:
        """Structure ``exit.json``; raises BackendError naming the field that is wrong."""
        if not isinstance(data, dict):
            raise BackendError(f"exit.json: expected an object, got {data!r}")
        fields = _EXIT_FIELDS
        if _EXIT_REQUIRED - data.keys():
            missing = sorted(_EXIT_REQUIRED - data.keys())
            raise BackendError(f"exit.json: {missing[0]} is missing")
        for name in ("returncode", "signal"):
            if data[name] is not None and not isinstance(data[name], int):
                raise BackendError(f"exit.json: {name}: expected an int or null")
        return cls(**{name: data[name] for name in fields if name in data})


_EXIT_FIELDS = {field.name: field for field in attrs.fields(ExitRecord)}
_EXIT_REQUIRED = {name for name, field in _EXIT_FIELDS.items() if field.default is attrs.NOTHING}


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

    def try_acquire(self, key: str) -> bool:
        """Take a slot now if ``key`` holds one or one is free with nobody queued."""
        if key in self.held:
            return True
        if not self.waiting and len(self.held) < self.limit:
            self.held.add(key)
            return True
        return False

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


# processes ------------------------------------------------------------------------------


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


def _chaperone_alive(handle: Handle) -> bool:
    return _proc.alive(handle.chaperone_pid, handle.chaperone_start)


def _group_members(handle: Handle) -> list[int]:
    """Live processes still in the program's group and the chaperone's session (a pgid that
    was reused by someone else has another session)."""
    if handle.pid is None:
        return []
    return _proc.group_members(handle.pid, handle.chaperone_pid)


def _read_json(path: Path) -> Any:
    """The JSON in ``path`` (`corra.chaperone._rundir.read_json`: None if there is none)."""
    try:
        return _rundir.read_json(path)
    except (OSError, ValueError) as error:
        raise BackendError(f"{path}: {error}") from error


def _read_claim(run_dir: Path) -> tuple[Any, Any]:
    """(claim, program) of a run dir (`corra.chaperone._rundir.claim_of`); (None, None) if it
    was never claimed."""
    try:
        return _rundir.claim_of(str(run_dir))
    except (OSError, ValueError) as error:
        raise BackendError(f"{run_dir}: {error}") from error


def _handle_from(key: str, run_dir: Path, claim: Any, program: Any) -> Handle:
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


def find_launch(root: Path, key: str) -> Handle | None:
    """The handle of ``key``'s launch under the run dirs' ``root``, from its pid files; None
    if it was never launched. Reads only: for `LocalBackend.find`, and for a reader without
    a runtime (`corra.backends.recorded`). Blocking."""
    run_dir = root / _check_key(key)
    claim, program = _read_claim(run_dir)
    if claim is None:
        return None
    return _handle_from(key, run_dir, claim, program)


def read_exit_record(handle: Handle) -> ExitRecord | None:
    """The exit record the chaperone wrote (``exit.json``), or None while there is none.
    Reads only. Blocking.

    Raises:
        BackendError: exit.json is there but not an exit record.
    """
    data = _read_json(Path(handle.run_dir) / _rundir.EXIT_FILE)
    return None if data is None else ExitRecord.from_json(data)


def read_status(handle: Handle) -> Status:
    """``exited`` (there is an exit record), ``running`` (its chaperone runs) or ``lost``
    (its chaperone is gone, or its pid is another process's now, and left no record). Reads
    only (/proc and the run dir)."""
    state: Status = _rundir.status(handle.run_dir, handle.chaperone_pid, handle.chaperone_start)
    return state


def _check_key(key: object) -> str:
    if not isinstance(key, str) or not protocol.KEY.match(key):
        raise ConfigError(
            f"key: expected letters, digits and _.:@+=- (not first), at most 200, got {key!r}"
        )
    return key


# the shared chaperone -------------------------------------------------------------------


class _Disconnected(Exception):
    """The connection to the shared chaperone broke before the answer came."""


class _Waiter:
    """One task waiting for one message (None: the connection broke)."""

    __slots__ = ("event", "message")

    def __init__(self) -> None:
        self.event = trio.Event()
        self.message: dict[str, Any] | None = None

    def wake(self, message: dict[str, Any] | None) -> None:
        self.message = message
        self.event.set()


class _Daemon:
    """Our connection to the root's shared chaperone.

    Requests carry an id, and their waiter is woken by the reply with that id; ``exited``
    messages go to the waiters of their key, or, when nobody waits, to ``on_exit``. One
    reader task reads for everyone, and a writer task sends what the socket did not take at
    once; both run in the backend's nursery. A connection that breaks (or is closed) ends
    them quietly; any other error in them is a bug and propagates out of the backend.
    """

    def __init__(
        self,
        sock: socket.socket,
        hello: Mapping[str, Any],
        on_exit: Callable[[str, dict[str, Any]], None],
        nursery: trio.Nursery,
    ) -> None:
        self.sock = sock
        self.pid = int(hello["pid"])
        self.start = int(hello["start"])
        self.environ = hello["environ"]
        """The runtime's environment as the chaperone has it: programs start from it."""
        self.on_exit = on_exit
        self.alive = True
        self.ids = itertools.count(1)
        self.replies: dict[int, _Waiter] = {}
        self.exits: dict[str, list[_Waiter]] = {}
        self.watched: set[str] = set()
        """Keys whose exit this connection will be told without asking again."""
        self.outbox = bytearray()  # what the socket did not take yet
        self.reader = trio.CancelScope()
        self.nursery = nursery
        nursery.start_soon(self._read, name="corra local chaperone reader")

    def serves(self, handle: Handle) -> bool:
        return handle.chaperone_pid == self.pid and handle.chaperone_start == self.start

    async def request(self, message: dict[str, Any]) -> dict[str, Any]:
        """Send ``message``; its reply. Raises `_Disconnected`."""
        ident = next(self.ids)
        message["id"] = ident
        waiter = _Waiter()
        self.replies[ident] = waiter
        try:
            self._send(protocol.json_line(message))
            await waiter.event.wait()
        finally:
            self.replies.pop(ident, None)
        if waiter.message is None:
            raise _Disconnected
        return waiter.message

    def _send(self, data: bytes) -> None:
        """Send ``data`` now, or after what waits to be sent (the writer task sends that)."""
        if not self.alive:
            raise _Disconnected
        if self.outbox:
            self.outbox += data
            return
        try:
            sent = self.sock.send(data)
        except BlockingIOError:
            sent = 0
        except OSError:
            self.close()
            raise _Disconnected from None
        if sent < len(data):
            self.outbox += data[sent:]
            self.nursery.start_soon(self._flush, name="corra local chaperone writer")

    async def _flush(self) -> None:
        try:
            while self.outbox and self.alive:
                try:
                    sent = self.sock.send(self.outbox)
                except BlockingIOError:
                    await trio.lowlevel.wait_writable(self.sock)
                    continue
                del self.outbox[:sent]
        except (OSError, trio.ClosedResourceError):  # broken, or closed by `close`
            self.close()
        except BaseException:  # cancelled half-way through a message: the stream is broken
            self.close()
            raise
        finally:
            if not self.alive:
                self.outbox.clear()

    async def _read(self) -> None:
        buffer = bytearray()
        with self.reader:
            try:
                while True:
                    await trio.lowlevel.wait_readable(self.sock)
                    try:
                        data = self.sock.recv(65536)
                    except BlockingIOError:
                        continue
                    if not data:
                        break
                    buffer += data
                    start = 0
                    while (end := buffer.find(b"\n", start)) >= 0:
                        self._dispatch(json.loads(bytes(buffer[start:end])))
                        start = end + 1
                    del buffer[:start]
            except (OSError, trio.ClosedResourceError):  # broken, or closed by `close`
                pass
            finally:
                self.close()

    def _dispatch(self, message: dict[str, Any]) -> None:
        ident = message.get("id")
        if ident is not None:
            waiter = self.replies.pop(ident, None)
            if waiter is not None:
                waiter.wake(message)
        elif message.get("op") == "exited":
            key = message["key"]
            self.watched.discard(key)
            waiters = self.exits.pop(key, None)
            if waiters:
                for waiter in waiters:
                    waiter.wake(message)
            else:
                self.on_exit(key, message["record"])

    def close(self) -> None:
        """Forget the connection; wake everyone who waits on it (they reconnect)."""
        if not self.alive:
            return
        self.alive = False
        self.reader.cancel()
        trio.lowlevel.notify_closing(self.sock)
        self.sock.close()
        replies, self.replies = self.replies, {}
        exits, self.exits = self.exits, {}
        for waiter in replies.values():
            waiter.wake(None)
        for waiters in exits.values():
            for waiter in waiters:
                waiter.wake(None)


def _connect_or_start(root: Path, idle_exit: float) -> tuple[socket.socket, dict[str, Any]]:
    """Connect to ``root``'s shared chaperone, starting one if there is none; blocking (run it
    in a thread). Starters take turns (a flock on the root), so two backends that need one at
    once start one between them; the chaperone's own flock makes sure only one serves."""
    deadline = time.monotonic() + _CONNECT_TIMEOUT
    root_fd = os.open(root, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        fcntl.flock(root_fd, fcntl.LOCK_EX)
        delay = 0.005
        while True:
            connected = _hello(root, root_fd)
            if connected is not None:
                return connected
            if time.monotonic() > deadline:
                raise BackendError(f"{root}: no shared chaperone answers")
            answer = _start_daemon(root, idle_exit, deadline)
            if answer == "busy":  # one that is leaving still holds the lock: try again
                time.sleep(delay)
                delay = min(delay * 2, 0.1)
            elif answer != "ready":
                raise BackendError(f"{root}: the shared chaperone did not start: {answer}")
    finally:
        os.close(root_fd)  # which lets go of the flock


def _hello(root: Path, root_fd: int) -> tuple[socket.socket, dict[str, Any]] | None:
    """A connection that the chaperone said hello on; None if nobody listens."""
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        sock.settimeout(10)
        try:
            sock.connect(_rundir.socket_address(str(root), root_fd))
        except (FileNotFoundError, ConnectionRefusedError):
            sock.close()
            return None
        # Before anything is sent (our whole environment, then every launch spec): the
        # chaperone must be ours, not a socket another user planted in the root.
        try:
            check_peer(sock, root / _rundir.SOCKET_FILE, "shared chaperone socket")
        except ConfigError as exc:
            raise LaunchFailed(str(exc)) from None  # (trying again would not help)
        environ = _environ()
        hello = {
            "op": "hello",
            "id": 0,
            "version": protocol.PROTOCOL,
            "env": dict(os.environ),
            "umask": _umask(),
        }
        sock.sendall(protocol.json_line(hello))
        data = b""
        while not data.endswith(b"\n"):
            chunk = sock.recv(65536)
            if not chunk:  # it was leaving as we came
                sock.close()
                return None
            data += chunk
        reply = json.loads(data)
        if reply.get("op") != "hello" or reply.get("version") != protocol.PROTOCOL:
            raise BackendError(f"{root}: the shared chaperone answers {reply!r}")
        sock.setblocking(False)
        return sock, {**reply, "environ": environ}
    except (OSError, ValueError) as error:
        sock.close()
        if isinstance(error, ConnectionError):
            return None  # reset as it was leaving
        raise BackendError(f"{root}: talking to the shared chaperone: {error!r}") from error
    except BaseException:
        sock.close()
        raise


def _umask() -> int | None:
    """This process's umask (read, not set and reset: threads may be creating files)."""
    try:
        with open("/proc/self/status", "rb") as status:
            for line in status:
                if line.startswith(b"Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    return None


def _environ() -> dict[Any, Any]:
    """A copy of this process's environment, cheap to compare with a later one."""
    data = getattr(os.environ, "_data", None)  # what os.environ keeps (bytes), in CPython
    return dict(data) if isinstance(data, dict) else dict(os.environ)


def _start_daemon(root: Path, idle_exit: float, deadline: float) -> str:
    """Start ``chaperone --serve`` for ``root``; what it said (``ready``, ``busy``, or why
    it failed). The root is passed in the environment, not on the command line."""
    read_fd, write_fd = os.pipe()
    try:
        python = _python()
        env = {**os.environ, ROOT_VARIABLE: str(root)}
        argv = [python, "-I", "-S", CHAPERONE_PATH, "--serve"]
        argv += ["--ready-fd", "3", "--idle-exit", repr(float(idle_exit))]
        pid = os.posix_spawn(
            python,
            argv,
            env,
            file_actions=[
                (os.POSIX_SPAWN_OPEN, 0, os.devnull, os.O_RDONLY, 0),
                (os.POSIX_SPAWN_OPEN, 1, os.devnull, os.O_WRONLY, 0),
                (os.POSIX_SPAWN_OPEN, 2, os.devnull, os.O_WRONLY, 0),
                (os.POSIX_SPAWN_DUP2, write_fd, 3),
            ],
            setsigmask=(),
            setsigdef=RESET_IN_PROGRAM,
        )
        os.close(write_fd)
        write_fd = -1
        _waitpid(pid)  # it exits as soon as the chaperone has detached
        answer = b""
        while not answer.endswith(b"\n"):
            left = deadline - time.monotonic()
            if left <= 0 or not select.select([read_fd], [], [], left)[0]:
                return "no answer in time"
            chunk = os.read(read_fd, 4096)
            if not chunk:
                return "it exited without a word (see .chaperone.log)"
            answer += chunk
        return answer.decode(errors="replace").strip()
    finally:
        os.close(read_fd)
        if write_fd >= 0:
            os.close(write_fd)


# own chaperones -------------------------------------------------------------------------


class _Link:
    """Our end of an own chaperone's notify pipe: its reply, then (after ``started``) its exit
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


# the backend ----------------------------------------------------------------------------


class LocalBackend:
    """Programs on this machine, one run dir each under ``root``.

    Args:
        root: where run dirs go (``root/<key>``); created on first launch.
        max_running: the slot limit (`acquire_slot`); default 4 per CPU.
        cgroups: "auto" uses what `cgroups` found (kill through ``cgroup.kill``, memory and pids
            limits); "off" uses none (kill reaches the process group only).
        chaperone: "shared" (one chaperone for the root, started on first use and shared with
            every backend on the root) or "own" (a chaperone per program: slower to launch,
            but a chaperone that is killed loses one program, not all).
        output_limit: bytes kept of each stream of a program whose spec gives none (1 GiB).

    Use it as ``async with LocalBackend(root) as backend:``: the connection to the shared
    chaperone runs its tasks in the block's nursery, and is closed at its end. Programs are
    not: they outlive the backend, by design.
    """

    def __init__(
        self,
        root: Path | str,
        *,
        max_running: int | None = None,
        cgroups: Literal["auto", "off"] = "auto",
        chaperone: ChaperoneKind = "shared",
        output_limit: int = DEFAULT_OUTPUT_LIMIT,
    ) -> None:
        check_output_limit("output_limit", output_limit)
        self.output_limit = output_limit
        if max_running is None:
            max_running = 4 * (os.cpu_count() or 1)
        if isinstance(max_running, bool) or not isinstance(max_running, int) or max_running < 1:
            raise ConfigError(f"max_running: expected a positive int, got {max_running!r}")
        if cgroups not in ("auto", "off"):
            raise ConfigError(f"cgroups: expected 'auto' or 'off', got {cgroups!r}")
        if chaperone not in ("shared", "own"):
            raise ConfigError(f"chaperone: expected 'shared' or 'own', got {chaperone!r}")
        self.root = Path(root).absolute()
        self.chaperone: ChaperoneKind = chaperone
        self._cgroup_suffix = _cgroups.cgroup_suffix(str(self.root))
        self._cgroups = _cgroups.detect_here() if cgroups == "auto" else _cgroups.OFF
        self._prepared = False
        self._preparing = trio.Lock()
        self._launching: dict[str, trio.Event] = {}
        self._links: dict[str, _Link] = {}  # own chaperones' pipes, until waited
        self._daemon: _Daemon | None = None
        self._connecting = trio.Lock()
        self._exits: dict[str, dict[str, Any]] = {}  # exit records nobody has waited for yet
        self._slots = _Slots(max_running)
        self._closed = False
        self._nursery: trio.Nursery | None = None  # the connection's tasks (`__aenter__`)
        self._tasks: contextlib.AsyncExitStack | None = None

    @property
    def cgroups(self) -> CgroupSupport:
        """What cgroups do for programs here (after the first launch: what really worked)."""
        return self._cgroups

    async def __aenter__(self) -> LocalBackend:
        async with contextlib.AsyncExitStack() as stack:
            self._nursery = await stack.enter_async_context(trio.open_nursery())
            self._tasks = stack.pop_all()
        return self

    async def __aexit__(self, *exc_info: Any) -> bool | None:
        assert self._tasks is not None, "LocalBackend: __aexit__ without __aenter__"
        try:
            await self.aclose()
        finally:
            tasks, self._tasks = self._tasks, None
            handled = await tasks.__aexit__(*exc_info)
        return handled

    async def aclose(self) -> None:
        """Close the connection to the shared chaperone and the pipes of own ones. Running
        programs and their chaperones are not touched. A checkpoint."""
        self._closed = True
        links, self._links = self._links, {}
        for link in links.values():
            link.close()
        daemon, self._daemon = self._daemon, None
        if daemon is not None:
            daemon.close()
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
            BackendError: the chaperone could not be reached or started (worth a retry).
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
            if self.chaperone == "shared":
                return await self._launch_shared(key, spec)
            return await self._launch_own(key, spec)
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
        try:
            make_private_dirs(self.root)
            check_directory(self.root, "runs dir")
        except ConfigError as exc:
            raise LaunchFailed(str(exc)) from None
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
                if key == name or not protocol.KEY.match(key):
                    continue
                try:
                    handle = self.find(key)
                    if handle is not None and self.status(handle) == "running":
                        continue
                except BackendError:
                    continue
                with contextlib.suppress(OSError):
                    os.rmdir(os.path.join(parent, name))  # type: ignore[arg-type]

    def _document(self, key: str, spec: LaunchSpec, env: dict[str, str]) -> dict[str, Any]:
        """The spec as the chaperone needs it, resolved against this runtime."""
        entries, notes = self._cgroups.entries(
            key + self._cgroup_suffix, spec.memory_limit, spec.pids_limit
        )
        return {
            "key": key,
            "argv": list(spec.argv),
            "cwd": None if spec.cwd is None else os.path.abspath(spec.cwd),
            "env": env,
            "timeout": spec.timeout,
            "kill_grace": spec.kill_grace,
            "memory_limit": spec.memory_limit,
            "pids_limit": spec.pids_limit,
            "output_limit": self.output_limit if spec.output_limit is None else spec.output_limit,
            "cgroups": entries,
            "cgroup_notes": notes,
        }

    async def _launch_shared(self, key: str, spec: LaunchSpec) -> Handle:
        # The environment on top of which spec.env goes was sent with the hello (and again
        # whenever it changed since).
        document = self._document(key, spec, spec.env)
        for _ in range(_ATTEMPTS):
            daemon = await self._connection()
            try:
                environ = getattr(os.environ, "_data", None)
                if environ is None or environ != daemon.environ:
                    environ = _environ()
                    await daemon.request({"op": "env", "env": dict(os.environ)})
                    daemon.environ = environ
                reply = await daemon.request({"op": "launch", "key": key, "spec": document})
            except _Disconnected:
                continue  # retried: the claim tells whether it got as far as the program
            break
        else:
            raise BackendError(f"{key}: the shared chaperone kept going away during the launch")
        op = reply.get("op")
        if op in ("started", "claimed") and reply.get("program") is not None:
            daemon.watched.add(key)  # it tells us of the exit unasked
            return _handle_from(
                key,
                self.root / key,
                {"pid": daemon.pid, "start": daemon.start, "shared": True},
                reply["program"],
            )
        if op == "claimed":
            return await self._existing(key)
        if op in ("failed", "invalid"):
            raise LaunchFailed(f"{key}: {reply.get('error')}")
        raise BackendError(f"{key}: unexpected reply from the shared chaperone: {reply!r}")

    async def _connection(self) -> _Daemon:
        """Our connection to the root's shared chaperone, (re)connecting (and starting one)
        in a worker thread if need be."""
        daemon = self._daemon
        if daemon is not None and daemon.alive:
            return daemon
        async with self._connecting:
            daemon = self._daemon
            if daemon is not None and daemon.alive:
                return daemon
            if self._closed:
                raise BackendError("the backend is closed")
            if self._nursery is None:
                raise BackendError(
                    "the shared chaperone's connection needs a nursery: use the backend as "
                    "`async with LocalBackend(...)`"
                )
            await self._prepare()
            sock, hello = await trio.to_thread.run_sync(
                _connect_or_start, self.root, DAEMON_IDLE_EXIT
            )
            if self._closed:
                sock.close()
                raise BackendError("the backend is closed")
            self._daemon = _Daemon(sock, hello, self._exits.__setitem__, self._nursery)
            return self._daemon

    async def _launch_own(self, key: str, spec: LaunchSpec) -> Handle:
        run_dir = self.root / key
        document = self._document(key, spec, {**os.environ, **spec.env})
        link = await self._start_own(run_dir, document)
        try:
            reply = await link.receive()
            if reply is None:
                reply = {"status": "claimed"}  # it died before it said anything
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

    async def _start_own(self, run_dir: Path, document: dict[str, Any]) -> _Link:
        """Start an own chaperone for ``run_dir``; the pipe on which it will answer."""
        read_fd, write_fd = os.pipe()
        link = _Link(read_fd)
        try:
            intermediate = await trio.to_thread.run_sync(_spawn_direct, run_dir, document, write_fd)
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

        Blocking (reads one or two small files): for recovery, or call it in a thread.
        """
        return find_launch(self.root, key)

    def exit_record(self, handle: Handle) -> ExitRecord | None:
        """How the program ended, or None while it has not (or it is lost). Blocking.

        Raises:
            BackendError: exit.json is there but not an exit record.
        """
        return read_exit_record(handle)

    def status(self, handle: Handle) -> Status:
        """``exited`` (there is an exit record), ``running`` (its chaperone runs) or ``lost``
        (its chaperone is gone, or its pid is another process's now, and left no record)."""
        return read_status(handle)

    def log_path(self, handle: Handle, stream: Stream) -> Path:
        if stream not in _rundir.STREAMS:
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

        Woken by the shared chaperone's message (asking it to tell, for programs this
        backend did not launch), by an own chaperone's pipe for programs this backend
        launched, else by a pidfd on the own chaperone; it polls (with backoff) only where
        there are no pidfds. A checkpoint; cancelling it leaves the program alone, and a later
        wait picks up where it stopped.

        Raises:
            ProgramLost: the chaperone is gone and left no exit record.
        """
        if handle.shared:
            return await self._wait_shared(handle)
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

    async def _wait_shared(self, handle: Handle) -> ExitRecord:
        key = handle.key
        while True:
            record = self._exits.pop(key, None)
            if record is not None:
                await trio.lowlevel.checkpoint()
                return ExitRecord.from_json(record)
            daemon = await self._daemon_of(handle)
            if daemon is None:
                if _chaperone_alive(handle):  # not this root's (any more): watch its files
                    return await self._poll_until_exit(handle)
                return await self._record_or_lost(handle)
            if key in self._exits:
                continue  # it came while we connected
            waiter = _Waiter()
            daemon.exits.setdefault(key, []).append(waiter)
            try:
                if key not in daemon.watched:
                    reply = await daemon.request({"op": "watch", "key": key})
                    if reply.get("op") != "watching":
                        # Not running there: ended (exit.json is in place) or never started.
                        return await self._record_or_lost(handle)
                    daemon.watched.add(key)
                await waiter.event.wait()
            except _Disconnected:
                continue
            finally:
                waiters = daemon.exits.get(key)
                if waiters is not None and waiter in waiters:
                    waiters.remove(waiter)
                    if not waiters:
                        del daemon.exits[key]
            if waiter.message is not None:
                return ExitRecord.from_json(waiter.message["record"])
            # The connection broke: ask again (a new chaperone, if this one died).

    async def _daemon_of(self, handle: Handle) -> _Daemon | None:
        """The connection to the shared chaperone that runs ``handle``'s program; None if that
        chaperone is gone, or is not the one serving this root (another root's, or one that
        is leaving, its programs done)."""
        daemon = self._daemon
        if daemon is not None and daemon.alive and daemon.serves(handle):
            return daemon
        if not _chaperone_alive(handle):
            return None
        daemon = await self._connection()
        return daemon if daemon.serves(handle) else None

    async def _record_or_lost(self, handle: Handle) -> ExitRecord:
        self._exits.pop(handle.key, None)
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
        if handle.shared:
            if await self._ask_to_kill(handle, grace):
                with contextlib.suppress(ProgramLost):
                    return await self.wait(handle)
        else:
            if grace is not None:
                await trio.to_thread.run_sync(_rundir.write_kill_request, handle.run_dir, grace)
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

    async def _ask_to_kill(self, handle: Handle, grace: float | None) -> bool:
        """Whether the shared chaperone took the kill request (it runs the program)."""
        for _ in range(_ATTEMPTS):
            daemon = await self._daemon_of(handle)
            if daemon is None:
                return False
            try:
                reply = await daemon.request({"op": "kill", "key": handle.key, "grace": grace})
            except _Disconnected:
                continue
            if reply.get("op") == "killing":
                daemon.watched.add(handle.key)
                return True
            return False
        return False

    async def _kill_orphaned(self, handle: Handle, grace: float) -> None:
        """A program without its chaperone: the chaperone's escalation (`Run.kill`, then
        `Run.escalate` once the grace is over), driven from here; its group's members are
        looked at in a thread."""
        run = Run(handle.run_dir, grace)
        run.pid = handle.pid
        if await trio.to_thread.run_sync(_group_members, handle):
            run.kill(trio.current_time(), grace)
            delay = _POLL_FIRST
            while run.escalate_at != math.inf and await trio.to_thread.run_sync(
                _group_members, handle
            ):
                now = trio.current_time()
                if now >= run.escalate_at:
                    run.escalate(now)  # SIGKILL: the grace is over
                    break
                await trio.sleep(min(delay, run.escalate_at - now))
                delay = min(delay * 2, _POLL_MAX)
            if run.escalate_at == math.inf:
                delay = _POLL_FIRST
                with trio.move_on_after(CGROUP_DRAIN):
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

    def try_acquire_slot(self, key: str) -> bool:
        """Take a slot at once if one is free and nobody is queued (True), else False: the
        caller queues with `acquire_slot`. Never waits."""
        return self._slots.try_acquire(key)

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
    """Write spec.json and start ``chaperone RUN_DIR``; the pid of the intermediate process
    (which exits as soon as the chaperone has detached)."""
    run_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    _rundir.write_atomic(str(run_dir / _rundir.SPEC_FILE), protocol.json_line(document))
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
        setsigdef=RESET_IN_PROGRAM,
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


def _spec(handle: Handle) -> dict[str, Any]:
    """The spec the chaperone ran (from the shared one's claim, or an own one's spec.json)."""
    run_dir = Path(handle.run_dir)
    try:
        if handle.shared:
            claim, _ = _read_claim(run_dir)
            spec = (claim or {}).get("spec")
        else:
            spec = _read_json(run_dir / _rundir.SPEC_FILE)
    except BackendError:
        spec = None
    return spec if isinstance(spec, dict) else {}


def _spec_grace(handle: Handle) -> float:
    """The grace the chaperone would have given: the spec's, else its default."""
    try:
        return float(_spec(handle).get("kill_grace", protocol.DEFAULT_GRACE))
    except (TypeError, ValueError):
        return protocol.DEFAULT_GRACE


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


def _kill_cgroups(handle: Handle, candidates: list[str]) -> None:
    """SIGKILL whatever is left in the program's cgroups, and remove them: those its spec
    names and the ``candidates`` (the spec may not have been written yet)."""
    paths = [entry["path"] for entry in _spec(handle).get("cgroups") or []] + candidates
    # A live shared chaperone reuses the cgroups of programs that have ended: not those.
    if handle.cgroup is not None and not (handle.shared and _chaperone_alive(handle)):
        paths.append(handle.cgroup)
    cgroups = Cgroups([])
    cgroups.entries = [(path, {}) for path in dict.fromkeys(paths) if os.path.isdir(path)]
    cgroups.kill()
    cgroups.remove()

"""The connection to a root's shared chaperone: starting it, saying hello, requests and
replies, and the exit messages it sends unasked (`corra.chaperone.protocol`).

`connect_or_start` runs in a worker thread (it may start the chaperone and wait for it);
`Connection` then runs on the loop: one reader task reads for everyone and a writer task sends
what the socket did not take at once, both in the backend's nursery (DESIGN invariant 1). A
connection that breaks (or is closed) ends them quietly; any other error in them is a bug and
propagates out of the backend.
"""

from __future__ import annotations

import fcntl
import itertools
import json
import os
import select
import socket
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import trio

from corra._errors import BackendError, ConfigError, LaunchFailed
from corra._statedir import check_peer
from corra.backends.local._clients import python
from corra.backends.local._rundirs import Handle, waitpid
from corra.chaperone import PACKAGE_DIR, _rundir, protocol
from corra.chaperone._rundir import ROOT_VARIABLE
from corra.chaperone._spawn import RESET_IN_PROGRAM

#: Seconds to connect to the shared chaperone, starting it if need be, before giving up.
_CONNECT_TIMEOUT = 30.0


class Disconnected(Exception):
    """The connection to the shared chaperone broke before the answer came."""


class Waiter:
    """One task waiting for one message (None: the connection broke)."""

    __slots__ = ("event", "message")

    def __init__(self) -> None:
        self.event = trio.Event()
        self.message: dict[str, Any] | None = None

    def wake(self, message: dict[str, Any] | None) -> None:
        self.message = message
        self.event.set()


class Connection:
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
        self.replies: dict[int, Waiter] = {}
        self.exits: dict[str, list[Waiter]] = {}
        self.watched: set[str] = set()
        """Keys whose exit this connection will be told without asking again."""
        self.outbox = bytearray()  # what the socket did not take yet
        self.reader = trio.CancelScope()
        self.nursery = nursery
        nursery.start_soon(self._read, name="corra local chaperone reader")

    def serves(self, handle: Handle) -> bool:
        return handle.chaperone_pid == self.pid and handle.chaperone_start == self.start

    async def request(self, message: dict[str, Any]) -> dict[str, Any]:
        """Send ``message``; its reply. Raises `Disconnected`."""
        ident = next(self.ids)
        message["id"] = ident
        waiter = Waiter()
        self.replies[ident] = waiter
        try:
            self._send(protocol.json_line(message))
            await waiter.event.wait()
        finally:
            self.replies.pop(ident, None)
        if waiter.message is None:
            raise Disconnected
        return waiter.message

    def _send(self, data: bytes) -> None:
        """Send ``data`` now, or after what waits to be sent (the writer task sends that)."""
        if not self.alive:
            raise Disconnected
        if self.outbox:
            self.outbox += data
            return
        try:
            sent = self.sock.send(data)
        except BlockingIOError:
            sent = 0
        except OSError:
            self.close()
            raise Disconnected from None
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


def connect_or_start(root: Path, idle_exit: float) -> tuple[socket.socket, dict[str, Any]]:
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
            answer = _start_chaperone(root, idle_exit, deadline)
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
        environ = environ_copy()
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


def environ_now() -> Mapping[Any, Any]:
    """This process's environment as it is now, cheap to compare with an earlier `_environ`.

    In CPython that is what ``os.environ`` keeps (a dict of bytes): comparing it costs a
    quarter of a microsecond, where building ``dict(os.environ)`` (which decodes every
    variable) costs 17 µs for 35 variables, measured in-process: a few percent of a launch
    over the shared chaperone, for every launch. The private attribute is read here only;
    elsewhere (another Python) the public, slower way is used.
    """
    data = getattr(os.environ, "_data", None)
    return data if isinstance(data, dict) else dict(os.environ)


def environ_copy() -> dict[Any, Any]:
    """A copy of `environ_now`, to compare later ones with."""
    return dict(environ_now())


def _start_chaperone(root: Path, idle_exit: float, deadline: float) -> str:
    """Start ``chaperone --serve`` for ``root``; what it said (``ready``, ``busy``, or why
    it failed). The root is passed in the environment, not on the command line."""
    read_fd, write_fd = os.pipe()
    try:
        interpreter = python()
        env = {**os.environ, ROOT_VARIABLE: str(root)}
        argv = [interpreter, "-I", "-S", PACKAGE_DIR, "--serve"]
        argv += ["--ready-fd", "3", "--idle-exit", repr(float(idle_exit))]
        pid = os.posix_spawn(
            interpreter,
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
        waitpid(pid)  # it exits as soon as the chaperone has detached
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

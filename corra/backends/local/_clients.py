"""How the local backend talks to chaperones: one `ChaperoneClient` per kind.

`LocalBackend` launches through the client of its kind (``shared`` or ``own``) and waits for
and kills a program through the client of the kind its handle names, so that a backend of
either kind can wait for and kill the programs of the other (after a restart with another
setting, or two backends on one root). Both clients fall back on the run dir
(`corra.backends.local._rundirs`) when their chaperone no longer talks.

- `corra.backends.local._shared.SharedClient`: one connection to the root's shared
  chaperone (a Unix socket, JSON lines).
- `OwnClient`: a chaperone per program, started as ``python -I -S .../corra/chaperone
  RUN_DIR`` (after spec.json is written, in a worker thread), which answers on a pipe: its
  reply to the launch, then its exit record.
"""

from __future__ import annotations

import json
import os
import signal
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Protocol

import trio

from corra._errors import BackendError, LaunchFailed
from corra.backends._exits import ExitRecord
from corra.backends.local._rundirs import (
    Handle,
    chaperone_alive,
    handle_from,
    pidfd,
    reap,
    watch_chaperone,
)
from corra.chaperone import PACKAGE_DIR, _rundir, protocol
from corra.chaperone._spawn import RESET_IN_PROGRAM


class ChaperoneClient(Protocol):
    """One kind of chaperone, as `LocalBackend` uses it."""

    async def launch(
        self, key: str, document: dict[str, Any], env: Mapping[str, str]
    ) -> Handle | None:
        """Have a chaperone start the program of ``key`` (``document``: the chaperone's spec
        without its environment; ``env``: what the program gets on top of the runtime's).

        Returns:
            The handle of the started program; None if an earlier launch claimed the key (the
            caller finds that one's handle).

        Raises:
            LaunchFailed: the program could not be started.
            BackendError: the chaperone could not be reached (worth a retry).
        """

    async def wait(self, handle: Handle) -> ExitRecord:
        """The program's exit record, once it has ended. A checkpoint; cancelling it leaves the
        program alone.

        Raises:
            ProgramLost: its chaperone is gone and left no exit record.
        """

    async def kill(self, handle: Handle, grace: float | None) -> bool:
        """Ask the program's chaperone to kill it (TERM, then KILL after ``grace``; None: the
        spec's); whether a chaperone took the request (else nobody watches the program)."""

    def close(self) -> None:
        """Let go of every connection and pipe; programs and chaperones are left alone."""


def python() -> str:
    return sys.executable or "python3"


class _Link:
    """Our end of an own chaperone's notify pipe: its reply, then (after ``started``) its exit
    record, one JSON line each; end of file if it died or was started by someone else."""

    def __init__(self, fd: int) -> None:
        os.set_blocking(fd, False)
        self.fd = fd
        self.buffer = b""

    async def receive(self) -> dict[str, Any] | None:
        """The next line; None at end of file. Always a checkpoint."""
        await trio.lowlevel.checkpoint_if_cancelled()
        while b"\n" not in self.buffer:
            try:
                chunk = os.read(self.fd, 65536)
            except BlockingIOError:
                await trio.lowlevel.wait_readable(self.fd)
                continue
            if not chunk:
                break
            self.buffer += chunk
        else:
            line, _, self.buffer = self.buffer.partition(b"\n")
            await trio.lowlevel.cancel_shielded_checkpoint()
            message = json.loads(line)
            if not isinstance(message, dict):
                raise BackendError(f"unexpected message from a chaperone: {message!r}")
            return message
        await trio.lowlevel.cancel_shielded_checkpoint()
        return None

    def close(self) -> None:
        if self.fd >= 0:
            trio.lowlevel.notify_closing(self.fd)
            os.close(self.fd)
            self.fd = -1


class OwnClient:
    """A chaperone per program, for the run dirs under ``root``.

    The pipe of a program this client launched stays open until it is waited for: its exit
    record comes the same way. A program it did not launch (or whose pipe it let go) is
    watched through a pidfd on its chaperone.
    """

    def __init__(self, root: Path) -> None:
        self.root = root
        self.links: dict[str, _Link] = {}  # until waited

    async def launch(
        self, key: str, document: dict[str, Any], env: Mapping[str, str]
    ) -> Handle | None:
        run_dir = self.root / key
        link = await self._start(run_dir, {**document, "env": {**os.environ, **env}})
        try:
            reply = await link.receive()
            if reply is None:
                reply = {"status": "claimed"}  # it died before it said anything
        except BaseException:
            link.close()
            raise
        status = reply.get("status")
        if status == "started":
            self.links[key] = link
            return handle_from(key, run_dir, reply["chaperone"], reply["program"])
        link.close()
        if status in ("failed", "invalid"):
            raise LaunchFailed(f"{key}: {reply.get('error')}")
        if status == "claimed":
            return None
        raise BackendError(f"{key}: unexpected reply from the chaperone: {reply!r}")

    async def _start(self, run_dir: Path, document: dict[str, Any]) -> _Link:
        """Start an own chaperone for ``run_dir``; the pipe on which it will answer."""
        read_fd, write_fd = os.pipe()
        link = _Link(read_fd)
        try:
            intermediate = await trio.to_thread.run_sync(_spawn, run_dir, document, write_fd)
            os.close(write_fd)
            write_fd = -1
            with trio.CancelScope(shield=True):
                await reap(intermediate)  # it exits as soon as the chaperone detached
        except BaseException:
            link.close()
            raise
        finally:
            if write_fd >= 0:
                os.close(write_fd)
        return link

    async def wait(self, handle: Handle) -> ExitRecord:
        link = self.links.pop(handle.key, None)
        if link is not None:
            try:
                message = await link.receive()
            finally:
                # Also when cancelled: a paused process must hold nothing, not even this
                # pipe; a later wait uses a pidfd on the chaperone, or the exit file.
                link.close()
            if message is not None and message.get("status") == "exited":
                return ExitRecord.from_json(message["record"])
        return await watch_chaperone(handle)

    async def kill(self, handle: Handle, grace: float | None) -> bool:
        if grace is not None:
            await trio.to_thread.run_sync(_rundir.write_kill_request, handle.run_dir, grace)
        return _signal_chaperone(handle, signal.SIGTERM)

    def close(self) -> None:
        links, self.links = self.links, {}
        for link in links.values():
            link.close()


def _spawn(run_dir: Path, document: dict[str, Any], notify_fd: int) -> int:
    """Write spec.json and start ``chaperone RUN_DIR``; the pid of the intermediate process
    (which exits as soon as the chaperone has detached). Blocking."""
    run_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    _rundir.write_atomic(str(run_dir / _rundir.SPEC_FILE), protocol.json_line(document))
    interpreter = python()
    return os.posix_spawn(
        interpreter,
        [interpreter, "-I", "-S", PACKAGE_DIR, str(run_dir), "--notify-fd", "3"],
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


def _signal_chaperone(handle: Handle, number: int) -> bool:
    """Signal the chaperone if it is still itself (not a later process with its pid)."""
    fd = pidfd(handle.chaperone_pid)
    if fd is None:
        return False
    try:
        # Checked after the pidfd is open: from here on the pid cannot be reused under us.
        if not chaperone_alive(handle):
            return False
        signal.pidfd_send_signal(fd, number)
        return True
    except ProcessLookupError:
        return False
    finally:
        os.close(fd)

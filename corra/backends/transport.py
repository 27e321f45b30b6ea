"""How a backend reaches a host: run an argv, move files, look at the file system.

A `Transport` is the small interface every remote-capable backend (SSH programs, Slurm) is
written against, so the same backend code drives this machine (`LocalTransport`) or a host
behind SSH (`corra.backends.ssh.SshTransport`, through the host's pool actor).

Rule 1: commands are argv lists. A transport that can only send a string to a shell (SSH)
quotes every word with `shlex.quote`; nothing is ever concatenated unquoted.

Rule 2: foreign errors are mapped at the boundary: a failed file operation raises
`RemotePathError` naming the path, a host that cannot be reached `ConnectionFailed` (or
`HostUnavailable`, `HostKeyRefused`); a command that runs and exits non-zero is not an error
of the transport, its `CommandResult` says so (``check=True`` turns it into one).

Rule 3: the event loop never waits on the disk: `LocalTransport` does file work in worker
threads and runs commands with `trio.run_process`.
"""

from __future__ import annotations

import os
import posixpath
import shlex
import shutil
import stat as stat_module
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Protocol, TypeVar

import attrs
import trio

from corra._errors import ConfigError, RemotePathError, TransportError
from corra._statedir import make_private_dirs, write_private

T = TypeVar("T")

__all__ = [
    "CommandResult",
    "FileInfo",
    "LocalTransport",
    "Transport",
    "check_argv",
    "quote_argv",
]


@attrs.frozen
class CommandResult:
    """How a command ended: ``returncode`` (None if killed by a signal or cut off),
    its output, and ``signal`` where the host said."""

    argv: tuple[str, ...]
    returncode: int | None
    stdout: bytes = b""
    stderr: bytes = b""
    signal: str | None = None

    @property
    def ok(self) -> bool:
        return self.returncode == 0

    def check(self, host: str) -> CommandResult:
        """Self, or `TransportError` naming the command, its status and its stderr."""
        if not self.ok:
            status = f"exit status {self.returncode}" if self.signal is None else self.signal
            tail = self.stderr.decode(errors="replace").strip()[-500:]
            detail = f": {tail}" if tail else ""
            raise TransportError(host, f"{quote_argv(self.argv)} failed with {status}{detail}")
        return self


@attrs.frozen
class FileInfo:
    """What `Transport.stat` tells of a path."""

    path: str
    size: int
    mtime: float
    is_dir: bool
    mode: int


class Transport(Protocol):
    """Operations on one host. Paths are the host's, absolute."""

    @property
    def host(self) -> str:
        """``user@host:port`` or ``local``: names the host in errors."""

    async def run(
        self,
        argv: Sequence[str],
        *,
        stdin: bytes | None = None,
        check: bool = False,
        retry_safe: bool = True,
    ) -> CommandResult:
        """Run ``argv`` to its end with ``stdin`` (none: /dev/null); its output in memory.

        ``retry_safe=False`` for a command that must not run twice (a submission): a
        connection that breaks under it raises `ConnectionFailed`, never runs it again.
        For a time limit, cancel it (``trio.fail_after``): the command is stopped."""

    async def write_file(self, path: str, data: bytes, *, mode: int = 0o600) -> None:
        """Create or replace ``path`` with ``data``, whole (temp file, rename); readable by
        its user only unless ``mode`` says otherwise."""

    async def put(self, local: str, remote: str) -> None:
        """Upload the local file ``local`` to ``remote``."""

    async def get(self, remote: str, local: str) -> None:
        """Download ``remote`` to the local file ``local``."""

    async def mkdir(self, path: str, *, parents: bool = True, mode: int = 0o700) -> None:
        """Create the directory (and its parents) with ``mode`` (the user's only, unless
        said otherwise); an existing one is fine, and left as it is."""

    async def listdir(self, path: str) -> list[str]:
        """The names in the directory, sorted."""

    async def stat(self, path: str) -> FileInfo | None:
        """The path's size, time and kind, or None if it does not exist."""

    async def read_range(self, path: str, offset: int, size: int) -> bytes:
        """Up to ``size`` bytes from ``offset`` (fewer at the end of the file; none past it)."""

    async def remove(self, path: str, *, recursive: bool = False) -> None:
        """Remove the file (or the tree); a missing path is fine."""


def check_argv(argv: object) -> tuple[str, ...]:
    """``argv`` as a tuple of str, or `ConfigError` naming what is wrong."""
    if isinstance(argv, str | bytes) or not isinstance(argv, Sequence) or not argv:
        raise ConfigError(f"argv: expected a non-empty list of str, got {argv!r}")
    for index, word in enumerate(argv):
        if not isinstance(word, str) or "\0" in word:
            raise ConfigError(f"argv[{index}]: expected a str without NUL, got {word!r}")
    return tuple(argv)


def quote_argv(argv: Sequence[str]) -> str:
    """One shell word per argument: what a remote shell runs is exactly ``argv``."""
    return " ".join(shlex.quote(word) for word in argv)


def _path_error(host: str, path: str, exc: OSError) -> RemotePathError:
    return RemotePathError(host, f"{path}: {exc.strerror or exc}")


class LocalTransport:
    """This machine, as a `Transport`. ``env`` is added to the runtime's environment for
    every command (``SLURM_CONF`` for a private Slurm, say)."""

    host = "local"

    def __init__(self, env: Mapping[str, str] | None = None) -> None:
        self.env = {**os.environ, **env} if env else None

    async def run(
        self,
        argv: Sequence[str],
        *,
        stdin: bytes | None = None,
        check: bool = False,
        retry_safe: bool = True,  # (nothing breaks between here and a local command)
    ) -> CommandResult:
        words = check_argv(argv)
        try:
            completed = await trio.run_process(
                list(words),
                stdin=stdin if stdin is not None else b"",
                capture_stdout=True,
                capture_stderr=True,
                check=False,
                env=self.env,
            )
        except OSError as exc:
            raise TransportError(self.host, f"cannot run {quote_argv(words)}: {exc}") from exc
        code = completed.returncode
        result = CommandResult(
            argv=words,
            returncode=code if code >= 0 else None,
            stdout=completed.stdout,
            stderr=completed.stderr,
            signal=None if code >= 0 else f"signal {-code}",
        )
        return result.check(self.host) if check else result

    async def write_file(self, path: str, data: bytes, *, mode: int = 0o600) -> None:
        await self._io(path, lambda: write_private(Path(path), data, mode=mode))

    async def put(self, local: str, remote: str) -> None:
        await self._io(remote, lambda: shutil.copyfile(local, remote))

    async def get(self, remote: str, local: str) -> None:
        await self._io(remote, lambda: shutil.copyfile(remote, local))

    async def mkdir(self, path: str, *, parents: bool = True, mode: int = 0o700) -> None:
        def make() -> None:
            if parents:
                make_private_dirs(Path(path), mode)
                return
            try:
                os.mkdir(path, mode)
            except FileExistsError:
                if not os.path.isdir(path):
                    raise

        await self._io(path, make)

    async def listdir(self, path: str) -> list[str]:
        return await self._io(path, lambda: sorted(os.listdir(path)))

    async def stat(self, path: str) -> FileInfo | None:
        def look() -> FileInfo | None:
            try:
                info = os.stat(path)
            except FileNotFoundError:
                return None
            return FileInfo(
                path=path,
                size=info.st_size,
                mtime=info.st_mtime,
                is_dir=stat_module.S_ISDIR(info.st_mode),
                mode=stat_module.S_IMODE(info.st_mode),
            )

        return await self._io(path, look)

    async def read_range(self, path: str, offset: int, size: int) -> bytes:
        def read() -> bytes:
            with open(path, "rb") as file:
                return os.pread(file.fileno(), size, offset)

        return await self._io(path, read)

    async def remove(self, path: str, *, recursive: bool = False) -> None:
        def remove() -> None:
            try:
                if recursive and os.path.isdir(path) and not os.path.islink(path):
                    shutil.rmtree(path)
                else:
                    os.unlink(path)
            except FileNotFoundError:
                pass

        await self._io(path, remove)

    async def _io(self, path: str, work: Callable[[], T]) -> T:
        try:
            return await trio.to_thread.run_sync(work)
        except OSError as exc:
            raise _path_error(self.host, path, exc) from exc


def join_inside(root: str, relative: str) -> str:
    """``root/relative``, refusing anything that would leave ``root`` (an absolute path,
    ``..``, an empty name)."""
    if not isinstance(relative, str) or not relative or "\0" in relative:
        raise RemotePathError(root, f"path: got {relative!r}, expected a relative path")
    if posixpath.isabs(relative):
        raise RemotePathError(root, f"path: got {relative!r}, expected a relative path")
    parts = relative.split("/")
    if any(part in ("..",) for part in parts):
        raise RemotePathError(root, f"path: got {relative!r}, which leaves the work directory")
    return posixpath.join(root, posixpath.normpath(relative))

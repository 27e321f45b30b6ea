"""`SshTransport`: the `Transport` interface over a host's pool actor.

Every operation leases a connection from the pool for its own duration and runs through
`PoolHandle.run`, so a refused channel or a dropped connection is retried inside the pool
when the operation is retry-safe. Commands go to the remote shell as one string in which
every word is quoted (`quote_argv`); files go over SFTP. asyncssh's errors are mapped here:
SFTP failures become `RemotePathError` naming the path.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Sequence
from typing import Any

import asyncssh

from corra._errors import RemotePathError
from corra.backends.ssh._pool import PoolHandle
from corra.backends.transport import CommandResult, FileInfo, check_argv, quote_argv

#: Seconds a channel that ended without an exit status waits for its connection to show closed.
CLOSE_SETTLE = 1.0


class SshTransport:
    """A host behind SSH, as a `Transport`."""

    def __init__(self, pool: PoolHandle) -> None:
        self.pool = pool

    @property
    def host(self) -> str:
        return self.pool.host.address

    async def wait_available(self) -> None:
        """Return once the host answers again (at once if its pool never gave up on it)."""
        await self.pool.wait_available()

    async def run(
        self,
        argv: Sequence[str],
        *,
        stdin: bytes | None = None,
        check: bool = False,
        retry_safe: bool = True,
    ) -> CommandResult:
        """Run ``argv`` on the host. ``retry_safe=False`` for a command that must not run
        twice: a connection that breaks under it raises `ConnectionFailed` instead."""
        words = check_argv(argv)
        env = self.pool.host.env
        command = quote_argv(
            ["env", *(f"{name}={value}" for name, value in env.items()), *words] if env else words
        )

        async def operation(connection: Any) -> CommandResult:
            completed = await connection.run(
                command, input=stdin if stdin is not None else b"", encoding=None, check=False
            )
            signal = completed.exit_signal[0] if completed.exit_signal else None
            if completed.exit_status is None and signal is None:
                # asyncssh ends a channel that lost its connection without raising, and may
                # end it a moment before it marks the connection closed: give that moment.
                if not connection.is_closed():
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(connection.wait_closed(), CLOSE_SETTLE)
                if connection.is_closed():
                    raise asyncssh.ConnectionLost("the connection closed under the command")
                return CommandResult(
                    argv=words,
                    returncode=None,
                    stdout=completed.stdout or b"",
                    stderr=completed.stderr or b"",
                    signal="closed by the server without an exit status",
                )
            return CommandResult(
                argv=words,
                returncode=completed.exit_status if signal is None else None,
                stdout=completed.stdout or b"",
                stderr=completed.stderr or b"",
                signal=f"signal {signal}" if signal else None,
            )

        result: CommandResult = await self.pool.run(operation, retry_safe=retry_safe)
        return result.check(self.host) if check else result

    async def _sftp(self, path: str, work: Any, *, retry_safe: bool = True) -> Any:
        async def operation(connection: Any) -> Any:
            async with connection.start_sftp_client() as sftp:
                try:
                    return await work(sftp)
                except asyncssh.SFTPNoSuchFile as exc:
                    return _Missing(exc)
                except asyncssh.SFTPError as exc:
                    return _Failed(exc)

        outcome = await self.pool.run(operation, retry_safe=retry_safe)
        if isinstance(outcome, _Failed | _Missing):
            raise RemotePathError(self.host, f"{path}: {outcome.error.reason}")
        return outcome

    async def write_file(self, path: str, data: bytes, *, mode: int = 0o600) -> None:
        temporary = f"{path}.corra-tmp"

        # Private from the start, as the data goes in: one who opened the file meanwhile
        # would keep reading it after a chmod (a job script exports the env). The chmod of
        # the handle is for a leftover temporary, which keeps its old mode.
        private = mode & 0o700

        async def work(sftp: Any) -> None:
            async with sftp.open(temporary, "wb", asyncssh.SFTPAttrs(permissions=private)) as file:
                await file.chmod(private)
                await file.write(data)
            if mode != private:
                await sftp.chmod(temporary, mode)
            await sftp.posix_rename(temporary, path)

        await self._sftp(path, work)

    async def put(self, local: str, remote: str) -> None:
        await self._sftp(remote, lambda sftp: sftp.put(local, remote))

    async def get(self, remote: str, local: str) -> None:
        await self._sftp(remote, lambda sftp: sftp.get(remote, local))

    async def mkdir(self, path: str, *, parents: bool = True, mode: int = 0o700) -> None:
        attributes = asyncssh.SFTPAttrs(permissions=mode)  # (parents too)

        async def work(sftp: Any) -> None:
            if parents:
                await sftp.makedirs(path, attributes, exist_ok=True)
            elif not await sftp.isdir(path):
                await sftp.mkdir(path, attributes)

        await self._sftp(path, work)

    async def listdir(self, path: str) -> list[str]:
        async def work(sftp: Any) -> list[str]:
            names = await sftp.listdir(path)
            return sorted(name for name in names if name not in (".", ".."))

        names: list[str] = await self._sftp(path, work)
        return names

    async def stat(self, path: str) -> FileInfo | None:
        async def work(sftp: Any) -> FileInfo | None:
            try:
                attributes = await sftp.stat(path)
            except asyncssh.SFTPNoSuchFile:
                return None
            permissions = attributes.permissions or 0
            return FileInfo(
                path=path,
                size=attributes.size or 0,
                mtime=float(attributes.mtime or 0),
                is_dir=(permissions & 0o170000) == 0o040000,
                mode=permissions & 0o7777,
            )

        info: FileInfo | None = await self._sftp(path, work)
        return info

    async def read_range(self, path: str, offset: int, size: int) -> bytes:
        async def work(sftp: Any) -> bytes:
            async with sftp.open(path, "rb") as file:
                await file.seek(offset)
                data: bytes = await file.read(size)
                return data

        data: bytes = await self._sftp(path, work)
        return data

    async def remove(self, path: str, *, recursive: bool = False) -> None:
        async def work(sftp: Any) -> None:
            try:
                if recursive and await sftp.isdir(path):
                    await sftp.rmtree(path)
                else:
                    await sftp.remove(path)
            except asyncssh.SFTPNoSuchFile:
                pass

        await self._sftp(path, work)


class _Failed:
    __slots__ = ("error",)

    def __init__(self, error: asyncssh.SFTPError) -> None:
        self.error = error


class _Missing(_Failed):
    __slots__ = ()

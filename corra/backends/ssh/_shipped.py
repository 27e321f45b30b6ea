"""The local copies of remote programs' logs, shipped home by the ssh backend
(`corra.backends.ssh._programs`, its Rule 4) into ``<state dir>/remote-logs``."""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import os
import shutil
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import trio

from corra._statedir import make_private_dirs, open_private, write_private

logger = logging.getLogger("corra.ssh")

#: The streams shipped, as the chaperone names their files in the run dir.
STREAMS = ("stdout", "stderr")
#: Beside the local copies once they are whole: {stream: size}.
COMPLETE_FILE = "complete.json"


class LocalLogs:
    """The local copies of remote logs: ``<root>/<host name>/<key>/stdout|stderr``, files
    0600 in directories 0700, opened without following links (`corra._statedir`).

    A copy only ever grows by appending bytes fetched from the remote file at the copy's own
    size, so the copy is always a prefix of the remote file and its size is the offset to
    resume from, after a restart of the runtime too: no byte is lost or duplicated. Appends
    are flushed (a runtime killed by a signal loses nothing it wrote) but not fsynced: after
    a machine crash a copy may be short (never wrong), and the next poll fetches the rest.
    An append happens under ``flock`` and only at the offset it was fetched for, so two
    runtimes on one state dir cannot interleave. ``complete.json`` beside the copies says
    they are whole (the program exited and everything came home). All file I/O runs in a
    worker thread.
    """

    def __init__(self, root: Path) -> None:
        self.root = root
        self._sizes: dict[tuple[str, str, str], int] = {}
        self._refused: set[str] = set()

    def ships(self, host_name: str) -> bool:
        """Whether ``host_name`` can name a directory (else its logs stay remote)."""
        if (
            host_name
            and "/" not in host_name
            and "\0" not in host_name
            and host_name not in (".", "..")
        ):
            return True
        if host_name not in self._refused:
            self._refused.add(host_name)
            logger.warning("host %r: not a directory name, its logs stay remote", host_name)
        return False

    def _dir(self, host_name: str, key: str) -> Path:
        return self.root / host_name / key

    async def size(self, host_name: str, key: str, stream: str) -> int:
        """The copy's size: the offset its shipping resumes from."""
        known = self._sizes.get((host_name, key, stream))
        if known is not None:
            return known
        path = self._dir(host_name, key) / stream

        def stat() -> int:
            try:
                return path.stat().st_size
            except FileNotFoundError:
                return 0

        size = await trio.to_thread.run_sync(stat)
        self._sizes[(host_name, key, stream)] = size
        return size

    async def append(self, host_name: str, key: str, stream: str, offset: int, data: bytes) -> int:
        """Append ``data`` (the remote bytes from ``offset``) if the copy is ``offset`` long;
        the copy's size after."""
        directory = self._dir(host_name, key)

        def write() -> int:
            make_private_dirs(directory)
            fd = open_private(directory / stream, os.O_WRONLY | os.O_APPEND | os.O_CREAT)
            with open(fd, "ab") as file:
                fcntl.flock(file.fileno(), fcntl.LOCK_EX)
                size = os.fstat(file.fileno()).st_size
                if size != offset:  # someone else shipped meanwhile: their bytes stand
                    return size
                file.write(data)
                file.flush()
                return size + len(data)

        size = await trio.to_thread.run_sync(write)
        self._sizes[(host_name, key, stream)] = size
        return size

    async def complete(self, host_name: str, key: str, sizes: Mapping[str, Any]) -> None:
        """Mark the copies whole (creating the empty ones)."""
        directory = self._dir(host_name, key)
        document = json.dumps({stream: sizes.get(stream, 0) for stream in STREAMS}).encode()

        def write() -> None:
            make_private_dirs(directory)
            for stream in STREAMS:
                os.close(open_private(directory / stream, os.O_WRONLY | os.O_CREAT))
            write_private(directory / COMPLETE_FILE, document)

        await trio.to_thread.run_sync(write)

    async def remove(self, host_name: str, key: str) -> None:
        """Remove the local copies of ``key``'s logs from ``host_name`` (a missing one is
        fine)."""
        for stream in STREAMS:
            self._sizes.pop((host_name, key, stream), None)
        directory = self._dir(host_name, key)

        def remove() -> None:
            with contextlib.suppress(FileNotFoundError):
                shutil.rmtree(directory)

        await trio.to_thread.run_sync(remove)

    def forget(self, host_name: str, key: str) -> None:
        """Drop what is cached of the copies of a program no longer watched."""
        for stream in STREAMS:
            self._sizes.pop((host_name, key, stream), None)

    async def read(
        self, host_name: str, key: str, stream: str, offset: int, size: int
    ) -> tuple[bytes, bool] | None:
        """``(bytes, covers)`` from the copy (``covers``: all ``size`` bytes came, or the copy
        is whole), or None without a copy."""
        directory = self._dir(host_name, key)

        def read() -> tuple[bytes, bool] | None:
            whole = (directory / COMPLETE_FILE).exists()  # first: a whole copy reads whole
            try:
                fd = open_private(directory / stream)
            except FileNotFoundError:
                return None
            try:
                data = os.pread(fd, size, offset) if size > 0 else b""
            finally:
                os.close(fd)
            return data, whole or len(data) >= size

        return await trio.to_thread.run_sync(read)

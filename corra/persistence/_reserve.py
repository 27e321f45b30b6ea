"""Room kept on the disk for the store, so that it keeps working when something else fills
that disk (a program's output, most likely: the run dirs live beside the store).

LMDB writes its pages with ``pwrite`` and lengthens ``data.mdb`` as the store grows; on a full
disk a commit fails with ENOSPC, and with it every transition and submission. So the writer
keeps room allocated past the data file's used end (half its used size, from `MIN_RESERVE` to
`MAX_RESERVE`, and at most a sixteenth of the disk) with ``fallocate`` and
``FALLOC_FL_KEEP_SIZE``: the file's size stays LMDB's business, but the pages it appends land
in blocks the file already owns. The reserve is topped up after commits once less than half
of it is left, which fails quietly on a full disk: the rest of the reserve carries the store
until space is freed. The
lock file is allocated whole once, for LMDB writes its reader table through a shared mapping,
where a page that cannot be allocated is a SIGBUS rather than an error.

Where ``fallocate`` is missing (not Linux, a file system without it) there is no reserve, and
a full disk fails commits as before.
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import errno
import os
from pathlib import Path

import lmdb

#: Bytes kept allocated past the used end of data.mdb: half the used size, within these
#: bounds (and at most a sixteenth of the disk). 8 MiB hold thousands of new processes.
MIN_RESERVE = 8 << 20
MAX_RESERVE = 64 << 20
#: ``fallocate``'s mode that allocates past the end without changing the file's size.
FALLOC_FL_KEEP_SIZE = 1


def _fallocate_function() -> ctypes._CFuncPtr | None:  # type: ignore[name-defined]
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or None, use_errno=True)
        function = libc.fallocate
    except (OSError, AttributeError):
        return None
    function.argtypes = (ctypes.c_int, ctypes.c_int, ctypes.c_int64, ctypes.c_int64)
    function.restype = ctypes.c_int
    return function


_fallocate = _fallocate_function()


def allocate(fd: int, offset: int, length: int, *, keep_size: bool) -> None:
    """Allocate ``length`` bytes of the file ``fd`` from ``offset``; OSError if it cannot."""
    if _fallocate is None:
        raise OSError(errno.EOPNOTSUPP, "fallocate is not available here")
    mode = FALLOC_FL_KEEP_SIZE if keep_size else 0
    if _fallocate(fd, mode, offset, length) != 0:
        number = ctypes.get_errno()
        raise OSError(number, os.strerror(number))


class DiskReserve:
    """The reserve of one open store (see the module doc); used by the writer thread only."""

    def __init__(self, env: lmdb.Environment, path: Path) -> None:
        self.env = env
        self.most = MAX_RESERVE
        with contextlib.suppress(OSError):
            disk = os.statvfs(path)
            self.most = min(self.most, disk.f_blocks * disk.f_frsize // 16)
        self.page_size = env.stat()["psize"]
        self.allocated = 0  # data.mdb's bytes known to be allocated
        self.working = True  # False once fallocate proved unsupported
        self.fd: int | None = None
        with contextlib.suppress(OSError):
            self.fd = os.open(path / "data.mdb", os.O_RDWR | os.O_CLOEXEC)
            lock = os.open(path / "lock.mdb", os.O_RDWR | os.O_CLOEXEC)
            try:
                allocate(lock, 0, os.fstat(lock).st_size, keep_size=True)
            finally:
                os.close(lock)
        self.top_up()

    def top_up(self) -> None:
        """Allocate the reserve past the used end, if less than half of it is left."""
        if self.fd is None or not self.working:
            return
        used = (self.env.info()["last_pgno"] + 1) * self.page_size
        reserve = min(max(MIN_RESERVE, used // 2), self.most)
        if self.allocated - used >= reserve // 2:
            return
        try:
            allocate(self.fd, 0, used + reserve, keep_size=True)
        except OSError as exc:
            if exc.errno in (errno.EOPNOTSUPP, errno.ENOSYS):
                self.working = False
            return  # ENOSPC: what is left of the reserve carries on
        self.allocated = used + reserve

    def close(self) -> None:
        if self.fd is not None:
            os.close(self.fd)
            self.fd = None

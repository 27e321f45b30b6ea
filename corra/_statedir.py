"""The state dir belongs to its user alone, as OpenSSH keeps ``~/.ssh``.

Whoever can write a runtime's state dir can run programs as its user (a planted token or
chaperone socket), and whoever can read it reads every spec's ``env``. So:

Rule 1. corra makes every directory it creates there 0700 and every file 0600.
Rule 2. A directory (the state dir and the ones corra keeps in it) owned by another user, or
        that group or others may write, is refused with a `ConfigError` that says how to fix
        it. One that others may only read or enter (made by an older corra) is made 0700.
Rule 3. Files there are opened with ``O_NOFOLLOW`` and must be regular files owned by the user:
        a symbolic link is refused, never followed (its target is never written).
Rule 4. A secret (a token file) must not be readable by others; a Unix socket is trusted only
        if it, or the process serving it (``SO_PEERCRED``), is the user's.

"The user" is the effective uid, and root: root can read and write everything anyway (as
OpenSSH's checks, which accept paths owned by root).
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import pwd
import socket
import stat
import struct
from pathlib import Path

from corra._errors import ConfigError

logger = logging.getLogger("corra")

DIRECTORY_MODE = 0o700
FILE_MODE = 0o600
_STATE_DIR_HINT = "give another --state-dir (or $CORRA_STATE_DIR)"


def _owner(uid: int) -> str:
    try:
        return f"uid {uid} ({pwd.getpwuid(uid).pw_name})"
    except KeyError:
        return f"uid {uid}"


def _trusted(uid: int) -> bool:
    return uid in (os.geteuid(), 0)


def _check_owner(path: Path, status: os.stat_result, what: str, fix: str) -> None:
    if not _trusted(status.st_uid):
        raise ConfigError(
            f"{what} {path}: owned by {_owner(status.st_uid)}, not by you "
            f"({_owner(os.geteuid())}); corra uses only its own files there: {fix}"
        )


def check_directory(path: Path, what: str = "state dir") -> None:
    """Refuse ``path`` unless it is a directory of the user that group and others cannot
    write (Rule 2); one they can only read or enter is made 0700.

    Raises:
        ConfigError: it is missing, not a directory, another user's, or writable by others
            (the message says how to fix it).
    """
    try:
        status = os.stat(path)
    except OSError as exc:
        raise ConfigError(f"{what} {path}: {exc.strerror}") from None
    if not stat.S_ISDIR(status.st_mode):
        raise ConfigError(f"{what} {path}: not a directory; {_STATE_DIR_HINT}")
    _check_owner(path, status, what, f"`chown -R {_me()} {path}`, or {_STATE_DIR_HINT}")
    mode = stat.S_IMODE(status.st_mode)
    if mode & 0o022:
        raise ConfigError(
            f"{what} {path}: mode {mode:04o} lets other users write it, which would hand "
            f"them your programs; `chmod 700 {path}`"
        )
    if mode & 0o077:
        try:
            os.chmod(path, DIRECTORY_MODE)
        except OSError as exc:
            raise ConfigError(f"{what} {path}: cannot make it 0700: {exc.strerror}") from None
        logger.warning("%s %s: was readable by others (mode %04o); made it 0700", what, path, mode)


def _me() -> str:
    try:
        return pwd.getpwuid(os.geteuid()).pw_name
    except KeyError:
        return str(os.geteuid())


def check_state_dir(path: Path) -> None:
    """`check_directory` if there is something at ``path``: for the commands that only read
    a state dir (a missing one is theirs to explain)."""
    try:
        os.lstat(path)
    except FileNotFoundError:
        return
    except OSError as exc:
        reason = "a parent is a file, not a directory" if exc.errno == errno.ENOTDIR else exc
        raise ConfigError(f"state dir {path}: {reason}; {_STATE_DIR_HINT}") from None
    check_directory(path)


def make_state_dir(path: Path) -> None:
    """Create the state dir (0700, and so every missing parent) if it is missing, then check
    it (`check_directory`).

    Raises:
        ConfigError: it cannot be created (a parent is a file, or may not be written), it is
            a file, or it is refused by `check_directory`.
    """
    try:
        make_private_dirs(path)
    except OSError as exc:
        if os.path.lexists(path):
            reason = "it is a file, not a directory"
        elif exc.errno in (errno.EEXIST, errno.ENOTDIR):
            reason = "cannot create it: a parent is a file, not a directory"
        else:
            reason = f"cannot create it: {exc.strerror}"
        raise ConfigError(f"state dir {path}: {reason}; {_STATE_DIR_HINT}") from None
    check_directory(path)


def make_private_dirs(path: Path, mode: int = DIRECTORY_MODE) -> None:
    """``mkdir -p path`` where every directory created is 0700, or ``mode`` (``os.makedirs``
    gives its mode to the last one only, and the umask's to the others)."""
    missing = []
    current = Path(path)
    while not current.is_dir():
        missing.append(current)
        if current.parent == current:
            break
        current = current.parent
    for directory in reversed(missing):
        try:
            os.mkdir(directory, mode)
        except FileExistsError:
            if not directory.is_dir():
                raise
            continue
        os.chmod(directory, mode)  # whatever the umask took away or left


def open_private(path: Path, flags: int = os.O_RDONLY, *, what: str = "file") -> int:
    """A descriptor on ``path``, opened without following a link (Rule 3), created 0600 with
    ``O_CREAT``; it must be a regular file of the user.

    Raises:
        FileNotFoundError: it is missing (without ``O_CREAT``).
        ConfigError: it is a link, not a regular file, or another user's.
        OSError: it cannot be opened otherwise.
    """
    try:
        fd = os.open(path, flags | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK, FILE_MODE)
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise ConfigError(
                f"{what} {path}: a symbolic link; corra does not follow links in its state "
                f"dir (their targets could be anything): remove it"
            ) from None
        raise
    try:
        status = os.fstat(fd)
        if not stat.S_ISREG(status.st_mode):
            raise ConfigError(f"{what} {path}: not a regular file: remove it")
        _check_owner(path, status, what, "remove it")
        if status.st_uid == os.geteuid() and stat.S_IMODE(status.st_mode) & 0o077:
            os.fchmod(fd, FILE_MODE)  # an older corra's 0644
        os.set_blocking(fd, True)
    except BaseException:
        os.close(fd)
        raise
    return fd


def read_private(path: Path, *, what: str = "file") -> bytes:
    """The whole of ``path`` (opened by `open_private`)."""
    fd = open_private(path, what=what)
    with os.fdopen(fd, "rb") as file:
        return file.read()


def write_private(path: Path, data: bytes, *, sync: bool = False, mode: int = FILE_MODE) -> None:
    """Replace ``path`` whole with ``data`` (a 0600 temporary file, renamed over it); with
    ``sync``, fsynced before the rename. Another ``mode`` (a script's 0700) is given to the
    file before the rename: it is never readable by others, not even for a moment, unless
    ``mode`` says so."""
    temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with contextlib.suppress(FileNotFoundError):
        os.unlink(temporary)  # our own leftover, from a crash
    fd = os.open(
        temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, FILE_MODE
    )
    try:
        with os.fdopen(fd, "wb") as file:
            file.write(data)
            file.flush()
            if mode != FILE_MODE:
                os.fchmod(file.fileno(), mode)
            if sync:
                os.fsync(file.fileno())
        os.replace(temporary, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(temporary)
        raise


def check_secret(path: Path, status: os.stat_result, what: str = "token file") -> None:
    """Refuse a secret that is another user's or that group or others may read (Rule 4).

    Raises:
        ConfigError: with how to fix it.
    """
    _check_owner(path, status, what, f"`chown {_me()} {path}`")
    mode = stat.S_IMODE(status.st_mode)
    if mode & 0o077:
        raise ConfigError(
            f"{what} {path}: mode {mode:04o} lets other users read or change it; `chmod 600 {path}`"
        )


def check_socket(path: Path, what: str = "socket") -> None:
    """Refuse a Unix socket at ``path`` that is not the user's, or that others may write
    (Rule 4); call before sending anything through it.

    Raises:
        FileNotFoundError: there is none.
        ConfigError: it is not a socket, another user's, or writable by others.
    """
    status = os.lstat(path)
    if not stat.S_ISSOCK(status.st_mode):
        raise ConfigError(f"{what} {path}: not a socket: remove it")
    _check_owner(path, status, what, "remove it (and find out who made it)")
    mode = stat.S_IMODE(status.st_mode)
    if mode & 0o022:
        raise ConfigError(
            f"{what} {path}: mode {mode:04o} lets other users use it; remove it "
            "(the service makes it 0600)"
        )


def peer_uid(sock: socket.socket) -> int:
    """The uid of the process at the other end of a connected Unix socket (``SO_PEERCRED``:
    the one that listened, for a connection we made)."""
    data = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
    _pid, uid, _gid = struct.unpack("3i", data)
    return uid


def check_peer(sock: socket.socket, path: Path, what: str = "socket") -> None:
    """Refuse a connection whose server is not run by the user (Rule 4); call before
    sending anything on it.

    Raises:
        ConfigError: another user serves it.
    """
    uid = peer_uid(sock)
    if not _trusted(uid):
        raise ConfigError(
            f"{what} {path}: served by a process of {_owner(uid)}, not yours; nothing was "
            "sent to it. Remove the socket (and find out who made it)"
        )

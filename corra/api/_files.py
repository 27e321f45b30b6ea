"""The service's files in the state dir, and what the command line needs to find them
(without importing the server).

- ``api.sock``: the Unix socket (mode 0600);
- ``api.json``: where the service listens and where its token is (``pid``, ``url``,
  ``socket``, ``token_file``); removed when it stops;
- ``api-token``: the bearer token, created (mode 0600) on first start, unless the service
  was given a token file of its own.
"""

from __future__ import annotations

import contextlib
import errno
import json
import logging
import os
import secrets
import stat
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from corra._errors import ConfigError
from corra._statedir import check_secret, make_private_dirs, read_private, write_private

logger = logging.getLogger("corra.api")

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 7878
SOCKET_FILE = "api.sock"
TOKEN_FILE = "api-token"
INFO_FILE = "api.json"
#: The longest path a Unix socket address holds (Linux: 108 bytes with the NUL); a longer
#: one is reached through a descriptor of its directory (`socket_address`).
MAX_SOCKET_PATH = 100
#: The longest token file read (a token is 43 characters; a file of more is not a token).
MAX_TOKEN_FILE = 4096


def parse_listen(text: str) -> tuple[str, int]:
    """``HOST:PORT``, ``[IPV6]:PORT`` or ``PORT`` (on 127.0.0.1) -> (host, port).

    Raises:
        ConfigError: not one of those.
    """
    host, colon, port_text = text.rpartition(":")
    if not colon:
        host, port_text = DEFAULT_HOST, text
    host = host.strip("[]") if host.startswith("[") else host
    if not host or not port_text.isdigit() or not 0 <= int(port_text) <= 65535:
        raise ConfigError(f"--listen: got {text!r}, expected HOST:PORT (port 0-65535)")
    return host, int(port_text)


def load_token(path: Path, *, create: bool = True, follow: bool = False) -> str:
    """The token in ``path``; a new one, written there (mode 0600), if there is no file.

    The file must be the user's and readable by nobody else (`corra._statedir`, as ssh
    treats a private key), else anyone who can read it can run programs as the service's
    user. A symbolic link is followed only with ``follow`` (a token file given by the user,
    which may live in a secrets mount; never the state dir's own).

    Raises:
        ConfigError: the file cannot be read or written, is empty, another user's, readable
            or writable by others, or a link (without ``follow``).
    """
    flags = os.O_RDONLY | os.O_CLOEXEC | os.O_NONBLOCK | (0 if follow else os.O_NOFOLLOW)
    try:
        fd = os.open(path, flags)
    except FileNotFoundError:
        if not create:
            raise ConfigError(f"token file {path}: no such file") from None
        return _create_token(path, follow=follow)
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise ConfigError(
                f"token file {path}: a symbolic link; corra does not follow links in its "
                "state dir: remove it (a new token is made), or give --token-file"
            ) from None
        raise ConfigError(f"token file {path}: cannot read it: {exc.strerror}") from None
    with os.fdopen(fd, "rb") as file:
        status = os.fstat(fd)
        if not stat.S_ISREG(status.st_mode):
            raise ConfigError(f"token file {path}: not a regular file")
        check_secret(path, status)
        try:
            text = file.read(MAX_TOKEN_FILE + 1).decode()
        except (OSError, UnicodeDecodeError) as exc:
            raise ConfigError(f"token file {path}: cannot read it: {exc}") from None
    token = text.strip()
    if not token or any(c.isspace() for c in token) or len(text) > MAX_TOKEN_FILE:
        shown = text if len(text) <= 80 else f"{len(text)} characters"
        raise ConfigError(
            f"token file {path}: expected one token (no spaces, at most {MAX_TOKEN_FILE} "
            f"characters), got {shown!r}"
        )
    return token


def _create_token(path: Path, *, follow: bool) -> str:
    token = secrets.token_urlsafe(32)
    while token.startswith("-"):  # (given on a command line, `--token -x...` reads as an option)
        token = secrets.token_urlsafe(32)
    try:
        make_private_dirs(path.parent)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
    except FileExistsError:  # created meanwhile: theirs wins
        return load_token(path, create=False, follow=follow)
    except OSError as exc:
        raise ConfigError(f"token file {path}: cannot create it: {exc.strerror}") from None
    with os.fdopen(fd, "w") as file:
        file.write(token + "\n")
    return token


@contextlib.contextmanager
def socket_address(path: Path) -> Iterator[str]:
    """An address for ``path`` that fits a Unix socket address: the path itself, or, if it
    is too long, the path through a descriptor of its directory (open while in the block)."""
    text = os.fspath(path)
    if len(text.encode()) <= MAX_SOCKET_PATH:
        yield text
        return
    directory = os.open(path.parent, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        yield f"/proc/self/fd/{directory}/{path.name}"
    finally:
        os.close(directory)


def write_info(state_dir: Path, info: dict[str, Any]) -> None:
    """``api.json``, whole (0600 temp file, rename)."""
    write_private(state_dir / INFO_FILE, (json.dumps(info, indent=2) + "\n").encode())


def read_info(state_dir: Path) -> dict[str, Any]:
    """``api.json`` of a service (empty without one, or without a readable one).

    Raises:
        ConfigError: it is a symbolic link or another user's (`corra._statedir`).
    """
    try:
        data = json.loads(read_private(state_dir / INFO_FILE, what="service file"))
    except (OSError, ValueError) as exc:
        if isinstance(exc, ConfigError):
            raise
        return {}
    return data if isinstance(data, dict) else {}


def remove_info(state_dir: Path) -> None:
    with contextlib.suppress(FileNotFoundError):
        os.unlink(state_dir / INFO_FILE)

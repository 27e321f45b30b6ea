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
import json
import logging
import os
import secrets
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from corra._errors import ConfigError

logger = logging.getLogger("corra.api")

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 7878
SOCKET_FILE = "api.sock"
TOKEN_FILE = "api-token"
INFO_FILE = "api.json"
#: The longest path a Unix socket address holds (Linux: 108 bytes with the NUL); a longer
#: one is reached through a descriptor of its directory (`socket_address`).
MAX_SOCKET_PATH = 100


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


def load_token(path: Path, *, create: bool = True) -> str:
    """The token in ``path``; a new one, written there (mode 0600), if there is no file.

    Raises:
        ConfigError: the file cannot be read or written, or is empty.
    """
    try:
        text = path.read_text()
    except FileNotFoundError:
        if not create:
            raise ConfigError(f"token file {path}: no such file") from None
        token = secrets.token_urlsafe(32)
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
        except FileExistsError:  # created meanwhile: theirs wins
            return load_token(path, create=False)
        except OSError as exc:
            raise ConfigError(f"token file {path}: cannot create it: {exc.strerror}") from None
        with os.fdopen(fd, "w") as file:
            file.write(token + "\n")
        return token
    except OSError as exc:
        raise ConfigError(f"token file {path}: cannot read it: {exc.strerror}") from None
    token = text.strip()
    if not token or any(c.isspace() for c in token):
        raise ConfigError(f"token file {path}: expected one token (no spaces), got {text!r}")
    if os.stat(path).st_mode & 0o077:
        logger.warning("token file %s: readable by others (chmod 600 it)", path)
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
    """``api.json``, whole (temp file, rename)."""
    path = state_dir / INFO_FILE
    temporary = path.with_name(f".{INFO_FILE}.{os.getpid()}")
    temporary.write_text(json.dumps(info, indent=2) + "\n")
    os.replace(temporary, path)


def read_info(state_dir: Path) -> dict[str, Any]:
    """``api.json`` of a service (empty without one)."""
    try:
        data = json.loads((state_dir / INFO_FILE).read_text())
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def remove_info(state_dir: Path) -> None:
    with contextlib.suppress(FileNotFoundError):
        os.unlink(state_dir / INFO_FILE)

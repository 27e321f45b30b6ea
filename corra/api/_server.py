"""Serving the API: hypercorn's trio worker in the runtime's own trio process.

`serve_api` binds a TCP address (TLS if given a certificate and key) and a Unix socket in the
state dir (mode 0600, for the local command line), and serves until its shutdown trigger
fires.
"""

from __future__ import annotations

import contextlib
import logging
import os
import socket
import stat
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import attrs
import trio
from hypercorn.config import Config, Sockets
from hypercorn.trio.run import worker_serve
from hypercorn.utils import wrap_app

from corra._errors import ConfigError
from corra.api._files import DEFAULT_HOST, DEFAULT_PORT, socket_address

logger = logging.getLogger("corra.api")

#: Seconds a client has to finish its TLS handshake (hypercorn's default: 60).
TLS_HANDSHAKE_TIMEOUT = 10.0


@attrs.frozen
class Listen:
    """Where `serve_api` listens."""

    host: str | None = DEFAULT_HOST
    """TCP host (None: no TCP, the Unix socket only)."""
    port: int = DEFAULT_PORT
    socket: Path | None = None
    """The Unix socket's path (None: none)."""
    certfile: str | None = None
    keyfile: str | None = None
    graceful_timeout: float = 5.0
    """Seconds in-flight requests get to finish once the shutdown trigger fired."""
    access_log: bool = False
    """Log every request to stderr."""

    @property
    def tls(self) -> bool:
        return self.certfile is not None


def _tcp_socket(host: str, port: int) -> socket.socket:
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except socket.gaierror as exc:
        raise ConfigError(f"--listen {host}:{port}: {exc.strerror}") from None
    family, kind, proto, _, address = infos[0]
    sock = socket.socket(family, kind, proto)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        sock.bind(address)
    except OSError as exc:
        sock.close()
        raise ConfigError(f"--listen {host}:{port}: {exc.strerror}") from None
    return sock


def _unix_socket(path: Path) -> socket.socket:
    """Bound at ``path`` with mode 0600 from the start: bound under a temporary name,
    chmod-ed, then renamed into place (a stale socket there is replaced: the caller holds
    the state dir's lock, so nobody serves it)."""
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    temporary = path.with_name(f".{path.name}.{os.getpid()}")
    try:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(temporary)
        with socket_address(temporary) as address:
            sock.bind(address)
        os.chmod(temporary, 0o600)
        os.replace(temporary, path)
    except OSError as exc:
        sock.close()
        with contextlib.suppress(OSError):
            os.unlink(temporary)
        raise ConfigError(f"API socket {path}: {exc.strerror or exc}") from None
    return sock


def _bind(listen: Listen) -> tuple[Sockets, list[str]]:
    secure: list[socket.socket] = []
    insecure: list[socket.socket] = []
    urls: list[str] = []
    try:
        if listen.host is not None:
            tcp = _tcp_socket(listen.host, listen.port)
            (secure if listen.tls else insecure).append(tcp)
            host, port = tcp.getsockname()[:2]
            shown = f"[{host}]" if ":" in host else host
            urls.append(f"{'https' if listen.tls else 'http'}://{shown}:{port}")
        if listen.socket is not None:
            insecure.append(_unix_socket(listen.socket))
            urls.append(f"unix:{listen.socket}")
    except BaseException:
        for sock in secure + insecure:
            sock.close()
        raise
    for sock in secure + insecure:
        sock.listen(1024)
        sock.setblocking(False)
    return Sockets(secure, insecure, []), urls


class _Started:
    """Hands `serve_api`'s own URLs to its caller when hypercorn says it runs."""

    def __init__(self, task_status: Any, urls: list[str]) -> None:
        self._task_status = task_status
        self._urls = urls

    def started(self, value: Any = None) -> None:
        self._task_status.started(self._urls)


async def serve_api(
    app: Any,
    listen: Listen,
    *,
    shutdown_trigger: Callable[[], Awaitable[None]] | None = None,
    task_status: trio.TaskStatus[list[str]] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Serve the ASGI ``app`` where ``listen`` says until ``shutdown_trigger`` returns (then
    in-flight requests get ``graceful_timeout`` seconds) or until cancelled. Started (with
    ``nursery.start``), it gives back its URLs (``http://HOST:PORT``, ``unix:PATH``).

    Raises:
        ConfigError: an address cannot be bound (in use, not allowed ...), or a certificate
            without its key.
    """
    if (listen.certfile is None) != (listen.keyfile is None):
        raise ConfigError("--certfile and --keyfile go together")
    if listen.host is None and listen.socket is None:
        raise ConfigError("serve_api: nowhere to listen")
    config = Config()
    config.certfile = listen.certfile
    config.keyfile = listen.keyfile
    config.graceful_timeout = listen.graceful_timeout
    # A TLS handshake must be done within TLS_HANDSHAKE_TIMEOUT, a request's head must come
    # within keep_alive_timeout (5 s: hypercorn's wait for a request), its body within the
    # app's BODY_TIMEOUT. No read_timeout: it would also cut off the clients that follow a
    # stream, which send nothing for as long as they read.
    config.ssl_handshake_timeout = TLS_HANDSHAKE_TIMEOUT
    config.accesslog = "-" if listen.access_log else None
    config.loglevel = "WARNING"
    if listen.tls:
        try:
            config.create_ssl_context()
        except (OSError, ValueError) as exc:
            raise ConfigError(f"--certfile/--keyfile: {exc}") from None
    sockets, urls = _bind(listen)
    try:
        await worker_serve(
            wrap_app(app, config.wsgi_max_body_size, "asgi"),
            config,
            sockets=sockets,
            shutdown_trigger=shutdown_trigger,
            task_status=_Started(task_status, urls),  # type: ignore[arg-type]
        )
    finally:
        for sock in sockets.secure_sockets + sockets.insecure_sockets:
            sock.close()
        if listen.socket is not None:
            with contextlib.suppress(OSError):
                if stat.S_ISSOCK(os.lstat(listen.socket).st_mode):
                    os.unlink(listen.socket)

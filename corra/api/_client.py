"""The command line's side of the API: find the service of a state dir (its Unix socket), or
use a URL, with the token; turn HTTP errors back into corra's.

httpx is imported only when there is a service to talk to.
"""

from __future__ import annotations

import contextlib
import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from corra._errors import ConfigError, CorraError
from corra._statedir import check_directory, check_socket
from corra.api._files import SOCKET_FILE, TOKEN_FILE, load_token, read_info, socket_address


class NotServing(CorraError):
    """No service answers for the state dir (no socket, or nobody listening on it)."""


class ConnectionLost(CorraError):
    """The service went away in the middle of a response."""


class ApiError(CorraError):
    """The service answered with an error: ``status``, ``code`` and its message."""

    def __init__(self, status: int, code: str, message: str, phase: str | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.phase = phase


class Client:
    """A synchronous client of one service (see `connect`). Use as a context manager."""

    def __init__(
        self,
        base_url: str,
        token: str,
        *,
        socket_path: str | None = None,
        verify: Any = True,
        timeout: float = 60.0,
    ) -> None:
        import httpx

        self._httpx = httpx
        self.base_url = base_url
        self.socket_path = socket_path
        transport = httpx.HTTPTransport(uds=socket_path) if socket_path else None
        self._http = httpx.Client(
            base_url=base_url,
            transport=transport,
            headers={"Authorization": f"Bearer {token}"},
            verify=verify,
            timeout=timeout,
        )

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def close(self) -> None:
        self._http.close()

    def call(
        self,
        method: str,
        path: str,
        *,
        params: Any = None,
        body: Any = None,
    ) -> tuple[int, Any]:
        """``(status, JSON)`` of a request.

        Raises:
            NotServing: nobody listens there.
            ApiError: the service answered with an error.
        """
        httpx = self._httpx
        content = None if body is None else json.dumps(body).encode()
        headers = {"Content-Type": "application/json"} if content is not None else None
        try:
            response = self._http.request(
                method, path, params=params, content=content, headers=headers
            )
        except httpx.ConnectError as exc:
            raise NotServing(f"{self.where}: {exc}") from None
        except httpx.HTTPError as exc:
            raise ConnectionLost(f"{self.where}: {exc}") from None
        if response.status_code >= 400:
            raise _api_error(response.status_code, response.content)
        return response.status_code, response.json()

    def lines(self, path: str, *, params: Any = None) -> Iterator[dict[str, Any]]:
        """The NDJSON entries of a streamed response, as they come.

        Raises:
            NotServing: nobody listens there.
            ConnectionLost: the stream broke (the service stopped).
            ApiError: the service answered with an error.
        """
        httpx = self._httpx
        try:
            with self._http.stream(
                "GET", path, params=params, timeout=httpx.Timeout(60.0, read=None)
            ) as response:
                if response.status_code >= 400:
                    response.read()
                    raise _api_error(response.status_code, response.content)
                for line in response.iter_lines():
                    if line:
                        yield json.loads(line)
        except httpx.ConnectError as exc:
            raise NotServing(f"{self.where}: {exc}") from None
        except httpx.HTTPError as exc:
            raise ConnectionLost(f"{self.where}: {exc}") from None

    @property
    def where(self) -> str:
        return f"unix:{self.socket_path}" if self.socket_path else self.base_url


def _api_error(status: int, content: bytes) -> ApiError:
    try:
        data = json.loads(content)
        return ApiError(status, str(data["error"]), str(data["message"]), data.get("phase"))
    except (ValueError, KeyError, TypeError):
        text = content.decode(errors="replace").strip()[:200]
        return ApiError(status, "http", f"HTTP {status}: {text}")


def _token(state_dir: Path, token: str | None, token_file: str | None, info: dict[str, Any]) -> str:
    if token:
        return token
    if token_file:
        return load_token(Path(token_file), create=False, follow=True)
    own = state_dir / TOKEN_FILE
    path = Path(info.get("token_file") or own)
    try:
        return load_token(path, create=False, follow=path.absolute() != own.absolute())
    except ConfigError as exc:
        raise ConfigError(f"{exc}; give --token or --token-file") from None


@contextlib.contextmanager
def connect(
    state_dir: Path,
    *,
    url: str | None = None,
    token: str | None = None,
    token_file: str | None = None,
    cacert: str | None = None,
) -> Iterator[Client]:
    """A client of ``url``, else of the service of ``state_dir`` (its Unix socket).

    The state dir, its token and its socket must be the user's (`corra._statedir`): the
    token is never sent to a socket that another user could have put there.

    Raises:
        NotServing: no URL was given and no service has a socket in the state dir (a
            request raises it too, if nobody listens on the socket).
        ConfigError: the token cannot be found; the state dir, token file or socket is
            refused.
    """
    if state_dir.exists():
        check_directory(state_dir)
    info = read_info(state_dir)
    verify: Any = True
    if cacert:
        import ssl

        verify = ssl.create_default_context(cafile=cacert)
    if url:
        client = Client(url.rstrip("/"), _token(state_dir, token, token_file, info), verify=verify)
        with client:
            yield client
        return
    path = state_dir / SOCKET_FILE
    try:
        check_socket(path, "API socket")
    except (FileNotFoundError, NotADirectoryError):
        raise NotServing(f"no API socket at {path}") from None
    secret = _token(state_dir, token, token_file, info)
    with socket_address(path) as address, Client("http://corra", secret, socket_path=address) as c:
        yield c


def no_service_message(state_dir: Path) -> str:
    """Why the control commands cannot work, and how to make them."""
    holder = _runtime_holder(state_dir)
    where = f"--state-dir {state_dir}"
    why = (
        f"another corra runtime (pid {holder}) is using {state_dir} without serving the API "
        f"(a `corra run`, or a service still starting); once it is done, start one with "
        f"`corra serve {where}`"
        if holder is not None
        else f"start one with `corra serve {where}` (programs started before keep running "
        "and are reattached)"
    )
    return f"no corra service is running for {state_dir}: {why}"


def _runtime_holder(state_dir: Path) -> int | None:
    """The pid of the runtime that holds the state dir's lock now, if one does (read from
    /proc/locks: looking never takes the lock, so it never gets in a starting runtime's
    way)."""
    path = state_dir / "runtime.lock"
    try:
        status = os.lstat(path)
        locks = Path("/proc/locks").read_text()
    except OSError:
        return None
    inode = f"{os.major(status.st_dev):02x}:{os.minor(status.st_dev):02x}:{status.st_ino}"
    for line in locks.splitlines():
        fields = line.split()
        if len(fields) > 5 and fields[1] == "FLOCK" and fields[5] == inode:
            try:
                return int(fields[4])
            except ValueError:
                return None
    return None

"""(Lead's placeholder, replaced by the i14-logs branch: the same names, no resumption.)"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from pathlib import Path

import httpx2 as httpx  # (lightkube >= 1.0 speaks httpx2, whose errors are its own)
import trio
from lightkube import AsyncClient
from lightkube.core.exceptions import ApiError


class LogFiles:
    def __init__(self, directory: Path, limit: int | None = None) -> None:
        self.directory = directory
        self.limit = limit

    @property
    def _data(self) -> Path:
        return self.directory / "stdout"

    def read(self, stream: str, offset: int, size: int) -> bytes:
        if stream != "stdout":
            return b""
        try:
            with open(self._data, "rb") as file:
                file.seek(offset)
                return file.read(size)
        except FileNotFoundError:
            return b""

    def size(self, stream: str) -> int:
        if stream != "stdout":
            return 0
        try:
            return self._data.stat().st_size
        except FileNotFoundError:
            return 0

    @property
    def complete(self) -> bool:
        try:
            return json.loads((self.directory / "log-position.json").read_text())["complete"]
        except (FileNotFoundError, ValueError, KeyError):
            return False

    @property
    def dropped(self) -> int:
        return 0

    def write_all(self, data: bytes, complete: bool) -> None:
        self.directory.mkdir(mode=0o700, parents=True, exist_ok=True)
        fd = os.open(self._data, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "wb") as file:
            file.write(data)
        (self.directory / "log-position.json").write_text(json.dumps({"complete": complete}))

    def remove(self) -> None:
        for name in ("stdout", "log-position.json"):
            (self.directory / name).unlink(missing_ok=True)


async def ship_logs(
    client: AsyncClient,
    namespace: str,
    pod: str,
    files: LogFiles,
    *,
    container: str = "main",
    ended: Callable[[], bool],
) -> None:
    generic = client._client
    while True:
        data = b""
        try:
            request = generic._client.build_request(
                "GET",
                f"/api/v1/namespaces/{namespace}/pods/{pod}/log",
                params={"container": container, "follow": "true"},
                timeout=generic._watch_timeout,
            )
            response = await generic._client.send(request, stream=True)
            try:
                if response.status_code == 404:
                    return
                if response.status_code >= 400:
                    await response.aread()
                    await trio.sleep(0.5)
                    continue
                async for chunk in response.aiter_bytes():
                    data += chunk
                    files.write_all(data, False)
            finally:
                await response.aclose()
        except (httpx.HTTPError, ApiError):
            await trio.sleep(0.5)
            continue
        if ended():
            files.write_all(data, True)
            return
        await trio.sleep(0.2)

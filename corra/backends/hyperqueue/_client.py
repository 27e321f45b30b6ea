"""The trio side of the helper process (`_helper`): one `HqHelper` per server.

`HqHelper.call` sends one request and waits for its answer, one request at a time (a
`trio.Lock`), and checks that the answer carries the request's id. The helper is started on
the first call and started again on the call after it died; a call it dies under fails with
`HostUnavailable`. A call cancelled after its line was written leaves an answer behind: the
next call reads and drops answers of older ids before its own. A call cancelled while its line
was being written may have left half a line in the pipe: the helper is killed and the next call
starts a new one. A helper that answers nothing within ``call_timeout`` (a server that hangs)
is killed the same way.

Errors: an answer of kind ``unavailable`` is `HostUnavailable`; ``refused`` and
``bad_request`` are `BackendError`; so is an answer that is not the protocol's.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import IO, Any

import trio

from corra._errors import BackendError, HostUnavailable

MAX_LINE = 64 * 1024 * 1024  # a poll of 100,000 jobs is a few MB
STOP_GRACE = 2.0  # seconds for the helper to exit after its stdin closed, then after TERM


class _Lost(Exception):
    """The helper's pipe ended (it died), or it wrote what is not an answer."""


class _NotSent(_Lost):
    """The helper was dead before the request reached it: safe to send again to a new one."""


class HqHelper:
    """The helper process of one server, and the calls made through it.

    Attributes:
        host: the corra host the server is (for errors).
        server_dir: the server's directory.
        polls: ``poll`` requests made (one request to the server each).
        starts: helper processes started (a restart adds one).
        call_timeout: seconds a call may take before the helper is taken for hung (killed).
        stopped_with: the exit status of the helper `aclose` stopped (0: it exited when its
            stdin closed; -15 or -9: it had to be terminated or killed), None before.
    """

    def __init__(
        self,
        host: str,
        server_dir: Path,
        *,
        python: str = sys.executable,
        log: IO[bytes] | None = None,
        call_timeout: float = 60.0,
        stop_grace: float = STOP_GRACE,
    ) -> None:
        self.host = host
        self.server_dir = Path(server_dir)
        self.polls = 0
        self.starts = 0
        self.stopped_with: int | None = None
        self._python = python
        self._log = log
        self.call_timeout = call_timeout
        self._stop_grace = stop_grace
        self._lock = trio.Lock()
        self._process: trio.Process | None = None
        self._killed = False  # the helper was killed: reaped and replaced on the next call
        self._buffer = bytearray()
        self._next_id = 0

    @property
    def pid(self) -> int | None:
        """The pid of the helper running now, if one is."""
        process = self._process
        return process.pid if process is not None and process.returncode is None else None

    async def call(self, op: str, **fields: Any) -> dict[str, Any]:
        """The answer (its ``ok`` object) to the request ``op`` with ``fields``.

        Raises:
            HostUnavailable: the server cannot be reached, or the helper died or hung.
            BackendError: the server refused the request, or the request was malformed.
        """
        async with self._lock:
            self._next_id += 1
            request_id = self._next_id
            request = {**fields, "id": request_id, "op": op}
            line = json.dumps(request, default=os.fspath).encode() + b"\n"  # paths as str
            if op == "poll":
                self.polls += 1
            try:
                with trio.fail_after(self.call_timeout):
                    try:
                        answer = await self._exchange(await self._running(), request_id, line)
                    except _NotSent:  # it died since the last call: once more, to a new one
                        answer = await self._exchange(await self._running(), request_id, line)
            except trio.TooSlowError:
                self._kill()
                raise HostUnavailable(
                    self.host,
                    f"the HyperQueue helper did not answer {op} in {self.call_timeout:g} s",
                ) from None
            except _Lost as exc:
                self._kill()
                raise HostUnavailable(self.host, f"the HyperQueue helper failed: {exc}") from None
        error = answer.get("error")
        if error is None and isinstance(answer.get("ok"), dict):
            return answer["ok"]
        if not isinstance(error, dict):
            raise BackendError(f"{self.host}: HyperQueue {op}: not an answer: {answer!r}")
        kind, message = error.get("kind"), error.get("message")
        if kind == "unavailable":
            raise HostUnavailable(self.host, f"HyperQueue server at {self.server_dir}: {message}")
        raise BackendError(f"{self.host}: HyperQueue {op}: {kind}: {message}")

    async def _exchange(
        self, process: trio.Process, request_id: int, line: bytes
    ) -> dict[str, Any]:
        assert process.stdin is not None
        written = False
        try:
            try:
                await process.stdin.send_all(line)
            except (trio.BrokenResourceError, trio.ClosedResourceError) as exc:
                raise _NotSent(f"its stdin is closed ({exc!r})") from None
            written = True
            while True:
                answer = await self._answer()
                if answer["id"] == request_id:
                    return answer
                if answer["id"] < request_id:  # the answer of a call cancelled while waiting
                    continue
                raise _Lost(f"an answer to request {answer['id']} when {request_id} was asked")
        except BaseException:
            if not written:  # perhaps half a line in the pipe: nothing after it would parse
                self._kill()
            raise

    async def _answer(self) -> dict[str, Any]:
        """The next answer line, parsed."""
        process = self._process
        assert process is not None and process.stdout is not None
        while (end := self._buffer.find(b"\n")) < 0:
            if len(self._buffer) > MAX_LINE:
                raise _Lost(f"an answer longer than {MAX_LINE} bytes")
            try:
                chunk = await process.stdout.receive_some(1024 * 1024)
            except (trio.BrokenResourceError, trio.ClosedResourceError) as exc:
                raise _Lost(f"its stdout is closed ({exc!r})") from None
            if not chunk:
                status = process.poll()
                raise _Lost("its stdout ended" if status is None else f"it exited ({status})")
            self._buffer += chunk
        line = bytes(self._buffer[:end])
        del self._buffer[: end + 1]
        try:
            answer = json.loads(line)
        except ValueError:
            answer = None
        if not (isinstance(answer, dict) and isinstance(answer.get("id"), int)):
            raise _Lost(f"not an answer: {line[:200]!r}")
        return answer

    async def _running(self) -> trio.Process:
        """The helper process, started if none runs (the one before reaped)."""
        process = self._process
        if process is not None and not self._killed and process.poll() is None:
            return process
        if process is not None:
            await self._reap(process)  # killed: it exits at once (all its threads)
        env = dict(os.environ, RUST_BACKTRACE="0", RUST_LIB_BACKTRACE="0")
        argv = [self._python, "-m", "corra.backends.hyperqueue._helper", str(self.server_dir)]
        try:
            self._process = await trio.lowlevel.open_process(
                argv,
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=self._log,
                env=env,
                start_new_session=True,  # a ^C at corra's terminal is corra's to handle
            )
        except OSError as exc:
            raise HostUnavailable(self.host, f"cannot start the HyperQueue helper: {exc}") from exc
        self._buffer.clear()
        self._killed = False
        self.starts += 1
        return self._process

    def _kill(self) -> None:
        """Kill the helper by its pid (it is reaped before the next one starts)."""
        process = self._process
        if process is not None and process.returncode is None:
            process.kill()
            self._killed = True

    async def _reap(self, process: trio.Process) -> None:
        with trio.CancelScope(shield=True):
            for pipe in (process.stdin, process.stdout):
                if pipe is not None:
                    await pipe.aclose()
            await process.wait()

    async def aclose(self) -> None:
        """Stop the helper: close its stdin, then TERM, then KILL, by its pid."""
        process, self._process = self._process, None
        if process is None:
            return
        with trio.CancelScope(shield=True):
            if process.stdin is not None:
                await process.stdin.aclose()
            for stop in (process.terminate, process.kill):
                with trio.move_on_after(self._stop_grace):
                    await process.wait()
                if process.returncode is not None:
                    break
                stop()
            await self._reap(process)
        self.stopped_with = process.returncode


@asynccontextmanager
async def open_helper(
    host: str,
    server_dir: Path,
    *,
    python: str = sys.executable,
    log: Path | None = None,
    call_timeout: float = 60.0,
    stop_grace: float = STOP_GRACE,
) -> AsyncIterator[HqHelper]:
    """A helper for the server at ``server_dir``, stopped on exit.

    Args:
        host: the corra host the server is (named in errors).
        server_dir: the server's directory (``hq server start --server-dir``).
        python: the interpreter that runs the helper (one with corra and hyperqueue).
        log: a file for the helper's stderr (appended, 0600); inherited if None.
        call_timeout: seconds a call may take before the helper is taken for hung.
        stop_grace: seconds the helper has to exit on exit, after its stdin closed, then
            after TERM (then KILL).
    """
    stream = None
    if log is not None:
        fd = os.open(log, os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_CLOEXEC, 0o600)
        stream = os.fdopen(fd, "ab")
    helper = HqHelper(
        host,
        server_dir,
        python=python,
        log=stream,
        call_timeout=call_timeout,
        stop_grace=stop_grace,
    )
    try:
        yield helper
    finally:
        await helper.aclose()
        if stream is not None:
            stream.close()

"""corra-echo: an example corra backend, in one module (see corra's docs/plugins.md).

It runs a process's ``argv`` on this machine, after echoing its options: the job file's

    [process.echo]          # or: echo = { prefix = "hello: " }
    prefix = "hello: "

writes ``hello: `` to the program's stdout before the program's own output. Each attempt
gets a run dir, ``<state dir>/echo/<process id>.<attempt>``, where a small watcher
(`corra_echo._wrapper`) runs the program apart from the backend and records how it ended, so
that the program outlives a crash of the runtime and is found again by its key.

What a backend must give corra is all at the end of this module: `PLUGIN`.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import sys
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import attrs
import trio

from corra._errors import ConfigError, LaunchFailed, ProgramLost
from corra.processes._backend import (
    RESULT_STREAM,
    BackendBase,
    BackendContext,
    BackendPlugin,
    Capabilities,
    EffectKey,
    LaunchRequest,
)
from corra.processes._lifecycle import Result

WRAPPER = Path(__file__).with_name("_wrapper.py")
#: Where in its run dir a program's ``$CORRA_RESULT`` points.
RESULT_FILE = "result.json"
#: Seconds between two looks at a run dir while waiting (the files are local: cheap).
POLL = 0.05
#: Seconds a launch waits for another launch of the same key to start its program.
CLAIMED_WAIT = 10.0


def _prefix(instance: Any, attribute: attrs.Attribute[Any], value: Any) -> None:
    if not isinstance(value, str) or len(value) > 1000:
        raise ConfigError(f"echo.prefix: got {value!r}, expected a string (1000 at most)")


@attrs.frozen
class EchoOptions:
    """A process's ``echo = { ... }`` table."""

    prefix: str = attrs.field(
        default="", validator=_prefix, metadata={"doc": "written to stdout before the program's"}
    )


@attrs.frozen
class EchoHandle:
    """Where a launched program is: kept in the process's snapshot, given back to `wait`."""

    key: str
    run_dir: str
    pid: int
    """The program's pid, which is also its process group."""
    watcher: int
    """The pid of its watcher (`corra_echo._wrapper`), which records how it ends."""
    since: int
    """When the watcher started (/proc stat field 22): tells it from a later pid."""


#: What of the optional protocol echo implements: the plug-in and the backend say the same.
CAPABILITIES = Capabilities(log_size=True)


class EchoBackend(BackendBase):
    """Programs on this machine, run dirs under ``root``.

    The optional part of the protocol keeps `BackendBase`'s defaults: no slots (programs run
    at once), no hosts, no pause hooks; it can tell how much output there is (`log_size`).
    """

    capabilities = CAPABILITIES
    handle_type = EchoHandle

    def __init__(self, root: Path) -> None:
        self.root = root

    def check(self, request: LaunchRequest) -> None:
        if request.host is not None:
            raise ConfigError(f"host: got {request.host!r}, expected none (echo has no hosts)")
        if request.options is not None and not isinstance(request.options, EchoOptions):
            raise ConfigError(f"echo: got {request.options!r}, expected EchoOptions")

    async def launch(self, request: LaunchRequest) -> EchoHandle:
        """Start the program, once per key (see the module doc for the run dir)."""
        self.check(request)
        run_dir = self.root / str(request.key)
        options = request.options or EchoOptions()
        document = {
            "argv": list(request.argv),
            "cwd": request.cwd,
            # (its value: what the program writes to $CORRA_RESULT, read by `read_log`)
            "env": {
                **os.environ,
                **request.environment(),
                "CORRA_RESULT": str(run_dir.absolute() / RESULT_FILE),
            },
            "timeout": request.limits.timeout,
            "kill_grace": request.limits.kill_grace,
            "prefix": options.prefix,
        }
        if await trio.to_thread.run_sync(_claim, run_dir, document):
            done = await trio.run_process(
                [sys.executable, "-I", str(WRAPPER), str(run_dir)],
                capture_stdout=True,
                capture_stderr=True,
                check=False,
            )
            if done.returncode != 0:
                raise LaunchFailed(f"{request.key}: {done.stderr.decode(errors='replace')}")
        started = await _started(run_dir)
        if started is None:
            raise LaunchFailed(f"{request.key}: no program started (a launch of it died first?)")
        if "error" in started:
            raise LaunchFailed(f"{request.key}: {started['error']}")
        return EchoHandle(str(request.key), str(run_dir), **started)

    async def find(self, key: EffectKey, host: str | None = None) -> EchoHandle | None:
        run_dir = self.root / str(key)
        started = await trio.to_thread.run_sync(_read, run_dir / "started.json")
        if started is None or "error" in started:
            return None
        return EchoHandle(str(key), str(run_dir), **started)

    async def wait(self, handle: EchoHandle) -> Result:
        """The program's result once its watcher recorded it.

        Raises:
            ProgramLost: the watcher is gone and recorded nothing.
        """
        while True:
            result = await trio.to_thread.run_sync(_result, handle)
            if result is not None:
                return result
            if not _alive(handle.watcher, handle.since):
                # (it may have recorded the exit just before it went)
                result = await trio.to_thread.run_sync(_result, handle)
                if result is not None:
                    return result
                raise ProgramLost(f"{handle.key}: its watcher is gone and left no exit record")
            await trio.sleep(POLL)

    async def kill(self, handle: EchoHandle, grace: float) -> Result | None:
        """SIGTERM to the program's group, SIGKILL after ``grace``; None if it was lost."""
        ended = await trio.to_thread.run_sync(_result, handle)
        if ended is not None:
            return ended
        await trio.Path(handle.run_dir, "killed").touch()
        for number, patience in ((signal.SIGTERM, grace), (signal.SIGKILL, 5.0)):
            with contextlib.suppress(ProcessLookupError):
                os.killpg(handle.pid, number)
            with trio.move_on_after(patience):
                try:
                    return await self.wait(handle)
                except ProgramLost:
                    continue  # its group may live on: the SIGKILL goes out all the same
        return None

    async def read_log(
        self, key: EffectKey, stream: str, offset: int, size: int, host: str | None = None
    ) -> bytes:
        return await trio.to_thread.run_sync(_pread, self._log(key, stream), offset, size)

    async def log_size(self, key: EffectKey, stream: str, host: str | None = None) -> int | None:
        try:
            return (await trio.Path(self._log(key, stream)).stat()).st_size
        except FileNotFoundError:
            return None

    async def remove(self, key: EffectKey, host: str | None = None) -> None:
        """Remove the run dir of an ended program (``corra rm``); a missing one is fine."""

        def remove() -> None:
            with contextlib.suppress(FileNotFoundError):
                shutil.rmtree(self.root / str(key))

        await trio.to_thread.run_sync(remove)

    def _log(self, key: EffectKey, stream: str) -> Path:
        if stream == RESULT_STREAM:  # (the program's value: what it wrote to $CORRA_RESULT)
            return self.root / str(key) / RESULT_FILE
        if stream not in ("stdout", "stderr"):
            raise ConfigError(f"stream: got {stream!r}, expected 'stdout' or 'stderr'")
        return self.root / str(key) / stream


def _result(handle: EchoHandle) -> Result | None:
    """The result its watcher recorded, or None before it did."""
    record = _read(Path(handle.run_dir, "exit.json"))
    if record is None:
        return None
    sizes = [Path(handle.run_dir, name).stat().st_size for name in ("stdout", "stderr")]
    return Result(
        returncode=record["returncode"],
        signal=record["signal"],
        started_at=record["started_at"],
        ended_at=record["ended_at"],
        timed_out=record["timed_out"],
        killed=Path(handle.run_dir, "killed").exists(),
        stdout_bytes=sizes[0],
        stderr_bytes=sizes[1],
    )


async def _started(run_dir: Path) -> dict[str, Any] | None:
    """What the watcher wrote in ``started.json``; None if it did not within `CLAIMED_WAIT`
    (a launch of the key claimed the run dir, then died before it started the watcher)."""
    with trio.move_on_after(CLAIMED_WAIT):
        while True:
            started = await trio.to_thread.run_sync(_read, run_dir / "started.json")
            if started is not None:
                return started
            await trio.sleep(POLL)  # another launch of this key is starting it
    return None


def _claim(run_dir: Path, document: dict[str, Any]) -> bool:
    """Make the run dir with its request, atomically: False if a launch made it before."""
    run_dir.parent.mkdir(parents=True, exist_ok=True)
    draft = run_dir.with_name(f".{run_dir.name}.{uuid.uuid4().hex}")
    draft.mkdir(mode=0o700)  # its request holds the environment: private
    (draft / "request.json").write_text(json.dumps(document))
    try:
        draft.rename(run_dir)  # fails if the run dir exists (it is never empty)
    except OSError:
        (draft / "request.json").unlink()
        draft.rmdir()
        return False
    return True


def _pread(path: Path, offset: int, size: int) -> bytes:
    try:
        with open(path, "rb") as file:
            file.seek(offset)
            return file.read(size)
    except FileNotFoundError:
        return b""


def _read(path: Path) -> dict[str, Any] | None:
    try:
        value: dict[str, Any] = json.loads(path.read_bytes())
    except FileNotFoundError:
        return None
    return value


def _alive(pid: int, since: int) -> bool:
    """Whether ``pid`` is still the process that started at ``since`` (and not a zombie)."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as file:
            fields = file.read().rsplit(b")", 1)[1].split()
    except OSError:
        return False
    return fields[0] not in (b"Z", b"X") and int(fields[19]) == since


@contextlib.asynccontextmanager
async def open_echo(context: BackendContext) -> AsyncIterator[EchoBackend]:
    """The backend for as long as the block runs; it has no tasks of its own to own."""
    yield EchoBackend(context.state_dir / "echo")


#: What corra finds under the ``corra.backends`` entry point ``echo`` (pyproject.toml).
PLUGIN = BackendPlugin(
    name="echo",
    open=open_echo,
    handle=EchoHandle,
    options=EchoOptions,
    capabilities=CAPABILITIES,
    description="argv on this machine, its options echoed to stdout first (an example)",
)

"""Programs on remote hosts: the chaperone, sent over SSH, runs them there.

For process actors this is the backend named ``"ssh"`` (a spec's ``host`` names the host). It
speaks to each host through a `Transport` (the host's pool actor, or the local machine for a
host with ``transport = "local"``) and to the chaperone through ``remote_helper.py``, which
runs with the host's own ``python3 -I -S``.

Rule 1: nothing to install. On first use of a host the backend probes its ``python3`` (no
python3 is a clear `LaunchFailed`), uploads ``chaperone.py`` and ``remote_helper.py`` into
``~/.corra/lib/<digest>/`` (once per content: the digest changes when they do) and makes its
work root (``~/.corra/runs`` unless the host says ``work_root``).

Rule 2: a key is launched once, remotely too: the run dir is ``<work root>/<key>`` and the
chaperone's exclusive claim on it decides; a replayed launch answers with the first one's
handle. `find` asks the host, so recovery settles a launch whose reply was lost.

Rule 3: no channel stays open while a program runs. A launch is one exec (answered once the
program started); waits are served by one poller per host that asks about *every* watched run
dir in one exec per ``poll_interval``; logs are read by byte range from the spooled files, so
a reader that reconnects resumes at its offset. A connection that drops costs nothing: the
chaperone keeps running and recording, and the next poll finds what happened.

Rule 4: a host that is unavailable (its pool gave up for now) raises `HostUnavailable` from
every operation; the process layer pauses the process (or fails it, per the host's
``on_unavailable``) and resumes it when the host answers again.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import posixpath
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import attrs
import trio

from corra._errors import (
    BackendError,
    ConfigError,
    HostUnavailable,
    LaunchFailed,
    ProgramLost,
    TransportError,
)
from corra.actors._lifecycle import Result
from corra.backends import chaperone
from corra.backends._pollers import HostPollers
from corra.backends.local import ExitRecord
from corra.backends.local_process import result_of
from corra.backends.ssh._config import HostConfig
from corra.backends.ssh._transport import join_inside
from corra.backends.transport import Transport

logger = logging.getLogger("corra.ssh")

#: Run dirs asked about per status exec (keeps the command line far below ARG_MAX).
STATUS_BATCH = 200
#: Longest time a kill waits for the exit record beyond the grace period.
KILL_SETTLE = 10.0


def _library() -> tuple[str, dict[str, bytes]]:
    files = {
        "chaperone.py": Path(chaperone.__file__).read_bytes(),
        "remote_helper.py": Path(__file__).with_name("remote_helper.py").read_bytes(),
    }
    digest = hashlib.sha256()
    for name in sorted(files):
        digest.update(name.encode() + b"\0" + files[name] + b"\0")
    return digest.hexdigest()[:16], files


@attrs.define
class _Watch:
    run_dir: str
    event: trio.Event = attrs.field(factory=trio.Event)
    status: dict[str, Any] | None = None
    error: BaseException | None = None


class _Host:
    """What the backend knows of one host: its transport, paths, and its poller's watches."""

    def __init__(self, config: HostConfig, transport: Transport, poll_interval: float) -> None:
        self.config = config
        self.transport = transport
        self.poll_interval = poll_interval
        self.lib_dir: str | None = None
        self.work_root: str | None = None
        self.setup_lock = trio.Lock()
        self.watches: dict[str, list[_Watch]] = {}
        self.wake = trio.Event()
        self.polls = 0

    @property
    def helper(self) -> list[str]:
        assert self.lib_dir is not None
        return [self.config.python, "-I", "-S", posixpath.join(self.lib_dir, "remote_helper.py")]


class SshProgramBackend(HostPollers):
    """Programs on the hosts it was given; use as ``async with`` (it runs one poller per host).

    ``transports`` maps each host name to its `Transport` (an `SshTransport` over the host's
    pool, or a `LocalTransport`).
    """

    def __init__(
        self,
        hosts: Mapping[str, HostConfig],
        transports: Mapping[str, Transport],
        *,
        poll_interval: float = 1.0,
        max_running: int = 64,
    ) -> None:
        if poll_interval <= 0:
            raise ConfigError(f"poll_interval: got {poll_interval!r}, expected seconds > 0")
        self._hosts = {
            name: _Host(config, transports[name], poll_interval) for name, config in hosts.items()
        }
        self._digest, self._files = _library()
        self._slots = trio.Semaphore(max_running)
        self._held: set[str] = set()

    def host(self, name: object) -> _Host:
        host: _Host = super().host(name)
        return host

    # -- slots: a bound on remote programs at once --------------------------------------

    async def acquire_slot(self, key: str) -> None:
        if key not in self._held:
            await self._slots.acquire()
            self._held.add(key)

    def release_slot(self, key: str) -> None:
        if key in self._held:
            self._held.discard(key)
            self._slots.release()

    def adopt_slot(self, key: str) -> None:
        if key not in self._held:
            self._held.add(key)
            with contextlib.suppress(trio.WouldBlock):
                self._slots.acquire_nowait()

    # -- set-up of a host ------------------------------------------------------------------

    async def _ready(self, host: _Host) -> None:
        if host.lib_dir is not None:
            return
        async with host.setup_lock:
            if host.lib_dir is not None:
                return
            probe = await host.transport.run(
                [
                    host.config.python,
                    "-I",
                    "-S",
                    "-c",
                    "import os, sys; print(sys.version_info[0], sys.version_info[1], "
                    "os.path.expanduser('~'))",
                ]
            )
            if probe.returncode != 0:
                detail = probe.stderr.decode(errors="replace").strip()[-300:]
                raise LaunchFailed(
                    f"host {host.config.name}: cannot run {host.config.python!r} there "
                    f"(exit status {probe.returncode}{': ' + detail if detail else ''}); corra "
                    "needs a python3 (3.6 or newer, standard library only) on the host"
                )
            major, minor, home = probe.stdout.decode().split(maxsplit=2)
            if (int(major), int(minor)) < (3, 6):
                raise LaunchFailed(
                    f"host {host.config.name}: {host.config.python} is {major}.{minor}; corra "
                    "needs 3.6 or newer"
                )
            home = home.strip()
            lib_dir = posixpath.join(home, ".corra", "lib", self._digest)
            present = await host.transport.stat(posixpath.join(lib_dir, "remote_helper.py"))
            if present is None or present.size != len(self._files["remote_helper.py"]):
                await host.transport.mkdir(lib_dir)
                for name, data in self._files.items():
                    await host.transport.write_file(posixpath.join(lib_dir, name), data)
            root = host.config.work_root or posixpath.join(home, ".corra", "runs")
            if not posixpath.isabs(root):
                root = posixpath.join(home, root)
            await host.transport.mkdir(root)
            host.work_root = root
            host.lib_dir = lib_dir

    def _run_dir(self, host: _Host, key: str) -> str:
        assert host.work_root is not None
        if not key or "/" in key or key.startswith("."):
            raise ConfigError(f"key: got {key!r}, expected a file name")
        return posixpath.join(host.work_root, key)

    # -- the Backend protocol ------------------------------------------------------------

    async def launch(self, key: str, spec: Any) -> dict[str, Any]:
        host = self.host(getattr(spec, "host", None))
        await self._ready(host)
        run_dir = self._run_dir(host, key)
        process_id, _, attempt = key.rpartition(".")
        document = {
            "key": key,
            "argv": list(spec.argv),
            "cwd": spec.cwd,
            "env": {
                **spec.env,
                "CORRA_PROCESS_ID": process_id,
                "CORRA_PROCESS_NAME": spec.name or process_id,
                "CORRA_ATTEMPT": attempt,
            },
            "timeout": spec.timeout,
            "kill_grace": spec.kill_grace,
            "memory_limit": None,
            "pids_limit": None,
            "cgroups": [],
            "cgroup_notes": [],
        }
        inputs = dict(getattr(spec, "inputs", None) or {})
        if inputs:
            (status,) = await self._status(host, [run_dir])
            if status.get("state") == "absent":  # never upload under a program that runs
                await self._upload(host, spec.cwd or posixpath.join(run_dir, "work"), inputs)
        result = await host.transport.run(
            [*host.helper, "launch", run_dir], stdin=json.dumps(document).encode(), check=True
        )
        reply = _json(result.stdout, host)
        status = reply.get("status")
        if status in ("started", "claimed") and reply.get("handle"):
            handle = self._handle(host, key, reply["handle"])
            outputs = tuple(getattr(spec, "outputs", None) or ())
            if outputs:
                handle["outputs"] = list(outputs)
                handle["outputs_to"] = str(getattr(spec, "outputs_dir", None) or "")
                handle["work_dir"] = spec.cwd or posixpath.join(run_dir, "work")
            return handle
        if status in ("failed", "invalid"):
            raise LaunchFailed(f"{key} on {host.config.name}: {reply.get('error')}")
        raise BackendError(f"{key} on {host.config.name}: unexpected reply {reply!r}")

    async def _upload(self, host: _Host, work_dir: str, inputs: Mapping[str, str]) -> None:
        """Build the tree locally, create it remotely, upload it, and verify every file's size
        and checksum (a mismatch is uploaded once more, then the launch fails)."""
        tree = await trio.to_thread.run_sync(_local_tree, inputs)
        targets = {relative: join_inside(work_dir, relative) for relative in tree}
        for directory in sorted({posixpath.dirname(path) for path in targets.values()}):
            await host.transport.mkdir(directory)
        pending = sorted(tree)
        for _ in range(2):
            for relative in pending:
                await host.transport.put(tree[relative][0], targets[relative])
            result = await host.transport.run(
                [*host.helper, "digests", work_dir, *pending], check=True
            )
            remote = _json(result.stdout, host)
            pending = [
                relative for relative in pending if remote.get(relative) != list(tree[relative][1:])
            ]
            if not pending:
                return
        raise LaunchFailed(
            f"inputs on {host.config.name}: {', '.join(pending)} did not arrive intact "
            "(size or sha256 differ after two uploads)"
        )

    async def _retrieve(self, host: _Host, handle: Mapping[str, Any]) -> None:
        """Copy the files of the work dir that match the handle's output globs home."""
        work_dir, destination = handle["work_dir"], handle.get("outputs_to") or ""
        if not destination:
            return
        result = await host.transport.run(
            [*host.helper, "outputs", work_dir, *handle["outputs"]], check=True
        )
        for relative in _json(result.stdout, host):
            local = Path(destination) / relative
            await trio.to_thread.run_sync(
                lambda path=local: path.parent.mkdir(parents=True, exist_ok=True)
            )
            await host.transport.get(join_inside(work_dir, relative), str(local))

    def _handle(self, host: _Host, key: str, remote: Mapping[str, Any]) -> dict[str, Any]:
        return {"host": host.config.name, "key": key, **remote}

    async def find(self, key: str, host_name: str | None = None) -> dict[str, Any] | None:
        """The handle of the program launched with ``key`` (on ``host_name``, else on any
        host), or None."""
        hosts = [self.host(host_name)] if host_name is not None else list(self._hosts.values())
        for host in hosts:
            await self._ready(host)
            (status,) = await self._status(host, [self._run_dir(host, key)])
            if status.get("handle"):
                return self._handle(host, key, status["handle"])
        return None

    async def _status(self, host: _Host, run_dirs: list[str]) -> list[dict[str, Any]]:
        result = await host.transport.run([*host.helper, "status", *run_dirs], check=True)
        host.polls += 1
        statuses = _json(result.stdout, host)
        if not isinstance(statuses, list) or len(statuses) != len(run_dirs):
            raise BackendError(f"host {host.config.name}: a status reply that does not fit")
        return statuses

    async def wait(self, handle: Mapping[str, Any]) -> Result:
        host = self.host(handle.get("host"))
        await self._ready(host)
        watch = _Watch(handle["run_dir"])
        await self._watch(host, watch.run_dir, watch)
        result = self._settled(host, watch.status or {})
        if handle.get("outputs"):
            await self._retrieve(host, handle)
        return result

    def _settled(self, host: _Host, status: Mapping[str, Any]) -> Result:
        if status.get("state") == "exited":
            result = result_of(ExitRecord.from_json(status.get("record")))
            assert result is not None
            return result
        raise ProgramLost(
            f"{status.get('dir')} on {host.config.name}: the chaperone is gone and left no "
            "exit record"
        )

    async def _poller(self, host: _Host) -> None:
        """One status exec per interval for every watched run dir of the host."""
        while True:
            if not host.watches:
                host.wake = trio.Event()
                await host.wake.wait()
            run_dirs = list(host.watches)
            try:
                statuses: list[dict[str, Any]] = []
                for start in range(0, len(run_dirs), STATUS_BATCH):
                    statuses += await self._status(host, run_dirs[start : start + STATUS_BATCH])
            except HostUnavailable as exc:
                for watches in host.watches.values():
                    for watch in watches:
                        watch.error = exc
                        watch.event.set()
                host.watches.clear()
                continue
            except (TransportError, BackendError) as exc:
                logger.warning("host %s: status poll failed: %s", host.config.name, exc)
                statuses = []
            for status in statuses:
                if status.get("state") in ("exited", "lost"):
                    for watch in host.watches.get(status["dir"], []):
                        watch.status = status
                        watch.event.set()
            await trio.sleep(host.poll_interval)

    async def kill(self, handle: Mapping[str, Any], grace: float) -> Result | None:
        host = self.host(handle.get("host"))
        await self._ready(host)
        run_dir = handle["run_dir"]
        await host.transport.run([*host.helper, "kill", repr(float(grace)), run_dir], check=True)
        with trio.move_on_after(grace + KILL_SETTLE):
            while True:
                (status,) = await self._status(host, [run_dir])
                if status.get("state") == "exited":
                    return self._settled(host, status)
                if status.get("state") in ("lost", "absent"):
                    return None
                await trio.sleep(min(0.2, host.poll_interval))
        raise BackendError(f"{run_dir} on {host.config.name}: still running after the kill")

    async def read_log(
        self, key: str, stream: str, offset: int, size: int, host_name: str | None = None
    ) -> bytes:
        """Up to ``size`` bytes of ``stream`` of the program of ``key`` from ``offset`` (on
        ``host_name``, else on the first host that has its run dir); none if it has none."""
        if stream not in ("stdout", "stderr"):
            raise ConfigError(f"stream: got {stream!r}, expected 'stdout' or 'stderr'")
        hosts = [self.host(host_name)] if host_name is not None else list(self._hosts.values())
        for host in hosts:
            await self._ready(host)
            path = posixpath.join(self._run_dir(host, key), stream)
            if await host.transport.stat(path) is not None:
                return await host.transport.read_range(path, offset, size)
        return b""

    def polls(self, host_name: str) -> int:
        """Status execs made for ``host_name`` so far."""
        return self.host(host_name).polls


def _local_tree(inputs: Mapping[str, str]) -> dict[str, tuple[str, int, str]]:
    """{remote relative path: (local file, size, sha256)} for every file of the inputs (a
    directory brings all the files under it)."""
    tree: dict[str, tuple[str, int, str]] = {}
    for relative, local in inputs.items():
        try:
            join_inside("/", relative)  # refuses absolute paths and ".." before any reading
        except TransportError as exc:
            raise LaunchFailed(f"inputs: {exc}") from None
        source = Path(local)
        if source.is_dir():
            files = [
                (f"{relative}/{path.relative_to(source).as_posix()}", path)
                for path in sorted(source.rglob("*"))
                if path.is_file()
            ]
        elif source.is_file():
            files = [(relative, source)]
        else:
            raise LaunchFailed(f"inputs[{relative!r}]: no such local file or directory: {local!r}")
        for name, path in files:
            digest = hashlib.sha256()
            with path.open("rb") as file:
                for block in iter(lambda file=file: file.read(1 << 20), b""):
                    digest.update(block)
            tree[name] = (str(path), path.stat().st_size, digest.hexdigest())
    return tree


def _json(data: bytes, host: _Host) -> Any:
    try:
        return json.loads(data.decode("utf-8").strip().splitlines()[-1])
    except (ValueError, IndexError) as exc:
        raise BackendError(
            f"host {host.config.name}: the remote helper answered {data[-300:]!r}"
        ) from exc

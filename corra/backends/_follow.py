"""Following the status files of programs: those whose run dirs this machine can read (the
local backend's, HyperQueue's) by `StatusFollower`; a host's, read in the poll its backend
makes anyway (the remote helper's ``status``, a Slurm poll), through `StatusReports`.

One task per backend looks at every followed file once per interval, all of them in one
call to a worker thread (a ``stat`` each; a bounded read of the end of those that grew:
`corra.chaperone._status.read_tail`), and hands what changed to the runtime's `Statuses`.
A thousand running programs cost one thread call and a thousand ``stat`` calls per interval,
whatever they write; a program that writes nothing costs its ``stat``.

A backend follows a program while it waits for it (`StatusFollower.following`), and reads
its file once more when it has ended (`StatusFollower.last_look`, which also takes an
unterminated last line), so that the last status of a program that ended between two looks
is kept.
"""

from __future__ import annotations

import collections
import contextlib
import os
import posixpath
from collections.abc import Awaitable, Callable, Iterator
from typing import Any, TypeVar

import attrs
import trio

from corra._errors import ConfigError
from corra.chaperone import _status
from corra.processes._backend import EffectKey, Statuses

#: Seconds between two looks, unless the runtime says (`BackendContext.status_interval`).
DEFAULT_INTERVAL = 1.0
#: Run dirs whose last report `StatusReports` remembers (the oldest are forgotten first: one
#: reported again is handed on again, which changes nothing).
REMEMBERED = 10_000


@attrs.define
class _Followed:
    path: str
    size: int | None = None
    """The file's size at the last look that read it (None: never read)."""
    waits: int = 1
    """How many waits follow it (a key may be waited for twice: a kill and the actor)."""


class StatusFollower:
    """The status files of running programs, looked at every ``interval`` seconds.

    Args:
        statuses: where what changed goes (`BackendContext.statuses`).
        interval: seconds between two looks.
    """

    def __init__(self, statuses: Statuses, interval: float = DEFAULT_INTERVAL) -> None:
        self._statuses = statuses
        self._interval = interval
        self._followed: dict[EffectKey, _Followed] = {}
        self._wake = trio.Event()
        self.looks = 0
        """Looks made (each one worker-thread call for every followed file)."""

    @contextlib.contextmanager
    def following(self, key: EffectKey, path: str | os.PathLike[str]) -> Iterator[None]:
        """Follow ``path``, the status file of ``key``'s program, while the block runs."""
        followed = self._followed.get(key)
        if followed is None:
            self._followed[key] = _Followed(os.fspath(path))
            self._wake.set()
        else:
            followed.waits += 1
        try:
            yield
        finally:
            followed = self._followed.get(key)
            if followed is not None:
                followed.waits -= 1
                if followed.waits <= 0:
                    del self._followed[key]

    async def last_look(self, key: EffectKey, path: str | os.PathLike[str]) -> None:
        """Read ``key``'s status file once more, its program having ended (an unterminated
        last line counts). In a worker thread; a checkpoint."""
        found = await trio.to_thread.run_sync(_status.read_tail, os.fspath(path), True)
        if found is not None:
            _, value, error = found
            if value is not None or error is not None:
                self._statuses.set(key, value, error)

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Look every interval while something is followed; until cancelled."""
        task_status.started()
        while True:
            if not self._followed:
                self._wake = trio.Event()
                await self._wake.wait()
            await trio.sleep(self._interval)
            wanted = [(key, each.path, each.size) for key, each in self._followed.items()]
            if not wanted:
                continue
            found = await trio.to_thread.run_sync(_look, wanted)
            self.looks += 1
            for key, size, value, error in found:
                followed = self._followed.get(key)
                if followed is None:
                    continue  # (ended meanwhile: its last look reads it again)
                followed.size = size
                if value is not None or error is not None:
                    self._statuses.set(key, value, error)


T = TypeVar("T")


async def following(
    follower: StatusFollower | None,
    key: EffectKey,
    path: str | os.PathLike[str],
    wait: Callable[[], Awaitable[T]],
) -> T:
    """``await wait()`` (a wait for ``key``'s program), following its status file ``path``
    meanwhile and reading it once more after (`StatusFollower.following`, `last_look`); a
    None ``follower`` follows nothing."""
    if follower is None:
        return await wait()
    with follower.following(key, path):
        result = await wait()
    await follower.last_look(key, path)
    return result


def _look(wanted: list[tuple[EffectKey, str, int | None]]) -> list[tuple[Any, ...]]:
    """The files of ``wanted`` that changed since their size: (key, size, value, error)."""
    changed = []
    for key, path, size in wanted:
        try:
            if os.stat(path).st_size == size:
                continue
        except OSError:
            continue  # (none yet: most programs never write one)
        found = _status.read_tail(path, since=size)
        if found is not None and found[0] != size:
            changed.append((key, *found))
    return changed


@contextlib.asynccontextmanager
async def open_status_follower(statuses: Statuses, interval: float = DEFAULT_INTERVAL) -> Any:
    """A `StatusFollower` whose task runs while the block does."""
    follower = StatusFollower(statuses, interval)
    async with trio.open_nursery() as nursery:
        await nursery.start(follower.run)
        try:
            yield follower
        finally:
            nursery.cancel_scope.cancel()


class StatusReports:
    """What a host's poll read of its programs' status files (``{run_dir: {"size", "value",
    "error"}}``: `corra.chaperone._status.report`, on the host), handed on to ``statuses``
    (None: dropped) for the run dirs whose report changed. The key is the run dir's name."""

    def __init__(self, statuses: Statuses | None) -> None:
        self._statuses = statuses
        self._seen: collections.OrderedDict[str, Any] = collections.OrderedDict()

    def report_entries(self, run_dirs: list[str], entries: list[Any]) -> None:
        """`report` each run dir's entry of a remote helper's ``status`` reply (its
        ``"status"``, where the program wrote one)."""
        for run_dir, entry in zip(run_dirs, entries, strict=True):
            self.report(run_dir, entry.get("status") if isinstance(entry, dict) else None)

    def report(self, run_dir: str, found: Any) -> None:
        """Hand on ``found``, the report of ``run_dir`` (anything else is ignored)."""
        if self._statuses is None or not isinstance(found, dict):
            return
        value, error = found.get("value"), found.get("error")
        if not isinstance(value, dict | None) or not isinstance(error, str | None):
            return
        seen = (found.get("size"), value, error)
        if self._seen.get(run_dir) == seen:
            return
        try:
            key = EffectKey.parse(posixpath.basename(run_dir))
        except ConfigError:
            return
        self._seen[run_dir] = seen
        self._seen.move_to_end(run_dir)
        if len(self._seen) > REMEMBERED:
            self._seen.popitem(last=False)
        self._statuses.set(key, value, error)

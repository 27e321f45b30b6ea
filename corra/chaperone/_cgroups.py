"""A program's cgroups: made (or taken from a pool), joined around the spawn (so that the
program is born inside: a fork of the chaperone to join from would cost more than the rest of
a launch), drained and removed at the end.

Two kinds share one informal protocol (``primary``, ``notes``, ``kill``, ``oom_killed``,
``peak``, ``try_remove``, ``remove``): `Cgroups`, made for one program with its settings, and
`PooledCgroup`, a kill-only cgroup of the shared chaperone's `CgroupPool`. What is the same
for every cgroup of a process (where it came from, which files a hierarchy has) is read once
and kept by one `CgroupHost`.
"""

import contextlib
import os
import signal
import time

from ._proc import alive, read_small
from ._rundir import describe

#: cgroup settings that some kernels lack (no swap accounting), and that may go unset quietly.
OPTIONAL_SETTINGS = ("memory.swap.max", "memory.memsw.limit_in_bytes")
#: Where a memory cgroup keeps its peak (cgroup v2, v1).
PEAK_FILES = ("memory.peak", "memory.max_usage_in_bytes")
#: Where a memory cgroup counts OOM kills (v2, v1).
OOM_FILES = ("memory.events", "memory.oom_control")
#: How long a chaperone waits for killed group or cgroup members to go before it records.
CGROUP_DRAIN = 2.0


class CgroupHost:
    """What one process knows of the cgroups it works with, read once: where it sits in each
    hierarchy (its home, to go back to), fds on the homes' ``cgroup.procs``, and per parent
    directory which files its cgroups have. One per process: a forked child makes its own."""

    def __init__(self):
        self._homes = None  # {mount point: our directory in that hierarchy}, once read
        self._home_fds = {}  # {home: an fd on its cgroup.procs}, kept open for the next leave
        self._killable = {}  # {parent: whether cgroups under it have cgroup.kill}
        self._oom_files = {}  # {parent: the files that count OOM kills in cgroups under it}
        self._pid = None  # this process's pid, as bytes, once asked for

    def pid(self):
        if self._pid is None:
            self._pid = str(os.getpid()).encode()
        return self._pid

    def homes(self):
        """{mount point: the directory this process sits in, in that hierarchy}."""
        if self._homes is None:
            self._homes = _read_cgroup_homes()
        return self._homes

    def home_of(self, path):
        """The cgroup this process came from, in the hierarchy of cgroup ``path``; None if
        none."""
        return max(
            (home for mount, home in self.homes().items() if path.startswith(mount + "/")),
            key=len,
            default=None,
        )

    def go_home(self, home):
        """Move this process back into ``home``."""
        fd = self._home_fds.get(home)
        if fd is None:
            fd = self._home_fds[home] = os.open(
                os.path.join(home, "cgroup.procs"), os.O_WRONLY | os.O_CLOEXEC
            )
        os.write(fd, self.pid())

    def killable(self, path):
        """Whether cgroup ``path`` has ``cgroup.kill`` (the same for every one under a
        parent)."""
        parent = os.path.dirname(path)
        if parent not in self._killable:
            self._killable[parent] = os.path.exists(os.path.join(path, "cgroup.kill"))
        return self._killable[parent]

    def oom_count(self, path):
        """The count of OOM kills in cgroup ``path``, or None where it does not count them."""
        parent = os.path.dirname(path)
        names = self._oom_files.get(parent)
        if names is None:  # the same for every cgroup under a parent
            names = self._oom_files[parent] = [
                name for name in OOM_FILES if os.path.exists(os.path.join(path, name))
            ]
        for name in names:
            try:
                for line in read_small(os.path.join(path, name)).decode().splitlines():
                    key, _, value = line.partition(" ")
                    if key == "oom_kill":
                        return int(value)
            except (OSError, ValueError):
                continue
        return None


def _read_cgroup_homes():
    own = {}
    with open("/proc/self/cgroup") as lines:
        for line in lines:
            number, controllers, path = line.rstrip("\n").split(":", 2)
            own[controllers if number != "0" else ""] = path
    homes = {}
    with open("/proc/self/mounts") as lines:
        for line in lines:
            fields = line.split()
            if len(fields) < 4 or fields[2] not in ("cgroup", "cgroup2"):
                continue
            mount = fields[1].replace("\\040", " ")
            if fields[2] == "cgroup2":
                key = ""
            else:
                options = set(fields[3].split(","))
                key = next((k for k in own if k and set(k.split(",")) <= options), None)
            if key is not None and key in own:
                homes[mount] = mount.rstrip("/") + own[key]
    return homes


def write_setting(path, value):
    fd = os.open(path, os.O_WRONLY | os.O_CLOEXEC)
    try:
        os.write(fd, value.encode() if isinstance(value, str) else value)
    finally:
        os.close(fd)


def cgroup_peak(path):
    """The peak of the memory cgroup at ``path`` (v2 ``memory.peak``, v1
    ``memory.max_usage_in_bytes``), in bytes; None if it has neither."""
    for name in PEAK_FILES:
        try:
            return int(read_small(os.path.join(path, name)))
        except (OSError, ValueError):
            continue
    return None


def members(path):
    """The pids in cgroup ``path`` (none if it cannot be read)."""
    try:
        with open(os.path.join(path, "cgroup.procs")) as procs:
            return [int(line) for line in procs if line.strip()]
    except OSError:
        return []


def kill_cgroup(path):
    """SIGKILL everything in cgroup ``path``: ``cgroup.kill``, or one by one where there is
    none (v1, or Linux before 5.14)."""
    try:
        write_setting(os.path.join(path, "cgroup.kill"), "1")
    except OSError:
        for pid in members(path):
            with contextlib.suppress(OSError):
                os.kill(pid, signal.SIGKILL)


def populated(path):
    """Whether anything lives in cgroup ``path`` (or below it)."""
    try:
        return b"populated 1" in read_small(path + "/cgroup.events")
    except FileNotFoundError:
        return False
    except OSError:
        return bool(members(path))


def rmdir(path):
    with contextlib.suppress(OSError):
        os.rmdir(path)


class Cgroups:
    """A program's cgroups, made for it with its settings."""

    def __init__(self, entries, notes=(), host=None):
        self.host = CgroupHost() if host is None else host
        self.entries = []  # [(path, after)] made and configured
        self.notes = list(notes)
        self.joined = []  # [(path, home)] this process is in now
        for entry in entries:
            path = entry["path"]
            try:
                try:
                    os.mkdir(path)
                except FileNotFoundError:
                    os.makedirs(path, exist_ok=True)
            except FileExistsError:
                pass
            except OSError as error:
                self.notes.append(f"no cgroup {describe(error, path)}")
                continue
            for name, value in sorted((entry.get("before") or {}).items()):
                self._set(path, name, value)
            self.entries.append((path, entry.get("after") or {}))

    def _set(self, path, name, value):
        try:
            write_setting(os.path.join(path, name), str(value))
        except FileNotFoundError:
            if name not in OPTIONAL_SETTINGS:
                self.notes.append(f"{name} not set: no such file in {path!r}")
        except OSError as error:
            self.notes.append(f"{name} not set: {describe(error, path)}")

    def join(self):
        """Move this process into every cgroup (the program spawned next is born there)."""
        if not self.entries:
            return
        try:
            self.host.homes()
        except OSError as error:
            self.notes.append(f"cgroups not joined: {describe(error, '/proc/self/cgroup')}")
            return
        for path, after in list(self.entries):
            home = self.host.home_of(path)
            try:
                if home is None:
                    raise OSError(0, "not in a cgroup mount")
                write_setting(os.path.join(path, "cgroup.procs"), self.host.pid())
            except OSError as error:
                self.notes.append(f"cgroup not joined: {describe(error, path)}")
                self.entries.remove((path, after))
                rmdir(path)
                continue
            self.joined.append((path, home))

    def leave(self):
        """Move this process back home, then apply the settings that count what is inside."""
        for _path, home in self.joined:
            self.host.go_home(home)
        self.joined = []
        for path, after in self.entries:
            for name, value in sorted(after.items()):
                self._set(path, name, value)

    @property
    def primary(self):
        """The cgroup to report: one with ``cgroup.kill`` if any, else the first."""
        for path, _ in self.entries:
            if self.host.killable(path):
                return path
        return self.entries[0][0] if self.entries else None

    def kill(self):
        """SIGKILL everything in the cgroups (never this process: it left before)."""
        if self.joined:
            return
        for path, _ in self.entries:
            kill_cgroup(path)

    def oom_killed(self):
        """Whether the kernel's OOM killer struck inside a memory cgroup of ours."""
        return any(self.host.oom_count(path) for path, _ in self.entries)

    def peak(self):
        """The most memory the program's memory cgroup held (v2 ``memory.peak``, v1
        ``memory.max_usage_in_bytes``), in bytes; None without one. Made for this program
        alone, and the chaperone in it only around the spawn: the program's own peak."""
        for path, _ in self.entries:
            peak = cgroup_peak(path)
            if peak is not None:
                return peak
        return None

    def try_remove(self):
        """Remove the cgroups that are empty; whether none is left (``rmdir`` refuses one
        with anything inside, so success also says that nothing of the program is left)."""
        left = []
        for path, after in self.entries:
            try:
                os.rmdir(path)
            except FileNotFoundError:
                pass
            except OSError:
                left.append((path, after))
        self.entries = left
        return not left

    def remove(self):
        """Wait (briefly) for the cgroups to empty, then remove them."""
        deadline = time.monotonic() + CGROUP_DRAIN
        for path, _ in self.entries:
            delay = 0.0005
            while members(path) and time.monotonic() < deadline:
                time.sleep(delay)
                delay = min(delay * 2, 0.05)
            rmdir(path)
        self.entries = []


class CgroupPool:
    """The shared chaperone's kill-only cgroups (one per program, none of its settings), kept
    for reuse, and the one the chaperone waits in.

    A fresh cgroup per program costs a ``mkdir`` before and an ``rmdir`` after (and the
    kernel's work of making and freeing one), and two moves of the chaperone (in before the
    spawn, out after). So the chaperone takes an empty cgroup of its pool
    (``PARENT/.pool-<pid>.<start>-<n><suffix>``; its own, so that no cgroup of another
    chaperone's orphans is ever reused) and waits in it: the next program is born there, and
    the chaperone moves on to another one right after the spawn (one move per program, off
    the launch's path). Once a program has ended and its cgroup is empty again, the cgroup
    goes back to the pool. Cgroups with limits are made per program, as ever.
    """

    def __init__(self, tag, host=None):
        self.tag = tag
        self.host = CgroupHost() if host is None else host
        self.free = {}  # parent -> [paths of empty cgroups]
        self.made = {}  # parent -> how many were made
        self.parked = None  # the cgroup this process sits in, waiting for the next program
        self.fds = {}  # path -> an fd on its cgroup.procs
        self.unused = set()  # paths made and not yet given to a program

    @staticmethod
    def poolable(entries):
        """(parent, name suffix) if ``entries`` ask for one cgroup with no settings."""
        if len(entries) != 1 or entries[0].get("before") or entries[0].get("after"):
            return None
        parent, name = os.path.split(entries[0]["path"])
        at = name.rfind("@")
        return parent, name[at:] if at >= 0 else ""

    def enter(self, parent, suffix):
        """The cgroup under ``parent`` for the next program, with this process in it."""
        if self.parked is not None and os.path.dirname(self.parked) == parent:
            return self.parked
        path = self._take(parent, suffix)
        try:
            self._join(path)
        except OSError:
            self.free[parent].append(path)
            raise
        if self.parked is not None:
            self.release(self.parked)  # empty: nothing was born in it
        self.parked = path
        return path

    def move_on(self, parent, suffix):
        """A program was born in the cgroup we sit in: move to another (else home)."""
        used, self.parked = self.parked, None
        try:
            self.parked = self.enter(parent, suffix)
        except OSError:
            try:
                self._go_home(used)
            except OSError:
                self.parked = used  # still in there: never killed (see `PooledCgroup.kill`)

    def unpark(self):
        """Go home (before joining cgroups of some other kind)."""
        if self.parked is not None:
            parked, self.parked = self.parked, None
            self._go_home(parked)
            self.release(parked)

    def release(self, path):
        self.free.setdefault(os.path.dirname(path), []).append(path)

    def _take(self, parent, suffix):
        free = self.free.setdefault(parent, [])
        if free:
            return free.pop()
        if parent not in self.made:
            self.made[parent] = 0
            self._sweep(parent)
        self.made[parent] += 1
        path = f"{parent}/.pool-{self.tag}-{self.made[parent]}{suffix}"
        with contextlib.suppress(FileExistsError):
            os.mkdir(path)
        self.unused.add(path)
        return path

    def _join(self, path):
        fd = self.fds.get(path)
        if fd is None:
            fd = self.fds[path] = os.open(path + "/cgroup.procs", os.O_WRONLY | os.O_CLOEXEC)
        os.write(fd, self.host.pid())

    def _go_home(self, path):
        home = self.host.home_of(path)
        if home is None:
            raise OSError(0, "not in a cgroup mount")
        self.host.go_home(home)

    def _sweep(self, parent):
        """Remove the empty pooled cgroups of chaperones that are gone (``rmdir`` fails while
        an orphan is inside: ``kill`` in the runtime ends those)."""
        with contextlib.suppress(OSError):
            for name in os.listdir(parent):
                if not name.startswith(".pool-"):
                    continue
                try:
                    pid, start = name[len(".pool-") :].split("-", 1)[0].split(".")
                    if alive(int(pid), int(start)):
                        continue  # a live chaperone's (of another root)
                except ValueError:
                    continue
                rmdir(os.path.join(parent, name))

    def remove(self):
        """Go home and remove every cgroup of the pool (all empty by now)."""
        with contextlib.suppress(OSError):
            self.unpark()
        for fd in self.fds.values():
            with contextlib.suppress(OSError):
                os.close(fd)
        self.fds.clear()
        for paths in self.free.values():
            for path in paths:
                rmdir(path)
        self.free.clear()


class PooledCgroup:
    """A program's cgroup from the `CgroupPool`; what `Cgroups` is for made ones."""

    def __init__(self, pool, path, notes):
        self.pool = pool
        self.path = path
        self.notes = list(notes)
        self.joined = []
        self.released = False
        self.oom_base = pool.host.oom_count(path)
        self.first = path in pool.unused  # no program was in it before
        pool.unused.discard(path)

    @property
    def primary(self):
        return self.path

    def oom_killed(self):
        if self.oom_base is None:
            return False
        count = self.pool.host.oom_count(self.path)
        return count is not None and count > self.oom_base

    def peak(self):
        """The cgroup's peak (as `Cgroups.peak`) if this program is the first in it; else
        None, for the peak is the highest of every program it held. (What the chaperone
        charges while it waits in the cgroup before the spawn is in it too: a few pages.)"""
        return cgroup_peak(self.path) if self.first else None

    def kill(self):
        if self.path != self.pool.parked:  # (else the chaperone could not leave it; its
            kill_cgroup(self.path)  # program's group is killed anyway)

    def try_remove(self):
        """Back to the pool if empty (once); whether it was."""
        if self.released:
            return True
        if populated(self.path):
            return False
        self.released = True
        self.pool.release(self.path)
        return True

    def remove(self):
        """Back to the pool, once empty (briefly waited for); not while the chaperone sits in
        it (it could not leave it after the spawn)."""
        if self.path == self.pool.parked:
            return
        deadline = time.monotonic() + CGROUP_DRAIN
        while not self.try_remove():
            if time.monotonic() >= deadline:
                return  # not reused: whatever is left stays in there
            time.sleep(0.001)

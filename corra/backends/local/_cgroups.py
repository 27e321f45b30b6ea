"""Which cgroups this machine offers corra's programs, and where ours go.

Three layouts are met in practice:

- pure v2: one cgroup2 hierarchy at /sys/fs/cgroup; per-program cgroups give ``cgroup.kill``,
  and ``memory.max`` / ``pids.max`` once the controllers are enabled in the parents'
  ``cgroup.subtree_control``;
- hybrid: cgroup2 at /sys/fs/cgroup/unified, often with no controllers (kill and tracking
  only), and the v1 ``memory`` and ``pids`` hierarchies for limits;
- v1 only, or none (or not writable, as in most containers).

Per-program cgroups for kill/tracking go under ``<v2 mount>/corra`` (the root of the hierarchy
is exempt from v2's "no internal processes" rule, so controllers can be enabled there). Limit
cgroups under v1 go beneath the cgroup this process already sits in (``<mount><own
path>/corra``), so that whatever limits the runtime is under still hold for its programs.

Detection only reads; `prepare` (run once, in a worker thread, before the first launch) creates
the parents and enables controllers, and reports what it could not do; `sweep` then removes
what lost runs left behind.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any, Literal

import attrs

from corra._errors import BackendError
from corra.backends.local._rundirs import find_launch, read_status
from corra.chaperone import protocol

Layout = Literal["v2", "hybrid", "v1", "none", "off"]
PARENT = "corra"


@attrs.frozen
class CgroupSupport:
    """What cgroups can do for programs here; ``backend.cgroups`` reports it.

    Each directory is the parent under which one cgroup per program is made (None: not here).
    """

    layout: Layout
    unified: str | None = None
    """cgroup2 parent: per-program cgroups there have ``cgroup.kill`` (the whole tree dies)."""
    memory: str | None = None
    """Parent for memory limits: the same as ``unified`` under v2, a v1 directory otherwise."""
    pids: str | None = None
    """Parent for limits on the number of processes, as for ``memory``."""
    swap_accounting: bool = False
    """v1 only: ``memory.memsw.limit_in_bytes`` exists, so a limit can include swap."""
    note: str | None = None
    """Why something is missing, in words."""

    @property
    def kill(self) -> bool:
        """Whether a kill can reach every process of a program through its cgroup."""
        return self.unified is not None

    def entries(
        self, name: str, memory_limit: int | None, pids_limit: int | None
    ) -> tuple[list[dict[str, Any]], list[str]]:
        """The chaperone's ``cgroups`` list for one program, and notes on what is missing."""
        by_path: dict[str, dict[str, Any]] = {}
        notes: list[str] = []

        def entry(parent: str) -> dict[str, Any]:
            path = os.path.join(parent, name)
            return by_path.setdefault(path, {"path": path, "before": {}, "after": {}})

        if self.unified is not None:
            entry(self.unified)
        if memory_limit is not None:
            if self.memory is None:
                notes.append("memory_limit not enforced: no writable memory cgroup")
            elif self.memory == self.unified:
                entry(self.memory)["before"].update(
                    {"memory.max": str(memory_limit), "memory.swap.max": "0"}
                )
            else:
                settings = {"memory.limit_in_bytes": str(memory_limit)}
                if self.swap_accounting:
                    # Without it the program would swap rather than be stopped at the limit.
                    settings["memory.memsw.limit_in_bytes"] = str(memory_limit)
                entry(self.memory)["before"].update(settings)
        if pids_limit is not None:
            if self.pids is None:
                notes.append("pids_limit not enforced: no writable pids cgroup")
            else:
                # In force before the program exists, with one more for the chaperone, which
                # is inside while it spawns; tightened once the chaperone is out.
                entry(self.pids)["before"]["pids.max"] = str(pids_limit + 1)
                entry(self.pids)["after"]["pids.max"] = str(pids_limit)
        for value in by_path.values():
            # Sorted so that memory.limit_in_bytes precedes memory.memsw.limit_in_bytes.
            value["before"] = dict(sorted(value["before"].items()))
        return list(by_path.values()), notes


OFF = CgroupSupport(layout="off", note="cgroups turned off")


def cgroup_suffix(root: str) -> str:
    """What follows a program's key in its cgroup's name, so that two state directories that
    use the same keys do not share cgroups."""
    return "@" + hashlib.sha1(root.encode(), usedforsecurity=False).hexdigest()[:8]


def paths(support: CgroupSupport, name: str) -> list[str]:
    """The cgroups named ``name`` under each parent of ``support``."""
    parents = (support.unified, support.memory, support.pids)
    return [os.path.join(parent, name) for parent in parents if parent is not None]


def sweep(support: CgroupSupport, root: Path, suffix: str) -> None:
    """Remove the empty cgroups that lost runs under ``root`` left behind (a chaperone that
    was SIGKILLed cannot remove its own); blocking. Cgroups with processes in them stay:
    killing the program is the way to end those."""
    for parent in {support.unified, support.memory, support.pids} - {None}:
        assert parent is not None
        try:
            names = os.listdir(parent)
        except OSError:
            continue
        for name in names:
            key = name.removesuffix(suffix)
            if key == name or not protocol.KEY.match(key):
                continue
            try:
                handle = find_launch(root, key)
                if handle is not None and read_status(handle) == "running":
                    continue
            except BackendError:
                continue
            with contextlib.suppress(OSError):
                os.rmdir(os.path.join(parent, name))


def _own_paths(self_cgroup: str) -> dict[str, str]:
    """/proc/self/cgroup as {controllers ("" for v2): path}."""
    own = {}
    for line in self_cgroup.splitlines():
        number, controllers, path = line.split(":", 2)
        own["" if number == "0" else controllers] = path
    return own


def detect(
    mounts: str, self_cgroup: str, writable: Callable[[str], bool] | None = None
) -> CgroupSupport:
    """The layout described by /proc/self/mounts and /proc/self/cgroup (read nothing else
    but the writability of candidate parents)."""
    if writable is None:

        def writable(path: str) -> bool:
            return os.path.isdir(path) and os.access(path, os.W_OK | os.X_OK)

    own = _own_paths(self_cgroup)
    unified_mount = None
    v1_mounts: dict[str, str] = {}
    for line in mounts.splitlines():
        fields = line.split()
        if len(fields) < 4:
            continue
        mount = fields[1].replace("\\040", " ")
        if fields[2] == "cgroup2" and unified_mount is None:
            unified_mount = mount
        elif fields[2] == "cgroup":
            options = set(fields[3].split(","))
            for controller in ("memory", "pids"):
                if controller in options:
                    v1_mounts.setdefault(controller, mount)
    if unified_mount is None and not v1_mounts:
        return CgroupSupport(layout="none", note="no cgroup filesystem mounted")
    layout: Layout = "v1" if unified_mount is None else ("hybrid" if v1_mounts else "v2")
    notes = []
    unified = memory = pids = None
    if unified_mount is not None:
        if writable(unified_mount):
            unified = os.path.join(unified_mount, PARENT)
        else:
            notes.append(f"{unified_mount} is not writable: no cgroup.kill")
    v2_controllers = set()
    if unified is not None:
        try:
            with open(os.path.join(unified_mount or "", "cgroup.controllers")) as file:
                v2_controllers = set(file.read().split())
        except OSError:
            pass
    for controller in ("memory", "pids"):
        parent = None
        if controller in v2_controllers:
            parent = unified
        elif controller in v1_mounts:
            mount = v1_mounts[controller]
            own_path = next(
                (path for key, path in own.items() if controller in key.split(",")), "/"
            )
            home = mount.rstrip("/") + own_path
            if writable(home):
                parent = os.path.join(home, PARENT)
            else:
                notes.append(f"{home} is not writable: no {controller} limits")
        else:
            notes.append(f"no {controller} controller")
        if controller == "memory":
            memory = parent
        else:
            pids = parent
    return CgroupSupport(
        layout=layout,
        unified=unified,
        memory=memory,
        pids=pids,
        note="; ".join(notes) or None,
    )


def detect_here() -> CgroupSupport:
    """`detect` on this process's /proc files."""
    try:
        with open("/proc/self/mounts") as mounts, open("/proc/self/cgroup") as self_cgroup:
            return detect(mounts.read(), self_cgroup.read())
    except OSError as error:
        return CgroupSupport(layout="none", note=f"cannot read /proc: {error}")


def prepare(support: CgroupSupport) -> CgroupSupport:
    """Create the parents and enable the v2 controllers they need; blocking (use a thread).

    Returns the support that is really there: a parent that cannot be made is dropped, with a
    note saying why.
    """
    notes = [support.note] if support.note else []
    fields: dict[str, str | None] = {
        "unified": support.unified,
        "memory": support.memory,
        "pids": support.pids,
    }
    for name, parent in list(fields.items()):
        if parent is None:
            continue
        try:
            os.makedirs(parent, exist_ok=True)
        except OSError as error:
            notes.append(f"cannot create {parent}: {error.strerror}")
            fields[name] = None
    swap_accounting = fields["memory"] is not None and os.path.exists(
        os.path.join(fields["memory"], "memory.memsw.limit_in_bytes")
    )
    unified = fields["unified"]
    for controller in ("memory", "pids"):
        if unified is None or fields[controller] != support.unified:
            continue
        if not _enable(os.path.dirname(unified), controller) or not _enable(unified, controller):
            notes.append(f"cannot enable the v2 {controller} controller: no {controller} limits")
            fields[controller] = None
    return attrs.evolve(
        support, **fields, swap_accounting=swap_accounting, note="; ".join(notes) or None
    )


def _enable(directory: str, controller: str) -> bool:
    control = os.path.join(directory, "cgroup.subtree_control")
    try:
        with open(control) as file:
            if controller in file.read().split():
                return True
        with open(control, "w") as file:
            file.write(f"+{controller}")
    except OSError:
        return False
    return True

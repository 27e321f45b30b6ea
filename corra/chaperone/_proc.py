"""Processes as /proc shows them, and what a chaperone does to its own process.

One parser of ``/proc/<pid>/stat`` (`stat`): every question about a pid (is it the process that
started then, is it a zombie, which group and session is it in) goes through it.
"""

import os
import time

#: Fields of /proc/<pid>/stat, counted after ``comm`` (field 2): state (3), pgrp (5),
#: session (6), starttime (22).
_STATE, _PGRP, _SESSION, _START = 0, 2, 3, 19


def read_small(path):
    """The first 4 KiB of ``path`` (a /proc or cgroup file); OSError if it cannot be read."""
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        return os.read(fd, 4096)
    finally:
        os.close(fd)


def stat(pid):
    """The fields of /proc/<pid>/stat after ``comm`` (bytes, field 3 first), or None if the
    process is gone."""
    try:
        data = read_small(f"/proc/{pid}/stat")
    except OSError:
        return None
    # comm (field 2) may hold spaces and parentheses: split after the last ")".
    return data[data.rindex(b")") + 2 :].split()


def process_start(pid):
    """Field 22 of /proc/<pid>/stat (start time in clock ticks since boot), or None if gone."""
    fields = stat(pid)
    return None if fields is None else int(fields[_START])


def alive(pid, start):
    """Whether process ``pid`` is the one that started at ``start``, and not a zombie."""
    fields = stat(pid)
    return fields is not None and int(fields[_START]) == start and not _dead(fields)


def _dead(fields):
    return fields[_STATE] in (b"Z", b"X")


def group_members(pgid, sid):
    """Live (not zombie) processes in process group ``pgid`` of session ``sid``."""
    members = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        fields = stat(entry)
        if fields is None or _dead(fields):
            continue
        if int(fields[_PGRP]) == pgid and int(fields[_SESSION]) == sid:
            members.append(int(entry))
    return members


def group_left(pgid, sid):
    """Whether anything is left alive in process group ``pgid`` of session ``sid``."""
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False  # the usual case: nobody was left
    except OSError:
        pass
    return bool(group_members(pgid, sid))  # zombies count for killpg, not here


def wait_group_gone(pgid, sid, deadline):
    """Wait (until ``deadline``) for SIGKILLed members of the group to be gone: dead, if not
    yet reaped by whoever inherited them."""
    delay = 0.0005
    while group_left(pgid, sid) and time.monotonic() < deadline:
        time.sleep(delay)
        delay = min(delay * 2, 0.05)


def own_peak():
    """This process's high-water mark of resident memory (VmHWM), in bytes; None if unknown."""
    try:
        for line in read_small("/proc/self/status").split(b"\n"):
            if line.startswith(b"VmHWM:"):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return None


def detach():
    """Become a daemon: the launcher reaps the parent at once; the child leads a session."""
    if os.fork():
        os._exit(0)
    os.setsid()


def close_inherited(keep):
    """Close whatever fds the launcher let us inherit, but ``keep``: the programs get none."""
    keep = 2 if keep is None else keep
    os.closerange(3, keep)
    os.closerange(max(keep + 1, 3), os.sysconf("SC_OPEN_MAX"))

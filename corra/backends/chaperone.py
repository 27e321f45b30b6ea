"""corra's chaperone: runs programs detached from the runtime and records how they ended.

Standard library only and no corra imports: this file is also sent over SSH and run by a
remote ``python3``. Its syntax is that of Python 3.6; before 3.8 (no ``os.posix_spawnp``) it
starts programs with fork/exec.

Two ways to run it::

    python3 -I -S chaperone.py RUN_DIR [--notify-fd N]     one program, as RUN_DIR/spec.json says
    python3 -I -S chaperone.py --serve [ROOT] [--ready-fd N] [--idle-exit SECONDS]
                                                           every program of ROOT, in ROOT/<key>

The first (an *own* chaperone) detaches (fork, the parent exits at once, the child calls
``setsid``), so it is nobody's child to reap and outlives whoever started it; it watches one
program and exits with it. The second (the *shared* chaperone) detaches the same way, then
serves launch, watch and kill requests from runtimes on a Unix socket in ROOT (ROOT may come
from ``$CORRA_CHAPERONE_ROOT`` instead, which keeps the state dir off its command line); its
programs are its own children, watched in one event loop (selectors; SIGCHLD through
``signal.set_wakeup_fd``). It forks a helper process at the start for the slow disk work (see
`Helper`). A shared chaperone costs a fraction of an own one per program (no interpreter to
start, no process of its own), but if it is SIGKILLed every program it watches is lost, where
an own chaperone loses only its own.

Rule 1: one run dir, one program, ever. A chaperone claims ``ROOT/<key>`` (RUN_DIR) with a
``chaperone.pid`` that names it, made exclusively, before anything runs: an own chaperone links
a complete file into place; the shared one renames a spare run dir (made ahead, its
``chaperone.pid`` in it) to RUN_DIR, which fails if RUN_DIR exists and is not empty (then it
creates ``chaperone.pid`` with ``O_EXCL`` there). A second launch of the same key (retried after
a crash, or two at once, by either kind of chaperone) answers ``claimed`` and runs nothing.

Rule 2: the program runs in its own process group (pgid == pid) in the chaperone's session, in
its cgroups where the spec names them (the chaperone joins them around the spawn, so the
program is born inside: a fork of the chaperone to join from would cost more than the rest of
a launch), with stdin from /dev/null and stdout/stderr appended straight to RUN_DIR/stdout and
RUN_DIR/stderr: no pipe passes through the chaperone (one that dies never breaks a program's
output). The spec's ``output_limit`` is kept by cutting the files back (`OutputLimit`).

Rule 3: the chaperone enforces the timeout and kill requests: SIGTERM to the group, then
SIGKILL to the group (and ``cgroup.kill``) after the grace period. Both hold while no runtime
is connected. An own chaperone takes SIGTERM (or SIGINT) as a kill request, with
``kill.json``'s ``grace`` if the runtime wrote one, else the spec's ``kill_grace``; the shared
one takes ``{"op": "kill", "key", "grace"}`` on its socket, and SIGTERM (or SIGINT) to it is a
kill request for every program it runs, after which it leaves.

Rule 4: no orphans. Once the group leader has exited (seen with WNOWAIT, so its pid and pgid
cannot be reused yet), whatever is left in the group is SIGKILLed, the leader is reaped with
``wait4`` for its rusage, and the cgroups are removed (an ``rmdir``, which fails while anything
is left inside: then ``cgroup.kill``, and again). The exit record is written only once the
group and the cgroups are empty (or after ``CGROUP_DRAIN`` seconds of trying). The shared
chaperone waits for that without blocking its loop.

Rule 5: ``exit.json`` is written last, whole (temp file, rename), then made durable. The
launcher is told between the rename and the flush: a runtime that is up records the outcome
durably on its side without waiting for this disk, one that is down finds a durable exit.json
later. An own chaperone fsyncs the file and its directory; the shared one has its helper make
a batch of records durable at once (``syncfs``). Only a machine crash in that window can leave
an empty exit.json, which readers take for none. A run dir with ``chaperone.pid`` whose
chaperone is gone and no exit.json is lost; its program's pid is in ``chaperone.pid`` (shared)
or ``program.pid`` (own), so that whoever comes next can kill what is left of it.

Rule 6 (shared): one chaperone per ROOT. It holds an exclusive ``flock`` on ``ROOT/.chaperone.pid``
for its whole life (a second one started for ROOT waits two seconds for it, then answers
``busy`` and exits). It leaves when it has had no program and no connection for
``--idle-exit`` seconds, removing its socket first, so that a runtime that comes then starts a
new one. A runtime that disconnects (or dies) leaves the programs running; a later connection
asks for their exits again (``watch``).

Rule 7: nothing a chaperone is given ends it. Specs and requests are checked before anything is
claimed (an ``invalid`` reply names the field and the value); no wait lasts longer than
`LONGEST_WAIT`, so no timeout or grace, however long, overflows a wait call (a deadline further
away is looked at again); each request line is taken off the connection before it is handled.
But a chaperone whose root (ROOT, or an own one's RUN_DIR) is removed or replaced can record
nothing any more: it kills its programs (SIGTERM, SIGKILL after at most `LOST_ROOT_GRACE`),
sends their exit records with an ``error`` to whoever listens, and exits.

RUN_DIR files::

    chaperone.pid  the claim. Own: {"pid", "start"} (start is field 22 of /proc/<pid>/stat,
                   against pid reuse). Shared: a line {"pid", "start", "shared": true}, then,
                   once the program runs, a line as program.pid's with "spec" added (the
                   launch's spec, env as given, and "env_base": the file in ROOT with the
                   environment that env was added to)
    program.pid    own only: {"pid", "start", "started_at", "cgroup", "cgroup_note"}
                   (pid == pgid)
    spec.json      own only: argv, cwd (null: RUN_DIR/work), env (complete), timeout (seconds or
                   null), kill_grace (seconds), output_limit (bytes kept of each stream, or
                   null: no limit), cgroups (list of {"path", "before", "after"}: the
                   directory to create and join, and {file: value} settings written before the
                   program joins and after it runs), cgroup_notes (what the launcher could not
                   arrange, passed on into program.pid)
    work/          the program's cwd when the spec's cwd is null (made ahead by the shared
                   chaperone: there, empty, otherwise)
    stdout, stderr the program's output, appended
    kill.json      own only, optional: {"grace": seconds}, written by the runtime before its
                   SIGTERM
    exit.json      returncode, signal, utime, stime, maxrss (the program's peak resident set
                   in bytes, or null where unknown: see `program_peak`), started_at, ended_at
                   (epoch seconds), stdout_size, stderr_size, stdout_dropped, stderr_dropped
                   (bytes past output_limit, dropped: see `OutputLimit`), timed_out, killed,
                   oom_killed, error (why the program did not run, or what went wrong around
                   it)
    chaperone.log  only when an own chaperone itself failed: its traceback

The exit record's temporary file is made with a block of its own (``posix_fallocate``), and
written in place: the record of a program that filled the disk still gets written.

A run under the shared chaperone costs six inodes (the directory, chaperone.pid, work, stdout,
stderr, and the temporary file that becomes exit.json), all made ahead of its launch by the
helper; one under an own chaperone costs eight, made while it launches.

ROOT files (shared)::

    .chaperone.pid   {"pid", "start"} of the chaperone serving ROOT, flocked while it serves
    .chaperone.sock  its socket (reached as /proc/self/fd/N/.chaperone.sock when the path is
                     too long for a socket address)
    .env-<sha1>.json an environment runtimes said hello with
    .spares-<pid>/   spare run dirs (<slot>/run), while chaperone <pid> serves
    .chaperone.log   only when it failed: its traceback

An own chaperone's notify fd receives JSON lines: first the reply, ``{"status": "started",
"chaperone": ..., "program": ...}``, ``{"status": "failed", "error": ...}`` (claimed, exit.json
written: the program could not be started), ``{"status": "invalid", "error": ...}`` (nothing
claimed or written: the cwd is missing, the spec unreadable) or ``{"status": "claimed"}``; after
``started``, ``{"status": "exited", "record": <exit.json>}`` once the program has ended. Then
it is closed. A launcher that has gone away costs the chaperone nothing.

The shared chaperone speaks JSON lines over its SOCK_STREAM socket (connections from other
users are refused). Requests carry an ``id`` that the reply repeats::

    {"op": "hello", "version": 1, "env": {...}, "umask": N}   first: the environment and the
                                                   umask programs start with
        -> {"op": "hello", "version": 1, "pid", "start"}
    {"op": "launch", "key", "spec": {argv, cwd, env (added to hello's), timeout, kill_grace,
     output_limit, cgroups, cgroup_notes}}
        -> {"op": "started", "program"} | {"op": "claimed", "program"?} (no program: claimed by
           another chaperone, read the files) | {"op": "failed", "error"} (exit.json says so
           too) | {"op": "invalid", "error"} (nothing claimed) | {"op": "error", "error"} (try
           again) | {"op": "stopping"}
    {"op": "env", "env": {...}}  -> {"op": "env"}  the environment changed: programs start
                                                   from this one from now on
    {"op": "watch", "key"}  -> {"op": "watching"} | {"op": "unknown"} (not running here)
    {"op": "kill", "key", "grace"}  -> {"op": "killing"} | {"op": "unknown"}

and, without an id, ``{"op": "exited", "key", "record"}`` to every connection that launched,
watched or killed the program, once exit.json is in place. A line that is not a JSON object, or
a request with a field of the wrong kind, is answered ``{"op": "invalid", "error"}`` (``"id":
null`` if it had none) and the connection goes on; ``{"op": "stopping", "error"}`` without an
id says that the chaperone lost its root (Rule 7).
"""

import contextlib
import errno
import heapq
import json
import os
import re
import resource  # noqa: F401 - os.wait4 imports it; loaded once, up front
import selectors
import signal
import socket
import sys
import time

SPEC_FILE = "spec.json"
CHAPERONE_FILE = "chaperone.pid"
PROGRAM_FILE = "program.pid"
EXIT_FILE = "exit.json"
EXIT_TEMPORARY = "exit.json.tmp"
KILL_FILE = "kill.json"
LOG_FILE = "chaperone.log"
WORK_DIR = "work"
STREAMS = ("stdout", "stderr")
#: The shared chaperone's files in ROOT; keys never start with a dot, so never collide.
DAEMON_FILE = ".chaperone.pid"
SOCKET_FILE = ".chaperone.sock"
DAEMON_LOG = ".chaperone.log"
ROOT_VARIABLE = "CORRA_CHAPERONE_ROOT"
PROTOCOL = 1
#: Seconds without programs and clients after which the shared chaperone leaves.
IDLE_EXIT = 3.0
#: A key names a directory and a cgroup: no separators, no leading dot, not too long.
KEY = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.:@+=-]{0,199}\Z")

#: Signals that ask the chaperone to kill its program(s).
KILL_REQUESTS = (signal.SIGTERM, signal.SIGINT)
#: Blocked from the start and taken with sigtimedwait (own): no handler ever runs.
WAITED = (signal.SIGCHLD, signal.SIGTERM, signal.SIGINT)
#: Dispositions the program must not inherit (Python ignores SIGPIPE and SIGXFSZ; chaperones
#: ignore SIGHUP and handle SIGCHLD, SIGINT, SIGTERM).
RESET_IN_PROGRAM = (
    signal.SIGPIPE,
    signal.SIGXFSZ,
    signal.SIGHUP,
    signal.SIGINT,
    signal.SIGTERM,
    signal.SIGCHLD,
    signal.SIGQUIT,
)
#: cgroup settings that some kernels lack (no swap accounting), and that may go unset quietly.
OPTIONAL_SETTINGS = ("memory.swap.max", "memory.memsw.limit_in_bytes")
#: Where a memory cgroup keeps its peak (cgroup v2, v1).
PEAK_FILES = ("memory.peak", "memory.max_usage_in_bytes")
#: How long a chaperone waits for killed group or cgroup members to go before it records.
CGROUP_DRAIN = 2.0
#: Seconds the shared chaperone gathers exit records before it makes them durable at once.
SYNC_INTERVAL = 0.1
#: Where the shared chaperone's spare run dirs are (a suffix: its pid).
SPARES_PREFIX = ".spares-"
#: Spare run dirs the shared chaperone keeps ready.
SPARES = 8
#: Longest request line the shared chaperone accepts.
MAX_REQUEST = 64 << 20
#: The longest any wait of a chaperone lasts (a deadline further away, however far, is looked
#: at again then: no timeout or grace can overflow a wait); also how soon it notices that its
#: root was removed.
LONGEST_WAIT = 1.0
#: The most a program gets between SIGTERM and SIGKILL once its chaperone has lost its root.
LOST_ROOT_GRACE = 5.0
#: Seconds between two checks of a running program's output against its limit: at most, and
#: at least (the first comes after that; see `OutputLimit`).
OUTPUT_CHECK_MAX = 0.2
OUTPUT_CHECK_MIN = 0.005
#: Bytes set aside for the exit record's temporary file, so that it can be written on a full
#: disk (a record is a few hundred bytes; a longer one needs a block more).
EXIT_RESERVE = 4096


def process_start(pid):
    """Field 22 of /proc/<pid>/stat (start time in clock ticks since boot), or None if gone."""
    try:
        fd = os.open(f"/proc/{pid}/stat", os.O_RDONLY | os.O_CLOEXEC)
    except OSError:
        return None
    try:
        data = os.read(fd, 4096)
    except OSError:
        return None
    finally:
        os.close(fd)
    # comm (field 2) may hold spaces and parentheses: split after the last ")".
    return int(data[data.rindex(b")") + 2 :].split()[19])


def _alive(pid, start):
    """Whether process ``pid`` is the one that started at ``start``, and not a zombie."""
    try:
        fd = os.open(f"/proc/{pid}/stat", os.O_RDONLY | os.O_CLOEXEC)
    except OSError:
        return False
    try:
        fields = os.read(fd, 4096)
    except OSError:
        return False
    finally:
        os.close(fd)
    fields = fields[fields.rindex(b")") + 2 :].split()
    return int(fields[19]) == start and fields[0] not in (b"Z", b"X")


def write_atomic(path, data, exclusive=False):
    """Write ``data`` to ``path`` all at once: readers see nothing or everything.

    ``exclusive`` links instead of renaming, and returns False when ``path`` exists already.
    """
    temporary = f"{path}.{os.getpid()}.tmp"
    fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
    try:
        os.write(fd, data)
    finally:
        os.close(fd)
    if exclusive:
        try:
            os.link(temporary, path)
        except FileExistsError:
            return False
        finally:
            os.unlink(temporary)
        return True
    try:
        os.rename(temporary, path)
    except BaseException:
        _unlink(temporary)
        raise
    return True


def _unlink(path):
    with contextlib.suppress(OSError):
        os.unlink(path)


_ENCODE = json.JSONEncoder(separators=(",", ":")).encode


def json_line(value):
    """``value`` as one line of compact JSON, in bytes."""
    return (_ENCODE(value) + "\n").encode()


def _describe(error, subject):
    """``No such file or directory: 'nosuch'``: the OS's words and what they are about."""
    reason = error.strerror or os.strerror(error.errno or 0) or repr(error)
    return f"{reason}: {subject!r}"


def read_claim(data):
    """(claim, program) from the bytes of ``chaperone.pid``; complete lines only. A shared
    chaperone's claim carries the program as its second line; an own one's program is in
    ``program.pid``, so ``program`` is None for it here."""
    lines = data.split(b"\n")[:-1]  # a line is complete once its newline is written
    if not lines:
        return None, None
    claim = json.loads(lines[0])
    program = json.loads(lines[1]) if len(lines) > 1 and claim.get("shared") else None
    return claim, program


class Notifier:
    """The lines a launcher reads: one reply, and after ``started`` the exit record."""

    def __init__(self, fd):
        self.fd = fd
        self.pending = fd is not None  # no reply sent yet

    def send(self, message, final=True):
        self.pending = False
        if self.fd is None:
            return
        try:
            os.write(self.fd, json_line(message))  # one write of less than PIPE_BUF: atomic
        except OSError:
            final = True  # the launcher is gone; the files in the run dir say it all
        if final:
            os.close(self.fd)
            self.fd = None


# what a chaperone is given --------------------------------------------------------------


class Invalid(ValueError):
    """A spec or request the chaperone refuses; the message names the field and the value."""


def _shown(value):
    """``value`` for an error message: its repr, cut short."""
    try:
        text = repr(value)
    except ValueError:  # an int too long to print
        return "a number too large"
    return text if len(text) <= 100 else text[:97] + "..."


def _text(value):
    """Whether ``value`` can reach a system call: a str without NUL that encodes."""
    if not isinstance(value, str) or "\0" in value:
        return False
    try:
        os.fsencode(value)
    except UnicodeError:  # a lone surrogate
        return False
    return True


def seconds(value, name, optional=False):
    """``value`` as seconds (a float): a number, finite and >= 0; None too if ``optional``.

    Any such number is safe: deadlines are compared, never slept to in one go (see
    `LONGEST_WAIT`). Raises `Invalid` for anything else (bool, NaN, infinity, an int too large
    for a float, a string).
    """
    if value is None and optional:
        return None
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        try:
            number = float(value)
        except OverflowError:
            number = float("inf")
        if 0 <= number < float("inf"):  # NaN is neither
            return number
    raise Invalid(f"{name}: expected a finite number of seconds >= 0, got {_shown(value)}")


def check_env(env, name="env"):
    """``env`` if it is an environment: {name: value}, names without ``=``, all text."""
    if not isinstance(env, dict):
        raise Invalid(f"{name}: expected an object of strings, got a {type(env).__name__}")
    for variable, value in env.items():
        if not _text(variable) or not variable or "=" in variable:
            raise Invalid(f"{name}: invalid variable name {_shown(variable)}")
        if not _text(value):  # (its value is not shown: an env holds secrets)
            raise Invalid(
                f"{name}[{_shown(variable)}]: expected a string without NUL that UTF-8 "
                f"encodes, got a {type(value).__name__} that is not one"
            )
    return env


def check_spec(spec, env_required=False):
    """A launch's ``spec`` as the chaperone runs it: a copy, with ``timeout`` and
    ``kill_grace`` as floats and the defaults filled in. Raises `Invalid` naming the field:
    no value gets as far as a spawn or a wait that would raise on it."""
    if not isinstance(spec, dict):
        raise Invalid(f"spec: expected an object, got {_shown(spec)}")
    argv = spec.get("argv")
    if not isinstance(argv, list) or not argv or not all(_text(arg) for arg in argv):
        raise Invalid(f"argv: expected a non-empty list of strings, got {_shown(argv)}")
    if not argv[0]:
        raise Invalid("argv[0]: expected a program, got ''")
    cwd = spec.get("cwd")
    if cwd is not None and not (_text(cwd) and cwd):
        raise Invalid(f"cwd: expected a path or null, got {_shown(cwd)}")
    env = spec.get("env")
    if env is None and not env_required:
        env = {}
    cgroups = spec.get("cgroups") or []
    if not isinstance(cgroups, list) or not all(_cgroup_entry(entry) for entry in cgroups):
        raise Invalid(
            "cgroups: expected a list of {path, before, after} (settings: objects of "
            f"strings or numbers), got {_shown(cgroups)}"
        )
    notes = spec.get("cgroup_notes") or []
    if not isinstance(notes, list) or not all(isinstance(note, str) for note in notes):
        raise Invalid(f"cgroup_notes: expected a list of strings, got {_shown(notes)}")
    return dict(
        spec,
        env=check_env(env),
        timeout=seconds(spec.get("timeout"), "timeout", optional=True),
        kill_grace=seconds(spec.get("kill_grace", 10.0), "kill_grace"),
        output_limit=output_limit(spec),
        cgroups=cgroups,
        cgroup_notes=notes,
    )


def _cgroup_entry(entry):
    if not isinstance(entry, dict) or not _text(entry.get("path")) or not entry["path"]:
        return False
    for settings in (entry.get("before"), entry.get("after")):
        if settings is None:
            continue
        if not isinstance(settings, dict):
            return False
        for name, value in settings.items():
            if not _text(name) or isinstance(value, bool):
                return False
            if not (_text(value) or isinstance(value, (int, float))):
                return False
    return True


def _bounded(seconds):
    """A wait of ``seconds`` (None: until something happens) that no wait call refuses, and
    that ends in time to look at the root again: at most `LONGEST_WAIT`, at least 0, whatever
    the deadline it came from (infinite, huge, NaN)."""
    if seconds is None or seconds != seconds:  # None, NaN
        return LONGEST_WAIT
    return min(max(seconds, 0.0), LONGEST_WAIT)


class Root:
    """A directory the chaperone works in (a shared one's ROOT, an own one's RUN_DIR), held
    by an fd, so that the chaperone notices when it is removed (``rm -rf`` of the state
    dir) or replaced: then nothing it would write has a place any more."""

    def __init__(self, path, fd=None):
        self.path = path
        self.fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC) if fd is None else fd
        # (just opened, it is there: the first look is one wait away, so that a program
        # that ends sooner costs no stat)
        self.next_look = time.monotonic() + LONGEST_WAIT

    def lost(self, now):
        """Why the directory is no longer ours, or None; looks at most once a
        `LONGEST_WAIT` (a stat and an fstat)."""
        if now < self.next_look:
            return None
        self.next_look = now + LONGEST_WAIT
        try:
            held = os.fstat(self.fd)
            found = os.stat(self.path)
        except (FileNotFoundError, NotADirectoryError):
            return f"{self.path!r} was removed"
        except OSError:
            return None  # cannot tell (EACCES, say): assume it is there
        if held.st_nlink == 0:
            return f"{self.path!r} was removed"
        if (found.st_dev, found.st_ino) != (held.st_dev, held.st_ino):
            return f"{self.path!r} was replaced"
        return None


def _say(path, message):
    """Tell whoever looks: ``path`` (a log) if it can still be written, and stderr."""
    line = f"corra chaperone {os.getpid()}: {message}\n"
    with contextlib.suppress(OSError):
        _append(path, line)
    with contextlib.suppress(OSError, ValueError, AttributeError):  # stderr may be closed
        sys.stderr.write(line)
        sys.stderr.flush()


def _append(path, text):
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o600)
    try:
        os.write(fd, text.encode(errors="replace"))
    finally:
        os.close(fd)


# cgroups --------------------------------------------------------------------------------


_HOMES = None  # _cgroup_homes(), computed once
_HOME_FDS = {}  # {home: an fd on its cgroup.procs}, kept open for the next leave
_KILLABLE = {}  # {parent: whether cgroups under it have cgroup.kill}
_OOM_FILES = {}  # {parent: the files that count OOM kills in cgroups under it}
_PID = []  # this process's pid, as bytes, once asked for; forgotten in a forked child


def _pid_bytes():
    if not _PID:
        _PID.append(str(os.getpid()).encode())
    return _PID[0]


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_PID.clear)


def _cgroup_homes():
    """{mount point: the directory this process sits in, in that hierarchy}."""
    global _HOMES
    if _HOMES is None:
        _HOMES = _read_cgroup_homes()
    return _HOMES


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


def _write_setting(path, value):
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
            return int(_read_small(os.path.join(path, name)))
        except (OSError, ValueError):
            continue
    return None


class Cgroups:
    """A program's cgroups: made, joined around the spawn, drained and removed at the end."""

    def __init__(self, entries, notes=()):
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
                self.notes.append(f"no cgroup {_describe(error, path)}")
                continue
            for name, value in sorted((entry.get("before") or {}).items()):
                self._set(path, name, value)
            self.entries.append((path, entry.get("after") or {}))

    def _set(self, path, name, value):
        try:
            _write_setting(os.path.join(path, name), str(value))
        except FileNotFoundError:
            if name not in OPTIONAL_SETTINGS:
                self.notes.append(f"{name} not set: no such file in {path!r}")
        except OSError as error:
            self.notes.append(f"{name} not set: {_describe(error, path)}")

    def join(self):
        """Move this process into every cgroup (the program spawned next is born there)."""
        if not self.entries:
            return
        try:
            homes = _cgroup_homes()
        except OSError as error:
            self.notes.append(f"cgroups not joined: {_describe(error, '/proc/self/cgroup')}")
            return
        me = _pid_bytes()
        for path, after in list(self.entries):
            home = max(
                (home for mount, home in homes.items() if path.startswith(mount + "/")),
                key=len,
                default=None,
            )
            try:
                if home is None:
                    raise OSError(0, "not in a cgroup mount")
                _write_setting(os.path.join(path, "cgroup.procs"), me)
            except OSError as error:
                self.notes.append(f"cgroup not joined: {_describe(error, path)}")
                self.entries.remove((path, after))
                _rmdir(path)
                continue
            self.joined.append((path, home))

    def leave(self):
        """Move this process back home, then apply the settings that count what is inside."""
        me = _pid_bytes()
        for _path, home in self.joined:
            fd = _HOME_FDS.get(home)
            if fd is None:
                fd = _HOME_FDS[home] = os.open(
                    os.path.join(home, "cgroup.procs"), os.O_WRONLY | os.O_CLOEXEC
                )
            os.write(fd, me)
        self.joined = []
        for path, after in self.entries:
            for name, value in sorted(after.items()):
                self._set(path, name, value)

    @property
    def primary(self):
        """The cgroup to report: one with ``cgroup.kill`` if any, else the first."""
        for path, _ in self.entries:
            parent = os.path.dirname(path)
            if parent not in _KILLABLE:  # the same for every cgroup under a parent
                _KILLABLE[parent] = os.path.exists(os.path.join(path, "cgroup.kill"))
            if _KILLABLE[parent]:
                return path
        return self.entries[0][0] if self.entries else None

    def kill(self):
        """SIGKILL everything in the cgroups (never this process: it left before)."""
        if self.joined:
            return
        for path, _ in self.entries:
            try:
                _write_setting(os.path.join(path, "cgroup.kill"), "1")
            except OSError:  # no cgroup.kill (v1, or Linux before 5.14): one by one
                for pid in self.members(path):
                    with contextlib.suppress(OSError):
                        os.kill(pid, signal.SIGKILL)

    @staticmethod
    def members(path):
        try:
            with open(os.path.join(path, "cgroup.procs")) as procs:
                return [int(line) for line in procs if line.strip()]
        except OSError:
            return []

    def oom_killed(self):
        """Whether the kernel's OOM killer struck inside a memory cgroup of ours."""
        for path, _ in self.entries:
            parent = os.path.dirname(path)
            names = _OOM_FILES.get(parent)
            if names is None:  # the same for every cgroup under a parent
                names = _OOM_FILES[parent] = [
                    name
                    for name in ("memory.events", "memory.oom_control")
                    if os.path.exists(os.path.join(path, name))
                ]
            for name in names:
                try:
                    with open(os.path.join(path, name)) as events:
                        for line in events:
                            key, _, value = line.partition(" ")
                            if key == "oom_kill" and int(value) > 0:
                                return True
                except (OSError, ValueError):
                    continue
        return False

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
            while self.members(path) and time.monotonic() < deadline:
                time.sleep(delay)
                delay = min(delay * 2, 0.05)
            _rmdir(path)
        self.entries = []


def _rmdir(path):
    with contextlib.suppress(OSError):
        os.rmdir(path)


def _cgroup_home(path):
    """The cgroup this process came from, in the hierarchy of cgroup ``path``; None if none."""
    return max(
        (home for mount, home in _cgroup_homes().items() if path.startswith(mount + "/")),
        key=len,
        default=None,
    )


def _read_small(path):
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        return os.read(fd, 4096)
    finally:
        os.close(fd)


def _populated(path):
    """Whether anything lives in cgroup ``path`` (or below it)."""
    try:
        return b"populated 1" in _read_small(path + "/cgroup.events")
    except FileNotFoundError:
        return False
    except OSError:
        return bool(Cgroups.members(path))


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

    def __init__(self, tag):
        self.tag = tag
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
        os.write(fd, _pid_bytes())

    def _go_home(self, path):
        home = _cgroup_home(path)
        if home is None:
            raise OSError(0, "not in a cgroup mount")
        fd = _HOME_FDS.get(home)
        if fd is None:
            fd = _HOME_FDS[home] = os.open(home + "/cgroup.procs", os.O_WRONLY | os.O_CLOEXEC)
        os.write(fd, _pid_bytes())

    def _sweep(self, parent):
        """Remove the empty pooled cgroups of chaperones that are gone (``rmdir`` fails while
        an orphan is inside: `kill` in the runtime ends those)."""
        with contextlib.suppress(OSError):
            for name in os.listdir(parent):
                if not name.startswith(".pool-"):
                    continue
                try:
                    pid, start = name[len(".pool-") :].split("-", 1)[0].split(".")
                    if _alive(int(pid), int(start)):
                        continue  # a live chaperone's (of another root)
                except ValueError:
                    continue
                _rmdir(os.path.join(parent, name))

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
                _rmdir(path)
        self.free.clear()


class PooledCgroup:
    """A program's cgroup from the `CgroupPool`; what `Cgroups` is for made ones."""

    def __init__(self, pool, path, notes):
        self.pool = pool
        self.path = path
        self.notes = list(notes)
        self.joined = []
        self.released = False
        self.oom_base = self.oom_count()
        self.first = path in pool.unused  # no program was in it before
        pool.unused.discard(path)

    @property
    def primary(self):
        return self.path

    def oom_count(self):
        """The count of OOM kills in the cgroup, or None where it does not count them."""
        parent = os.path.dirname(self.path)
        if parent not in _OOM_FILES:
            _OOM_FILES[parent] = [
                name
                for name in ("memory.events", "memory.oom_control")
                if os.path.exists(os.path.join(self.path, name))
            ]
        for name in _OOM_FILES[parent]:
            try:
                for line in _read_small(os.path.join(self.path, name)).decode().splitlines():
                    key, _, value = line.partition(" ")
                    if key == "oom_kill":
                        return int(value)
            except (OSError, ValueError):
                continue
        return None

    def oom_killed(self):
        if self.oom_base is None:
            return False
        count = self.oom_count()
        return count is not None and count > self.oom_base

    def peak(self):
        """The cgroup's peak (as `Cgroups.peak`) if this program is the first in it; else
        None, for the peak is the highest of every program it held. (What the chaperone
        charges while it waits in the cgroup before the spawn is in it too: a few pages.)"""
        return cgroup_peak(self.path) if self.first else None

    def kill(self):
        if self.path == self.pool.parked:
            return  # the chaperone could not leave it; its program's group is killed anyway
        try:
            _write_setting(self.path + "/cgroup.kill", "1")
        except OSError:
            for pid in Cgroups.members(self.path):
                with contextlib.suppress(OSError):
                    os.kill(pid, signal.SIGKILL)

    def try_remove(self):
        """Back to the pool if empty (once); whether it was."""
        if self.released:
            return True
        if _populated(self.path):
            return False
        self.released = True
        self.pool.release(self.path)
        return True

    def remove(self):
        """Back to the pool, once empty (briefly waited for)."""
        deadline = time.monotonic() + CGROUP_DRAIN
        while not self.try_remove():
            if time.monotonic() >= deadline:
                return  # not reused: whatever is left stays in there
            time.sleep(0.001)


def group_members(pgid, sid):
    """Live (not zombie) processes in process group ``pgid`` of session ``sid``."""
    members = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat", "rb") as stat:
                data = stat.read()
        except OSError:
            continue
        fields = data[data.rindex(b")") + 2 :].split()
        if int(fields[2]) == pgid and int(fields[3]) == sid and fields[0] not in (b"Z", b"X"):
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


# spawning -------------------------------------------------------------------------------


def _resolve(program, env):
    """argv[0] as execvpe finds it, on the program's PATH (for `spawn_with_fork`)."""
    if "/" in program:
        return program
    found_but_denied = None
    for directory in env.get("PATH", os.defpath).split(os.pathsep):
        candidate = os.path.join(directory or ".", program)
        if os.path.isfile(candidate):
            if os.access(candidate, os.X_OK):
                return candidate
            found_but_denied = candidate
    if found_but_denied is not None:
        raise PermissionError(13, os.strerror(13))
    raise FileNotFoundError(2, os.strerror(2))


def _search_path(env):
    """Make ``env``'s PATH ours: `os.posix_spawnp` searches argv[0] on the caller's PATH."""
    path = env.get("PATH")
    if path is None:
        os.environ.pop("PATH", None)
    elif os.environ.get("PATH") != path:
        os.environ["PATH"] = path


def _output(target, number):
    """The file action that makes ``target`` (an fd, or a path to append to) fd ``number``."""
    if isinstance(target, int):
        return (os.POSIX_SPAWN_DUP2, target, number)
    flags = os.O_WRONLY | os.O_CREAT | os.O_APPEND
    return (os.POSIX_SPAWN_OPEN, number, target, flags, 0o600)


def spawn(argv, env, cwd, stdout, stderr):
    """Start ``argv`` in its own process group, cwd ``cwd``; return its pid. argv[0] is looked
    up on ``env``'s PATH, as execvpe does; ``stdout`` and ``stderr`` are fds or paths (appended
    to, created if need be).

    Raises OSError (with errno) when it cannot be started. This process's cwd is ``cwd``
    while it spawns, and back at ``/`` afterwards.
    """
    try:
        os.chdir(cwd)
    except OSError as error:
        raise OSError(error.errno, "cwd: " + (error.strerror or ""), cwd) from None
    try:
        if hasattr(os, "posix_spawnp"):
            _search_path(env)
            return os.posix_spawnp(
                argv[0],
                argv,
                env,
                file_actions=[
                    (os.POSIX_SPAWN_OPEN, 0, os.devnull, os.O_RDONLY, 0),
                    _output(stdout, 1),
                    _output(stderr, 2),
                ],
                setpgroup=0,
                setsigmask=(),
                setsigdef=RESET_IN_PROGRAM,
            )
        opened = []
        try:
            fds = []
            for target in (stdout, stderr):
                if not isinstance(target, int):
                    flags = os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_CLOEXEC
                    target = os.open(target, flags, 0o600)
                    opened.append(target)
                fds.append(target)
            return spawn_with_fork(_resolve(argv[0], env), argv, env, *fds)
        finally:
            for fd in opened:
                os.close(fd)
    finally:
        os.chdir("/")


def spawn_with_fork(path, argv, env, stdout_fd, stderr_fd):
    """fork/exec, for interpreters without ``os.posix_spawnp``; exec errors come back on a
    pipe."""
    errors_read, errors_write = os.pipe()  # both close-on-exec
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child execs or _exits
        try:
            os.setpgid(0, 0)
            null = os.open(os.devnull, os.O_RDONLY)
            os.dup2(null, 0)
            os.dup2(stdout_fd, 1)
            os.dup2(stderr_fd, 2)
            for number in RESET_IN_PROGRAM:
                signal.signal(number, signal.SIG_DFL)
            signal.pthread_sigmask(signal.SIG_SETMASK, ())
            os.execve(path, argv, env)
        except OSError as error:
            os.write(errors_write, str(error.errno or 0).encode())
        finally:
            os._exit(127)
    os.close(errors_write)
    try:
        reply = b""
        while True:
            chunk = os.read(errors_read, 64)
            if not chunk:
                break
            reply += chunk
    finally:
        os.close(errors_read)
    if reply:
        os.waitpid(pid, 0)
        number = int(reply)
        raise OSError(number, os.strerror(number))
    return pid


def output_limit(spec):
    """The spec's ``output_limit``: None (no limit) or bytes > 0; `Invalid` for anything
    else."""
    limit = spec.get("output_limit")
    if limit is not None and (type(limit) is not int or limit <= 0):
        raise Invalid(f"output_limit: expected bytes > 0 or null, got {_shown(limit)}")
    return limit


def open_streams(run_dir):
    """RUN_DIR/stdout and RUN_DIR/stderr, opened for appending (created if need be)."""
    flags = os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_CLOEXEC
    stdout = os.open(os.path.join(run_dir, "stdout"), flags, 0o600)
    try:
        return stdout, os.open(os.path.join(run_dir, "stderr"), flags, 0o600)
    except BaseException:
        os.close(stdout)
        raise


class OutputLimit:
    """Keeps a program's stdout and stderr within ``limit`` bytes each, with no pipe between
    the program and its files (Rule 2).

    The files are appended to (``O_APPEND``), so a file cut back to the limit (``ftruncate``:
    its first ``limit`` bytes stay) takes the program's next writes at its new end, and the
    next check cuts those too: what a program writes past its limit is dropped, and counted
    (``dropped``; bytes written between a size read and its cut go uncounted, so the count is
    a lower bound). A check is due when, at the rate the output grew since the last one, it
    would pass the limit by ``slack`` (1/64 of the limit, at least 1 MiB); never
    sooner than `OUTPUT_CHECK_MIN` seconds after the last, nor later than twice as long as
    the last wait (a program that was quiet is looked at again soon: it may only have been
    off the CPU), nor later than `OUTPUT_CHECK_MAX`. So a file passes its limit by about
    ``slack`` while a program writes at a steady rate, by what it writes in
    `OUTPUT_CHECK_MAX` seconds at worst (a burst after a long quiet spell), and only until
    the next check.
    """

    def __init__(self, targets, limit, now):
        self.targets = targets  # per stream: an fd on its file, or the file's path
        self.limit = limit  # None: no limit
        self.slack = max(limit >> 6, 1 << 20) if limit else 0
        self.dropped = [0] * len(targets)
        self.sizes = [0] * len(targets)  # at the last check, after the cut
        self.checked = now
        self.wait = OUTPUT_CHECK_MIN  # the last wait between two checks
        self.due = float("inf") if limit is None else now + OUTPUT_CHECK_MIN

    def check(self, now):
        """Cut the files back to the limit; when the next check is due (monotonic seconds)."""
        self.cut(now)
        return self.due

    def cut(self, now):
        """Cut the files back to the limit, and say when the next check is due (``due``);
        per stream, its size after the cut (None: not read, without a limit or on an
        error)."""
        found = [None] * len(self.targets)
        if self.limit is None:
            return found
        delay = min(self.wait * 2, OUTPUT_CHECK_MAX)
        elapsed = max(now - self.checked, 1e-6)
        for index, target in enumerate(self.targets):
            try:
                size = os.stat(target).st_size
                if size > self.limit:
                    os.truncate(target, self.limit)
                    self.dropped[index] += size - self.limit
            except OSError:
                continue
            rate = (size - self.sizes[index]) / elapsed
            self.sizes[index] = found[index] = min(size, self.limit)
            if rate > 0:
                delay = min(delay, (self.limit - self.sizes[index] + self.slack) / rate)
        self.checked = now
        self.wait = max(delay, OUTPUT_CHECK_MIN)
        self.due = now + self.wait
        return found

    def check_due(self, now):
        """`check` if one is due; when the next one is."""
        return self.check(now) if now >= self.due else self.due

    def finish(self):
        """The last cut, once the program and its group are gone: per stream, its final size
        (as `cut` gives it: None where not read), and the bytes dropped."""
        return self.cut(time.monotonic()), self.dropped

    def close(self):
        for target in self.targets:
            if isinstance(target, int):
                with contextlib.suppress(OSError):
                    os.close(target)


# exit records ---------------------------------------------------------------------------


def exit_record(status, rusage, started_at, timed_out, killed, oom_killed, maxrss):
    """exit.json's fields (all but the output's) for a program that ran; ``maxrss`` is
    `program_peak`'s."""
    return {
        "returncode": os.WEXITSTATUS(status) if os.WIFEXITED(status) else None,
        "signal": os.WTERMSIG(status) if os.WIFSIGNALED(status) else None,
        "utime": rusage.ru_utime,
        "stime": rusage.ru_stime,
        "maxrss": maxrss,
        "started_at": started_at,
        "ended_at": time.time(),
        "timed_out": timed_out,
        "killed": killed,
        "oom_killed": oom_killed,
        "error": None,
    }


def failure_record(error, started_at=None):
    """exit.json's fields for a program that did not run, because of ``error``."""
    now = time.time()
    return {
        "returncode": None,
        "signal": None,
        "utime": 0.0,
        "stime": 0.0,
        "maxrss": None,
        "started_at": started_at or now,
        "ended_at": now,
        "timed_out": False,
        "killed": False,
        "oom_killed": False,
        "error": error,
    }


def program_peak(rusage, cgroups):
    """The program's own peak resident set in bytes, or None where it is not known.

    wait4's ``ru_maxrss`` is no answer by itself: Linux carries the high-water mark of the
    memory a process had before its exec into its count, and a program spawned with vfork
    (posix_spawn) or fork starts from the chaperone's, so for a small program it is the
    chaperone's size. So: the peak of a cgroup that held the program alone (`Cgroups.peak`),
    else ``ru_maxrss`` where it is above this process's own high-water mark now (which is at
    least what it was at the spawn: then it can only be the program's), else None.
    """
    peak = cgroups.peak() if cgroups is not None else None
    if peak is not None:
        return peak
    maxrss = rusage.ru_maxrss * 1024
    spawner = _own_peak()
    return maxrss if spawner is not None and maxrss > spawner else None


def _own_peak():
    """This process's high-water mark of resident memory (VmHWM), in bytes; None if unknown."""
    try:
        for line in _read_small("/proc/self/status").split(b"\n"):
            if line.startswith(b"VmHWM:"):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return None


def reserve_exit(run_dir):
    """Make the exit record's temporary file with room for the record, so that it can be
    written when the program has filled the disk (best effort: no room, no reserve)."""
    fd = os.open(f"{run_dir}/{EXIT_TEMPORARY}", os.O_WRONLY | os.O_CREAT | os.O_CLOEXEC, 0o600)
    try:
        os.posix_fallocate(fd, 0, EXIT_RESERVE)
    except (OSError, AttributeError):
        pass
    finally:
        os.close(fd)


def put_exit(run_dir, record, output=None):
    """Add the output's sizes (and what ``output``, an `OutputLimit`, dropped) to ``record``
    and put it in place as RUN_DIR/exit.json (its temporary file written in place, into the
    room `reserve_exit` made; renamed); the fd of the file, to be made durable with
    `sync_exit` (and closed)."""
    if output is None:
        sizes, dropped = (None,) * len(STREAMS), (0,) * len(STREAMS)
    else:
        sizes, dropped = output.finish()
    for index, name in enumerate(STREAMS):
        size = sizes[index]  # (the last cut's: a program that is gone writes no more)
        if size is None:
            try:
                size = os.stat(f"{run_dir}/{name}").st_size
            except OSError:
                size = 0
        record[name + "_size"] = size
        record[name + "_dropped"] = dropped[index]
    path = f"{run_dir}/{EXIT_FILE}"
    temporary = f"{run_dir}/{EXIT_TEMPORARY}"
    fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_CLOEXEC, 0o600)
    try:
        data = json_line(record)
        os.pwrite(fd, data, 0)
        os.ftruncate(fd, len(data))
        os.rename(temporary, path)
    except BaseException:
        os.close(fd)
        _unlink(temporary)
        raise
    return fd


def sync_exit(fd, run_dir):
    """Make an exit.json put in place by `put_exit` durable: the file, then its directory."""
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
    directory = os.open(run_dir, os.O_RDONLY | os.O_CLOEXEC)
    try:
        os.fsync(directory)
    finally:
        os.close(directory)


# the own chaperone ----------------------------------------------------------------------


class Chaperone:
    """One run: claim, spawn, supervise, record."""

    def __init__(self, run_dir, notifier):
        self.run_dir = run_dir
        self.notifier = notifier
        self.pid = None
        self.output_limit = None
        self.output = None  # an OutputLimit, once the program runs
        self.cgroups = None
        self.started_at = None
        self.timed_out = False
        self.killed = False
        self.root_lost = None  # why the run dir is gone, once it is

    def path(self, name):
        return os.path.join(self.run_dir, name)

    def run(self):
        """Returns the exit status for the chaperone process."""
        try:
            with open(self.path(SPEC_FILE), "rb") as spec_file:
                spec = check_spec(json.loads(spec_file.read()), env_required=True)
        except (OSError, ValueError, RecursionError) as error:
            self.notifier.send({"status": "invalid", "error": f"spec.json: {error}"})
            return 2
        argv = spec["argv"]
        self.output_limit = spec["output_limit"]
        cwd = spec.get("cwd")
        if cwd is not None and not os.path.isdir(cwd):
            self.notifier.send({"status": "invalid", "error": f"cwd: no such directory: {cwd!r}"})
            return 2
        os.makedirs(self.run_dir, mode=0o700, exist_ok=True)
        me = {"pid": os.getpid(), "start": process_start(os.getpid())}
        if not write_atomic(self.path(CHAPERONE_FILE), json_line(me), exclusive=True):
            self.notifier.send({"status": "claimed"})
            return 0
        try:
            if cwd is None:
                cwd = self.path(WORK_DIR)
                os.makedirs(cwd, 0o700, exist_ok=True)  # (as a shared chaperone's)
            return self.supervise(spec, argv, cwd, me)
        except BaseException as error:
            self.fail_after_claim(f"chaperone: {error!r}")
            raise

    def supervise(self, spec, argv, cwd, me):
        reserve_exit(self.run_dir)
        streams = open_streams(self.run_dir)
        self.cgroups = Cgroups(spec.get("cgroups") or [], spec.get("cgroup_notes") or ())
        self.started_at = time.time()
        try:
            self.cgroups.join()
            try:
                self.pid = spawn(argv, spec["env"], cwd, streams[0], streams[1])
            finally:
                self.cgroups.leave()
        except OSError as error:
            subject = error.filename if error.filename is not None else argv[0]
            self.fail_after_claim(_describe(error, subject))
            return 1
        finally:
            if self.pid is None:
                for fd in streams:
                    os.close(fd)
        started = time.monotonic()
        # The fds stay open for the size checks (closed with the process).
        self.output = OutputLimit(streams, self.output_limit, started)
        program = {
            "pid": self.pid,
            "start": process_start(self.pid),
            "started_at": self.started_at,
            "cgroup": self.cgroups.primary,
            "cgroup_note": "; ".join(self.cgroups.notes) or None,
        }
        write_atomic(self.path(PROGRAM_FILE), json_line(program))
        self.notifier.send({"status": "started", "chaperone": me, "program": program}, final=False)
        status, rusage = self.wait(spec, started)
        oom_killed = self.cgroups.oom_killed()
        peak = program_peak(rusage, self.cgroups)
        self.cgroups.remove()  # before the record: once it exists, nothing of the run is left
        record = exit_record(
            status, rusage, self.started_at, self.timed_out, self.killed, oom_killed, peak
        )
        self.write_exit(record, {"status": "exited", "record": record}, self.output)
        self.output.close()
        return 0

    def fail_after_claim(self, error):
        """The run dir is ours but the program is not running: say so in exit.json."""
        if self.pid is not None:
            self.kill_group(signal.SIGKILL)
        if self.cgroups is not None:
            self.cgroups.remove()  # first, as in supervise: then the record says it all
        if not os.path.exists(self.path(EXIT_FILE)):
            self.write_exit(
                failure_record(error, self.started_at), {"status": "failed", "error": error}
            )
        self.notifier.send({"status": "failed", "error": error})  # if exit.json was there

    def kill_group(self, number):
        with contextlib.suppress(OSError):  # ESRCH: the group is gone
            os.killpg(self.pid, number)
        if number == signal.SIGKILL and self.cgroups is not None:
            self.cgroups.kill()

    def requested_grace(self, default):
        try:
            with open(self.path(KILL_FILE), "rb") as kill_file:
                return seconds(json.loads(kill_file.read())["grace"], "grace")
        except (OSError, ValueError, KeyError, TypeError, RecursionError):
            return default

    def wait(self, spec, started):
        """Until the leader exits: enforce the timeout, serve kill requests, kill the program
        if the run dir is removed. Then no orphans."""
        grace = spec["kill_grace"]
        timeout_at = None if spec["timeout"] is None else started + spec["timeout"]
        escalate_at = None  # SIGKILL the group then; None while no kill is under way
        waited = set(WAITED)
        root = Root(self.run_dir)  # its fd is not inherited: the program has started
        while True:
            if os.waitid(os.P_PID, self.pid, os.WEXITED | os.WNOHANG | os.WNOWAIT) is not None:
                break
            now = time.monotonic()
            if self.root_lost is None:
                self.root_lost = root.lost(now)
                if self.root_lost is not None:
                    _say(self.path(LOG_FILE), f"{self.root_lost}: killing the program")
                    self.killed = True
                    lost_grace = min(grace, LOST_ROOT_GRACE)
                    if escalate_at is None:
                        escalate_at = self.terminate(now, lost_grace)
                    else:
                        escalate_at = min(escalate_at, now + lost_grace)
            if escalate_at is None and timeout_at is not None and now >= timeout_at:
                self.timed_out = True
                escalate_at = self.terminate(now, grace)
            elif escalate_at is not None and now >= escalate_at:
                self.kill_group(signal.SIGKILL)
                escalate_at = float("inf")
            wake_at = escalate_at if escalate_at is not None else timeout_at
            if self.output.limit is not None:
                due = self.output.check_due(now)
                wake_at = due if wake_at is None else min(wake_at, due)
            info = signal.sigtimedwait(waited, _bounded(None if wake_at is None else wake_at - now))
            if info is not None and info.si_signo in KILL_REQUESTS:
                request_grace = self.requested_grace(grace)
                self.killed = True
                if escalate_at is None:
                    escalate_at = self.terminate(time.monotonic(), request_grace)
                else:  # a second request may shorten the grace
                    escalate_at = min(escalate_at, time.monotonic() + request_grace)
        os.close(root.fd)
        # The leader is a zombie: its pgid cannot be reused until we reap it.
        self.kill_group(signal.SIGKILL)
        _, status, rusage = os.wait4(self.pid, 0)
        wait_group_gone(self.pid, os.getsid(0), time.monotonic() + CGROUP_DRAIN)
        return status, rusage

    def terminate(self, now, grace):
        if grace <= 0:
            self.kill_group(signal.SIGKILL)
            return float("inf")
        self.kill_group(signal.SIGTERM)
        return now + grace

    def write_exit(self, record, reply, output=None):
        """Write exit.json, tell the launcher ``reply``, then make exit.json durable."""
        if self.root_lost is not None:  # nowhere to write it: the launcher may still listen
            record["error"] = f"chaperone: {self.root_lost}; the program was killed"
            for name in STREAMS:
                record.setdefault(name + "_size", 0)
                record.setdefault(name + "_dropped", 0)
            self.notifier.send(reply)
            return
        fd = put_exit(self.run_dir, record, output)
        try:
            self.notifier.send(reply)
        finally:
            sync_exit(fd, self.run_dir)


def run(run_dir, notify_fd=None):
    """Be the own chaperone of RUN_DIR in this process (detached already); an exit status."""
    notifier = Notifier(notify_fd)
    signal.signal(signal.SIGHUP, signal.SIG_IGN)
    signal.signal(signal.SIGCHLD, signal.SIG_DFL)
    try:
        return Chaperone(run_dir, notifier).run()
    except BaseException as error:
        _log_failure(os.path.join(run_dir, LOG_FILE))
        if notifier.pending:
            notifier.send({"status": "invalid", "error": f"chaperone: {error!r}"})
        return 1


def _log_failure(path):
    import traceback

    try:
        with open(path, "a") as log:
            traceback.print_exc(file=log)
    except OSError:
        pass


def _close_inherited(keep):
    """Close whatever fds the launcher let us inherit, but ``keep``: the programs get none."""
    keep = 2 if keep is None else keep
    os.closerange(3, keep)
    os.closerange(max(keep + 1, 3), os.sysconf("SC_OPEN_MAX"))


def _detach():
    """Become a daemon: the launcher reaps the parent at once; the child leads a session."""
    if os.fork():
        os._exit(0)
    os.setsid()


# the shared chaperone -------------------------------------------------------------------


def socket_address(root, root_fd):
    """The address of ROOT's socket; through ``root_fd`` (a directory fd on ROOT) when the
    path is too long for ``sun_path``."""
    path = os.path.join(root, SOCKET_FILE)
    if len(os.fsencode(path)) < 100:
        return path
    return f"/proc/self/fd/{root_fd}/{SOCKET_FILE}"


def _syncfs():
    """The C library's ``syncfs(fd)``, or None where there is none."""
    try:
        import ctypes

        return ctypes.CDLL(None, use_errno=True).syncfs
    except (ImportError, OSError, AttributeError):
        return None


def _remove_tree(path):
    import shutil

    shutil.rmtree(path, ignore_errors=True)


class Helper:
    """The shared chaperone's helper: a process (forked at the start, so no thread shares
    the chaperone's interpreter lock) that does the slow disk work off the loop's path.

    It makes spare run dirs (``ROOT/.spares-<pid>/<slot>/run``, with ``chaperone.pid`` that
    names the chaperone, ``stdout``, ``stderr``, ``work`` and the exit record's temporary
    file), so that a launch only renames one into place: inode allocation, slow on some file
    systems, happens ahead of need. Each spare has a directory (a slot) of its own, so that
    the helper, which runs at a lower priority, never holds the lock of a directory that a
    launch needs (ROOT's, or the slot it takes a spare from). And it makes
    exit records durable in batches: they are gathered for up to ``SYNC_INTERVAL`` seconds,
    then one ``syncfs`` of the file system covers them all (where the C library has it; else
    each record and its directory are fsynced). A device flush per batch, rather than two per
    record, each of which took milliseconds on the disks this was measured on.

    Lines on a socketpair: ``spare SLOT`` (fill that slot) and ``sync RUN_DIR`` to it; ``spare
    SLOT`` and ``synced N`` back.
    """

    def __init__(self, root, claim_line, target):
        import collections

        self.root = root
        self.claim_line = claim_line
        self.target = target
        self.base = os.path.join(root, f"{SPARES_PREFIX}{os.getpid()}")
        self.spares = collections.deque()  # slots with a spare in them
        self.empty = list(range(target))  # slots to fill
        self.unsynced = 0  # sync requests not yet answered
        self.sock = None
        self.pid = None
        self.inbox = bytearray()
        self.outbox = bytearray()
        self.writing = False  # waiting for the socket to take more
        self.selector = None

    def start(self, selector):
        self.selector = selector
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        pid = os.fork()
        if pid == 0:  # pragma: no cover - the helper process
            status = 1
            try:
                ours.close()
                status = _assist(self.root, theirs, self.claim_line, self.base)
            except (BrokenPipeError, ConnectionResetError):
                status = 0  # the chaperone left while we answered
            except BaseException:
                _log_failure(os.path.join(self.root, DAEMON_LOG))
            finally:
                os._exit(status)
        theirs.close()
        ours.setblocking(False)
        self.sock, self.pid = ours, pid
        self.empty = [slot for slot in range(self.target) if slot not in self.spares]
        self.inbox.clear()
        self.outbox.clear()
        self.writing = False
        selector.register(ours, selectors.EVENT_READ, self.on_ready)

    def ask(self):
        """Ask for the empty slots to be filled (sent with the next `flush`)."""
        if self.empty and self.sock is not None:
            self.outbox += b"".join(b"spare %d\n" % slot for slot in self.empty)
            self.empty.clear()

    def take(self):
        """The path of a spare run dir, or None if none is ready; its slot is refilled once
        it was renamed away (`taken`), or it goes back (`give_back`)."""
        if not self.spares:
            return None
        slot = self.spares.popleft()
        return f"{self.base}/{slot}/run"

    def taken(self, path):
        self.empty.append(int(path.rsplit("/", 2)[1]))

    def give_back(self, path):
        self.spares.appendleft(int(path.rsplit("/", 2)[1]))

    def sync(self, run_dir):
        """Have RUN_DIR's exit record made durable soon."""
        if self.sock is None:
            _sync_now(self.root, [run_dir])
            return
        self.unsynced += 1
        self.outbox += b"sync " + os.fsencode(run_dir) + b"\n"

    def idle(self):
        return self.unsynced == 0

    def flush(self):
        """Send what was asked: the loop calls this last in a round, once the runtimes have
        their answers (the helper wakes up, and a directory it locks is one a launch may
        need)."""
        self.ask()
        if self.outbox and self.sock is not None:
            self.on_ready(self.sock, selectors.EVENT_WRITE)

    def on_ready(self, sock, mask):
        if mask & selectors.EVENT_WRITE and self.outbox:
            try:
                sent = sock.send(self.outbox)
            except (BlockingIOError, InterruptedError):
                sent = 0
            except OSError:
                self.lost()
                return
            del self.outbox[:sent]
            if bool(self.outbox) != self.writing:
                self.writing = bool(self.outbox)
                events = selectors.EVENT_READ | (selectors.EVENT_WRITE if self.writing else 0)
                self.selector.modify(sock, events, self.on_ready)
        if not mask & selectors.EVENT_READ:
            return
        try:
            data = sock.recv(65536)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            data = b""
        if not data:
            self.lost()
            return
        self.inbox += data
        *lines, rest = self.inbox.split(b"\n")
        self.inbox = bytearray(rest)
        for line in lines:
            word, _, argument = bytes(line).partition(b" ")
            if word == b"spare":
                self.spares.append(int(argument))
            elif word == b"synced":
                self.unsynced -= int(argument)

    def lost(self):
        """The helper died: make what it had to sync durable here, and start another."""
        self.close()
        if self.unsynced:
            with contextlib.suppress(OSError):  # ROOT removed: the loop notices, and leaves
                _sync_now(self.root, [])
            self.unsynced = 0
        self.start(self.selector)

    def close(self):
        if self.sock is not None:
            self.selector.unregister(self.sock)
            self.sock.close()
            self.sock = None

    def remove(self):
        """Stop the helper and remove the spares."""
        self.close()
        if self.pid is not None:
            with contextlib.suppress(ChildProcessError):
                os.waitpid(self.pid, 0)
            self.pid = None
        self.spares.clear()
        _remove_tree(self.base)


def _sync_now(root, run_dirs):
    """Make ROOT's file system durable now (or, without syncfs, these run dirs' records)."""
    syncfs = _syncfs()
    fd = os.open(root, os.O_RDONLY | os.O_CLOEXEC)
    try:
        if syncfs is not None and syncfs(fd) == 0:
            return
    finally:
        os.close(fd)
    for run_dir in run_dirs:
        for path in (os.path.join(run_dir, EXIT_FILE), run_dir):
            with contextlib.suppress(OSError):
                fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
                try:
                    os.fsync(fd)
                finally:
                    os.close(fd)


def _assist(root, sock, claim_line, base):  # pragma: no cover - in the helper process
    """The helper process's loop (see `Helper`)."""
    import select

    signal.set_wakeup_fd(-1)
    for number in (signal.SIGCHLD, signal.SIGTERM):
        signal.signal(number, signal.SIG_DFL)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    _close_inherited(sock.fileno())
    # Forked where the chaperone sat, maybe a cgroup of its pool: never in a program's.
    with contextlib.suppress(OSError):
        for home in set(_cgroup_homes().values()):
            with contextlib.suppress(OSError):
                _write_setting(os.path.join(home, "cgroup.procs"), str(os.getpid()))
    with contextlib.suppress(OSError):
        os.nice(10)  # less in the way of launches and exits (but never starved: it locks)
    sock.setblocking(True)
    wanted = []  # slots to fill
    unsynced = []  # run dirs
    first_unsynced = None
    buffer = b""
    while True:
        if first_unsynced is not None:
            timeout = max(first_unsynced + SYNC_INTERVAL - time.monotonic(), 0)
        elif wanted:
            timeout = 0
        else:
            timeout = None
        if select.select([sock], [], [], timeout)[0]:
            data = sock.recv(65536)
            if not data:
                return 0  # the chaperone is gone, or leaving
            buffer += data
            *lines, buffer = buffer.split(b"\n")
            for line in lines:
                if line.startswith(b"spare "):
                    wanted.append(int(line[6:]))
                elif line.startswith(b"sync "):
                    unsynced.append(os.fsdecode(line[5:]))
                    if first_unsynced is None:
                        first_unsynced = time.monotonic()
        if first_unsynced is not None and time.monotonic() >= first_unsynced + SYNC_INTERVAL:
            _sync_now(root, unsynced)
            sock.sendall(f"synced {len(unsynced)}\n".encode())
            unsynced = []
            first_unsynced = None
        elif wanted:
            slot = wanted[0]
            path = os.path.join(base, str(slot), "run")
            try:
                for directory in (base, os.path.dirname(path)):  # never ROOT: if it is gone,
                    with contextlib.suppress(FileExistsError):  # it stays gone
                        os.mkdir(directory, 0o700)
                _make_spare(path, claim_line)
            except OSError:
                _remove_tree(path)
                time.sleep(0.1)  # a full disk, say: launches make their own meanwhile
                continue
            wanted.pop(0)
            sock.sendall(b"spare %d\n" % slot)


def _make_spare(path, claim_line):
    os.mkdir(path, 0o700)
    claim = os.open(
        os.path.join(path, CHAPERONE_FILE),
        os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC,
        0o600,
    )
    try:
        os.write(claim, claim_line)
    finally:
        os.close(claim)
    for name in STREAMS:
        os.close(os.open(os.path.join(path, name), os.O_WRONLY | os.O_CREAT | os.O_CLOEXEC, 0o600))
    reserve_exit(path)
    os.mkdir(os.path.join(path, WORK_DIR), 0o700)


class Run:
    """One program of the shared chaperone, from claim to exit record."""

    def __init__(self, key, run_dir, grace):
        self.key = key
        self.run_dir = run_dir
        self.grace = grace
        self.pid = None
        self.program = None
        self.cgroups = None
        self.started_at = None
        self.timed_out = False
        self.killed = False
        self.escalate_at = None  # SIGKILL the group then; None while no kill is under way
        self.subscribers = set()  # clients told of the exit
        self.status = None  # wait4's, once reaped
        self.rusage = None
        self.output = None  # an OutputLimit, once the program runs
        self.oom_killed = None
        self.peak = None
        self.drain_until = None


class Client:
    """One runtime's connection."""

    def __init__(self, sock):
        self.sock = sock
        self.inbox = bytearray()
        self.outbox = bytearray()
        self.env = None
        self.env_file = None
        self.umask = None  # the runtime's, for its programs
        self.keys = set()  # runs it is subscribed to
        self.writing = False


class Server:
    """The shared chaperone of one ROOT: one event loop for every program and connection."""

    def __init__(self, root, listener, idle_exit, spares=SPARES, root_fd=None):
        self.root = root
        self.held = Root(root, root_fd)  # to notice that ROOT was removed
        self.root_lost = None  # why, once it was
        self.listener = listener
        self.idle_exit = idle_exit
        self.me = {"pid": os.getpid(), "start": process_start(os.getpid())}
        self.sid = os.getsid(0)
        self.selector = selectors.DefaultSelector()
        self.clients = {}  # socket -> Client
        self.unsent = set()  # clients with messages queued
        self.runs = {}  # key -> Run, until its exit record is out
        self.children = {}  # pid -> Run, until reaped
        self.timers = []  # heap of (when, sequence, function, run)
        self.sequence = 0
        self.helper = Helper(root, json_line(dict(self.me, shared=True)), spares)
        self.pool = CgroupPool(f"{self.me['pid']}.{self.me['start']}")
        with contextlib.suppress(OSError):
            _cgroup_homes()  # where "home" is: read now, before it sits anywhere else
        self.stopping = False
        self.idle_since = None  # since when there was nothing to do
        self.umask = None  # set last for a program (None: the one we started with)
        self.wakeup_read, wakeup_write = os.pipe()
        os.set_blocking(self.wakeup_read, False)
        os.set_blocking(wakeup_write, False)
        for number in (signal.SIGCHLD, signal.SIGTERM, signal.SIGINT):
            signal.signal(number, _ignore_signal)  # a handler, so that the wakeup fd sees it
        signal.set_wakeup_fd(wakeup_write)
        signal.signal(signal.SIGHUP, signal.SIG_IGN)
        self.selector.register(self.wakeup_read, selectors.EVENT_READ, self.on_signal)
        listener.setblocking(False)
        self.selector.register(listener, selectors.EVENT_READ, self.on_connect)
        self.helper.start(self.selector)

    # the loop ---------------------------------------------------------------------------

    def serve(self):
        while True:
            now = time.monotonic()
            if self.root_lost is None:
                self.root_lost = self.held.lost(now)
                if self.root_lost is not None:
                    self.lose_root()
            timeout = None
            if self.timers:
                timeout = max(self.timers[0][0] - now, 0)
            if self.stopping and not self.runs and self.helper.idle():
                self.leave(forced=True)  # asked to stop: whoever is connected
                return 0
            if self.runs or self.clients:
                self.idle_since = None
            elif not self.helper.idle():
                self.idle_since = None
                timeout = 0.01 if timeout is None else min(timeout, 0.01)  # look again soon
            else:
                if self.idle_since is None:
                    self.idle_since = now
                left = self.idle_since + self.idle_exit - now
                if left <= 0 and self.leave():
                    return 0
                left = max(left, 0.001)
                timeout = left if timeout is None else min(timeout, left)
            for key, mask in self.selector.select(_bounded(timeout)):
                self.guarded(key.data, key.fileobj, mask)
            now = time.monotonic()
            while self.timers and self.timers[0][0] <= now:
                _, _, function, run = heapq.heappop(self.timers)
                self.guarded(function, run)
            while self.unsent:
                client = self.unsent.pop()
                if client.sock is not None and not client.writing:
                    self.flush(client)
            self.helper.flush()

    def guarded(self, function, *arguments):
        """Call ``function``: a bug there costs one request or one step, not every program
        this chaperone watches (its traceback goes to ROOT/.chaperone.log)."""
        try:
            function(*arguments)
        except Exception:
            _log_failure(os.path.join(self.root, DAEMON_LOG))

    def leave(self, forced=False):
        """Stop serving: remove the socket first, so that a runtime arriving now starts a new
        chaperone (which waits for our lock). False if a client came in the meantime."""
        if not forced:
            with contextlib.suppress(OSError):
                sock, _ = self.listener.accept()
                self.add_client(sock)
                return False
        address = self.listener.getsockname()
        if isinstance(address, bytes):
            address = os.fsdecode(address)
        if address and not address.startswith("\0"):
            _unlink(address)
        self.listener.close()
        for client in list(self.clients.values()):
            self.drop(client)
        self.helper.remove()
        self.pool.remove()
        return True

    def at(self, when, function, run):
        self.sequence += 1
        heapq.heappush(self.timers, (when, self.sequence, function, run))

    def on_signal(self, fd, mask):
        try:
            numbers = os.read(fd, 4096)
        except BlockingIOError:
            return
        if signal.SIGCHLD in numbers:
            self.reap()
        if signal.SIGTERM in numbers or signal.SIGINT in numbers:
            self.stop()

    def lose_root(self):
        """ROOT is gone (``rm -rf`` of the state dir): nothing can be recorded any more, and
        no runtime finds this chaperone again. Say so, kill every program (SIGTERM, at most
        `LOST_ROOT_GRACE`, SIGKILL), tell the runtimes connected (their exit records come
        with an error), and leave, cgroups removed."""
        message = f"the chaperone's root {self.root_lost}: its programs are killed"
        _say(os.path.join(self.root, DAEMON_LOG), message)
        self.helper.unsynced = 0  # nothing left to make durable
        for client in list(self.clients.values()):
            self.send(client, {"op": "stopping", "error": message})
        self.stopping = True
        for run in list(self.runs.values()):
            if run.pid is not None and run.status is None:
                self.kill(run, min(run.grace, LOST_ROOT_GRACE))

    def stop(self):
        """SIGTERM to the chaperone: kill every program, then leave."""
        self.stopping = True
        for run in list(self.runs.values()):
            if run.pid is not None and run.status is None:
                self.kill(run, run.grace)

    # connections ------------------------------------------------------------------------

    def on_connect(self, listener, mask):
        while True:
            try:
                sock, _ = listener.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError:
                return  # out of fds, say: the client sees its connection refused or reset
            self.add_client(sock)

    def add_client(self, sock):
        credentials = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, 12)
        if int.from_bytes(credentials[4:8], sys.byteorder) not in (0, os.getuid()):
            sock.close()
            return
        sock.setblocking(False)
        client = Client(sock)
        self.clients[sock] = client
        self.selector.register(sock, selectors.EVENT_READ, self.on_client)

    def on_client(self, sock, mask):
        client = self.clients.get(sock)
        if client is None:
            return
        if mask & selectors.EVENT_WRITE:
            self.flush(client)
        if not mask & selectors.EVENT_READ:
            return
        try:
            data = sock.recv(65536)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            data = b""
        if not data:
            self.drop(client)
            return
        end = data.rfind(b"\n")  # in what came now: a long line is looked through once
        if end < 0:
            client.inbox += data
            if len(client.inbox) > MAX_REQUEST:
                self.drop(client)
            return
        # Taken out of the inbox before any is handled: each line is handled once, whatever
        # happens while it is.
        lines = bytes(client.inbox + data[:end]).split(b"\n")
        client.inbox = bytearray(data[end + 1 :])
        for line in lines:
            if client.sock is None:
                return
            self.guarded(self.on_line, client, line)

    def on_line(self, client, line):
        """One request: a reply to it, whatever it is (a bug costs it an ``error`` reply)."""
        try:
            request = json.loads(line)
        except (ValueError, RecursionError) as error:
            self.send(client, {"id": None, "op": "invalid", "error": f"not JSON: {error}"})
            return
        if not isinstance(request, dict):
            error = f"expected a JSON object, got {_shown(request)}"
            self.send(client, {"id": None, "op": "invalid", "error": error})
            return
        try:
            self.handle(client, request)
        except Exception as error:
            self.send(client, {"id": request.get("id"), "op": "error", "error": f"{error!r}"})
            raise  # to the log

    def send(self, client, message):
        """Queue ``message`` (or a line already encoded); the loop sends what a client has
        queued once per round."""
        if client.sock is None:
            return
        client.outbox += message if isinstance(message, bytes) else json_line(message)
        if not client.writing:
            self.unsent.add(client)

    def flush(self, client):
        try:
            sent = client.sock.send(client.outbox)
        except (BlockingIOError, InterruptedError):
            sent = 0
        except OSError:
            self.drop(client)
            return
        del client.outbox[:sent]
        writing = bool(client.outbox)
        if writing != client.writing:
            client.writing = writing
            events = selectors.EVENT_READ | (selectors.EVENT_WRITE if writing else 0)
            self.selector.modify(client.sock, events, self.on_client)

    def drop(self, client):
        """Forget a connection; its programs run on."""
        if client.sock is None:
            return
        self.selector.unregister(client.sock)
        self.clients.pop(client.sock, None)
        client.sock.close()
        client.sock = None
        for key in client.keys:
            run = self.runs.get(key)
            if run is not None:
                run.subscribers.discard(client)
        client.keys.clear()

    def subscribe(self, client, run):
        run.subscribers.add(client)
        client.keys.add(run.key)

    def handle(self, client, request):
        op = request.get("op")
        reply = {"id": request.get("id")}
        try:
            if op == "hello":
                self.hello(client, request)
                reply.update(self.me, op="hello", version=PROTOCOL)
            elif client.env is None:
                reply.update(op="error", error="hello first")
            elif op == "env":
                client.env = check_env(request.get("env"))  # the runtime's environment changed
                client.env_file = self.save_env(client.env)
                reply["op"] = "env"
            elif op == "launch":
                reply.update(self.launch(client, request))
            elif op in ("watch", "kill"):
                key = request.get("key")
                if not isinstance(key, str):
                    raise Invalid(f"key: expected a string, got {_shown(key)}")
                grace = seconds(request.get("grace"), "grace", optional=True)
                run = self.runs.get(key)
                if run is None or run.pid is None:
                    reply["op"] = "unknown"
                elif op == "watch":
                    self.subscribe(client, run)
                    reply["op"] = "watching"
                else:
                    self.kill(run, run.grace if grace is None else grace)
                    self.subscribe(client, run)  # it will want to know when that is done
                    reply["op"] = "killing"
            else:
                reply.update(op="error", error=f"unknown request {_shown(op)}")
        except Invalid as error:
            reply.update(op="invalid", error=str(error))
        self.send(client, reply)

    def hello(self, client, request):
        env = request.get("env")
        if env is None:
            env = dict(os.environ)
            env.pop(ROOT_VARIABLE, None)
        client.env = check_env(env)
        client.env_file = self.save_env(env)
        umask = request.get("umask")
        ok = isinstance(umask, int) and not isinstance(umask, bool) and 0 <= umask <= 0o777
        client.umask = umask if ok else None

    def save_env(self, env):
        """Write the environment programs start from once (``.env-<sha1>.json`` in ROOT, named
        by its content), rather than into every claim; its name."""
        import hashlib

        data = json_line(env)
        name = f".env-{hashlib.sha1(data).hexdigest()}.json"
        path = os.path.join(self.root, name)
        if not os.path.exists(path):
            with contextlib.suppress(OSError):
                write_atomic(path, data)
        return name

    # launching --------------------------------------------------------------------------

    def launch(self, client, request):
        key = request.get("key")
        if not isinstance(key, str) or not KEY.match(key):
            expected = "up to 200 letters, digits and _.:@+=-, not starting with one of .:@+=-"
            raise Invalid(f"key: expected {expected}, got {_shown(key)}")
        spec = check_spec(request.get("spec"))
        run = self.runs.get(key)
        if run is not None:
            self.subscribe(client, run)
            return {"op": "claimed", "program": run.program}
        if self.stopping:
            if self.root_lost is not None:
                return {"op": "stopping", "error": f"the chaperone's root {self.root_lost}"}
            return {"op": "stopping"}
        argv = spec["argv"]
        env = dict(client.env)
        env.update(spec["env"])
        grace = spec["kill_grace"]
        timeout = spec["timeout"]
        limit = spec["output_limit"]
        cwd = spec.get("cwd")
        if cwd is not None and not os.path.isdir(cwd):
            return {"op": "invalid", "error": f"cwd: no such directory: {cwd!r}"}
        run_dir = f"{self.root}/{key}"
        try:
            claim = self.claim(run_dir)
        except OSError as error:
            return {"op": "error", "error": _describe(error, run_dir)}
        if claim is None:
            return {"op": "claimed"}  # by an own chaperone, or by one of ours that died
        run = Run(key, run_dir, grace)
        self.runs[key] = run
        try:
            if cwd is None:
                cwd = f"{run_dir}/{WORK_DIR}"
                if not claim:  # a spare has one
                    with contextlib.suppress(FileExistsError):
                        os.mkdir(cwd, 0o700)
            if not claim:  # a spare has its exit record's room
                reserve_exit(run_dir)
            document = dict(spec, key=key, env_base=client.env_file)
            if client.umask is not None and client.umask != self.umask:
                os.umask(client.umask)  # the program's, and our files have their own modes
                self.umask = client.umask
            return self.start(client, run, document, argv, env, cwd, timeout, limit)
        except BaseException as error:
            # Claimed, but not started: exit.json says why, so a retry raises again.
            self.fail(run, f"chaperone: {error!r}")
            _log_failure(os.path.join(self.root, DAEMON_LOG))
            return {"op": "failed", "error": f"chaperone: {error!r}"}

    def claim(self, run_dir):
        """Claim ``run_dir``: a spare renamed into place (one system call, no inode to
        allocate), or made here. True if it came from a spare (everything is in it), False if
        made here (no ``work`` yet), None if it was claimed before."""
        spare = self.helper.take()
        if spare is not None:
            try:
                os.rename(spare, run_dir)  # replaces nothing but an empty directory
            except OSError as error:
                self.helper.give_back(spare)
                if error.errno not in (errno.EEXIST, errno.ENOTEMPTY):
                    raise
            else:
                self.helper.taken(spare)
                return True
        with contextlib.suppress(FileExistsError):
            os.mkdir(run_dir, 0o700)
        try:
            fd = os.open(
                os.path.join(run_dir, CHAPERONE_FILE),
                os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC,
                0o600,
            )
        except FileExistsError:
            return None
        try:
            os.write(fd, self.helper.claim_line)
        finally:
            os.close(fd)
        return False

    def start(self, client, run, document, argv, env, cwd, timeout, limit):
        entries = document.get("cgroups") or []
        notes = document.get("cgroup_notes") or ()
        pooled = CgroupPool.poolable(entries)
        run.started_at = time.time()
        streams = [f"{run.run_dir}/{name}" for name in STREAMS]
        try:
            if pooled is not None:
                try:
                    run.cgroups = PooledCgroup(self.pool, self.pool.enter(*pooled), notes)
                except OSError:  # as if not pooled: the same notes, the same fallbacks
                    self.pool.unpark()
                    pooled = None
            if pooled is None:
                with contextlib.suppress(OSError):
                    self.pool.unpark()
                run.cgroups = Cgroups(entries, notes)
                run.cgroups.join()
            try:
                run.pid = spawn(argv, env, cwd, *streams)
            finally:
                if pooled is None:
                    run.cgroups.leave()
                elif run.pid is not None:
                    self.pool.move_on(*pooled)
        except OSError as error:
            subject = error.filename if error.filename is not None else argv[0]
            message = _describe(error, subject)
            self.fail(run, message)
            return {"op": "failed", "error": message}
        started = time.monotonic()
        self.children[run.pid] = run
        run.program = {
            "pid": run.pid,
            "start": process_start(run.pid),
            "started_at": run.started_at,
            "cgroup": run.cgroups.primary,
            "cgroup_note": "; ".join(run.cgroups.notes) or None,
        }
        claim = os.open(f"{run.run_dir}/{CHAPERONE_FILE}", os.O_WRONLY | os.O_APPEND | os.O_CLOEXEC)
        try:
            os.write(claim, json_line(dict(run.program, spec=document)))
        finally:
            os.close(claim)
        self.subscribe(client, run)
        if timeout is not None:
            self.at(started + timeout, self.on_timeout, run)
        run.output = OutputLimit(streams, limit, started)
        if limit is not None:
            self.at(run.output.due, self.on_output, run)
        return {"op": "started", "program": run.program}

    def fail(self, run, error):
        """Claimed but not running: exit.json says why; nobody is told but the launcher."""
        if run.pid is not None and run.status is None:
            self.kill_group(run, signal.SIGKILL)
        if run.cgroups is not None and run.cgroups.primary != self.pool.parked:
            run.cgroups.remove()
        self.runs.pop(run.key, None)
        if not os.path.exists(os.path.join(run.run_dir, EXIT_FILE)):
            os.close(put_exit(run.run_dir, failure_record(error, run.started_at)))
            self.helper.sync(run.run_dir)

    # killing ----------------------------------------------------------------------------

    def kill_group(self, run, number):
        with contextlib.suppress(OSError):  # ESRCH: the group is gone
            os.killpg(run.pid, number)
        if number == signal.SIGKILL and run.cgroups is not None:
            run.cgroups.kill()

    def on_timeout(self, run):
        if run.status is None and run.escalate_at is None:
            run.timed_out = True
            self.terminate(run, run.grace)

    def kill(self, run, grace):
        if run.status is not None:
            return  # ended already; its record is on the way
        run.killed = True
        if run.escalate_at is None:
            self.terminate(run, grace)
        elif time.monotonic() + grace < run.escalate_at:  # a second request may shorten it
            run.escalate_at = time.monotonic() + grace
            self.at(run.escalate_at, self.on_escalate, run)

    def terminate(self, run, grace):
        if grace <= 0:
            self.kill_group(run, signal.SIGKILL)
            run.escalate_at = float("inf")
            return
        self.kill_group(run, signal.SIGTERM)
        run.escalate_at = time.monotonic() + grace
        self.at(run.escalate_at, self.on_escalate, run)

    def on_escalate(self, run):
        if run.status is None and run.escalate_at <= time.monotonic():
            self.kill_group(run, signal.SIGKILL)
            run.escalate_at = float("inf")

    def on_output(self, run):
        """Keep a running program's output within its limit (`OutputLimit`)."""
        if run.status is None:
            self.at(run.output.check(time.monotonic()), self.on_output, run)

    # exits ------------------------------------------------------------------------------

    def reap(self):
        while True:
            try:
                info = os.waitid(os.P_ALL, 0, os.WEXITED | os.WNOHANG | os.WNOWAIT)
            except ChildProcessError:
                return
            if info is None or not info.si_pid:
                return
            pid = info.si_pid
            run = self.children.pop(pid, None)
            if run is not None:
                # The leader is a zombie: its pgid cannot be reused until it is reaped.
                with contextlib.suppress(OSError):
                    os.killpg(pid, signal.SIGKILL)
            try:
                _, status, rusage = os.wait4(pid, 0)
            except ChildProcessError:
                continue
            if run is not None:
                run.status, run.rusage = status, rusage
                run.drain_until = time.monotonic() + CGROUP_DRAIN
                self.finish(run)

    def finish(self, run):
        """Record the exit once nothing of the program is left (or the drain timed out)."""
        last_chance = time.monotonic() >= run.drain_until
        if group_left(run.pid, self.sid) and not last_chance:
            self.at(time.monotonic() + 0.002, self.finish, run)
            return
        if run.cgroups is not None:
            if run.oom_killed is None:
                run.oom_killed = run.cgroups.oom_killed()
                run.peak = program_peak(run.rusage, run.cgroups)
            if not run.cgroups.try_remove() and not last_chance:
                run.cgroups.kill()  # something escaped the group: it dies with the cgroup
                self.at(time.monotonic() + 0.002, self.finish, run)
                return
        if run.cgroups is None:
            run.peak = program_peak(run.rusage, None)
        record = exit_record(
            run.status,
            run.rusage,
            run.started_at,
            run.timed_out,
            run.killed,
            bool(run.oom_killed),
            run.peak,
        )
        try:
            os.close(put_exit(run.run_dir, record, run.output))
        except OSError:  # a full disk, say: nothing is done until the record is
            if self.root_lost is None:
                _log_failure(os.path.join(self.root, DAEMON_LOG))
                self.at(time.monotonic() + 1.0, self.finish, run)
                return
            # Nowhere to write it: the runtimes connected are the only ones to learn it.
            record["error"] = f"chaperone: its root {self.root_lost}; the program was killed"
            for name in STREAMS:
                record.setdefault(name + "_size", 0)
        line = json_line({"op": "exited", "key": run.key, "record": record})
        for client in list(run.subscribers):
            client.keys.discard(run.key)
            self.send(client, line)
        del self.runs[run.key]
        if self.root_lost is None:
            self.helper.sync(run.run_dir)


def _ignore_signal(number, frame):
    pass


def _lock(path, patience):
    """An fd on ``path`` holding an exclusive flock, or None if someone else holds it for
    longer than ``patience`` seconds (a chaperone that is leaving lets go soon)."""
    import fcntl

    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    deadline = time.monotonic() + patience
    while True:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return fd
        except OSError as error:
            if error.errno not in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                os.close(fd)
                raise
        if time.monotonic() >= deadline:
            os.close(fd)
            return None
        time.sleep(0.005)


def serve(root, ready_fd=None, idle_exit=IDLE_EXIT):
    """Be the shared chaperone of ROOT in this process (detached already); an exit status.

    Tells ``ready_fd`` ``ready`` once it listens, or ``busy`` if another one serves ROOT.
    """

    def tell(word):
        if ready_fd is not None:
            with contextlib.suppress(OSError):
                os.write(ready_fd, word.encode() + b"\n")
            with contextlib.suppress(OSError):
                os.close(ready_fd)

    root = os.path.abspath(root)
    try:
        # What programs inherit from it stays as the runtime that started it had it (the
        # umask follows each runtime; limits, niceness and the like are the first one's).
        os.chdir("/")
        os.makedirs(root, 0o700, exist_ok=True)
        lock = _lock(os.path.join(root, DAEMON_FILE), patience=2.0)
        if lock is None:
            tell("busy")
            return 0
        root_fd = os.open(root, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        address = socket_address(root, root_fd)
        _unlink(os.path.join(root, SOCKET_FILE))  # a dead predecessor's
        for name in os.listdir(root):
            if name.startswith(SPARES_PREFIX):
                _remove_tree(os.path.join(root, name))  # a dead predecessor's
        listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        listener.bind(address)
        os.chmod(address, 0o600)  # connections from other users are refused anyway
        listener.listen(128)
        server = Server(root, listener, idle_exit, root_fd=root_fd)
        os.ftruncate(lock, 0)
        os.write(lock, json_line(server.me))
    except BaseException as error:
        _log_failure(os.path.join(root, DAEMON_LOG))
        tell(f"error: {error!r}")
        return 1
    tell("ready")
    try:
        return server.serve()
    except BaseException:
        _log_failure(os.path.join(root, DAEMON_LOG))
        raise


def main(argv):
    if argv and argv[0] == "--serve":
        options = {"--ready-fd": None, "--idle-exit": None}
        root = os.environ.get(ROOT_VARIABLE)
        rest = argv[1:]
        while rest:
            if rest[0] in options and len(rest) >= 2:
                options[rest[0]] = rest[1]
                rest = rest[2:]
            elif not rest[0].startswith("--"):
                root = rest[0]
                rest = rest[1:]
            else:
                break
        if rest or not root:
            sys.stderr.write("usage: chaperone.py --serve [ROOT] [--ready-fd N] [--idle-exit S]\n")
            return 2
        try:
            ready_fd = None if options["--ready-fd"] is None else int(options["--ready-fd"])
            idle_exit = IDLE_EXIT
            if options["--idle-exit"] is not None:
                given = options["--idle-exit"]
                with contextlib.suppress(ValueError):
                    given = float(given)
                idle_exit = seconds(given, "--idle-exit")
        except ValueError as error:
            sys.stderr.write(f"chaperone.py --serve: {error}\n")
            return 2
        root = os.path.abspath(root)
        _detach()
        _close_inherited(ready_fd)
        return serve(root, ready_fd, idle_exit)
    if len(argv) == 1:
        notify_fd = None
    elif len(argv) == 3 and argv[1] == "--notify-fd":
        notify_fd = int(argv[2])
    else:
        sys.stderr.write(
            "usage: chaperone.py RUN_DIR [--notify-fd N] | --serve [ROOT] [--ready-fd N]\n"
        )
        return 2
    # Blocked before anything else: a kill request must wait for us, never kill us.
    signal.pthread_sigmask(signal.SIG_BLOCK, WAITED)
    _detach()
    _close_inherited(notify_fd)
    return run(os.path.abspath(argv[0]), notify_fd)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

"""corra's chaperone: runs one program detached from the runtime and records how it ended.

Standard library only and no corra imports: this file is also sent over SSH and run by a
remote ``python3``. Its syntax is that of Python 3.6; before 3.8 (no ``os.posix_spawn``) it
starts programs with fork/exec; the zygote needs 3.7.

Two ways to run it::

    python3 -I -S chaperone.py RUN_DIR [--notify-fd N]   one program, as RUN_DIR/spec.json says
    python3 -I -S chaperone.py --zygote FD               a fork server on a SOCK_SEQPACKET socket

The first detaches (fork, the parent exits at once, the child calls ``setsid``), so the chaperone
is nobody's child to reap and outlives whoever started it. The second is for a runtime that
launches many programs: the interpreter starts once, and each request on the socket (a JSON
``{"run_dir", "spec"}`` plus one notify fd passed with SCM_RIGHTS) forks a chaperone in its own
session. The zygote ignores SIGCHLD, so the kernel reaps those children; it exits when the
socket reaches end of file (its runtime closed it or died).

Rule 1: one run dir, one program, ever. The chaperone claims RUN_DIR by creating
``chaperone.pid`` with ``link`` (which fails if the file exists), before anything runs. A second
chaperone for the same run dir (a launch retried after a crash) answers ``claimed`` and runs
nothing.

Rule 2: the program runs in its own process group (pgid == pid), in its cgroups where the spec
names them (joined before exec), with stdin from /dev/null and stdout/stderr appended straight
to RUN_DIR/stdout and RUN_DIR/stderr: no pipe passes through the chaperone.

Rule 3: the chaperone enforces the timeout, and SIGTERM (or SIGINT) to the chaperone is a kill
request: SIGTERM to the group, SIGKILL to the group (and ``cgroup.kill``) after the grace
period (``kill.json``'s ``grace`` if the runtime wrote one, else the spec's ``kill_grace``).
Both hold while the runtime is down.

Rule 4: no orphans. Once the group leader has exited (seen with WNOWAIT, so its pid and pgid
cannot be reused yet), whatever is left in the group or the cgroups is SIGKILLed, then the
leader is reaped with ``wait4`` for its rusage, and the cgroups are removed.

Rule 5: ``exit.json`` is written last, whole (temp file, rename), then made durable (fsync of
the file and of the directory). The launcher is told between the rename and the fsyncs: a
runtime that is up records the outcome durably on its side without waiting for this disk, one
that is down finds a durable exit.json later. Only a machine crash in that window can leave an
empty exit.json, which readers take for none. A run dir with ``chaperone.pid`` whose chaperone
is gone and no exit.json is lost.

RUN_DIR files::

    spec.json      argv, cwd (null: RUN_DIR/work), env (complete), timeout (seconds or null),
                   kill_grace (seconds), cgroups (list of {"path", "before", "after"}: the
                   directory to create and join, and {file: value} settings written before the
                   program joins and after it runs), cgroup_notes (what the launcher could not
                   arrange, passed on into program.pid)
    chaperone.pid  {"pid", "start"}: start is field 22 of /proc/<pid>/stat, against pid reuse
    program.pid    {"pid", "start", "started_at", "cgroup", "cgroup_note"} (pid == pgid)
    stdout, stderr the program's output, appended
    kill.json      {"grace": seconds}, optional, written by the runtime before its SIGTERM
    exit.json      returncode, signal, utime, stime, maxrss (bytes), started_at, ended_at
                   (epoch seconds), stdout_size, stderr_size, timed_out, killed, oom_killed,
                   error (why the program did not run, or what went wrong around it)
    chaperone.log  only when the chaperone itself failed: its traceback

The notify fd receives JSON lines: first the reply, ``{"status": "started", "chaperone": ...,
"program": ...}``, ``{"status": "failed", "error": ...}`` (claimed, exit.json written: the
program could not be started), ``{"status": "invalid", "error": ...}`` (nothing claimed or
written: the cwd is missing, the spec unreadable) or ``{"status": "claimed"}``; after
``started``, ``{"status": "exited", "record": <exit.json>}`` once the program has ended. Then
it is closed. A launcher that has gone away costs the chaperone nothing.
"""

import contextlib
import gc
import json
import os
import resource  # noqa: F401 - os.wait4 imports it; loaded once in the zygote, not per fork
import signal
import sys
import time

SPEC_FILE = "spec.json"
CHAPERONE_FILE = "chaperone.pid"
PROGRAM_FILE = "program.pid"
EXIT_FILE = "exit.json"
KILL_FILE = "kill.json"
LOG_FILE = "chaperone.log"
STREAMS = ("stdout", "stderr")

#: Signals that ask the chaperone to kill its program.
KILL_REQUESTS = (signal.SIGTERM, signal.SIGINT)
#: Blocked from the start and taken with sigtimedwait: no handler ever runs.
WAITED = (signal.SIGCHLD, signal.SIGTERM, signal.SIGINT)
#: Dispositions the program must not inherit (Python ignores SIGPIPE and SIGXFSZ; the zygote
#: ignores SIGCHLD, SIGINT and SIGHUP).
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
#: How long the chaperone waits for killed cgroup members to go before it removes the cgroup.
CGROUP_DRAIN = 2.0
#: Largest zygote request (JSON), well below the socket buffer.
MAX_REQUEST = 1 << 20


def process_start(pid):
    """Field 22 of /proc/<pid>/stat (start time in clock ticks since boot), or None if gone."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as stat:
            data = stat.read()
    except OSError:
        return None
    # comm (field 2) may hold spaces and parentheses: split after the last ")".
    return int(data[data.rindex(b")") + 2 :].split()[19])


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


def json_line(value):
    """``value`` as one line of compact JSON, in bytes."""
    return (json.dumps(value, separators=(",", ":")) + "\n").encode()


def _describe(error, subject):
    """``No such file or directory: 'nosuch'``: the OS's words and what they are about."""
    reason = error.strerror or os.strerror(error.errno or 0) or repr(error)
    return f"{reason}: {subject!r}"


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


# cgroups --------------------------------------------------------------------------------


_HOMES = None  # _cgroup_homes(), computed once: in the zygote, before it forks


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


class Cgroups:
    """The program's cgroups: made, joined around the spawn, drained and removed at the end."""

    def __init__(self, entries, notes=()):
        self.entries = []  # [(path, after)] made and configured
        self.notes = list(notes)
        self.joined = []  # [(path, home)] this process is in now
        self.homes = None
        for entry in entries:
            path = entry["path"]
            try:
                os.makedirs(path, exist_ok=True)
            except OSError as error:
                self.notes.append(f"no cgroup {_describe(error, path)}")
                continue
            for name, value in sorted((entry.get("before") or {}).items()):
                self._set(path, name, value)
            self.entries.append((path, entry.get("after") or {}))

    def _set(self, path, name, value):
        try:
            with open(os.path.join(path, name), "w") as setting:
                setting.write(str(value))
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
            self.homes = _cgroup_homes()
        except OSError as error:
            self.notes.append(f"cgroups not joined: {_describe(error, '/proc/self/cgroup')}")
            return
        me = str(os.getpid())
        for path, after in list(self.entries):
            home = max(
                (home for mount, home in self.homes.items() if path.startswith(mount + "/")),
                key=len,
                default=None,
            )
            try:
                if home is None:
                    raise OSError(0, "not in a cgroup mount")
                with open(os.path.join(path, "cgroup.procs"), "w") as procs:
                    procs.write(me)
            except OSError as error:
                self.notes.append(f"cgroup not joined: {_describe(error, path)}")
                self.entries.remove((path, after))
                _rmdir(path)
                continue
            self.joined.append((path, home))

    def leave(self):
        """Move this process back home, then apply the settings that count what is inside."""
        me = str(os.getpid())
        for _path, home in self.joined:
            with open(os.path.join(home, "cgroup.procs"), "w") as procs:
                procs.write(me)
        self.joined = []
        for path, after in self.entries:
            for name, value in sorted(after.items()):
                self._set(path, name, value)

    @property
    def primary(self):
        """The cgroup to report: one with ``cgroup.kill`` if any, else the first."""
        for path, _ in self.entries:
            if os.path.exists(os.path.join(path, "cgroup.kill")):
                return path
        return self.entries[0][0] if self.entries else None

    def kill(self):
        """SIGKILL everything in the cgroups (never this process: it left before)."""
        if self.joined:
            return
        for path, _ in self.entries:
            try:
                with open(os.path.join(path, "cgroup.kill"), "w") as kill:
                    kill.write("1")
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
            for name in ("memory.events", "memory.oom_control"):
                try:
                    with open(os.path.join(path, name)) as events:
                        for line in events:
                            key, _, value = line.partition(" ")
                            if key == "oom_kill" and int(value) > 0:
                                return True
                except (OSError, ValueError):
                    continue
        return False

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


def wait_group_gone(pgid, sid, deadline):
    """Wait (until ``deadline``) for SIGKILLed members of the group to be gone: dead, if not
    yet reaped by whoever inherited them."""
    delay = 0.0005
    while True:
        try:
            os.killpg(pgid, 0)
        except ProcessLookupError:
            return  # the usual case: nobody was left
        except OSError:
            pass
        if not group_members(pgid, sid) or time.monotonic() >= deadline:
            return
        time.sleep(delay)
        delay = min(delay * 2, 0.05)


# spawning -------------------------------------------------------------------------------


def _resolve(program, env):
    """argv[0] as execvpe finds it, but on the program's PATH (posix_spawnp uses ours)."""
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


def spawn(argv, env, cwd, stdout_fd, stderr_fd):
    """Start ``argv`` in its own process group, cwd ``cwd``; return its pid.

    Raises OSError (with errno) when it cannot be started. This process's cwd is ``cwd``
    while it spawns, and back at ``/`` afterwards.
    """
    try:
        os.chdir(cwd)
    except OSError as error:
        raise OSError(error.errno, "cwd: " + (error.strerror or ""), cwd) from None
    try:
        path = _resolve(argv[0], env)
        if hasattr(os, "posix_spawn"):
            return os.posix_spawn(
                path,
                argv,
                env,
                file_actions=[
                    (os.POSIX_SPAWN_OPEN, 0, os.devnull, os.O_RDONLY, 0),
                    (os.POSIX_SPAWN_DUP2, stdout_fd, 1),
                    (os.POSIX_SPAWN_DUP2, stderr_fd, 2),
                ],
                setpgroup=0,
                setsigmask=(),
                setsigdef=RESET_IN_PROGRAM,
            )
        return spawn_with_fork(path, argv, env, stdout_fd, stderr_fd)
    finally:
        os.chdir("/")


def spawn_with_fork(path, argv, env, stdout_fd, stderr_fd):
    """fork/exec, for interpreters without ``os.posix_spawn``; exec errors come back on a pipe."""
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


# the chaperone --------------------------------------------------------------------------


class Chaperone:
    """One run: claim, spawn, supervise, record."""

    def __init__(self, run_dir, notifier):
        self.run_dir = run_dir
        self.notifier = notifier
        self.pid = None
        self.cgroups = None
        self.started_at = None
        self.timed_out = False
        self.killed = False
        self.unwritten_spec = None

    def path(self, name):
        return os.path.join(self.run_dir, name)

    def run(self, spec=None):
        """Returns the exit status for the chaperone process."""
        if spec is None:
            try:
                with open(self.path(SPEC_FILE), "rb") as spec_file:
                    spec = json.loads(spec_file.read())
            except (OSError, ValueError) as error:
                self.notifier.send({"status": "invalid", "error": f"spec.json: {error}"})
                return 2
        else:
            # Written once the program runs (or failed to): off the path of the launch.
            self.unwritten_spec = spec
        argv = [str(arg) for arg in spec["argv"]]
        cwd = spec.get("cwd")
        if cwd is not None and not os.path.isdir(cwd):
            self.notifier.send({"status": "invalid", "error": f"cwd: no such directory: {cwd!r}"})
            return 2
        os.makedirs(self.run_dir, mode=0o700, exist_ok=True)
        if cwd is None:
            cwd = self.path("work")
            os.makedirs(cwd, exist_ok=True)
        me = {"pid": os.getpid(), "start": process_start(os.getpid())}
        if not write_atomic(self.path(CHAPERONE_FILE), json_line(me), exclusive=True):
            self.notifier.send({"status": "claimed"})
            return 0
        try:
            return self.supervise(spec, argv, cwd, me)
        except BaseException as error:
            self.fail_after_claim(f"chaperone: {error!r}")
            raise

    def supervise(self, spec, argv, cwd, me):
        streams = [
            os.open(self.path(name), os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_CLOEXEC, 0o600)
            for name in STREAMS
        ]
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
            for fd in streams:
                os.close(fd)
        started = time.monotonic()
        program = {
            "pid": self.pid,
            "start": process_start(self.pid),
            "started_at": self.started_at,
            "cgroup": self.cgroups.primary,
            "cgroup_note": "; ".join(self.cgroups.notes) or None,
        }
        write_atomic(self.path(PROGRAM_FILE), json_line(program))
        self.notifier.send({"status": "started", "chaperone": me, "program": program}, final=False)
        self.write_spec()
        status, rusage = self.wait(spec, started)
        oom_killed = self.cgroups.oom_killed()
        self.cgroups.remove()  # before the record: once it exists, nothing of the run is left
        self.record(status, rusage, oom_killed)
        return 0

    def write_spec(self):
        if self.unwritten_spec is not None:
            spec, self.unwritten_spec = self.unwritten_spec, None
            write_atomic(self.path(SPEC_FILE), json_line(spec))

    def fail_after_claim(self, error):
        """The run dir is ours but the program is not running: say so in exit.json."""
        self.write_spec()
        if self.pid is not None:
            self.kill_group(signal.SIGKILL)
        if self.cgroups is not None:
            self.cgroups.remove()  # first, as in supervise: then the record says it all
        if not os.path.exists(self.path(EXIT_FILE)):
            now = time.time()
            self.write_exit(
                {
                    "returncode": None,
                    "signal": None,
                    "utime": 0.0,
                    "stime": 0.0,
                    "maxrss": 0,
                    "started_at": self.started_at or now,
                    "ended_at": now,
                    "timed_out": False,
                    "killed": False,
                    "oom_killed": False,
                    "error": error,
                },
                {"status": "failed", "error": error},
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
                return float(json.loads(kill_file.read())["grace"])
        except (OSError, ValueError, KeyError, TypeError):
            return default

    def wait(self, spec, started):
        """Until the leader exits: enforce the timeout, serve kill requests. Then no orphans."""
        grace = float(spec.get("kill_grace", 10.0))
        timeout = spec.get("timeout")
        timeout_at = None if timeout is None else started + float(timeout)
        escalate_at = None  # SIGKILL the group then; None while no kill is under way
        waited = set(WAITED)
        while True:
            if os.waitid(os.P_PID, self.pid, os.WEXITED | os.WNOHANG | os.WNOWAIT) is not None:
                break
            now = time.monotonic()
            if escalate_at is None and timeout_at is not None and now >= timeout_at:
                self.timed_out = True
                escalate_at = self.terminate(now, grace)
            elif escalate_at is not None and now >= escalate_at:
                self.kill_group(signal.SIGKILL)
                escalate_at = float("inf")
            wake_at = escalate_at if escalate_at is not None else timeout_at
            if wake_at is None:
                info = signal.sigwaitinfo(waited)
            elif wake_at == float("inf"):
                info = signal.sigtimedwait(waited, 1.0)
            else:
                info = signal.sigtimedwait(waited, max(wake_at - now, 0.0))
            if info is not None and info.si_signo in KILL_REQUESTS:
                request_grace = self.requested_grace(grace)
                self.killed = True
                if escalate_at is None:
                    escalate_at = self.terminate(time.monotonic(), request_grace)
                else:  # a second request may shorten the grace
                    escalate_at = min(escalate_at, time.monotonic() + request_grace)
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

    def record(self, status, rusage, oom_killed):
        record = {
            "returncode": os.WEXITSTATUS(status) if os.WIFEXITED(status) else None,
            "signal": os.WTERMSIG(status) if os.WIFSIGNALED(status) else None,
            "utime": rusage.ru_utime,
            "stime": rusage.ru_stime,
            "maxrss": rusage.ru_maxrss * 1024,
            "started_at": self.started_at,
            "ended_at": time.time(),
            "timed_out": self.timed_out,
            "killed": self.killed,
            "oom_killed": oom_killed,
            "error": None,
        }
        self.write_exit(record, {"status": "exited", "record": record})

    def write_exit(self, record, reply):
        """Write exit.json, tell the launcher ``reply``, then make exit.json durable.

        The launcher learns the outcome as soon as exit.json is complete and in place, without
        waiting for the disk: a runtime that is up records the outcome durably on its side,
        and one that is down finds exit.json (durable by then) when it comes back. A machine
        crash in between can leave an empty exit.json, which readers take for none.
        """
        for name in STREAMS:
            try:
                record[name + "_size"] = os.stat(self.path(name)).st_size
            except OSError:
                record[name + "_size"] = 0
        path = self.path(EXIT_FILE)
        temporary = f"{path}.{os.getpid()}.tmp"
        fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
        try:
            os.write(fd, json_line(record))
            os.rename(temporary, path)
            self.notifier.send(reply)
            os.fsync(fd)
        finally:
            os.close(fd)
        directory = os.open(self.run_dir, os.O_RDONLY | os.O_CLOEXEC)
        try:
            os.fsync(directory)
        finally:
            os.close(directory)


def run(run_dir, spec=None, notify_fd=None):
    """Be the chaperone of RUN_DIR in this process (detached already); returns an exit status."""
    if notify_fd is not None:
        os.set_inheritable(notify_fd, False)  # fds passed with SCM_RIGHTS arrive inheritable
    notifier = Notifier(notify_fd)
    signal.signal(signal.SIGHUP, signal.SIG_IGN)
    signal.signal(signal.SIGCHLD, signal.SIG_DFL)
    try:
        return Chaperone(run_dir, notifier).run(spec)
    except BaseException as error:
        _log_failure(run_dir)
        if notifier.pending:
            notifier.send({"status": "invalid", "error": f"chaperone: {error!r}"})
        return 1


def _log_failure(run_dir):
    import traceback

    try:
        with open(os.path.join(run_dir, LOG_FILE), "a") as log:
            traceback.print_exc(file=log)
    except OSError:
        pass


def _close_inherited(keep):
    """Close whatever fds the launcher let us inherit, but ``keep``: the program gets none."""
    keep = 2 if keep is None else keep
    os.closerange(3, keep)
    os.closerange(max(keep + 1, 3), os.sysconf("SC_OPEN_MAX"))


def serve_zygote(fd):
    """Fork a chaperone for each request on the socket ``fd`` until it reaches end of file."""
    import socket

    _close_inherited(fd)
    with contextlib.suppress(OSError):
        _cgroup_homes()  # the chaperones it forks sit where it sits
    # What is here now stays untouched by the garbage collector of every forked chaperone, so
    # fewer of the zygote's pages are copied on write.
    gc.freeze()
    server = socket.socket(fileno=fd)
    server.setblocking(True)
    signal.signal(signal.SIGCHLD, signal.SIG_IGN)  # the kernel reaps our children
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the runtime's Ctrl-C is not for us
    signal.signal(signal.SIGHUP, signal.SIG_IGN)
    fd_size = 4  # one C int per passed fd
    while True:
        try:
            data, ancillary, _, _ = server.recvmsg(MAX_REQUEST, socket.CMSG_SPACE(fd_size))
        except InterruptedError:
            continue
        except OSError:
            return 1
        if not data:
            return 0
        fds = []
        for level, kind, payload in ancillary:
            if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
                count = len(payload) // fd_size
                fds.extend(
                    int.from_bytes(payload[i * 4 : i * 4 + 4], sys.byteorder) for i in range(count)
                )
        notify_fd = fds[0] if fds else None
        for extra in fds[1:]:
            os.close(extra)
        pid = os.fork()
        if pid == 0:
            status = 1
            try:
                signal.pthread_sigmask(signal.SIG_BLOCK, WAITED)
                os.setsid()
                server.close()
                request = json.loads(data)
                status = run(request["run_dir"], request["spec"], notify_fd)
            finally:
                os._exit(status)
        if notify_fd is not None:
            os.close(notify_fd)


def main(argv):
    if len(argv) == 2 and argv[0] == "--zygote":
        return serve_zygote(int(argv[1]))
    if len(argv) == 1:
        notify_fd = None
    elif len(argv) == 3 and argv[1] == "--notify-fd":
        notify_fd = int(argv[2])
    else:
        sys.stderr.write("usage: chaperone.py RUN_DIR [--notify-fd N] | --zygote FD\n")
        return 2
    # Blocked before anything else: a kill request must wait for us, never kill us.
    signal.pthread_sigmask(signal.SIG_BLOCK, WAITED)
    if os.fork():
        os._exit(0)  # the launcher reaps this intermediate process at once
    os.setsid()
    _close_inherited(notify_fd)
    return run(os.path.abspath(argv[0]), None, notify_fd)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

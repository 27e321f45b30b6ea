"""The run dir: its files, and the one reader and writer of each (chaperones, the remote
helper and the local backend all go through here).

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
    result.json    written by the program, if at all: one JSON value, its result
                   (``$CORRA_RESULT`` names it; read by the runtime once the program ended)
    status.jsonl   appended by the program, if at all: JSON lines, its status updates
                   (``$CORRA_STATUS`` names it). Both variables are set by every chaperone
                   and wrapper (`data_environment`), over whatever env gave them
    kill.json      own only, optional: {"grace": seconds}, written by the runtime before its
                   SIGTERM
    exit.json      returncode, signal, utime, stime, maxrss (the program's peak resident set
                   in bytes, or null where unknown: see ``program_peak``), started_at, ended_at
                   (epoch seconds), stdout_size, stderr_size, stdout_dropped, stderr_dropped
                   (bytes past output_limit, dropped: see ``OutputLimit``), timed_out, killed,
                   oom_killed, error (why the program did not run, or what went wrong around
                   it)
    chaperone.log  only when an own chaperone itself failed: its traceback

The exit record's temporary file is made with a block of its own (``posix_fallocate``), and
written in place: the record of a program that filled the disk still gets written. It is
written last, whole (temp file, rename), then made durable; an empty exit.json (what a machine
crash can leave of one not yet flushed) is read as none.

ROOT files (shared)::

    .chaperone.pid   {"pid", "start"} of the chaperone serving ROOT, flocked while it serves
    .chaperone.sock  its socket (reached as /proc/self/fd/N/.chaperone.sock when the path is
                     too long for a socket address)
    .env-<sha1>.json an environment runtimes said hello with
    .spares-<pid>/   spare run dirs (<slot>/run), while chaperone <pid> serves
    .chaperone.log   only when it failed: its traceback
"""

import contextlib
import errno
import json
import os
import sys
import time

from . import _proc
from ._wrapper import (  # noqa: F401 (the run dir's files: defined where wrappers have them)
    RESULT_FILE,
    RESULT_VARIABLE,
    STATUS_FILE,
    STATUS_VARIABLE,
    data_environment,
)
from .protocol import json_line, seconds

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
#: Where a runtime may name ROOT to the shared chaperone, rather than on its command line.
ROOT_VARIABLE = "CORRA_CHAPERONE_ROOT"
#: Where the shared chaperone's spare run dirs are (a suffix: its pid).
SPARES_PREFIX = ".spares-"
#: Bytes set aside for the exit record's temporary file, so that it can be written on a full
#: disk (a record is a few hundred bytes; a longer one needs a block more).
EXIT_RESERVE = 4096
#: The longest any wait of a chaperone lasts (a deadline further away, however far, is looked
#: at again then: no timeout or grace can overflow a wait); also how soon it notices that its
#: root was removed.
LONGEST_WAIT = 1.0

# states of a run dir (`status`)
RUNNING = "running"
EXITED = "exited"
LOST = "lost"


# writing ----------------------------------------------------------------------------------


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
        unlink(temporary)
        raise
    return True


def unlink(path):
    with contextlib.suppress(OSError):
        os.unlink(path)


def write_kill_request(run_dir, grace):
    """kill.json: the grace an own chaperone gives its program on the SIGTERM that follows."""
    write_atomic(os.path.join(run_dir, KILL_FILE), json_line({"grace": grace}))


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
    """Add the output's sizes (and what ``output``, an ``OutputLimit``, dropped) to ``record``
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
        unlink(temporary)
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


# reading ----------------------------------------------------------------------------------


def read_json(path):
    """The JSON in ``path``; None if there is no such file, or an empty one (what a machine
    crash can leave of a file written but not yet fsynced). Raises OSError (unreadable) or
    ValueError (not JSON)."""
    try:
        with open(path, "rb") as file:
            data = file.read()
    except FileNotFoundError:
        return None
    return json.loads(data.decode("utf-8")) if data else None


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


def claim_of(run_dir):
    """(claim, program) of a run dir, from ``chaperone.pid`` (and ``program.pid`` for an own
    chaperone); (None, None) if it was never claimed. Raises OSError or ValueError for a file
    that cannot be read."""
    try:
        with open(os.path.join(run_dir, CHAPERONE_FILE), "rb") as file:
            claim, program = read_claim(file.read())
    except FileNotFoundError:
        return None, None
    if claim is not None and not claim.get("shared"):
        program = read_json(os.path.join(run_dir, PROGRAM_FILE))
    return claim, program


def read_exit(run_dir):
    """exit.json's record, or None while there is none (see `read_json` for errors)."""
    return read_json(os.path.join(run_dir, EXIT_FILE))


def exited(run_dir):
    """Whether exit.json is in place (and not empty: see `read_json`)."""
    try:
        return os.stat(os.path.join(run_dir, EXIT_FILE)).st_size > 0
    except FileNotFoundError:
        return False


def status(run_dir, chaperone_pid, chaperone_start):
    """`EXITED` (there is an exit record), `RUNNING` (its chaperone, the process ``pid``
    that started at ``start``, runs) or `LOST` (its chaperone is gone, or its pid is another
    process's now, and left no record). Reads only (/proc and the run dir)."""
    if exited(run_dir):
        return EXITED
    if _proc.alive(chaperone_pid, chaperone_start):
        return RUNNING
    # exit.json may have landed between our two looks: the chaperone writes it, then exits.
    return EXITED if exited(run_dir) else LOST


def requested_grace(run_dir, default):
    """kill.json's grace, or ``default`` where there is none that makes sense."""
    try:
        with open(os.path.join(run_dir, KILL_FILE), "rb") as kill_file:
            return seconds(json.loads(kill_file.read())["grace"], "grace")
    except (OSError, ValueError, KeyError, TypeError, RecursionError):
        return default


def save_env(root, env):
    """Write the environment programs start from once (``.env-<sha1>.json`` in ROOT, named by
    its content), rather than into every claim; its name."""
    import hashlib

    data = json_line(env)
    name = f".env-{hashlib.sha1(data).hexdigest()}.json"
    path = os.path.join(root, name)
    if not os.path.exists(path):
        with contextlib.suppress(OSError):
            write_atomic(path, data)
    return name


def lock_root(root, patience):
    """An fd on ``ROOT/.chaperone.pid`` holding an exclusive flock, or None if another
    chaperone holds it for longer than ``patience`` seconds (one that is leaving lets go
    soon)."""
    import fcntl

    fd = os.open(os.path.join(root, DAEMON_FILE), os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
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


def socket_address(root, root_fd):
    """The address of ROOT's socket; through ``root_fd`` (a directory fd on ROOT) when the
    path is too long for ``sun_path``."""
    path = os.path.join(root, SOCKET_FILE)
    if len(os.fsencode(path)) < 100:
        return path
    return f"/proc/self/fd/{root_fd}/{SOCKET_FILE}"


# the directory a chaperone works in -------------------------------------------------------


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


def bounded(delay):
    """A wait of ``delay`` seconds (None: until something happens) that no wait call refuses, and
    that ends in time to look at the root again: at most `LONGEST_WAIT`, at least 0, whatever
    the deadline it came from (infinite, huge, NaN)."""
    if delay is None or delay != delay:  # None, NaN
        return LONGEST_WAIT
    return min(max(delay, 0.0), LONGEST_WAIT)


# what went wrong --------------------------------------------------------------------------


def describe(error, subject):
    """``No such file or directory: 'nosuch'``: the OS's words and what they are about."""
    reason = error.strerror or os.strerror(error.errno or 0) or repr(error)
    return f"{reason}: {subject!r}"


def say(path, message):
    """Tell whoever looks: ``path`` (a log) if it can still be written, and stderr."""
    line = f"corra chaperone {os.getpid()}: {message}\n"
    with contextlib.suppress(OSError):
        fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            os.write(fd, line.encode(errors="replace"))
        finally:
            os.close(fd)
    with contextlib.suppress(OSError, ValueError, AttributeError):  # stderr may be closed
        sys.stderr.write(line)
        sys.stderr.flush()


def log_failure(path):
    """Append the traceback being handled to ``path`` (a chaperone's log)."""
    import traceback

    try:
        with open(path, "a") as log:
            traceback.print_exc(file=log)
    except OSError:
        pass

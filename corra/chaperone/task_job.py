"""A HyperQueue task's program wrapper: claims the run dir, runs the program as a chaperone
would (its own process group, killed as a group, its exit recorded).

HyperQueue runs, as the task's program, `argv`'s command (`source`: `_escalation`'s text,
`_wrapper`'s, then this file's: self-contained, no imports but the standard library's):

    python3 -I -S -c SOURCE RUN_DIR GRACE TIMEOUT -- PROGRAM...

GRACE is the spec's ``kill_grace`` (seconds), TIMEOUT its timeout (seconds, or ``-``).

Rule 1: exactly once. The program runs only if this task created ``RUN_DIR/claim.json``
(`claim`: written whole and exclusively, a hard link of a complete temp file). A task that
finds a claim (a resubmission of the same attempt, or corra's kill before the task started)
exits 0 at once and writes nothing; one that finds its own earlier run's (HyperQueue runs a
task again when its worker is lost) exits `FAILED`, saying so.

Rule 2: a kill that came before the program started (``RUN_DIR/kill.json``, or the
scheduler's SIGTERM/SIGINT while it claimed) is recorded as a kill, and nothing runs.

Rule 3: the program runs in its own process group, this process's child for as long as it
runs, with stdin from /dev/null and stdout/stderr into ``RUN_DIR/stdout`` and
``RUN_DIR/stderr`` (the user's only). It is ended as `_escalation.Escalation` says: a
``kill.json`` (looked for every `KILL_POLL` seconds, and on a SIGTERM) with its grace (a
second may only shorten it), the timeout with GRACE, SIGTERM to this process (the
scheduler's kill, without a ``kill.json``) with GRACE, SIGINT (HyperQueue's stop, which
SIGKILLs this process a second later) with at most `HQ_STOP_GRACE`. Once its leader has
ended, whatever is left in its group is SIGKILLed (`_wrapper.reap`).

Rule 4: the exit record, ``RUN_DIR/exit.json`` (written whole), as `batch_job`'s:
``returncode`` or ``signal``, ``started_at``, ``ended_at``, ``timed_out``, ``killed`` (corra
asked: there was a kill.json). This process exits as a shell would have: the program's
status, or 128 plus its signal (127/126 for a program that could not start), or `FAILED`
when it ran nothing (bad arguments, the run dir is gone, a lost run's claim), with the reason
on stderr.

Or shipped once (`ship`: ``task_job_<digest>.py`` in a directory of the run root) and
imported by every task (`argv`'s ``library``): compiled once per Python rather than at every
start, and a short command per job (`_library`).

Its syntax is Python 3.6's, as the chaperone's.
"""

import errno
import posix  # (not os: see _wrapper's docstring)
import signal
import sys
import time

if __package__:  # imported (corra.chaperone.task_job); a task's source has _wrapper's first
    import os  # (corra's side only: `ship`, `argv`)

    from . import _library
    from ._wrapper import (
        KILL_FILE,
        KILL_REQUESTS,
        LONGEST_WAIT,
        Job,
        add_data_environment,
        exists,
        join,
        json_line,
        reap,
        requested_grace,
        shell_status,
        sources,
        spawn,
        write_record,
    )

CLAIM_FILE = "claim.json"
EXIT_FILE = "exit.json"
STDOUT_FILE = "stdout"
STDERR_FILE = "stderr"
#: TIMEOUT when there is none.
NO_TIMEOUT = "-"
#: How often kill.json is looked for while the program runs (seconds).
KILL_POLL = 0.2
#: Blocked from the start and taken with sigtimedwait: no handler ever runs.
WAITED = (signal.SIGCHLD, *KILL_REQUESTS)
#: How HyperQueue stops a task (its cancel, its worker's or server's end): SIGINT to the
#: wrapper's process group, and SIGKILL to it one second later, which would leave the
#: program's group (a group of its own) running without its wrapper. So a SIGINT's grace is
#: at most `HQ_STOP_GRACE`: the group is killed and the record written within that second.
HQ_STOP = signal.SIGINT
HQ_STOP_GRACE = 0.5
#: After HyperQueue's stop, how long the SIGKILLed group is waited for (rather than
#: `_wrapper.GROUP_DRAIN`), so that the record is written within that second.
HQ_STOP_DRAIN = 0.3
#: This wrapper's status when it could not claim, and ran nothing (as coreutils' ``env``
#: and ``timeout`` say that they themselves failed).
FAILED = 125
#: Where a file system has no hard links, `claim` falls back to O_EXCL.
NO_LINKS = (errno.EPERM, errno.EOPNOTSUPP, errno.ENOSYS, errno.EMLINK)


def main(argv):
    try:
        run_dir, grace, timeout, program = parse(argv)
    except ValueError as error:
        return failed(f"corra task: {error}")
    signal.pthread_sigmask(signal.SIG_BLOCK, WAITED)
    try:
        if not claim(run_dir, claim_record()):
            return found_claim(run_dir)
        stdio = open_stdio(run_dir)
    except OSError as error:
        path = error.filename or join(run_dir, CLAIM_FILE)
        return failed(f"corra task: {path}: {error.strerror or error}")
    before = killed_before_start(run_dir)
    if before is not None:
        write_record(join(run_dir, EXIT_FILE), before)
        return shell_status(None, before["signal"])
    add_data_environment(run_dir)  # ($CORRA_RESULT, $CORRA_STATUS)
    started_at = time.time()
    job = Job(spawn(program, stdio), grace)
    for fd in stdio:
        posix.close(fd)
    stopped = watch(job, run_dir, timeout)
    code, number = reap(job, HQ_STOP_DRAIN) if stopped else reap(job)
    record = {
        "returncode": code,
        "signal": number,
        "started_at": started_at,
        "ended_at": time.time(),
        "timed_out": job.timed_out,
        "killed": job.killed,
    }
    write_record(join(run_dir, EXIT_FILE), record)
    return shell_status(code, number)


def run(argv):
    """`main`, then this process's end with its status, without Python's teardown: there is
    nothing left to close or flush but the standard streams (about 1.2 ms of CPU of every
    task, measured). What a task runs."""
    status = main(argv)
    for stream in (sys.stdout, sys.stderr):
        try:  # noqa: SIM105 - no contextlib (see _wrapper's docstring)
            stream.flush()
        except (AttributeError, OSError, ValueError):  # (None, or closed: nothing to flush)
            pass
    posix._exit(status)


def parse(argv):
    """``RUN_DIR GRACE TIMEOUT -- PROGRAM...``: (run_dir, grace, timeout or None, program)."""
    if len(argv) < 5 or argv[3] != "--":
        raise ValueError("usage: RUN_DIR GRACE TIMEOUT -- PROGRAM...")
    if not argv[0].startswith("/"):  # (relative: it would be the task's cwd's)
        raise ValueError(f"RUN_DIR: expected an absolute path, got {argv[0]!r}")
    grace = float(argv[1])
    timeout = None if argv[2] == NO_TIMEOUT else float(argv[2])
    if not 0.0 <= grace < float("inf"):
        raise ValueError(f"GRACE: expected seconds >= 0, got {argv[1]!r}")
    if timeout is not None and not 0.0 < timeout < float("inf"):
        raise ValueError(f"TIMEOUT: expected seconds > 0 or {NO_TIMEOUT}, got {argv[2]!r}")
    return argv[0], grace, timeout, argv[4:]


def failed(message):
    sys.stderr.write(message + "\n")
    return FAILED


def claim_record():
    """Who claims: the task (HyperQueue's job and task ids, and which run of the task: one
    is run again when its worker is lost), where, and when."""
    return {
        "job_id": environ("HQ_JOB_ID"),
        "task_id": environ("HQ_TASK_ID"),
        "instance_id": environ("HQ_INSTANCE_ID"),
        "host": posix.uname()[1],
        "pid": posix.getpid(),
        "claimed_at": time.time(),
    }


def environ(name):
    """``os.environ.get(name)``: the variable, decoded as os decodes it, or None."""
    value = posix.environ.get(name.encode())
    return None if value is None else value.decode(sys.getfilesystemencoding(), "surrogateescape")


def found_claim(run_dir):
    """This task's status when the run dir was claimed already: 0 (nothing to do) where
    another job claimed it (a resubmission) or corra did (a kill before the start); `FAILED`,
    and why on stderr, where an earlier run of this very task did: HyperQueue runs a task
    again when its worker was lost, and the program was lost with it."""
    import json  # (only here: see _wrapper's docstring)

    path = join(run_dir, CLAIM_FILE)
    try:
        with open(path, "rb") as claim_file:
            claimed = json.loads(claim_file.read().decode())
        job_id, task_id = claimed.get("job_id"), claimed.get("task_id")
    except (OSError, ValueError, AttributeError, RecursionError):
        return 0  # (not a claim of ours: nothing to say of it)
    here = environ("HQ_JOB_ID"), environ("HQ_TASK_ID")
    if job_id is None or (job_id, task_id) != here:
        return 0
    return failed(
        f"corra task: {path}: claimed by an earlier run of this task "
        f"(instance {claimed.get('instance_id')}), which was lost: not run again"
    )


def claim(run_dir, record):
    """Create ``RUN_DIR/claim.json`` holding ``record``, unless there is one: whether this call
    created it. Readers see no claim or a whole one (a complete temp file, hard-linked to its
    name: the link fails if the name exists, on NFS too), and it is on disk before the
    program starts. Raises OSError (the run dir is gone, say)."""
    path = join(run_dir, CLAIM_FILE)
    if _lexists(path):
        return False  # the usual way a resubmission finds it: no temp file to make
    data = json_line(record).encode()
    temp = f"{path}.{posix.urandom(8).hex()}.tmp"
    try:
        fd = posix.open(temp, posix.O_WRONLY | posix.O_CREAT | posix.O_EXCL, 0o600)
    except OSError as error:  # (said of the claim: the temp file is ours alone)
        raise OSError(error.errno, error.strerror, path) from None
    try:
        _write_all(fd, data)
        posix.fsync(fd)
    finally:
        posix.close(fd)
    try:
        posix.link(temp, path)
    except FileExistsError:
        return False
    except OSError as error:
        if error.errno not in NO_LINKS:
            raise
        return _claim_exclusively(path, data)
    finally:
        _unlink(temp)
    _sync_dir(run_dir)
    return True


def _claim_exclusively(path, data):
    """`claim` where there are no hard links: O_EXCL (a reader may see it empty a moment)."""
    try:
        fd = posix.open(path, posix.O_WRONLY | posix.O_CREAT | posix.O_EXCL, 0o600)
    except FileExistsError:
        return False
    try:
        _write_all(fd, data)
        posix.fsync(fd)
    finally:
        posix.close(fd)
    return True


def _write_all(fd, data):
    while data:
        data = data[posix.write(fd, data) :]


def _lexists(path):
    """``os.path.lexists``: whether ``path`` is there (a link, even a dangling one)."""
    try:
        posix.lstat(path)
    except (OSError, ValueError):
        return False
    return True


def _unlink(path):
    try:  # noqa: SIM105 - no contextlib (see _wrapper's docstring)
        posix.unlink(path)
    except OSError:
        pass


def _sync_dir(path):
    """fsync a directory, where the file system lets us (the claim's name is durable)."""
    try:
        fd = posix.open(path, posix.O_RDONLY)
    except OSError:
        return
    try:
        posix.fsync(fd)
    except OSError:
        pass
    finally:
        posix.close(fd)


def open_stdio(run_dir):
    """The program's stdin (/dev/null), stdout and stderr (``RUN_DIR/stdout``, ``stderr``:
    new, the user's only) as fds."""
    fds = [posix.open("/dev/null", posix.O_RDONLY)]
    try:
        for name in (STDOUT_FILE, STDERR_FILE):
            flags = posix.O_WRONLY | posix.O_CREAT | posix.O_TRUNC | posix.O_APPEND
            fds.append(posix.open(join(run_dir, name), flags, 0o600))
    except OSError:
        for fd in fds:
            posix.close(fd)
        raise
    return fds


def killed_before_start(run_dir):
    """The exit record of a kill that came before the program started (a kill.json, or a
    SIGTERM/SIGINT taken while blocked), or None."""
    pending = [number for number in KILL_REQUESTS if number in signal.sigpending()]
    if not pending and not exists(join(run_dir, KILL_FILE)):
        return None
    now = time.time()
    return {
        "returncode": None,
        "signal": int(pending[0]) if pending else int(signal.SIGTERM),
        "started_at": now,
        "ended_at": now,
        "timed_out": False,
        "killed": not pending or exists(join(run_dir, KILL_FILE)),
    }


def watch(job, run_dir, timeout):
    """Until ``job``'s leader has ended: kill.json every `KILL_POLL` seconds, the timeout,
    SIGTERM/SIGINT, and the escalation they started. Whether HyperQueue stopped the task."""
    stopped = False
    now = time.monotonic()
    deadline = float("inf") if timeout is None else now + timeout
    next_look = now + KILL_POLL
    while not job.ended:
        now = time.monotonic()
        if now >= deadline:
            job.time_out(now)
            deadline = float("inf")
        if now >= next_look:
            requested = kill_request(run_dir, job.grace)
            if requested is not None:
                job.kill(now, requested)
            next_look = now + KILL_POLL
        job.escalate(now)
        escalate_at = float("inf") if job.escalate_at is None else job.escalate_at
        wait = min(next_look, deadline, escalate_at) - now
        info = signal.sigtimedwait(WAITED, min(max(wait, 0.0), LONGEST_WAIT))
        if info is None or info.si_signo == signal.SIGCHLD:
            continue
        requested = kill_request(run_dir, job.grace)
        grace = job.grace if requested is None else requested
        if info.si_signo == HQ_STOP:
            grace = min(grace, HQ_STOP_GRACE)
            stopped = True
        if requested is None:  # not corra's kill: the scheduler's own, or someone's
            job.request(time.monotonic(), grace)
        else:
            job.kill(time.monotonic(), grace)
    return stopped


def kill_request(run_dir, grace):
    """The grace of corra's kill request (``grace`` where kill.json names none that makes
    sense), or None while there is no kill.json."""
    if not exists(join(run_dir, KILL_FILE)):
        return None
    requested = requested_grace(run_dir)
    return grace if requested is None else requested


_source = None
_module = None


def source() -> str:
    """What a task runs: `_escalation`'s source, `_wrapper`'s, then this module's."""
    global _source
    if _source is None:
        _source = sources("_escalation.py", "_wrapper.py", "task_job.py")
    return _source


def module_name() -> str:
    """The name of the shipped module: ``task_job_`` and a digest of `source`."""
    global _module
    if _module is None:
        _module = _library.module_name("task_job_", source())
    return _module


def ship(directory: "str | os.PathLike[str]") -> str:
    """Write `source` into ``directory`` as a module, ``<module_name>.py``, unless it is
    there (`_library.ship`: 0600, written whole; the directory and its ``__pycache__``
    0700). The library to give `argv` (``directory``, as a str).

    Raises:
        OSError: the directory or the module cannot be made.
    """
    directory = os.fspath(directory)
    _library.ship(directory, module_name(), source())
    return directory


def argv(
    run_dir: "str | os.PathLike[str]",
    grace: float,
    timeout: "float | None",
    program: "list[str] | tuple[str, ...]",
    python: str = "python3",
    *,
    library: "str | os.PathLike[str] | None" = None,
) -> "list[str]":
    """The command a HyperQueue task runs: ``python -I -S -c SOURCE RUN_DIR GRACE TIMEOUT --
    PROGRAM...``, which runs ``program`` under this wrapper in ``run_dir`` (shared with corra);
    with a ``library``, `_library.LAUNCHER` (which imports the shipped wrapper) in place of SOURCE.

    Args:
        run_dir: the attempt's run dir, as the workers see it.
        grace: the spec's kill_grace (seconds >= 0): for a timeout, and the scheduler's kill.
        timeout: seconds (> 0) the program may run, or None.
        program: the program and its arguments.
        python: the workers' python3.
        library: a directory the wrapper was shipped to (`ship`), as the workers see it.

    Raises:
        ValueError: a run dir or library that is not absolute, or a grace, timeout or
            program that makes no sense.
    """
    if not os.path.isabs(run_dir):
        raise ValueError(f"run_dir: expected an absolute path, got {os.fspath(run_dir)!r}")
    if library is not None and not os.path.isabs(library):
        raise ValueError(f"library: expected an absolute path, got {os.fspath(library)!r}")
    if not 0.0 <= grace < float("inf"):
        raise ValueError(f"grace: expected seconds >= 0, got {grace!r}")
    if timeout is not None and not 0.0 < timeout < float("inf"):
        raise ValueError(f"timeout: expected seconds > 0 or None, got {timeout!r}")
    if not program:
        raise ValueError("program: expected at least the program's name")
    limit = NO_TIMEOUT if timeout is None else repr(float(timeout))
    if library is None:
        program_text = source()
    else:
        program_text = _library.launcher(os.fspath(library), module_name(), FAILED)
    command = [python, "-I", "-S", "-c", program_text, os.fspath(run_dir), repr(float(grace))]
    return [*command, limit, "--", *program]


if __name__ == "__main__":
    run(sys.argv[1:])

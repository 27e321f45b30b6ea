"""A batch job's program, run the way a chaperone runs one: in its own process group, killed
as a group (SIGTERM, the grace, SIGKILL), its exit recorded.

A batch scheduler's job script ends by running `source` (`_escalation`'s text, then this
file's: self-contained, no imports but the standard library's):

    exec python3 -I -S -c SOURCE RUN_DIR SUFFIX GRACE TIMED PROGRAM...

Rule 1: the program is this process's child for as long as it runs. A scheduler that finds
a job's processes by descent from the job (Slurm's ``proctrack/linuxproc``) sees it, and its
own SIGKILL at the end of a cancellation (``KillWait``) reaches it. (A job script that dies
of the cancellation's SIGTERM orphans a program that ignores it: out of the scheduler's
sight, it would run on.)

Rule 2: SIGTERM (or SIGINT) is a kill request: SIGTERM to the program's group, and SIGKILL
to it once the grace is over (`_escalation.Escalation`: the chaperones' own rules), the grace
of ``RUN_DIR/kill.json`` (the backend writes it before it cancels the job) or else GRACE, the
spec's ``kill_grace``. SIGUSR1 and SIGUSR2 are passed on to the group. Once the program has
ended, whatever is left in its group is SIGKILLed before the record is written: a job ends
with its program's group.

Rule 3: the exit record, ``RUN_DIR/exit<SUFFIX>.json`` (written whole: temp file, rename;
the user's only), says how the program ended: ``returncode`` or ``signal``, ``started_at``
and ``ended_at``, ``killed`` (corra asked: there was a kill.json), ``timed_out`` (TIMED is
``timeout``: PROGRAM is coreutils' ``timeout`` before the program, and it said 124, or 137
after its SIGKILL). This process exits as a shell would have: the program's status, or 128
plus its signal.

Its syntax is Python 3.6's, as the chaperone's.
"""

import contextlib
import json
import os
import signal
import sys
import time

if __package__:  # imported (corra.chaperone.batch_job); a job's source has _escalation's first
    from ._escalation import Escalation

KILL_FILE = "kill.json"
KILL_REQUESTS = (signal.SIGTERM, signal.SIGINT)
FORWARDED = (signal.SIGUSR1, signal.SIGUSR2)
#: Blocked from the start and taken with sigtimedwait: no handler ever runs.
WAITED = (signal.SIGCHLD, *KILL_REQUESTS, *FORWARDED)
#: Ignored by Python, which the program must not inherit.
RESET_IN_PROGRAM = (signal.SIGPIPE, signal.SIGXFSZ)
#: What coreutils' ``timeout`` exits with when the time is up (137: it had to SIGKILL).
TIMED_OUT = (124, 137)
#: The longest a wait lasts before it is looked at again.
LONGEST_WAIT = 3600.0
#: The longest the program's group is waited for, once its leader has ended.
GROUP_DRAIN = 2.0


def main(argv):
    run_dir, suffix, grace, timed = argv[0], argv[1], float(argv[2]), argv[3] == "timeout"
    signal.pthread_sigmask(signal.SIG_BLOCK, WAITED)
    started_at = time.time()
    job = Job(spawn(argv[4:]), grace)
    while not job.ended:
        now = time.monotonic()
        job.escalate(now)
        wait = LONGEST_WAIT if job.escalate_at is None else job.escalate_at - now
        info = signal.sigtimedwait(WAITED, min(max(wait, 0.0), LONGEST_WAIT))
        if info is None or info.si_signo == signal.SIGCHLD:
            continue
        if info.si_signo in FORWARDED:
            job.kill_group(info.si_signo)
            continue
        requested = requested_grace(run_dir)
        if requested is None:  # not corra's kill: the scheduler's own, or someone's scancel
            job.request(time.monotonic(), grace)
        else:
            job.kill(time.monotonic(), requested)
    # The leader is a zombie: its pgid cannot be reused until it is reaped.
    pid = job.pid
    signal_group(pid, signal.SIGKILL)
    _, status = os.waitpid(pid, 0)
    drain_until = time.monotonic() + GROUP_DRAIN
    while signal_group(pid, 0) and time.monotonic() < drain_until:
        time.sleep(0.02)
    code = os.WEXITSTATUS(status) if os.WIFEXITED(status) else None
    number = os.WTERMSIG(status) if os.WIFSIGNALED(status) else None
    record = {
        "returncode": code,
        "signal": number,
        "started_at": started_at,
        "ended_at": time.time(),
        "timed_out": timed and code in TIMED_OUT and not job.killed,
        "killed": job.killed,
    }
    write_record(os.path.join(run_dir, "exit" + suffix + ".json"), record)
    return code if code is not None else 128 + number


class Job(Escalation):
    """The job's program, ended as `Escalation` says (its timeout is coreutils' ``timeout``:
    `time_out` is never called)."""

    def __init__(self, pid, grace):
        super().__init__(grace)
        self.pid = pid

    def kill_group(self, number):
        signal_group(self.pid, number)

    @property
    def ended(self):
        """Whether the leader has exited (seen with WNOWAIT: it stays to be reaped)."""
        return os.waitid(os.P_PID, self.pid, os.WEXITED | os.WNOHANG | os.WNOWAIT) is not None


def spawn(program):
    """Start ``program`` in its own process group, with this process's stdin, stdout and
    stderr (the job's); its pid. One that cannot start exits 127 (126 where it may not run),
    as a shell says it."""
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child execs or _exits
        status = 127
        try:
            os.setpgid(0, 0)
            for number in RESET_IN_PROGRAM:
                signal.signal(number, signal.SIG_DFL)
            signal.pthread_sigmask(signal.SIG_SETMASK, ())
            os.execvp(program[0], program)
        except OSError as error:
            status = 127 if isinstance(error, FileNotFoundError) else 126
            message = f"corra: {program[0]}: {error.strerror or error}\n"
            os.write(2, message.encode(errors="replace"))
        finally:
            os._exit(status)
    # As the child does, whichever runs first; one that has exec'd already is in its group.
    with contextlib.suppress(OSError):
        os.setpgid(pid, pid)
    return pid


def signal_group(pgid, number):
    """Signal the group; whether it was there to be signalled."""
    try:
        os.killpg(pgid, number)
    except OSError:  # ESRCH: the group is gone
        return False
    return True


def requested_grace(run_dir):
    """kill.json's grace, or None where there is none that makes sense (no kill came from
    corra: the scheduler's own, for a time limit say, or someone's ``scancel``)."""
    try:
        with open(os.path.join(run_dir, KILL_FILE), "rb") as kill_file:
            grace = float(json.loads(kill_file.read().decode())["grace"])
    except (OSError, ValueError, KeyError, TypeError):
        return None
    return grace if 0.0 <= grace < float("inf") else None


def write_record(path, record):
    """Write ``path`` whole (a temp file, then a rename), readable by its user only."""
    temp = path + ".tmp"
    try:
        fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as out:
            out.write(json.dumps(record) + "\n")
        os.rename(temp, path)
    except OSError as error:  # the run dir is gone: the scheduler's word is all there is
        sys.stderr.write(f"corra: {path}: {error}\n")


def source():
    """What a job script runs: `_escalation`'s source, then this module's."""
    here = os.path.dirname(os.path.abspath(__file__))
    texts = []
    for name in ("_escalation.py", "batch_job.py"):
        with open(os.path.join(here, name), encoding="utf-8") as module:
            texts.append(module.read())
    return "\n\n".join(texts)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

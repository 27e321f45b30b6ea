"""One program, from claim to exit record, as both kinds of chaperone run it.

A `Run` is claimed (its run dir is ours), spawned, maybe terminated (SIGTERM to its group, and
SIGKILL to the group and its cgroups once the grace is over: `Run.kill`, `Run.time_out`,
`Run.escalate`), reaped (its leader seen with WNOWAIT first, so that its pid and pgid cannot be
reused while whatever is left of the group is SIGKILLed), and recorded (`Run.record`). The own
chaperone drives one from a ``sigtimedwait`` loop, the shared one many from its selector loop;
the steps, and the escalation, are the same.
"""

import os
import signal
import time

from ._escalation import Escalation
from ._proc import own_peak, process_start
from ._rundir import EXIT_FILE, describe
from ._spawn import spawn

#: The most a program gets between SIGTERM and SIGKILL once its chaperone has lost its root.
LOST_ROOT_GRACE = 5.0


class Run(Escalation):
    """One program of a chaperone; ``key`` names it to the shared chaperone's clients. Its
    escalation (`kill`, `time_out`, `escalate`) is `Escalation`'s."""

    def __init__(self, run_dir, grace, key=None):
        super().__init__(grace)
        self.key = key
        self.run_dir = run_dir
        self.pid = None
        self.program = None  # what program.pid (or the claim's second line) says, once running
        self.cgroups = None  # a Cgroups or a PooledCgroup
        self.output = None  # an OutputLimit, once the program runs
        self.started_at = None
        self.status = None  # wait4's, once reaped
        self.rusage = None
        self.oom_killed = None  # measured once, after the reap
        self.peak = None
        self.subscribers = set()  # the shared chaperone's clients told of the exit
        self.drain_until = None  # the shared chaperone records at the latest then

    # starting -------------------------------------------------------------------------------

    def spawn(self, argv, env, cwd, stdout, stderr):
        """Start the program (in the cgroups the caller joined); OSError if it cannot be."""
        self.pid = spawn(argv, env, cwd, stdout, stderr)

    def describe_program(self):
        """The program as launchers and the run dir know it (`program`), once spawned."""
        self.program = {
            "pid": self.pid,
            "start": process_start(self.pid),
            "started_at": self.started_at,
            "cgroup": self.cgroups.primary,
            "cgroup_note": "; ".join(self.cgroups.notes) or None,
        }
        return self.program

    def fail(self, error):
        """The run dir is ours but the program does not run (any more): kill what started,
        remove the cgroups (first: then the record says it all); the failure record to write
        as exit.json, or None if one is there already."""
        if self.pid is not None and self.status is None:
            self.kill_group(signal.SIGKILL)
        if self.cgroups is not None:
            self.cgroups.remove()
        if os.path.exists(os.path.join(self.run_dir, EXIT_FILE)):
            return None
        return failure_record(error, self.started_at)

    # killing --------------------------------------------------------------------------------

    def signal_group(self, number):
        """Signal the program's group; whether it was there to be signalled."""
        try:
            os.killpg(self.pid, number)
        except OSError:  # ESRCH: the group is gone
            return False
        return True

    def kill_group(self, number):
        """Signal the program's group; a SIGKILL reaches its cgroups too."""
        self.signal_group(number)
        if number == signal.SIGKILL and self.cgroups is not None:
            self.cgroups.kill()

    @property
    def ended(self):
        return self.status is not None

    # ending ---------------------------------------------------------------------------------

    def reaped(self, status, rusage):
        self.status, self.rusage = status, rusage

    def measure(self):
        """Read, once, what the cgroups and wait4 say of the program (before the cgroups go)."""
        if self.oom_killed is None:
            self.oom_killed = self.cgroups is not None and self.cgroups.oom_killed()
            self.peak = program_peak(self.rusage, self.cgroups)

    def record(self):
        """exit.json's fields (all but the output's) for the program, reaped and measured."""
        return exit_record(
            self.status,
            self.rusage,
            self.started_at,
            self.timed_out,
            self.killed,
            bool(self.oom_killed),
            self.peak,
        )


def spawn_error(error, argv):
    """Why ``argv`` could not be started, in words (``No such file or directory: 'x'``)."""
    return describe(error, error.filename if error.filename is not None else argv[0])


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
    chaperone's size. So: the peak of a cgroup that held the program alone (``Cgroups.peak``),
    else ``ru_maxrss`` where it is above this process's own high-water mark now (which is at
    least what it was at the spawn: then it can only be the program's), else None.
    """
    peak = cgroups.peak() if cgroups is not None else None
    if peak is not None:
        return peak
    maxrss = rusage.ru_maxrss * 1024
    spawner = own_peak()
    return maxrss if spawner is not None and maxrss > spawner else None

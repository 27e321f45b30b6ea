"""A batch job's program, run the way a chaperone runs one: in its own process group, killed
as a group (SIGTERM, the grace, SIGKILL), its exit recorded.

A batch scheduler's job script ends by running `source` (`_escalation`'s text, `_wrapper`'s,
then this file's: self-contained, no imports but the standard library's):

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

import os
import signal
import sys
import time

if __package__:  # imported (corra.chaperone.batch_job); a job's source has _wrapper's first
    from ._wrapper import (
        KILL_REQUESTS,
        LONGEST_WAIT,
        Job,
        add_data_environment,
        reap,
        requested_grace,
        shell_status,
        sources,
        spawn,
        write_record,
    )

FORWARDED = (signal.SIGUSR1, signal.SIGUSR2)
#: Blocked from the start and taken with sigtimedwait: no handler ever runs.
WAITED = (signal.SIGCHLD, *KILL_REQUESTS, *FORWARDED)
#: What coreutils' ``timeout`` exits with when the time is up (137: it had to SIGKILL).
TIMED_OUT = (124, 137)


def main(argv):
    run_dir, suffix, grace, timed = argv[0], argv[1], float(argv[2]), argv[3] == "timeout"
    signal.pthread_sigmask(signal.SIG_BLOCK, WAITED)
    add_data_environment(run_dir)  # ($CORRA_RESULT, $CORRA_STATUS)
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
    code, number = reap(job)
    record = {
        "returncode": code,
        "signal": number,
        "started_at": started_at,
        "ended_at": time.time(),
        "timed_out": timed and code in TIMED_OUT and not job.killed,
        "killed": job.killed,
    }
    write_record(os.path.join(run_dir, "exit" + suffix + ".json"), record)
    return shell_status(code, number)


def source():
    """What a job script runs: `_escalation`'s source, `_wrapper`'s, then this module's."""
    return sources("_escalation.py", "_wrapper.py", "batch_job.py")


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

"""corra's chaperone: runs programs detached from the runtime and records how they ended.

Standard library only, and no imports from corra outside this package (its modules import each
other relatively): the package directory is also uploaded over SSH (`remote_helper`) and run
by a remote ``python3 -I -S``. Its syntax is that of Python 3.6; before 3.8 (no
``os.posix_spawnp``) it starts programs with fork/exec. A chaperone is either an *own* one,
one program's (`_own`), or the *shared* one of a root, serving every program there (`_shared`);
see `__main__` for how each is started. `batch_job` and `task_job` stand apart: scripts whose
source (`_escalation`'s text, `_wrapper`'s, then their own; nothing else of the package) a
Slurm job script carries (`batch_job`) or a HyperQueue task runs (`task_job`: it also claims
its run dir, so that a task resubmitted runs nothing; shipped once into the run root as a
module every task imports, `task_job.ship` and `_library`), which run a job's program as a
chaperone would (its own group, TERM then KILL, an exit record).

Rule 1: one run dir, one program, ever. A chaperone claims ``ROOT/<key>`` (RUN_DIR) with a
``chaperone.pid`` that names it, made exclusively, before anything runs (`_rundir` has the
files). A second launch of the same key (retried after a crash, or two at once, by either kind
of chaperone) answers ``claimed`` and runs nothing.

Rule 2: the program runs in its own process group (pgid == pid) in the chaperone's session, in
its cgroups where the spec names them (`_cgroups`), with stdin from /dev/null and
stdout/stderr appended straight to RUN_DIR/stdout and RUN_DIR/stderr (`_spawn`). The spec's
``output_limit`` is kept by cutting the files back (`_output`).

Rule 3: the chaperone enforces the timeout and kill requests: SIGTERM to the group, then
SIGKILL to the group (and ``cgroup.kill``) after the grace period (`_escalation.Escalation`:
one escalation for both kinds of chaperone (`_run.Run`), for the runtime that kills a program
whose chaperone is gone, and for a Slurm job's program (`batch_job`)).
Both hold while no runtime is connected.

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
a batch of records durable at once (``syncfs``, `_helper`). A run dir with ``chaperone.pid``
whose chaperone is gone and no exit.json is lost; its program's pid is in ``chaperone.pid``
(shared) or ``program.pid`` (own), so that whoever comes next can kill what is left of it.

Rule 6 (shared): one chaperone per ROOT (a ``flock``); it leaves when idle (see `_shared`).

Rule 7: nothing a chaperone is given ends it. Specs and requests are checked before anything is
claimed (`protocol`); no wait lasts longer than ``LONGEST_WAIT``, so no timeout or grace,
however long, overflows a wait call (a deadline further away is looked at again). But a
chaperone whose root (ROOT, or an own one's RUN_DIR) is removed or replaced can record nothing
any more: it kills its programs (SIGTERM, SIGKILL after at most ``LOST_ROOT_GRACE``), sends
their exit records with an ``error`` to whoever listens, and exits.
"""

import os

#: The directory to run (``python3 -I -S PACKAGE_DIR ...``) to start a chaperone.
PACKAGE_DIR = os.path.dirname(os.path.abspath(__file__))

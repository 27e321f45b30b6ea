"""The own chaperone: one program, as RUN_DIR/spec.json says, watched from a ``sigtimedwait``
loop; it exits with its program.

Started as ``python3 -I -S .../chaperone RUN_DIR [--notify-fd N]``, it detaches (fork, the
parent exits at once, the child calls ``setsid``), so it is nobody's child to reap and outlives
whoever started it. It claims RUN_DIR by linking a complete ``chaperone.pid`` into place. It
takes SIGTERM (or SIGINT) as a kill request, with ``kill.json``'s ``grace`` if the runtime wrote
one, else the spec's ``kill_grace``. It answers on the notify fd (see `protocol`), and fsyncs
the exit record and its directory itself.
"""

import json
import os
import signal
import time

from . import protocol
from ._cgroups import CGROUP_DRAIN, Cgroups
from ._output import OutputLimit
from ._proc import process_start, wait_group_gone
from ._run import LOST_ROOT_GRACE, Run, spawn_error
from ._rundir import (
    CHAPERONE_FILE,
    LOG_FILE,
    PROGRAM_FILE,
    SPEC_FILE,
    STREAMS,
    WORK_DIR,
    Root,
    bounded,
    data_environment,
    log_failure,
    put_exit,
    requested_grace,
    reserve_exit,
    say,
    sync_exit,
    write_atomic,
)
from ._spawn import open_streams
from .protocol import json_line

#: Signals that ask the chaperone to kill its program.
KILL_REQUESTS = (signal.SIGTERM, signal.SIGINT)
#: Blocked from the start and taken with sigtimedwait: no handler ever runs.
WAITED = (signal.SIGCHLD, signal.SIGTERM, signal.SIGINT)


class Notifier:
    """The lines a launcher reads: one reply, and after ``started`` the exit record."""

    def __init__(self, fd):
        self.fd = fd
        self.pending = fd is not None  # no reply sent yet

    def send(self, word, final=True, **fields):
        """Send ``{"status": word, **fields}``."""
        self.pending = False
        if self.fd is None:
            return
        message = {protocol.STATUS: word}
        message.update(fields)
        try:
            os.write(self.fd, json_line(message))  # one write of less than PIPE_BUF: atomic
        except OSError:
            final = True  # the launcher is gone; the files in the run dir say it all
        if final:
            os.close(self.fd)
            self.fd = None


class OwnChaperone:
    """One run: claim, spawn, supervise, record."""

    def __init__(self, run_dir, notifier):
        self.run_dir = run_dir
        self.notifier = notifier
        self.run = None  # the Run, once the run dir is claimed
        self.root_lost = None  # why the run dir is gone, once it is

    def path(self, name):
        return os.path.join(self.run_dir, name)

    def main(self):
        """Returns the exit status for the chaperone process."""
        try:
            with open(self.path(SPEC_FILE), "rb") as spec_file:
                spec = protocol.check_spec(json.loads(spec_file.read()), env_required=True)
        except (OSError, ValueError, RecursionError) as error:
            self.notifier.send(protocol.INVALID, error=f"spec.json: {error}")
            return 2
        cwd = spec.get("cwd")
        if cwd is not None and not os.path.isdir(cwd):
            self.notifier.send(protocol.INVALID, error=f"cwd: no such directory: {cwd!r}")
            return 2
        os.makedirs(self.run_dir, mode=0o700, exist_ok=True)
        me = {"pid": os.getpid(), "start": process_start(os.getpid())}
        if not write_atomic(self.path(CHAPERONE_FILE), json_line(me), exclusive=True):
            self.notifier.send(protocol.CLAIMED)
            return 0
        self.run = Run(self.run_dir, spec["kill_grace"])
        try:
            if cwd is None:
                cwd = self.path(WORK_DIR)
                os.makedirs(cwd, 0o700, exist_ok=True)  # (as a shared chaperone's)
            return self.supervise(spec, cwd, me)
        except BaseException as error:
            self.fail(f"chaperone: {error!r}")
            raise

    def supervise(self, spec, cwd, me):
        run = self.run
        reserve_exit(self.run_dir)
        streams = open_streams(self.run_dir)
        run.cgroups = Cgroups(spec.get("cgroups") or [], spec.get("cgroup_notes") or ())
        run.started_at = time.time()
        try:
            run.cgroups.join()
            try:
                env = dict(spec["env"])
                env.update(data_environment(self.run_dir))  # ($CORRA_RESULT, $CORRA_STATUS)
                run.spawn(spec["argv"], env, cwd, streams[0], streams[1])
            finally:
                run.cgroups.leave()
        except OSError as error:
            self.fail(spawn_error(error, spec["argv"]))
            return 1
        finally:
            if run.pid is None:
                for fd in streams:
                    os.close(fd)
        started = time.monotonic()
        # The fds stay open for the size checks (closed with the process).
        run.output = OutputLimit(streams, spec["output_limit"], started)
        program = run.describe_program()
        write_atomic(self.path(PROGRAM_FILE), json_line(program))
        self.notifier.send(protocol.STARTED, final=False, chaperone=me, program=program)
        self.wait(spec["timeout"], started)
        run.measure()
        run.cgroups.remove()  # before the record: once it exists, nothing of the run is left
        record = run.record()
        self.write_exit(record, protocol.EXITED, {"record": record}, run.output)
        run.output.close()
        return 0

    def fail(self, error):
        """The run dir is ours but the program is not running: say so in exit.json."""
        record = self.run.fail(error)
        if record is not None:
            self.write_exit(record, protocol.FAILED, {"error": error})
        self.notifier.send(protocol.FAILED, error=error)  # if exit.json was there

    def wait(self, timeout, started):
        """Until the leader exits: enforce the timeout, serve kill requests, kill the program
        if the run dir is removed. Then no orphans."""
        run = self.run
        timeout_at = None if timeout is None else started + timeout
        waited = set(WAITED)
        root = Root(self.run_dir)  # its fd is not inherited: the program has started
        while True:
            if os.waitid(os.P_PID, run.pid, os.WEXITED | os.WNOHANG | os.WNOWAIT) is not None:
                break
            now = time.monotonic()
            if self.root_lost is None:
                self.root_lost = root.lost(now)
                if self.root_lost is not None:
                    say(self.path(LOG_FILE), f"{self.root_lost}: killing the program")
                    run.kill(now, min(run.grace, LOST_ROOT_GRACE))
            if timeout_at is not None and now >= timeout_at and run.escalate_at is None:
                run.time_out(now)
            else:
                run.escalate(now)
            wake_at = run.escalate_at if run.escalate_at is not None else timeout_at
            if run.output.limit is not None:
                due = run.output.check_due(now)
                wake_at = due if wake_at is None else min(wake_at, due)
            info = signal.sigtimedwait(waited, bounded(None if wake_at is None else wake_at - now))
            if info is not None and info.si_signo in KILL_REQUESTS:
                run.kill(time.monotonic(), requested_grace(self.run_dir, run.grace))
        os.close(root.fd)
        # The leader is a zombie: its pgid cannot be reused until we reap it.
        run.kill_group(signal.SIGKILL)
        _, status, rusage = os.wait4(run.pid, 0)
        run.reaped(status, rusage)
        wait_group_gone(run.pid, os.getsid(0), time.monotonic() + CGROUP_DRAIN)

    def write_exit(self, record, word, fields, output=None):
        """Write exit.json, tell the launcher ``word`` and ``fields``, then make exit.json
        durable."""
        if self.root_lost is not None:  # nowhere to write it: the launcher may still listen
            record["error"] = f"chaperone: {self.root_lost}; the program was killed"
            for name in STREAMS:
                record.setdefault(name + "_size", 0)
                record.setdefault(name + "_dropped", 0)
            self.notifier.send(word, **fields)
            return
        fd = put_exit(self.run_dir, record, output)
        try:
            self.notifier.send(word, **fields)
        finally:
            sync_exit(fd, self.run_dir)


def run_own(run_dir, notify_fd=None):
    """Be the own chaperone of RUN_DIR in this process (detached already); an exit status."""
    notifier = Notifier(notify_fd)
    signal.signal(signal.SIGHUP, signal.SIG_IGN)
    signal.signal(signal.SIGCHLD, signal.SIG_DFL)
    try:
        return OwnChaperone(run_dir, notifier).main()
    except BaseException as error:
        log_failure(os.path.join(run_dir, LOG_FILE))
        if notifier.pending:
            notifier.send(protocol.INVALID, error=f"chaperone: {error!r}")
        return 1

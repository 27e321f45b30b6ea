"""The shared chaperone: every program of ROOT, in ROOT/<key>, watched in one event loop.

Started as ``python3 -I -S .../chaperone --serve [ROOT] [--ready-fd N] [--idle-exit SECONDS]``
(ROOT may come from ``$CORRA_CHAPERONE_ROOT`` instead, which keeps the state dir off its command
line), it detaches as an own one does, then serves launch, watch and kill requests from
runtimes on a Unix socket in ROOT (`protocol`); its programs are its own children (selectors;
SIGCHLD through ``signal.set_wakeup_fd``). It forks a helper process at the start for the slow
disk work (`Helper`). A shared chaperone costs a fraction of an own one per program (no
interpreter to start, no process of its own), but if it is SIGKILLed every program it watches
is lost, where an own chaperone loses only its own.

It claims a run dir by renaming a spare (made ahead, its ``chaperone.pid`` in it) to RUN_DIR,
which fails if RUN_DIR exists and is not empty (then it creates ``chaperone.pid`` with
``O_EXCL`` there). SIGTERM (or SIGINT) to it is a kill request for every program it runs,
after which it leaves.

One chaperone per ROOT: it holds an exclusive ``flock`` on ``ROOT/.chaperone.pid`` for its whole
life (a second one started for ROOT waits two seconds for it, then answers ``busy`` and exits).
It leaves when it has had no program and no connection for ``--idle-exit`` seconds, removing
its socket first, so that a runtime that comes then starts a new one. A runtime that
disconnects (or dies) leaves the programs running; a later connection asks for their exits
again (``watch``).
"""

import contextlib
import errno
import heapq
import os
import selectors
import signal
import socket
import time

from . import protocol
from ._cgroups import CGROUP_DRAIN, CgroupHost, CgroupPool, Cgroups, PooledCgroup
from ._clients import Clients, subscribe
from ._helper import SPARES, Helper, remove_tree
from ._output import OutputLimit
from ._proc import group_left, process_start
from ._run import LOST_ROOT_GRACE, Run, spawn_error
from ._rundir import (
    CHAPERONE_FILE,
    DAEMON_LOG,
    SOCKET_FILE,
    SPARES_PREFIX,
    STREAMS,
    WORK_DIR,
    Root,
    bounded,
    data_environment,
    describe,
    lock_root,
    log_failure,
    put_exit,
    reserve_exit,
    save_env,
    say,
    socket_address,
    unlink,
)
from .protocol import Invalid, json_line, shown

#: Seconds without programs and clients after which the shared chaperone leaves.
IDLE_EXIT = 3.0


class Server:
    """The shared chaperone of one ROOT: one event loop for every program and connection."""

    def __init__(self, root, listener, idle_exit, spares=SPARES, root_fd=None):
        self.root = root
        self.held = Root(root, root_fd)  # to notice that ROOT was removed
        self.root_lost = None  # why, once it was
        self.idle_exit = idle_exit
        self.me = {"pid": os.getpid(), "start": process_start(os.getpid())}
        self.sid = os.getsid(0)
        self.selector = selectors.DefaultSelector()
        self.runs = {}  # key -> Run, until its exit record is out
        self.children = {}  # pid -> Run, until reaped
        self.timers = []  # heap of (when, sequence, function, run)
        self.sequence = 0
        self.cgroup_host = CgroupHost()
        with contextlib.suppress(OSError):
            self.cgroup_host.homes()  # where "home" is: read now, before it sits anywhere else
        claim_line = json_line(dict(self.me, shared=True))
        self.helper = Helper(root, claim_line, spares, self.cgroup_host)
        self.pool = CgroupPool(f"{self.me['pid']}.{self.me['start']}", self.cgroup_host)
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
        self.clients = Clients(self.selector, listener, self.handle, self.guarded)
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
            for key, mask in self.selector.select(bounded(timeout)):
                self.guarded(key.data, key.fileobj, mask)
            now = time.monotonic()
            while self.timers and self.timers[0][0] <= now:
                _, _, function, run = heapq.heappop(self.timers)
                self.guarded(function, run)
            self.clients.flush_all()
            self.helper.flush()

    def guarded(self, function, *arguments):
        """Call ``function``: a bug there costs one request or one step, not every program
        this chaperone watches (its traceback goes to ROOT/.chaperone.log)."""
        try:
            function(*arguments)
        except Exception:
            log_failure(os.path.join(self.root, DAEMON_LOG))

    def leave(self, forced=False):
        """Stop serving: remove the socket first, so that a runtime arriving now starts a new
        chaperone (which waits for our lock). False if a client came in the meantime."""
        if not forced and self.clients.accept_one():
            return False
        self.clients.close()
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
        say(os.path.join(self.root, DAEMON_LOG), message)
        self.helper.unsynced = 0  # nothing left to make durable
        for client in self.clients.all():
            self.clients.send(client, {protocol.OP: protocol.STOPPING, "error": message})
        self.stopping = True
        for run in list(self.runs.values()):
            if run.pid is not None:
                self.kill(run, min(run.grace, LOST_ROOT_GRACE))

    def stop(self):
        """SIGTERM to the chaperone: kill every program, then leave."""
        self.stopping = True
        for run in list(self.runs.values()):
            if run.pid is not None:
                self.kill(run, run.grace)

    # requests ---------------------------------------------------------------------------

    def handle(self, client, request):
        op = request.get(protocol.OP)
        reply = {"id": request.get("id")}
        try:
            if op == protocol.HELLO:
                client.hello(request, self.root)
                reply.update(self.me, op=protocol.HELLO, version=protocol.PROTOCOL)
            elif client.env is None:
                reply.update(op=protocol.ERROR, error="hello first")
            elif op == protocol.ENV:
                # the runtime's environment changed
                client.env = protocol.check_env(request.get("env"))
                client.env_file = save_env(self.root, client.env)
                reply[protocol.OP] = protocol.ENV
            elif op == protocol.LAUNCH:
                reply.update(self.launch(client, request))
            elif op in (protocol.WATCH, protocol.KILL):
                key = request.get("key")
                if not isinstance(key, str):
                    raise Invalid(f"key: expected a string, got {shown(key)}")
                grace = protocol.seconds(request.get("grace"), "grace", optional=True)
                run = self.runs.get(key)
                if run is None or run.pid is None:
                    reply[protocol.OP] = protocol.UNKNOWN
                elif op == protocol.WATCH:
                    subscribe(client, run)
                    reply[protocol.OP] = protocol.WATCHING
                else:
                    self.kill(run, run.grace if grace is None else grace)
                    subscribe(client, run)  # it will want to know when that is done
                    reply[protocol.OP] = protocol.KILLING
            else:
                reply.update(op=protocol.ERROR, error=f"unknown request {shown(op)}")
        except Invalid as error:
            reply.update(op=protocol.INVALID, error=str(error))
        self.clients.send(client, reply)

    # launching --------------------------------------------------------------------------

    def launch(self, client, request):
        key = protocol.check_key(request.get("key"))
        spec = protocol.check_spec(request.get("spec"))
        run = self.runs.get(key)
        if run is not None:
            subscribe(client, run)
            return {protocol.OP: protocol.CLAIMED, "program": run.program}
        if self.stopping:
            if self.root_lost is not None:
                error = f"the chaperone's root {self.root_lost}"
                return {protocol.OP: protocol.STOPPING, "error": error}
            return {protocol.OP: protocol.STOPPING}
        env = dict(client.env)
        env.update(spec["env"])
        cwd = spec.get("cwd")
        if cwd is not None and not os.path.isdir(cwd):
            return {protocol.OP: protocol.INVALID, "error": f"cwd: no such directory: {cwd!r}"}
        run_dir = f"{self.root}/{key}"
        env.update(data_environment(run_dir))  # ($CORRA_RESULT, $CORRA_STATUS: last, ours)
        try:
            claim = self.claim(run_dir)
        except OSError as error:
            return {protocol.OP: protocol.ERROR, "error": describe(error, run_dir)}
        if claim is None:
            # by an own chaperone, or by one of ours that died
            return {protocol.OP: protocol.CLAIMED}
        run = Run(run_dir, spec["kill_grace"], key)
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
            return self.start(client, run, document, env, cwd)
        except BaseException as error:
            # Claimed, but not started: exit.json says why, so a retry raises again.
            self.fail(run, f"chaperone: {error!r}")
            log_failure(os.path.join(self.root, DAEMON_LOG))
            return {protocol.OP: protocol.FAILED, "error": f"chaperone: {error!r}"}

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

    def start(self, client, run, document, env, cwd):
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
                run.cgroups = Cgroups(entries, notes, self.cgroup_host)
                run.cgroups.join()
            try:
                run.spawn(document["argv"], env, cwd, *streams)
            finally:
                if pooled is None:
                    run.cgroups.leave()
                elif run.pid is not None:
                    self.pool.move_on(*pooled)
        except OSError as error:
            message = spawn_error(error, document["argv"])
            self.fail(run, message)
            return {protocol.OP: protocol.FAILED, "error": message}
        started = time.monotonic()
        self.children[run.pid] = run
        program = run.describe_program()
        claim = os.open(f"{run.run_dir}/{CHAPERONE_FILE}", os.O_WRONLY | os.O_APPEND | os.O_CLOEXEC)
        try:
            os.write(claim, json_line(dict(program, spec=document)))
        finally:
            os.close(claim)
        subscribe(client, run)
        if document["timeout"] is not None:
            self.at(started + document["timeout"], self.on_timeout, run)
        run.output = OutputLimit(streams, document["output_limit"], started)
        if run.output.limit is not None:
            self.at(run.output.due, self.on_output, run)
        return {protocol.OP: protocol.STARTED, "program": program}

    def fail(self, run, error):
        """Claimed but not running: exit.json says why; nobody is told but the launcher."""
        self.runs.pop(run.key, None)
        record = run.fail(error)
        if record is not None:
            os.close(put_exit(run.run_dir, record))
            self.helper.sync(run.run_dir)

    # killing ----------------------------------------------------------------------------

    def kill(self, run, grace):
        escalate_at = run.kill(time.monotonic(), grace)
        if escalate_at is not None and escalate_at != float("inf"):
            self.at(escalate_at, self.on_escalate, run)

    def on_timeout(self, run):
        escalate_at = run.time_out(time.monotonic())
        if escalate_at is not None and escalate_at != float("inf"):
            self.at(escalate_at, self.on_escalate, run)

    def on_escalate(self, run):
        run.escalate(time.monotonic())

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
                run.signal_group(signal.SIGKILL)
            try:
                _, status, rusage = os.wait4(pid, 0)
            except ChildProcessError:
                continue
            if run is not None:
                run.reaped(status, rusage)
                run.drain_until = time.monotonic() + CGROUP_DRAIN
                self.finish(run)

    def finish(self, run):
        """Record the exit once nothing of the program is left (or the drain timed out)."""
        last_chance = time.monotonic() >= run.drain_until
        if group_left(run.pid, self.sid) and not last_chance:
            self.at(time.monotonic() + 0.002, self.finish, run)
            return
        run.measure()
        if run.cgroups is not None and not run.cgroups.try_remove() and not last_chance:
            run.cgroups.kill()  # something escaped the group: it dies with the cgroup
            self.at(time.monotonic() + 0.002, self.finish, run)
            return
        record = run.record()
        try:
            os.close(put_exit(run.run_dir, record, run.output))
        except OSError:  # a full disk, say: nothing is done until the record is
            if self.root_lost is None:
                log_failure(os.path.join(self.root, DAEMON_LOG))
                self.at(time.monotonic() + 1.0, self.finish, run)
                return
            # Nowhere to write it: the runtimes connected are the only ones to learn it.
            record["error"] = f"chaperone: its root {self.root_lost}; the program was killed"
            for name in STREAMS:
                record.setdefault(name + "_size", 0)
        line = json_line({protocol.OP: protocol.EXITED, "key": run.key, "record": record})
        for client in list(run.subscribers):
            client.runs.discard(run)
            self.clients.send(client, line)
        del self.runs[run.key]
        if self.root_lost is None:
            self.helper.sync(run.run_dir)


def _ignore_signal(number, frame):
    pass


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
        lock = lock_root(root, patience=2.0)
        if lock is None:
            tell("busy")
            return 0
        root_fd = os.open(root, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        address = socket_address(root, root_fd)
        unlink(os.path.join(root, SOCKET_FILE))  # a dead predecessor's
        for name in os.listdir(root):
            if name.startswith(SPARES_PREFIX):
                remove_tree(os.path.join(root, name))  # a dead predecessor's
        listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        listener.bind(address)
        os.chmod(address, 0o600)  # connections from other users are refused anyway
        listener.listen(128)
        server = Server(root, listener, idle_exit, root_fd=root_fd)
        os.ftruncate(lock, 0)
        os.write(lock, json_line(server.me))
    except BaseException as error:
        log_failure(os.path.join(root, DAEMON_LOG))
        tell(f"error: {error!r}")
        return 1
    tell("ready")
    try:
        return server.serve()
    except BaseException:
        log_failure(os.path.join(root, DAEMON_LOG))
        raise

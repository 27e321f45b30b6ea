"""The shared chaperone's helper process: spare run dirs made ahead of need, and exit records
made durable in batches."""

import collections
import contextlib
import os
import selectors
import signal
import socket
import time

from ._cgroups import write_setting
from ._proc import close_inherited
from ._rundir import (
    CHAPERONE_FILE,
    DAEMON_LOG,
    EXIT_FILE,
    SPARES_PREFIX,
    STREAMS,
    WORK_DIR,
    log_failure,
    reserve_exit,
)

#: Seconds the shared chaperone gathers exit records before it makes them durable at once.
SYNC_INTERVAL = 0.1
#: Spare run dirs the shared chaperone keeps ready.
SPARES = 8


def _syncfs():
    """The C library's ``syncfs(fd)``, or None where there is none."""
    try:
        import ctypes

        return ctypes.CDLL(None, use_errno=True).syncfs
    except (ImportError, OSError, AttributeError):
        return None


def remove_tree(path):
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

    def __init__(self, root, claim_line, target, cgroups):
        self.root = root
        self.claim_line = claim_line
        self.target = target
        self.cgroups = cgroups  # the chaperone's CgroupHost: where home is
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
                status = _assist(self.root, theirs, self.claim_line, self.base, self.cgroups)
            except (BrokenPipeError, ConnectionResetError):
                status = 0  # the chaperone left while we answered
            except BaseException:
                log_failure(os.path.join(self.root, DAEMON_LOG))
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
        remove_tree(self.base)


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


def _assist(root, sock, claim_line, base, cgroups):  # pragma: no cover - in the helper process
    """The helper process's loop (see `Helper`)."""
    import select

    signal.set_wakeup_fd(-1)
    for number in (signal.SIGCHLD, signal.SIGTERM):
        signal.signal(number, signal.SIG_DFL)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    close_inherited(sock.fileno())
    # Forked where the chaperone sat, maybe a cgroup of its pool: never in a program's.
    with contextlib.suppress(OSError):
        for home in set(cgroups.homes().values()):
            with contextlib.suppress(OSError):
                write_setting(os.path.join(home, "cgroup.procs"), str(os.getpid()))
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
                remove_tree(path)
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

"""A real HyperQueue server and worker for the tests, in a process of their own.

`start_server` runs the wheel's `LocalCluster` (server and worker in one process) in a new
Python process on a scratch server dir, with ``cores`` cores, and waits for the ready file it
writes once the worker is added. It runs until `HqServer.stop` terminates it by its pid: then it
stops the cluster (its worker's tasks with it) and exits. In a separate process so that corra,
or a test, can be killed while HyperQueue keeps running, and the server stopped under it.

The worker runs tasks' programs with this process's environment: the venv's bin comes first on
its PATH, so that ``python3`` there is the venv's (with corra importable).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import attrs

READY_TIMEOUT = 60.0  # seconds; a loaded machine starts a server in well under one

_SERVER = """
import os, signal, sys
from pathlib import Path
from hyperqueue import LocalCluster
from hyperqueue.cluster import WorkerConfig

server_dir, ready, cores = sys.argv[1], Path(sys.argv[2]), int(sys.argv[3])

def stop(signum, frame):
    raise SystemExit(0)

# The TERM may be delivered to one of the cluster's threads, which does not wake a main
# thread in signal.pause(): the wakeup fd does (Python's handler then runs on the main thread).
wake, woken = os.pipe()
os.set_blocking(woken, False)
signal.set_wakeup_fd(woken)
signal.signal(signal.SIGTERM, stop)
cluster = LocalCluster(server_dir=server_dir)
try:
    cluster.start_worker(WorkerConfig(cores=cores))
    ready.write_text("ready")
    while True:
        os.read(wake, 1)
finally:
    print("stopping the cluster", file=sys.stderr, flush=True)
    cluster.stop()
    print("stopped", file=sys.stderr, flush=True)
"""


def available() -> str | None:
    """Why no server can be started here, or None."""
    try:
        import hyperqueue  # noqa: F401
    except ImportError:
        return "the hyperqueue wheel is not installed (pip install -e '.[test]')"
    return None


@attrs.define
class HqServer:
    """A running server (and its worker): its dir, pid and log."""

    server_dir: Path
    process: subprocess.Popen[bytes]
    log: Path

    @property
    def pid(self) -> int:
        return self.process.pid

    @property
    def running(self) -> bool:
        return self.process.poll() is None

    def stop(self, timeout: float = 15.0) -> None:
        """Terminate it by its pid (KILL if it does not exit within ``timeout``)."""
        if self.process.poll() is not None:
            return
        os.kill(self.pid, signal.SIGTERM)
        try:
            self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            os.kill(self.pid, signal.SIGKILL)
            self.process.wait()

    def kill(self) -> None:
        """SIGKILL it by its pid: the server is gone at once, as in a crash."""
        if self.process.poll() is None:
            os.kill(self.pid, signal.SIGKILL)
        self.process.wait()


def start_server(scratch: Path, *, cores: int = 2) -> HqServer:
    """Start a server and a worker with ``cores`` cores in ``scratch`` (made 0700)."""
    scratch.mkdir(mode=0o700, parents=True, exist_ok=True)
    server_dir = scratch / "server"
    server_dir.mkdir(mode=0o700, exist_ok=True)
    ready = scratch / "ready"
    ready.unlink(missing_ok=True)
    log = scratch / "server.log"
    venv_bin = str(Path(sys.executable).parent)
    env = dict(os.environ, PATH=os.pathsep.join([venv_bin, os.environ.get("PATH", "")]))
    env["RUST_BACKTRACE"] = "0"
    with open(log, "ab") as out:
        process = subprocess.Popen(
            [sys.executable, "-c", _SERVER, str(server_dir), str(ready), str(cores)],
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            env=env,
            cwd=scratch,
            start_new_session=True,  # pytest's ^C is not for it: stop() ends it
        )
    server = HqServer(server_dir=server_dir, process=process, log=log)
    deadline = time.monotonic() + READY_TIMEOUT
    while not ready.exists():
        if process.poll() is not None or time.monotonic() > deadline:
            server.kill()
            raise RuntimeError(f"the HyperQueue server did not start: {log.read_text()[-2000:]}")
        time.sleep(0.02)
    return server

"""The program of a Slurm allocation that runs a HyperQueue server and worker for corra.

    python -m corra.backends.hyperqueue._allocation_job SERVER_DIR --cpus N --idle SECONDS

It starts a HyperQueue server in ``SERVER_DIR`` (the wheel's `LocalCluster`: server and
worker in this process; the server's ``hq-current/access.json`` tells corra it is up) with a
worker of ``N`` cores, and runs until:
- no task has run for ``SECONDS`` (the tasks' wrappers are this process's children), or
- the file ``stop`` appears beside ``SERVER_DIR`` (corra ends the allocation), or
- SIGTERM or SIGINT (Slurm's cancel or time limit),
then stops the server and the worker (tasks still running die with them: corra finds them
lost, and reruns transient ones in the next allocation) and exits 0.
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
import time
from pathlib import Path

from corra.chaperone import _proc

#: A file beside the server dir that ends the allocation (corra's stop).
STOP_FILE = "stop"

#: Seconds between two looks at the children and the stop file.
LOOK = 0.5


def children(pid: int) -> int:
    """How many processes have ``pid`` as their parent."""
    return sum(
        1
        for entry in os.listdir("/proc")
        if entry.isdigit() and (fields := _proc.stat(entry)) is not None and int(fields[1]) == pid
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="corra-hyperqueue-allocation")
    parser.add_argument("server_dir", type=Path)
    parser.add_argument("--cpus", type=int, required=True)
    parser.add_argument("--idle", type=float, required=True)
    args = parser.parse_args(argv)
    from hyperqueue import LocalCluster
    from hyperqueue.cluster import WorkerConfig

    stopping = []
    for number in (signal.SIGTERM, signal.SIGINT):
        signal.signal(number, lambda signum, frame: stopping.append(signum))
    stop_file = args.server_dir.parent / STOP_FILE
    cluster = LocalCluster(server_dir=str(args.server_dir))
    try:
        cluster.start_worker(WorkerConfig(cores=args.cpus))
        print(f"corra: HyperQueue server in {args.server_dir}, {args.cpus} cores", flush=True)
        idle_since = time.monotonic()
        while not stopping and not stop_file.exists():
            if children(os.getpid()):
                idle_since = time.monotonic()
            elif time.monotonic() - idle_since >= args.idle:
                print(f"corra: no task for {args.idle:g} s: ending", flush=True)
                break
            time.sleep(LOOK)
    finally:
        cluster.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())

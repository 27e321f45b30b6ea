"""Runs one program of the echo backend, apart from it, and records how it ended.

Started as ``python -I _wrapper.py RUN_DIR`` by `corra_echo.EchoBackend.launch`, it reads
``RUN_DIR/request.json``, forks away from its launcher (so that the program outlives the
backend, as after a crash of the runtime) and then:

1. writes ``prefix`` (the echo of the options) to ``RUN_DIR/stdout``;
2. starts ``argv`` in a session and process group of its own, stdout and stderr to files;
3. writes ``RUN_DIR/started.json`` (its own and the program's pid), then closes its stdout
   and stderr, which tells the launcher it may read it;
4. waits (killing the group after ``timeout``: SIGTERM, SIGKILL ``kill_grace`` later) and
   writes ``RUN_DIR/exit.json``.

Both JSON files are written whole or not at all (a rename). The backend signals the program's
group, never this process.
"""

import contextlib
import json
import os
import signal
import subprocess
import sys
import time


def _write(run_dir, name, value):
    path = os.path.join(run_dir, name)
    with open(path + ".tmp", "w") as file:
        json.dump(value, file)
    os.replace(path + ".tmp", path)


def _start_time(pid):
    """Field 22 of /proc/<pid>/stat: tells this process from a later one with its pid."""
    with open(f"/proc/{pid}/stat", "rb") as file:
        return int(file.read().rsplit(b")", 1)[1].split()[19])


def _wait(child, request):
    try:
        return child.wait(timeout=request["timeout"]), False
    except subprocess.TimeoutExpired:
        pass
    for number, grace in ((signal.SIGTERM, request["kill_grace"]), (signal.SIGKILL, None)):
        with contextlib.suppress(ProcessLookupError):
            os.killpg(child.pid, number)
        try:
            return child.wait(timeout=grace), True
        except subprocess.TimeoutExpired:
            continue
    raise AssertionError("unreachable: a wait without timeout returns")


def main(run_dir):
    with open(os.path.join(run_dir, "request.json")) as file:
        request = json.load(file)
    if os.fork():
        os._exit(0)  # the launcher waits for this one; the program's watcher goes on
    os.setsid()
    # A handler, not SIG_IGN: what a program inherits must be the default disposition.
    signal.signal(signal.SIGTERM, lambda number, frame: None)
    with open(os.path.join(run_dir, "stdout"), "wb") as out:
        out.write(request["prefix"].encode())
    started = time.time()
    try:
        with (
            open(os.path.join(run_dir, "stdout"), "ab") as out,
            open(os.path.join(run_dir, "stderr"), "wb") as err,
        ):
            child = subprocess.Popen(
                request["argv"],
                cwd=request["cwd"],
                env=request["env"],
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=err,
                start_new_session=True,
            )
    except OSError as exc:
        _write(run_dir, "started.json", {"error": f"{request['argv'][0]}: {exc.strerror}"})
        return
    me = os.getpid()
    _write(run_dir, "started.json", {"pid": child.pid, "watcher": me, "since": _start_time(me)})
    devnull = os.open(os.devnull, os.O_RDWR)
    for fd in (1, 2):  # the launcher reads to the end of our stdout and stderr: this is it
        os.dup2(devnull, fd)
    code, timed_out = _wait(child, request)
    _write(
        run_dir,
        "exit.json",
        {
            "returncode": code if code >= 0 else None,
            "signal": -code if code < 0 else None,
            "started_at": started,
            "ended_at": time.time(),
            "timed_out": timed_out,
        },
    )


if __name__ == "__main__":
    main(sys.argv[1])

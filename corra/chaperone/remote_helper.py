"""corra's helper on a remote host: launch a chaperone, report on run dirs, kill.

The runtime uploads this package into ``~/.corra/lib/<digest>/chaperone/`` and runs it with the
host's ``python3 -I -S``. Every command prints JSON on stdout and exits 0 unless it could not
run at all; one exec over SSH per command, and no channel stays open while a program runs.

    chaperone --helper probe                   {"python": [3, 11, 2], "home": "/home/u"}
    chaperone --helper launch RUN_DIR          spec.json's content on stdin; starts the
                                               chaperone detached and prints its first reply
                                               ({"status": "started" | "failed" | "invalid" |
                                               "claimed", ...} plus "handle" when there is one)
    chaperone --helper status RUN_DIR...       a JSON list, one object per run dir: {"dir",
                                               "state": "exited" (with "record") | "running" |
                                               "lost" | "absent", "handle", "sizes"}; "sizes"
                                               maps "stdout"/"stderr" to the file's size in
                                               bytes (a stream whose file is missing is left
                                               out), read after the state: for an exited
                                               program they are its output's final sizes;
                                               "status" ({"size", "value", "error"}: its
                                               status file's end, `_status.read_tail`)
                                               where the program wrote one
    chaperone --helper kill GRACE RUN_DIR...   asks each chaperone to kill its program
                                               (kill.json, then SIGTERM); a program whose
                                               chaperone is gone is SIGKILLed by its group

Rule 1: a run dir is launched once: ``launch`` on a claimed run dir starts nothing and answers
``claimed`` with the existing handle (the chaperone's own claim decides a race).

Rule 2: the launch is synchronous up to the chaperone's first reply (a pipe passed as
``--notify-fd``), so the runtime learns ``started`` or why not in the same exec; the
chaperone's later message goes to a closed pipe, which costs it nothing.
"""

import contextlib
import json
import os
import signal
import sys

from . import _rundir, protocol
from . import _status as status_file
from ._proc import alive, process_start
from ._run import Run

#: The package directory: what ``python3 -I -S`` runs as the chaperone.
PACKAGE = os.path.dirname(os.path.abspath(__file__))
#: The state of a run dir never claimed.
ABSENT = "absent"


def _read_json(path):
    """The JSON in ``path``, or None (missing, empty, unreadable: a run dir being written)."""
    try:
        return _rundir.read_json(path)
    except (OSError, ValueError):
        return None


def _handle(run_dir):
    """What the run dir says of its chaperone and program (None before the claim)."""
    try:
        claim, program = _rundir.claim_of(run_dir)
    except (OSError, ValueError):
        return None  # (being written)
    if claim is None:
        return None
    program = program or {}
    return {
        "run_dir": run_dir,
        "chaperone_pid": claim.get("pid"),
        "chaperone_start": claim.get("start"),
        "pid": program.get("pid"),
        "program_start": program.get("start"),
        "started_at": program.get("started_at"),
    }


def _chaperone_alive(handle):
    """Whether the handle's chaperone runs (a zombie does not: it hears no SIGTERM)."""
    pid = handle["chaperone_pid"]
    return pid is not None and alive(pid, handle["chaperone_start"])


def _same(pid, start):
    """Whether ``pid`` is the process that started at ``start``."""
    return pid is not None and process_start(pid) == start


def probe():
    return {"python": list(sys.version_info[:3]), "home": os.path.expanduser("~")}


def launch(run_dir):
    spec = json.loads(sys.stdin.read())
    if _handle(run_dir) is not None:
        return _claimed(run_dir)
    if not os.path.isdir(run_dir):
        os.makedirs(run_dir, 0o700)  # (its spec.json holds the env: the user's only)
    environment = dict(os.environ)
    environment.update(spec.get("env") or {})
    spec["env"] = environment
    spec_path = os.path.join(run_dir, _rundir.SPEC_FILE)
    _rundir.write_atomic(spec_path, json.dumps(spec).encode("utf-8"))
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:
        try:
            null = os.open(os.devnull, os.O_RDWR)
            for fd in (0, 1, 2):
                os.dup2(null, fd)
            os.close(read_end)
            os.set_inheritable(write_end, True)
            argv = [sys.executable, "-I", "-S", PACKAGE, run_dir, "--notify-fd", str(write_end)]
            os.execv(sys.executable, argv)
        finally:
            os._exit(127)
    os.close(write_end)
    os.waitpid(pid, 0)  # the chaperone's first process exits at once, after its fork
    line = b""
    with os.fdopen(read_end, "rb") as reader:
        line = reader.readline()
    if not line:
        # It died before replying: if it claimed the run dir, that launch counts.
        if _handle(run_dir) is not None:
            return _claimed(run_dir)
        return {protocol.STATUS: protocol.INVALID, "error": "the chaperone exited without a reply"}
    reply = json.loads(line.decode("utf-8"))
    if reply.get(protocol.STATUS) in (protocol.STARTED, protocol.CLAIMED):
        reply["handle"] = _handle(run_dir)
    return reply


def _claimed(run_dir):
    """The answer for a run dir launched before: its handle, or why its program never ran."""
    handle = _handle(run_dir)
    record = _read_json(os.path.join(run_dir, _rundir.EXIT_FILE))
    if record is not None and record.get("error") and not handle.get("pid"):
        return {protocol.STATUS: protocol.FAILED, "error": record["error"]}
    return {protocol.STATUS: protocol.CLAIMED, "handle": handle}


def _sizes(run_dir):
    """{stream: size in bytes} of the run dir's spooled output (missing files left out)."""
    sizes = {}
    for stream in _rundir.STREAMS:
        with contextlib.suppress(OSError):
            sizes[stream] = os.stat(os.path.join(run_dir, stream)).st_size
    return sizes


def status(run_dirs):
    out = []
    for run_dir in run_dirs:
        record = _read_json(os.path.join(run_dir, _rundir.EXIT_FILE))
        handle = _handle(run_dir)
        if record is not None:
            state = _rundir.EXITED
        elif handle is None:
            state = ABSENT
        else:
            pid, start = handle["chaperone_pid"], handle["chaperone_start"]
            state = _rundir.status(run_dir, pid, start) if pid is not None else _rundir.LOST
            if state == _rundir.EXITED:  # it landed after our first look
                record = _read_json(os.path.join(run_dir, _rundir.EXIT_FILE))
                state = _rundir.EXITED if record is not None else _rundir.LOST
        entry = {"dir": run_dir, "state": state}
        if state in (_rundir.EXITED, _rundir.LOST):
            entry["record"] = record
        entry["handle"] = handle
        # After the state: once the exit record is there, the program wrote all it will.
        entry["sizes"] = _sizes(run_dir)
        found = status_file.report([run_dir], final=state != _rundir.RUNNING).get(run_dir)
        if found is not None:
            entry["status"] = found
        out.append(entry)
    return out


def kill(grace, run_dirs):
    out = []
    for run_dir in run_dirs:
        handle = _handle(run_dir)
        if handle is None:
            out.append({"dir": run_dir, "sent": "nothing"})
            continue
        if _chaperone_alive(handle):
            _rundir.write_kill_request(run_dir, grace)
            os.kill(handle["chaperone_pid"], signal.SIGTERM)
            out.append({"dir": run_dir, "sent": "chaperone"})
        elif handle["pid"] and _same(handle["pid"], handle["program_start"]):
            # Nobody is left to wait out a grace: the chaperone's escalation, at its end.
            run = Run(run_dir, 0.0)
            run.pid = handle["pid"]
            sent = run.signal_group(signal.SIGKILL)
            out.append({"dir": run_dir, "sent": "group" if sent else "nothing"})
        else:
            out.append({"dir": run_dir, "sent": "nothing"})
    return out


def main(argv):
    if argv[:1] == ["probe"]:
        result = probe()
    elif len(argv) == 2 and argv[0] == "launch":
        result = launch(argv[1])
    elif argv[:1] == ["status"]:
        result = status(argv[1:])
    elif len(argv) >= 2 and argv[0] == "kill":
        result = kill(float(argv[1]), argv[2:])
    else:
        sys.stderr.write("usage: chaperone --helper probe | launch D | status D... | kill G D...\n")
        return 2
    sys.stdout.write(json.dumps(result) + "\n")
    return 0

"""corra's helper on a remote host: launch a chaperone, report on run dirs, kill.

Standard library only, Python 3.6 syntax, no corra imports: the runtime uploads this file
beside ``chaperone.py`` (into ``~/.corra/lib/<digest>/``) and runs it with the host's
``python3 -I -S``. Every command prints JSON on stdout and exits 0 unless it could not run at
all; one exec over SSH per command, and no channel stays open while a program runs.

    remote_helper.py probe                     {"python": [3, 11, 2], "home": "/home/u"}
    remote_helper.py launch RUN_DIR            spec.json's content on stdin; starts the
                                               chaperone detached and prints its first reply
                                               ({"status": "started" | "failed" | "invalid" |
                                               "claimed", ...} plus "handle" when there is one)
    remote_helper.py status RUN_DIR...         a JSON list, one object per run dir: {"dir",
                                               "state": "exited" (with "record") | "running" |
                                               "lost" | "absent", "handle", "sizes"}; "sizes"
                                               maps "stdout"/"stderr" to the file's size in
                                               bytes (a stream whose file is missing is left
                                               out), read after the state: for an exited
                                               program they are its output's final sizes
    remote_helper.py kill GRACE RUN_DIR...     asks each chaperone to kill its program
                                               (kill.json, then SIGTERM); a program whose
                                               chaperone is gone is SIGKILLed by its group

Rule 1: a run dir is launched once: ``launch`` on a claimed run dir starts nothing and answers
``claimed`` with the existing handle (the chaperone's own claim decides a race).

Rule 2: the launch is synchronous up to the chaperone's first reply (a pipe passed as
``--notify-fd``), so the runtime learns ``started`` or why not in the same exec; the
chaperone's later message goes to a closed pipe, which costs it nothing.
"""

import json
import os
import signal
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

import chaperone  # noqa: E402


def _read_json(path):
    try:
        with open(path, "rb") as file:
            data = file.read()
    except OSError:
        return None
    if not data:
        return None
    try:
        return json.loads(data.decode("utf-8"))
    except ValueError:
        return None


def _handle(run_dir):
    """What the run dir says of its chaperone and program (None before the claim)."""
    keeper = _read_json(os.path.join(run_dir, chaperone.CHAPERONE_FILE))
    if keeper is None:
        return None
    program = _read_json(os.path.join(run_dir, chaperone.PROGRAM_FILE)) or {}
    return {
        "run_dir": run_dir,
        "chaperone_pid": keeper.get("pid"),
        "chaperone_start": keeper.get("start"),
        "pid": program.get("pid"),
        "program_start": program.get("start"),
        "started_at": program.get("started_at"),
    }


def _alive(handle):
    pid, start = handle.get("chaperone_pid"), handle.get("chaperone_start")
    return pid is not None and chaperone.process_start(pid) == start


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
    spec_path = os.path.join(run_dir, chaperone.SPEC_FILE)
    chaperone.write_atomic(spec_path, json.dumps(spec).encode("utf-8"))
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:
        try:
            null = os.open(os.devnull, os.O_RDWR)
            for fd in (0, 1, 2):
                os.dup2(null, fd)
            os.close(read_end)
            os.set_inheritable(write_end, True)
            os.execv(
                sys.executable,
                [
                    sys.executable,
                    "-I",
                    "-S",
                    os.path.join(HERE, "chaperone.py"),
                    run_dir,
                    "--notify-fd",
                    str(write_end),
                ],
            )
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
        return {"status": "invalid", "error": "the chaperone exited without a reply"}
    reply = json.loads(line.decode("utf-8"))
    if reply.get("status") in ("started", "claimed"):
        reply["handle"] = _handle(run_dir)
    return reply


def _claimed(run_dir):
    """The answer for a run dir launched before: its handle, or why its program never ran."""
    handle = _handle(run_dir)
    record = _read_json(os.path.join(run_dir, chaperone.EXIT_FILE))
    if record is not None and record.get("error") and not handle.get("pid"):
        return {"status": "failed", "error": record["error"]}
    return {"status": "claimed", "handle": handle}


def _sizes(run_dir):
    """{stream: size in bytes} of the run dir's spooled output (missing files left out)."""
    sizes = {}
    for stream in chaperone.STREAMS:
        size = _size(os.path.join(run_dir, stream))
        if size is not None:
            sizes[stream] = size
    return sizes


def _size(path):
    try:
        return os.stat(path).st_size
    except OSError:
        return None


def status(run_dirs):
    out = []
    for run_dir in run_dirs:
        record = _read_json(os.path.join(run_dir, chaperone.EXIT_FILE))
        handle = _handle(run_dir)
        if record is not None:
            entry = {"dir": run_dir, "state": "exited", "record": record, "handle": handle}
        elif handle is None:
            entry = {"dir": run_dir, "state": "absent", "handle": None}
        elif _alive(handle):
            entry = {"dir": run_dir, "state": "running", "handle": handle}
        else:
            # exit.json may have landed between our two reads
            record = _read_json(os.path.join(run_dir, chaperone.EXIT_FILE))
            state = "exited" if record is not None else "lost"
            entry = {"dir": run_dir, "state": state, "record": record, "handle": handle}
        # After the state: once the exit record is there, the program wrote all it will.
        entry["sizes"] = _sizes(run_dir)
        out.append(entry)
    return out


def kill(grace, run_dirs):
    out = []
    for run_dir in run_dirs:
        handle = _handle(run_dir)
        if handle is None:
            out.append({"dir": run_dir, "sent": "nothing"})
            continue
        if _alive(handle):
            chaperone.write_atomic(
                os.path.join(run_dir, chaperone.KILL_FILE),
                json.dumps({"grace": grace}).encode("utf-8"),
            )
            os.kill(handle["chaperone_pid"], signal.SIGTERM)
            out.append({"dir": run_dir, "sent": "chaperone"})
        elif handle.get("pid") and chaperone.process_start(handle["pid"]) == handle.get(
            "program_start"
        ):
            try:
                os.killpg(handle["pid"], signal.SIGKILL)
                out.append({"dir": run_dir, "sent": "group"})
            except OSError:
                out.append({"dir": run_dir, "sent": "nothing"})
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
        sys.stderr.write("usage: remote_helper.py probe | launch D | status D... | kill G D...\n")
        return 2
    sys.stdout.write(json.dumps(result) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

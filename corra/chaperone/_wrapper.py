"""What a scheduler's wrapper of a program shares: a Slurm job's (`batch_job`) and a
HyperQueue task's (`task_job`).

The program is the wrapper's child for as long as it runs, in a process group of its own,
ended as a group by `_escalation.Escalation`'s rules (`Job`). Once its leader has ended,
whatever is left in its group is SIGKILLed and waited for a little (`reap`): a job ends with
its program's group. The exit record is written whole (`write_record`).

Self-contained (the standard library and `_escalation` only): a wrapper's source carries
`_escalation`'s text, then this module's, then its own. Its syntax is Python 3.6's. A wrapper
starts for every task, so it imports little: no ``contextlib``, ``json`` (with ``re``,
about 5 ms of every start) only to read a kill request (records are written by `json_line`),
``_signal`` for ``signal`` (`PRELUDE`), and ``posix`` (os's C core) rather than ``os`` (about
1.2 ms of every start): ``os`` only in corra's process, where these modules are imported.
"""

import posix
import signal
import sys
import time

if __package__:  # imported; a wrapper's source has _escalation's text before this one
    import os  # (corra's side only: `sources`)

    from ._escalation import Escalation

#: corra's kill request in a run dir: ``{"grace": seconds}``.
KILL_FILE = "kill.json"
#: Where, in its run dir, a program may write its result (one JSON value) and append its
#: status (JSON lines): the files ``$CORRA_RESULT`` and ``$CORRA_STATUS`` name
#: (`data_environment`; `corra.chaperone._rundir` documents them with the other files).
RESULT_FILE = "result.json"
STATUS_FILE = "status.jsonl"
RESULT_VARIABLE = "CORRA_RESULT"
STATUS_VARIABLE = "CORRA_STATUS"
#: The scheduler's (or anyone's) kill of the wrapper itself.
KILL_REQUESTS = (signal.SIGTERM, signal.SIGINT)
#: Ignored by Python, which the program must not inherit.
RESET_IN_PROGRAM = (signal.SIGPIPE, signal.SIGXFSZ)
#: The longest a wait lasts before it is looked at again.
LONGEST_WAIT = 3600.0
#: The longest the program's group is waited for, once its leader has ended.
GROUP_DRAIN = 2.0


class Job(Escalation):
    """The wrapped program, ended as `Escalation` says."""

    def __init__(self, pid, grace):
        super().__init__(grace)
        self.pid = pid

    def kill_group(self, number):
        signal_group(self.pid, number)

    @property
    def ended(self):
        """Whether the leader has exited (seen with WNOWAIT: it stays to be reaped)."""
        flags = posix.WEXITED | posix.WNOHANG | posix.WNOWAIT
        return posix.waitid(posix.P_PID, self.pid, flags) is not None


def spawn(program, stdio=None):
    """Start ``program`` in its own process group, its pid. ``stdio``: the fds of its stdin,
    stdout and stderr, or None for this process's. One that cannot start exits 127 (126 where
    it may not run), as a shell says it, and says why on its stderr.

    With ``posix_spawnp`` (Python 3.8+): a fork copies this Python's pages for a child that
    only execs (about 1.8 ms of CPU of every start, measured); posix_spawn does not. Where it
    fails (the program cannot start: nothing ran), the program is started again by a fork
    whose child says why and exits as a shell would."""
    posix_spawnp = getattr(posix, "posix_spawnp", None)
    if posix_spawnp is not None:
        actions = [(posix.POSIX_SPAWN_DUP2, fd, target) for target, fd in enumerate(stdio or ())]
        try:  # (its group is set before it execs: no race with a kill of the group)
            return posix_spawnp(
                program[0],
                program,
                posix.environ,
                file_actions=actions,
                setpgroup=0,
                setsigmask=(),
                setsigdef=RESET_IN_PROGRAM,
            )
        except OSError:
            pass
    import os  # (for execvp's search of PATH: only here, where posix_spawnp is not)

    pid = posix.fork()
    if pid == 0:  # pragma: no cover - the child execs or _exits
        status = 127
        try:
            posix.setpgid(0, 0)
            if stdio is not None:
                for target, fd in enumerate(stdio):
                    posix.dup2(fd, target)  # inheritable: exec keeps it
            for number in RESET_IN_PROGRAM:
                signal.signal(number, signal.SIG_DFL)
            signal.pthread_sigmask(signal.SIG_SETMASK, ())
            os.execvp(program[0], program)
        except OSError as error:
            status = 127 if isinstance(error, FileNotFoundError) else 126
            message = f"corra: {program[0]}: {error.strerror or error}\n"
            try:  # noqa: SIM105 - no contextlib (see the module's docstring)
                posix.write(2, message.encode(errors="replace"))
            except OSError:
                pass
        finally:
            posix._exit(status)
    # As the child does, whichever runs first; one that has exec'd already is in its group.
    try:  # noqa: SIM105
        posix.setpgid(pid, pid)
    except OSError:
        pass
    return pid


def reap(job, drain=GROUP_DRAIN):
    """Once ``job``'s leader has ended: SIGKILL what is left of its group, reap the leader,
    wait (at most ``drain`` seconds) for the group to be gone. Its ``(returncode, signal)``."""
    # The leader is a zombie: its pgid cannot be reused until it is reaped.
    pid = job.pid
    signal_group(pid, signal.SIGKILL)
    _, status = posix.waitpid(pid, 0)
    drain_until = time.monotonic() + drain
    delay = 0.0005
    while group_alive(pid) and time.monotonic() < drain_until:
        time.sleep(delay)
        delay = min(delay * 2, 0.05)
    code = posix.WEXITSTATUS(status) if posix.WIFEXITED(status) else None
    number = posix.WTERMSIG(status) if posix.WIFSIGNALED(status) else None
    return code, number


def group_alive(pgid):
    """Whether anything is left alive in process group ``pgid``: zombies count for killpg,
    not here (an init that does not reap, in a container say, keeps the orphans' zombies)."""
    if not signal_group(pgid, 0):
        return False  # the usual case: nobody was left
    try:
        entries = posix.listdir("/proc")
    except OSError:
        return True  # no /proc to tell zombies apart
    return any(entry.isdigit() and _alive_in(entry, pgid) for entry in entries)


def _alive_in(pid, pgid):
    try:
        with open("/proc/" + pid + "/stat", "rb") as stat:
            data = stat.read()
    except OSError:
        return False  # gone meanwhile
    fields = data[data.rindex(b")") + 2 :].split()  # state, ppid, pgrp, ...
    return fields[0] not in (b"Z", b"X") and int(fields[2]) == pgid


def shell_status(code, number):
    """The status a shell would exit with: the program's, or 128 plus its signal."""
    return code if code is not None else 128 + number


def signal_group(pgid, number):
    """Signal the group; whether it was there to be signalled."""
    try:
        posix.killpg(pgid, number)
    except OSError:  # ESRCH: the group is gone
        return False
    return True


def requested_grace(run_dir):
    """kill.json's grace, or None where there is none that makes sense (no kill came from
    corra: the scheduler's own, for a time limit say, or someone's ``scancel``)."""
    import json  # (only here: see the module's docstring)

    try:
        with open(join(run_dir, KILL_FILE), "rb") as kill_file:
            grace = float(json.loads(kill_file.read().decode())["grace"])
    except (OSError, ValueError, KeyError, TypeError, RecursionError):
        return None
    return grace if 0.0 <= grace < float("inf") else None


def write_record(path, record):
    """Write ``path`` whole (a temp file, then a rename), readable by its user only."""
    temp = path + ".tmp"
    data = json_line(record).encode()
    try:
        fd = posix.open(temp, posix.O_WRONLY | posix.O_CREAT | posix.O_TRUNC, 0o600)
        try:
            while data:
                data = data[posix.write(fd, data) :]
        finally:
            posix.close(fd)
        posix.rename(temp, path)
    except OSError as error:  # the run dir is gone: the scheduler's word is all there is
        sys.stderr.write(f"corra: {path}: {error}\n")


def join(directory, name):
    """``os.path.join(directory, name)`` for a ``name`` without slashes (no ``os`` here)."""
    return directory + name if directory.endswith("/") else directory + "/" + name


def data_environment(run_dir):
    """What a program's environment gets on top of the rest (every chaperone and wrapper
    adds it last): ``$CORRA_RESULT`` and ``$CORRA_STATUS``, the absolute paths of
    `RESULT_FILE` and `STATUS_FILE` in ``run_dir``."""
    if not run_dir.startswith("/"):
        run_dir = join(posix.getcwd(), run_dir)
    return {
        RESULT_VARIABLE: join(run_dir, RESULT_FILE),
        STATUS_VARIABLE: join(run_dir, STATUS_FILE),
    }


def add_data_environment(run_dir):
    """Add `data_environment` to this process's environment, which `spawn` passes on (both
    ways it spawns: ``posix.environ``, and the C environ of a fork's exec)."""
    os = sys.modules.get("os")  # (imported or not: its environ is a copy of posix's)
    for name, value in data_environment(run_dir).items():
        encoded = value.encode("utf-8", "surrogateescape")
        posix.putenv(name, value)
        posix.environ[name.encode()] = encoded
        if os is not None:
            os.environ[name] = value


def exists(path):
    """``os.path.exists``: whether ``path`` is there (following links)."""
    try:
        posix.stat(path)
    except (OSError, ValueError):
        return False
    return True


def json_line(record):
    """A flat record (str keys; str, int, float, bool or None values) as a line of JSON, as
    ``json.dumps`` would write it (ASCII only); ValueError for what JSON cannot say."""
    items = (_json_string(key) + ": " + _json_value(value) for key, value in record.items())
    return "{" + ", ".join(items) + "}\n"


def _json_value(value):
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(int(value))
    if isinstance(value, float):
        if value != value or value in (float("inf"), float("-inf")):
            raise ValueError(f"not a JSON number: {value!r}")
        return repr(value)
    if isinstance(value, str):
        return _json_string(value)
    raise ValueError(f"not a flat JSON value: {value!r}")


#: The characters JSON escapes shortly (json.dumps's choice).
_JSON_ESCAPES = {
    '"': '\\"',
    "\\": "\\\\",
    "\n": "\\n",
    "\r": "\\r",
    "\t": "\\t",
    "\b": "\\b",
    "\f": "\\f",
}


def _json_string(text):
    out = []
    for char in text:
        code = ord(char)
        if char in _JSON_ESCAPES:
            out.append(_JSON_ESCAPES[char])
        elif 0x20 <= code < 0x7F:
            out.append(char)
        elif code > 0xFFFF:  # a surrogate pair, as JSON spells it
            high, low = 0xD800 + ((code - 0x10000) >> 10), 0xDC00 + ((code - 0x10000) & 0x3FF)
            out.append(f"\\u{high:04x}\\u{low:04x}")
        else:
            out.append(f"\\u{code:04x}")
    return '"' + "".join(out) + '"'


#: What a wrapper's source starts with: the signal module's C core as ``signal`` (the same
#: functions and numbers, as plain ints), which spares every start the import of ``enum``
#: (about 4.5 ms of CPU of a task's 25, measured). Never in an imported module.
PRELUDE = """import sys

try:
    import _signal
except ImportError:  # not CPython: the signal module as it is
    pass
else:
    sys.modules.setdefault("signal", _signal)
"""


def sources(*names):
    """`PRELUDE`, then the texts of these modules of the package, one after the other: a
    wrapper's source."""
    here = os.path.dirname(os.path.abspath(__file__))
    texts = [PRELUDE]
    for name in names:
        with open(os.path.join(here, name), encoding="utf-8") as module:
            texts.append(module.read())
    return "\n\n".join(texts)

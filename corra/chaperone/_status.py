"""A program's status: the JSON lines it appends to ``$CORRA_STATUS`` (``RUN_DIR/status.jsonl``),
and the one reader of them, used wherever the file is read (the runtime's follower of local
run dirs, the remote helper's ``status`` on a host, a Slurm poll's tail of a job's file).

A program says how far it is by appending a line, ``{"progress": 0.4, "message": "step 4 of
10"}``; corra shows the latest one.

Rule 1: only complete lines count (ended by a newline): a line being written is not one yet.
Once the program has ended (``final``), an unterminated last line counts too.

Rule 2: the latest line wins. A line is refused when it is not a JSON object, is longer than
`LINE_LIMIT` bytes, has a ``progress`` that is not a number in [0, 1] or a ``message`` that is
not a string (other keys are kept as they are). The status is then the newest line that was
not refused, and ``refusal`` says why the newest line after it was: a good line later clears
it.

Rule 3: only the last `TAIL` bytes of the file are read. What a status is depends on them
alone, so a reader keeps no offset (a remote one can ask again from scratch) and a program
that writes a million lines costs each look one bounded read.

Standard library only, Python 3.6 syntax: shipped to hosts with the chaperone.
"""

import json
import os
import sys

#: The file in a run dir (as `_rundir.STATUS_FILE` names it: this module also runs alone).
STATUS_FILE = "status.jsonl"
#: The longest line (bytes, its newline not counted) that is read as a status.
LINE_LIMIT = 4096
#: Bytes read from the end of the file: room for the longest line, several times over.
TAIL = 4 * LINE_LIMIT


def check_line(line):
    """``(value, None)`` for a line (bytes, without its newline) that is a status (Rule 2),
    else ``(None, why)``."""
    if len(line) > LINE_LIMIT:
        return None, f"a line of {len(line)} bytes (at most {LINE_LIMIT})"
    try:
        value = json.loads(line.decode("utf-8"))
    except (ValueError, RecursionError):
        return None, f"not JSON: {_shown(line)!r}"
    if not isinstance(value, dict):
        return None, f"not a JSON object: {_shown(line)!r}"
    progress = value.get("progress")
    if progress is not None and (
        isinstance(progress, bool)
        or not isinstance(progress, (int, float))
        or not 0 <= progress <= 1
    ):
        return None, f"progress: expected a number from 0 to 1, got {_shown(progress)!r}"
    message = value.get("message")
    if message is not None and not isinstance(message, str):
        return None, f"message: expected a string, got {_shown(message)!r}"
    return value, None


def _shown(value):
    """A short form of what was refused, for the refusal's text."""
    text = value.decode("utf-8", "replace") if isinstance(value, bytes) else repr(value)
    return text if len(text) <= 60 else text[:59] + "\u2026"


def latest(data, final=False):
    """``(value, refusal)`` of the end of a status file, ``data`` (its last bytes, or all of
    them): the newest line not refused (None if there is none in ``data``), and why the newest
    line after it was refused (None if none was). ``final``: the program has ended, an
    unterminated last line counts (Rule 1)."""
    lines = data.split(b"\n")
    last = lines.pop()  # after the last newline: a line being written, or b""
    if final and last.strip():
        lines.append(last)
    refusal = None
    for line in reversed(lines):
        if not line.strip():
            continue  # (blank lines say nothing)
        value, why = check_line(line.strip())
        if value is not None:
            return value, refusal
        if refusal is None:
            refusal = why
    return None, refusal


def read_tail(path, final=False, since=None):
    """``(size, value, refusal)`` of the status file ``path`` (`latest` of its last `TAIL`
    bytes), or None if there is no such file (or it cannot be read). ``since``: the size the
    caller saw last; a file of that size is not read again (``(size, None, None)``). A
    partial first line of the tail (cut by the window) is never read as a line."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except OSError:
        return None
    try:
        size = os.fstat(fd).st_size
        if since is not None and size == since:
            return size, None, None
        start = max(size - TAIL, 0)
        data = os.pread(fd, size - start, start)
    except OSError:
        return None
    finally:
        os.close(fd)
    if start > 0:
        data = data[data.find(b"\n") + 1 :] if b"\n" in data else b""
    value, refusal = latest(data, final)
    return size, value, refusal


def report(run_dirs, final=False):
    """``{run_dir: {"size", "value", "error"}}`` of the run dirs whose status file says
    something (`read_tail`): what a host's poll sends back."""
    found = {}
    for run_dir in run_dirs:
        tail = read_tail(os.path.join(run_dir, STATUS_FILE), final)
        if tail is not None and (tail[1] is not None or tail[2] is not None):
            found[run_dir] = {"size": tail[0], "value": tail[1], "error": tail[2]}
    return found


def main(argv):
    """``python3 -I -S -c SOURCE RUN_DIR...`` (`source`): `report` as a line of JSON."""
    sys.stdout.write(json.dumps(report(argv)) + "\n")
    return 0


def source():
    """This module's text, which a host's Python runs with ``-c`` (`main`): a scheduler's
    poll reads its jobs' statuses in the same command as its queue."""
    with open(os.path.abspath(__file__), encoding="utf-8") as module:
        return module.read()


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

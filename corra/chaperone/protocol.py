"""What launchers and chaperones say to each other, and what a chaperone accepts.

One vocabulary of outcomes (`STARTED`, `CLAIMED`, `FAILED`, `INVALID`, `EXITED`, ...) on two
channels, each with its own key for the word, as they have been since the first launcher
(records and launchers that read them rely on both):

An own chaperone's notify fd receives JSON lines, the word under `STATUS`: first the reply,
``{"status": "started", "chaperone": ..., "program": ...}``, ``{"status": "failed", "error":
...}`` (claimed, exit.json written: the program could not be started), ``{"status": "invalid",
"error": ...}`` (nothing claimed or written: the cwd is missing, the spec unreadable) or
``{"status": "claimed"}``; after ``started``, ``{"status": "exited", "record": <exit.json>}``
once the program has ended. Then it is closed. A launcher that has gone away costs the
chaperone nothing.

The shared chaperone speaks JSON lines over its SOCK_STREAM socket (connections from other
users are refused), the word under `OP`. Requests carry an ``id`` that the reply repeats::

    {"op": "hello", "version": 1, "env": {...}, "umask": N}   first: the environment and the
                                                   umask programs start with
        -> {"op": "hello", "version": 1, "pid", "start"}
    {"op": "launch", "key", "spec": {argv, cwd, env (added to hello's), timeout, kill_grace,
     output_limit, cgroups, cgroup_notes}}
        -> {"op": "started", "program"} | {"op": "claimed", "program"?} (no program: claimed by
           another chaperone, read the files) | {"op": "failed", "error"} (exit.json says so
           too) | {"op": "invalid", "error"} (nothing claimed) | {"op": "error", "error"} (try
           again) | {"op": "stopping"}
    {"op": "env", "env": {...}}  -> {"op": "env"}  the environment changed: programs start
                                                   from this one from now on
    {"op": "watch", "key"}  -> {"op": "watching"} | {"op": "unknown"} (not running here)
    {"op": "kill", "key", "grace"}  -> {"op": "killing"} | {"op": "unknown"}

and, without an id, ``{"op": "exited", "key", "record"}`` to every connection that launched,
watched or killed the program, once exit.json is in place. A line that is not a JSON object, or
a request with a field of the wrong kind, is answered ``{"op": "invalid", "error"}`` (``"id":
null`` if it had none) and the connection goes on; ``{"op": "stopping", "error"}`` without an
id says that the chaperone lost its root.

Nothing a chaperone is given ends it: specs and requests are checked here before anything is
claimed (an `Invalid` names the field and the value).
"""

import json
import os
import re

#: The version a hello names; a launcher refuses a chaperone that answers another.
PROTOCOL = 1
#: The key of the word on an own chaperone's notify fd, and on the shared one's socket.
STATUS = "status"
OP = "op"

# Outcomes, on both channels.
STARTED = "started"
CLAIMED = "claimed"
FAILED = "failed"
INVALID = "invalid"
EXITED = "exited"
# The socket's own words: requests, and the replies only it has.
HELLO = "hello"
ENV = "env"
LAUNCH = "launch"
WATCH = "watch"
KILL = "kill"
WATCHING = "watching"
KILLING = "killing"
UNKNOWN = "unknown"
ERROR = "error"
STOPPING = "stopping"

#: A key names a directory and a cgroup: no separators, no leading dot, not too long.
KEY = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.:@+=-]{0,199}\Z")
#: The default seconds between SIGTERM and SIGKILL when a spec names none.
DEFAULT_GRACE = 10.0

_ENCODE = json.JSONEncoder(separators=(",", ":")).encode


def json_line(value):
    """``value`` as one line of compact JSON, in bytes."""
    return (_ENCODE(value) + "\n").encode()


class Invalid(ValueError):
    """A spec or request the chaperone refuses; the message names the field and the value."""


def shown(value):
    """``value`` for an error message: its repr, cut short."""
    try:
        text = repr(value)
    except ValueError:  # an int too long to print
        return "a number too large"
    return text if len(text) <= 100 else text[:97] + "..."


def _text(value):
    """Whether ``value`` can reach a system call: a str without NUL that encodes."""
    if not isinstance(value, str) or "\0" in value:
        return False
    try:
        os.fsencode(value)
    except UnicodeError:  # a lone surrogate
        return False
    return True


def seconds(value, name, optional=False):
    """``value`` as seconds (a float): a number, finite and >= 0; None too if ``optional``.

    Any such number is safe: deadlines are compared, never slept to in one go (see
    ``LONGEST_WAIT``). Raises `Invalid` for anything else (bool, NaN, infinity, an int too
    large for a float, a string).
    """
    if value is None and optional:
        return None
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        try:
            number = float(value)
        except OverflowError:
            number = float("inf")
        if 0 <= number < float("inf"):  # NaN is neither
            return number
    raise Invalid(f"{name}: expected a finite number of seconds >= 0, got {shown(value)}")


def check_key(key):
    """``key`` if it can name a run dir and a cgroup; `Invalid` otherwise."""
    if not isinstance(key, str) or not KEY.match(key):
        expected = "up to 200 letters, digits and _.:@+=-, not starting with one of .:@+=-"
        raise Invalid(f"key: expected {expected}, got {shown(key)}")
    return key


def check_env(env, name="env"):
    """``env`` if it is an environment: {name: value}, names without ``=``, all text."""
    if not isinstance(env, dict):
        raise Invalid(f"{name}: expected an object of strings, got a {type(env).__name__}")
    for variable, value in env.items():
        if not _text(variable) or not variable or "=" in variable:
            raise Invalid(f"{name}: invalid variable name {shown(variable)}")
        if not _text(value):  # (its value is not shown: an env holds secrets)
            raise Invalid(
                f"{name}[{shown(variable)}]: expected a string without NUL that UTF-8 "
                f"encodes, got a {type(value).__name__} that is not one"
            )
    return env


def check_spec(spec, env_required=False):
    """A launch's ``spec`` as the chaperone runs it: a copy, with ``timeout`` and
    ``kill_grace`` as floats and the defaults filled in. Raises `Invalid` naming the field:
    no value gets as far as a spawn or a wait that would raise on it."""
    if not isinstance(spec, dict):
        raise Invalid(f"spec: expected an object, got {shown(spec)}")
    argv = spec.get("argv")
    if not isinstance(argv, list) or not argv or not all(_text(arg) for arg in argv):
        raise Invalid(f"argv: expected a non-empty list of strings, got {shown(argv)}")
    if not argv[0]:
        raise Invalid("argv[0]: expected a program, got ''")
    cwd = spec.get("cwd")
    if cwd is not None and not (_text(cwd) and cwd):
        raise Invalid(f"cwd: expected a path or null, got {shown(cwd)}")
    env = spec.get("env")
    if env is None and not env_required:
        env = {}
    cgroups = spec.get("cgroups") or []
    if not isinstance(cgroups, list) or not all(_cgroup_entry(entry) for entry in cgroups):
        raise Invalid(
            "cgroups: expected a list of {path, before, after} (settings: objects of "
            f"strings or numbers), got {shown(cgroups)}"
        )
    notes = spec.get("cgroup_notes") or []
    if not isinstance(notes, list) or not all(isinstance(note, str) for note in notes):
        raise Invalid(f"cgroup_notes: expected a list of strings, got {shown(notes)}")
    return dict(
        spec,
        env=check_env(env),
        timeout=seconds(spec.get("timeout"), "timeout", optional=True),
        kill_grace=seconds(spec.get("kill_grace", DEFAULT_GRACE), "kill_grace"),
        output_limit=output_limit(spec),
        cgroups=cgroups,
        cgroup_notes=notes,
    )


def output_limit(spec):
    """The spec's ``output_limit``: None (no limit) or bytes > 0; `Invalid` for anything
    else."""
    limit = spec.get("output_limit")
    if limit is not None and (type(limit) is not int or limit <= 0):
        raise Invalid(f"output_limit: expected bytes > 0 or null, got {shown(limit)}")
    return limit


def _cgroup_entry(entry):
    if not isinstance(entry, dict) or not _text(entry.get("path")) or not entry["path"]:
        return False
    for settings in (entry.get("before"), entry.get("after")):
        if settings is None:
            continue
        if not isinstance(settings, dict):
            return False
        for name, value in settings.items():
            if not _text(name) or isinstance(value, bool):
                return False
            if not (_text(value) or isinstance(value, (int, float))):
                return False
    return True

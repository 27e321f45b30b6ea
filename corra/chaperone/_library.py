"""A wrapper's source shipped once, as a module of its own that every task imports, rather
than carried in every task's command (`task_job.ship`, `task_job.argv`'s ``library``).

``python3 -I -S -c SOURCE`` compiles SOURCE at every start (27 KB: about 4.5 ms of CPU of a
task's 16, measured with /usr/bin/python3 3.11), and the scheduler holds SOURCE in every
job's command. A module in a directory that corra and the workers share is compiled once per
Python (into the directory's ``__pycache__``: ``-I`` ignores PYTHONDONTWRITEBYTECODE) and
read as bytecode after that; a task's command is the short `LAUNCHER`. Where the cache
cannot be written, every task compiles the module: slower, not broken.

Not part of any wrapper's source: corra's side only (the standard library's, Python 3.6).
"""

import hashlib
import os

#: A task's ``-c`` program: imports the shipped module from the library and runs its
#: ``run`` (which ends the process); a library without the module (a directory the worker
#: does not share, say) is said, and the task exits ``{failed}`` having run nothing.
LAUNCHER = """import sys
sys.path.insert(0, {directory!r})
try:
    from {module} import run
except ImportError as error:
    sys.stderr.write("corra task: " + {directory!r} + ": " + str(error) + "\\n")
    sys.exit({failed})
run(sys.argv[1:])
"""


def module_name(prefix, text):
    """``prefix`` and a digest of ``text``: another version of the source is another module,
    beside it."""
    return prefix + hashlib.sha256(text.encode()).hexdigest()[:24]


def ship(directory, module, text):
    """Write ``text`` into ``directory`` as ``<module>.py`` (0600, written whole: a temp file
    renamed), unless it is there. ``directory`` (0700) and its ``__pycache__`` (0700, where
    Python would make it as the umask says) are made if missing; their parent must exist.
    Raises OSError."""
    path = os.path.join(directory, module + ".py")
    if os.path.isfile(path):
        return
    for made in (directory, os.path.join(directory, "__pycache__")):
        try:  # noqa: SIM105 - (the chaperone's style: no contextlib)
            os.mkdir(made, 0o700)
        except FileExistsError:
            pass
    temp = f"{path}.{os.urandom(8).hex()}.tmp"
    fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as out:
            out.write(text)
            out.flush()
            os.fsync(out.fileno())
        os.rename(temp, path)  # (two corras that ship at once write the same text)
    except BaseException:
        try:  # noqa: SIM105
            os.unlink(temp)
        except OSError:
            pass
        raise


def launcher(directory, module, failed):
    """The ``-c`` program of a task that imports ``module`` from ``directory``."""
    return LAUNCHER.format(directory=directory, module=module, failed=failed)

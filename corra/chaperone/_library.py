"""A wrapper's source shipped once, as a module of its own that every task imports, rather
than carried in every task's command (`task_job.ship`, `task_job.argv`'s ``library``).

``python3 -I -S -c SOURCE`` compiles SOURCE at every start (27 KB: about 4.5 ms of CPU of a
task's 16, measured with /usr/bin/python3 3.11), and the scheduler holds SOURCE in every
job's command. A module in a directory that corra and the workers share is compiled once per
Python (into the directory's ``__pycache__``: ``-I`` ignores PYTHONDONTWRITEBYTECODE) and
read as bytecode after that; a task's command is the short `LAUNCHER`. Where the cache
cannot be written, every task compiles the module: slower, not broken.

Not part of any wrapper's source: corra's side only (the standard library, Python 3.6).
"""

import contextlib
import errno
import hashlib
import os
import stat

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

    Every task runs what is there, under a name anyone can tell: the directory, its cache
    and the module must be the user's, and only the user's to write (`check_private`).
    Raises OSError (PermissionError for one that is not)."""
    path = os.path.join(directory, module + ".py")
    for made in (directory, os.path.join(directory, "__pycache__")):
        with contextlib.suppress(FileExistsError):
            os.mkdir(made, 0o700)
        check_private(made, stat.S_ISDIR, "a directory")
    if os.path.lexists(path):
        check_private(path, stat.S_ISREG, "a file")
        return
    temp = f"{path}.{os.urandom(8).hex()}.tmp"
    fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as out:
            out.write(text)
            out.flush()
            os.fsync(out.fileno())
        os.rename(temp, path)  # (two corras that ship at once write the same text)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(temp)
        raise


def check_private(path, is_kind, kind):
    """Refuse ``path`` (PermissionError) unless it is ``kind`` (not a link), owned by the user
    (or root), that group and others cannot write."""
    status = os.lstat(path)
    why = None
    if not is_kind(status.st_mode):
        why = "not " + kind
    elif status.st_uid not in (os.geteuid(), 0):
        why = f"owned by uid {status.st_uid}, not by you (uid {os.geteuid()})"
    elif status.st_mode & 0o022:
        why = f"group or others may write it (mode {stat.S_IMODE(status.st_mode):o})"
    if why is not None:
        message = f"{why}: every task would run what is there; remove it, or use another run root"
        raise PermissionError(errno.EPERM, message, path)


def launcher(directory, module, failed):
    """The ``-c`` program of a task that imports ``module`` from ``directory``."""
    return LAUNCHER.format(directory=directory, module=module, failed=failed)

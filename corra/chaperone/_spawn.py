"""Starting a program: in its own process group, stdin from /dev/null, stdout and stderr
appended straight to its files (no pipe passes through the chaperone, so one that dies never
breaks a program's output).

``os.posix_spawnp`` where there is one (Python 3.8 and later), fork/exec before.
"""

import os
import signal

#: Dispositions the program must not inherit (Python ignores SIGPIPE and SIGXFSZ; chaperones
#: ignore SIGHUP and handle SIGCHLD, SIGINT, SIGTERM).
RESET_IN_PROGRAM = (
    signal.SIGPIPE,
    signal.SIGXFSZ,
    signal.SIGHUP,
    signal.SIGINT,
    signal.SIGTERM,
    signal.SIGCHLD,
    signal.SIGQUIT,
)


def spawn(argv, env, cwd, stdout, stderr):
    """Start ``argv`` in its own process group, cwd ``cwd``; return its pid. argv[0] is looked
    up on ``env``'s PATH, as execvpe does; ``stdout`` and ``stderr`` are fds or paths (appended
    to, created if need be).

    Raises OSError (with errno) when it cannot be started. This process's cwd is ``cwd``
    while it spawns, and back at ``/`` afterwards.
    """
    try:
        os.chdir(cwd)
    except OSError as error:
        raise OSError(error.errno, "cwd: " + (error.strerror or ""), cwd) from None
    try:
        if hasattr(os, "posix_spawnp"):
            _search_path(env)
            return os.posix_spawnp(
                argv[0],
                argv,
                env,
                file_actions=[
                    (os.POSIX_SPAWN_OPEN, 0, os.devnull, os.O_RDONLY, 0),
                    _output(stdout, 1),
                    _output(stderr, 2),
                ],
                setpgroup=0,
                setsigmask=(),
                setsigdef=RESET_IN_PROGRAM,
            )
        opened = []
        try:
            fds = []
            for target in (stdout, stderr):
                if not isinstance(target, int):
                    flags = os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_CLOEXEC
                    target = os.open(target, flags, 0o600)
                    opened.append(target)
                fds.append(target)
            return spawn_with_fork(_resolve(argv[0], env), argv, env, *fds)
        finally:
            for fd in opened:
                os.close(fd)
    finally:
        os.chdir("/")


def spawn_with_fork(path, argv, env, stdout_fd, stderr_fd):
    """fork/exec, for interpreters without ``os.posix_spawnp``; exec errors come back on a
    pipe."""
    errors_read, errors_write = os.pipe()  # both close-on-exec
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child execs or _exits
        try:
            os.setpgid(0, 0)
            null = os.open(os.devnull, os.O_RDONLY)
            os.dup2(null, 0)
            os.dup2(stdout_fd, 1)
            os.dup2(stderr_fd, 2)
            for number in RESET_IN_PROGRAM:
                signal.signal(number, signal.SIG_DFL)
            signal.pthread_sigmask(signal.SIG_SETMASK, ())
            os.execve(path, argv, env)
        except OSError as error:
            os.write(errors_write, str(error.errno or 0).encode())
        finally:
            os._exit(127)
    os.close(errors_write)
    try:
        reply = b""
        while True:
            chunk = os.read(errors_read, 64)
            if not chunk:
                break
            reply += chunk
    finally:
        os.close(errors_read)
    if reply:
        os.waitpid(pid, 0)
        number = int(reply)
        raise OSError(number, os.strerror(number))
    return pid


def open_streams(run_dir):
    """RUN_DIR/stdout and RUN_DIR/stderr, opened for appending (created if need be)."""
    flags = os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_CLOEXEC
    stdout = os.open(os.path.join(run_dir, "stdout"), flags, 0o600)
    try:
        return stdout, os.open(os.path.join(run_dir, "stderr"), flags, 0o600)
    except BaseException:
        os.close(stdout)
        raise


def _resolve(program, env):
    """argv[0] as execvpe finds it, on the program's PATH (for `spawn_with_fork`)."""
    if "/" in program:
        return program
    found_but_denied = None
    for directory in env.get("PATH", os.defpath).split(os.pathsep):
        candidate = os.path.join(directory or ".", program)
        if os.path.isfile(candidate):
            if os.access(candidate, os.X_OK):
                return candidate
            found_but_denied = candidate
    if found_but_denied is not None:
        raise PermissionError(13, os.strerror(13))
    raise FileNotFoundError(2, os.strerror(2))


def _search_path(env):
    """Make ``env``'s PATH ours: `os.posix_spawnp` searches argv[0] on the caller's PATH."""
    path = env.get("PATH")
    if path is None:
        os.environ.pop("PATH", None)
    elif os.environ.get("PATH") != path:
        os.environ["PATH"] = path


def _output(target, number):
    """The file action that makes ``target`` (an fd, or a path to append to) fd ``number``."""
    if isinstance(target, int):
        return (os.POSIX_SPAWN_DUP2, target, number)
    flags = os.O_WRONLY | os.O_CREAT | os.O_APPEND
    return (os.POSIX_SPAWN_OPEN, number, target, flags, 0o600)

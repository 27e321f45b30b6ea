"""Every exception corra raises on purpose.

The tree::

    CorraError
    ├── ConfigError                 a spec or setting is invalid (names the field, the value,
    │   │                           and what was expected)
    │   └── WorkflowError           a job definition, or a step rendered from one, is
    │       │                       invalid; or a ``${...}`` found nothing where it points
    │       └── ExpressionSyntaxError  a ``${...}`` does not parse (names the column and
    │                               what was expected there)
    ├── ActorError                  something about one actor; ``.path`` names it
    │   ├── ActorStopped            the actor behind a ref is not running (it stopped, crashed,
    │   │                           or is being restarted); never a hang
    │   ├── MailboxFull             ``send_nowait`` found the mailbox at capacity
    │   └── CallFailed              the handler raised while serving a ``call``; the original
    │                               exception is ``__cause__``
    ├── SupervisorError             something about one supervisor; ``.path`` names it
    │   ├── RestartIntensityExceeded  more than ``intensity`` restarts in ``period`` seconds:
    │   │                           the supervisor stopped its children and gave up; it is
    │   │                           what escalates to the parent and, at the root, out of
    │   │                           ``open_runtime``
    │   ├── ChildStartFailed        a child raised before it was running; original is
    │   │                           ``__cause__``
    │   ├── DuplicateChild          a child with that id exists already
    │   ├── NoSuchChild             no child with that id
    │   └── ChildRunning            ``delete_child`` or ``restart_child`` on a running child
    ├── ProcessError                something about one process; ``.process`` names it
    │   ├── InvalidTransition       the event is not allowed in the process's phase (names
    │   │                           both); nothing changed
    │   └── NoSuchProcess           no process with that id or name
    ├── NoSuchRun                   no workflow run with that id or name
    ├── StepFailed                  a step of a `corra.workflow` function failed (raised in
    │                               the function; ``.step`` names it, ``.result`` says how)
    ├── StoreError                  the state store (LMDB) failed
    │   ├── CorruptRecord           a record that cannot be decoded (unknown schema, bad
    │   │                           data); it is set aside, never a crash
    │   ├── NameTaken               the name belongs to another process already
    │   └── ValueGone               a result's value kept as a file (too large for its
    │                               record) is gone or cannot be read
    └── BackendError                where programs run failed
        ├── LaunchFailed            the program could not be started
        ├── ProgramLost             its chaperone is gone without leaving an exit record
        └── TransportError          a host could not be reached or used; ``.host`` names it
            ├── ConnectionFailed    a connection could not be made, or broke mid-operation
            ├── HostUnavailable     the host failed too often: its pool stopped trying for now
            ├── HostKeyRefused      the host's key is not the one known_hosts expects
            └── RemotePathError     a remote path from input leaves the work directory, or a
                                    file operation on the host failed (names the path)

Foreign exceptions (from trio, lmdb, asyncssh ...) are mapped to these at the boundary with
``raise ... from exc``, so callers can rely on this tree alone.
"""

from __future__ import annotations


class CorraError(Exception):
    """Base of every exception corra raises on purpose."""


class ConfigError(CorraError, ValueError):
    """A spec or setting is invalid; the message names the field, the value and what was
    expected."""


class WorkflowError(ConfigError):
    """A job definition is invalid, a step's spec rendered from it is, or an expression
    found nothing where it points (names the job, the step, the field or the expression)."""


class ExpressionSyntaxError(WorkflowError):
    """A ``${...}`` expression does not parse; ``.column`` (1-based, in ``.text``) says
    where, and the message what was expected there."""

    def __init__(self, text: str, column: int, message: str) -> None:
        super().__init__(f"{text!r}, column {column}: {message}")
        self.text = text
        self.column = column


class ActorError(CorraError):
    """An error about one actor, named by its path in the tree."""

    def __init__(self, path: str, message: str) -> None:
        super().__init__(f"{path}: {message}")
        self.path = path


class ActorStopped(ActorError):
    """The actor behind the ref is not running (stopped, crashed or restarting)."""


class MailboxFull(ActorError):
    """``send_nowait`` found the mailbox at its capacity."""


class CallFailed(ActorError):
    """The handler raised while serving a ``call``; the original exception is ``__cause__``."""


class SupervisorError(CorraError):
    """An error about one supervisor, named by its path in the tree."""

    def __init__(self, path: str, message: str) -> None:
        super().__init__(f"{path}: {message}")
        self.path = path


class RestartIntensityExceeded(SupervisorError):
    """More than ``intensity`` restarts within ``period`` seconds: the supervisor gave up."""


class ChildStartFailed(SupervisorError):
    """A child raised before it was running; the original exception is ``__cause__``."""


class DuplicateChild(SupervisorError):
    """A child with that id exists already under the supervisor."""


class NoSuchChild(SupervisorError):
    """No child with that id under the supervisor."""


class ChildRunning(SupervisorError):
    """The operation needs a child that is not running, and it is."""


class ProcessError(CorraError):
    """An error about one process, named by its id or name."""

    def __init__(self, process: str, message: str) -> None:
        super().__init__(f"process {process}: {message}")
        self.process = process


class InvalidTransition(ProcessError):
    """The event is not allowed in the process's current phase; nothing changed."""

    def __init__(self, process: str, phase: str, event: str) -> None:
        super().__init__(process, f"cannot {event} in phase {phase!r}")
        self.phase = phase
        self.event = event


class NoSuchProcess(ProcessError):
    """No process with that id or name."""


class NoSuchRun(CorraError, LookupError):
    """No workflow run has that id or name."""


class StepFailed(CorraError):
    """A step of a `corra.workflow` function ended other than finished (failed, or killed);
    raised by ``ctx.step`` (and ``ctx.gather``) in the function. ``.step`` is its name,
    ``.result`` its `corra.workflows._python.StepResult` (phase, reason, result value)."""

    def __init__(self, step: str, result: object, reason: str | None) -> None:
        super().__init__(f"step {step!r} {getattr(result, 'phase', 'failed')}: {reason}")
        self.step = step
        self.result = result


class StoreError(CorraError):
    """The state store (LMDB) failed."""


class CorruptRecord(StoreError):
    """A record that cannot be decoded; it is set aside, never a crash of the runtime."""


class NameTaken(StoreError):
    """The process name belongs to another process already."""


class ValueGone(StoreError):
    """A result's value kept as a file of the state dir (``Result.value_file``) is gone or
    cannot be read."""


class BackendError(CorraError):
    """Where programs run (a backend) failed."""


class LaunchFailed(BackendError):
    """The program could not be started."""


class ProgramLost(BackendError):
    """The program's chaperone is gone without leaving an exit record."""


class TransportError(BackendError):
    """A host could not be reached or used; ``.host`` names it (``user@host:port``)."""

    def __init__(self, host: str, message: str) -> None:
        super().__init__(f"{host}: {message}")
        self.host = host


class ConnectionFailed(TransportError):
    """A connection could not be made, or broke in the middle of an operation."""


class HostUnavailable(TransportError):
    """The host failed too many times in a row: its pool waits before trying again.

    ``policy`` is the host's ``on_unavailable``: ``"pause"`` its processes until it answers
    again, or ``"fail"`` them.
    """

    def __init__(self, host: str, message: str, policy: str = "pause") -> None:
        super().__init__(host, message)
        self.policy = policy


class HostKeyRefused(TransportError):
    """The host's key does not match known_hosts (or the host is not in it)."""


class RemotePathError(TransportError):
    """A path leaves the work directory, or a file operation on the host failed."""

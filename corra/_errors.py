"""Every exception corra raises on purpose.

The tree::

    CorraError
    ├── ConfigError                 a spec or setting is invalid (names the field, the value,
    │                               and what was expected)
    ├── ActorError                  something about one actor; ``.path`` names it
    │   ├── ActorStopped            the actor behind a ref is not running (it stopped, crashed,
    │   │                           or is being restarted); never a hang
    │   ├── MailboxFull             ``send_nowait`` found the mailbox at capacity
    │   └── CallFailed              the handler raised while serving a ``call``; the original
    │                               exception is ``__cause__``
    └── SupervisorError             something about one supervisor; ``.path`` names it
        ├── RestartIntensityExceeded  more than ``intensity`` restarts in ``period`` seconds:
        │                           the supervisor stopped its children and gave up; it is
        │                           what escalates to the parent and, at the root, out of
        │                           ``open_runtime``
        ├── ChildStartFailed        a child raised before it was running; original is
        │                           ``__cause__``
        ├── DuplicateChild          a child with that id exists already
        ├── NoSuchChild             no child with that id
        └── ChildRunning            ``delete_child`` or ``restart_child`` on a running child

Foreign exceptions (from trio, lmdb, asyncssh ...) are mapped to these at the boundary with
``raise ... from exc``, so callers can rely on this tree alone.
"""

from __future__ import annotations


class CorraError(Exception):
    """Base of every exception corra raises on purpose."""


class ConfigError(CorraError, ValueError):
    """A spec or setting is invalid; the message names the field, the value and what was
    expected."""


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

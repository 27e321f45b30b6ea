"""Supervisor configuration as plain data: flags, child specs, backoff.

Every field is validated when the value is built, so a bad spec fails at the edge with a
`ConfigError` that names the field, the value and what was expected, before anything starts.
Times are float seconds everywhere.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Literal, TypeAlias

import attrs

from corra._errors import ConfigError

if TYPE_CHECKING:
    from corra.actors._actor import Actor

Strategy: TypeAlias = Literal["one_for_one", "one_for_all", "rest_for_one"]
RestartType: TypeAlias = Literal["permanent", "transient", "temporary"]
BRUTAL_KILL: Literal["brutal_kill"] = "brutal_kill"
Shutdown: TypeAlias = float | Literal["brutal_kill"]

STRATEGIES: tuple[str, ...] = ("one_for_one", "one_for_all", "rest_for_one")
RESTART_TYPES: tuple[str, ...] = ("permanent", "transient", "temporary")

#: Default shutdown grace of a worker, as in OTP (5 s); supervisors get infinity.
DEFAULT_WORKER_SHUTDOWN = 5.0
#: Default mailbox capacity of an actor.
DEFAULT_MAILBOX_CAPACITY = 64


def _fail(owner: str, field: str, value: object, expected: str) -> ConfigError:
    return ConfigError(f"{owner}.{field}: got {value!r}, expected {expected}")


def _one_of(choices: tuple[str, ...]) -> Callable[[Any, attrs.Attribute[Any], Any], None]:
    def check(instance: Any, attribute: attrs.Attribute[Any], value: Any) -> None:
        if value not in choices:
            raise _fail(type(instance).__name__, attribute.name, value, f"one of {list(choices)}")

    return check


def _number(
    *, minimum: float, inclusive: bool = True, integer: bool = False, allow_inf: bool = False
) -> Callable[[Any, attrs.Attribute[Any], Any], None]:
    def check(instance: Any, attribute: attrs.Attribute[Any], value: Any) -> None:
        kind = int if integer else (int, float)
        ok = isinstance(value, kind) and not isinstance(value, bool)
        if ok and not integer:
            ok = not math.isnan(value) and (allow_inf or math.isfinite(value))
        if ok:
            ok = value >= minimum if inclusive else value > minimum
        if not ok:
            what = "an integer" if integer else "a number of seconds"
            bound = f">= {minimum}" if inclusive else f"> {minimum}"
            raise _fail(type(instance).__name__, attribute.name, value, f"{what} {bound}")

    return check


@attrs.frozen
class Backoff:
    """Delay before restarting a crashed child, growing exponentially (beyond OTP).

    The n-th consecutive restart of a child waits ``min(initial * factor ** (n - 1), max)``
    seconds. A child that stayed up for ``reset_after`` seconds before crashing starts again
    from ``initial``. While a child waits, its supervisor keeps serving requests.
    """

    initial: float = attrs.field(default=0.1, validator=_number(minimum=0))
    factor: float = attrs.field(default=2.0, validator=_number(minimum=1))
    max: float = attrs.field(default=30.0, validator=_number(minimum=0))
    reset_after: float = attrs.field(default=60.0, validator=_number(minimum=0, allow_inf=True))

    def delay(self, consecutive: int) -> float:
        """Seconds to wait before restart number ``consecutive`` (1-based) in a row."""
        exponent = max(consecutive - 1, 0)
        try:
            return min(self.initial * self.factor**exponent, self.max)
        except OverflowError:
            return self.max


@attrs.frozen
class SupervisorFlags:
    """How a supervisor reacts when a child exits.

    Attributes:
        strategy: ``one_for_one`` restarts only the child that exited; ``one_for_all``
            stops the others (in reverse order) and restarts them all (in order);
            ``rest_for_one`` does that for the child and those started after it.
        intensity: restarts allowed within ``period``; one more stops every child and fails
            the supervisor, which escalates to its parent (OTP's default: 1).
        period: the sliding window for ``intensity``, in seconds (OTP's default: 5).
    """

    strategy: Strategy = attrs.field(default="one_for_one", validator=_one_of(STRATEGIES))
    intensity: int = attrs.field(default=1, validator=_number(minimum=0, integer=True))
    period: float = attrs.field(default=5.0, validator=_number(minimum=0, inclusive=False))


def _check_id(instance: Any, attribute: attrs.Attribute[Any], value: Any) -> None:
    if not isinstance(value, str) or not value or "/" in value or not value.isprintable():
        raise _fail(
            type(instance).__name__,
            attribute.name,
            value,
            "a non-empty printable string without '/'",
        )


def _check_start(instance: Any, attribute: attrs.Attribute[Any], value: Any) -> None:
    if not (isinstance(value, SupervisorSpec) or callable(value)):
        raise _fail(
            type(instance).__name__,
            attribute.name,
            value,
            "an Actor subclass, a callable returning an Actor, or a SupervisorSpec",
        )


def _check_shutdown(instance: Any, attribute: attrs.Attribute[Any], value: Any) -> None:
    if value is None or value == BRUTAL_KILL:
        return
    ok = isinstance(value, (int, float)) and not isinstance(value, bool)
    if not ok or math.isnan(value) or value < 0:
        raise _fail(
            type(instance).__name__,
            attribute.name,
            value,
            "seconds >= 0 (inf to wait forever) or 'brutal_kill'",
        )


def _check_backoff(instance: Any, attribute: attrs.Attribute[Any], value: Any) -> None:
    if value is not None and not isinstance(value, Backoff):
        raise _fail(type(instance).__name__, attribute.name, value, "a Backoff or None")


@attrs.frozen
class ChildSpec:
    """One child of a supervisor.

    Attributes:
        id: unique among the supervisor's children; the last part of the child's path.
        start: what to run: an `Actor` subclass (or any zero-argument callable returning a
            new `Actor`, called anew for every restart), or a `SupervisorSpec` for a nested
            supervisor.
        restart: ``permanent`` is always restarted; ``transient`` only after an abnormal
            exit (an exception); ``temporary`` never, and its spec is removed when it exits.
        shutdown: on termination, seconds the child gets to finish its current message and
            leave its `Actor.lifespan` before it is cancelled, or ``"brutal_kill"`` to cancel
            it at once. None means 5 s for a worker and infinity for a supervisor (as in OTP).
        mailbox_capacity: bounded mailbox size of a worker (``send`` waits when it is full).
        backoff: optional delay before restarts (beyond OTP); None restarts at once.
    """

    id: str = attrs.field(validator=_check_id)
    start: Callable[[], Actor] | SupervisorSpec = attrs.field(validator=_check_start)
    restart: RestartType = attrs.field(default="permanent", validator=_one_of(RESTART_TYPES))
    shutdown: Shutdown | None = attrs.field(default=None, validator=_check_shutdown)
    mailbox_capacity: int = attrs.field(
        default=DEFAULT_MAILBOX_CAPACITY, validator=_number(minimum=1, integer=True)
    )
    backoff: Backoff | None = attrs.field(default=None, validator=_check_backoff)

    @property
    def type(self) -> Literal["worker", "supervisor"]:
        """``supervisor`` when `start` is a `SupervisorSpec`, else ``worker``."""
        return "supervisor" if isinstance(self.start, SupervisorSpec) else "worker"

    @property
    def shutdown_grace(self) -> Shutdown:
        """The effective shutdown: `shutdown`, or the OTP default for the child's type."""
        if self.shutdown is not None:
            return self.shutdown
        return math.inf if self.type == "supervisor" else DEFAULT_WORKER_SHUTDOWN


def _check_flags(instance: Any, attribute: attrs.Attribute[Any], value: Any) -> None:
    if not isinstance(value, SupervisorFlags):
        raise _fail(type(instance).__name__, attribute.name, value, "a SupervisorFlags")


def _check_children(instance: Any, attribute: attrs.Attribute[Any], value: Any) -> None:
    seen: set[str] = set()
    for index, child in enumerate(value):
        if not isinstance(child, ChildSpec):
            raise _fail(type(instance).__name__, f"{attribute.name}[{index}]", child, "a ChildSpec")
        if child.id in seen:
            raise _fail(
                type(instance).__name__,
                f"{attribute.name}[{index}].id",
                child.id,
                "an id not used by an earlier child",
            )
        seen.add(child.id)


@attrs.frozen
class SupervisorSpec:
    """A supervisor: its flags and its static children, started in this order."""

    flags: SupervisorFlags = attrs.field(factory=SupervisorFlags, validator=_check_flags)
    children: tuple[ChildSpec, ...] = attrs.field(
        default=(), converter=tuple, validator=_check_children
    )

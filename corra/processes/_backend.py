"""The backend seam: what a backend receives, what it declares, what it must do.

A backend is a package that registers a `BackendPlugin` under the entry-point group
``corra.backends`` (the built-in ``local``, ``ssh`` and ``slurm`` register through the same
group; nothing in this package names them). The plug-in is data:

- its ``name``, the spec's ``backend = "<name>"``;
- ``options``: a frozen attrs class for the per-process ``<name> = { ... }`` table of a job
  file or an API body, structured and checked by the one wire converter (errors carry field
  paths), None when the backend takes no options;
- ``host_options``: a frozen attrs class for the ``[hosts.NAME.<name>]`` table, if any;
- ``handle``: the frozen attrs class of its handles (its backend's `Backend.handle_type`),
  which the snapshot converter structures (handles never round-trip through
  ``dict[str, Any]``); a field that only some handles have is an `optional_field`;
- `Capabilities`: what of the optional protocol it implements, as data;
- ``open``: an async context manager factory, ``open(context) -> Backend``, which owns the
  backend's tasks for as long as its block runs (a nursery of its own, inside the supervision
  tree: no system tasks).

A process actor talks to a backend through `Backend` only, with typed values: a
`LaunchRequest` in, a handle out, a `Result` at the end. Every effect carries the
`EffectKey` ``(process_id, attempt)``: a launch with a key that was launched before returns the
first launch's handle (idempotent), which is what makes a replay after a crash safe.

A backend may also say, in words, where a launched program is while it is not running yet or
not as expected (a job pending for resources, a pod the scheduler cannot place, an image
being pulled): `BackendContext.notes` takes a note per key (`Notes.set`), which ``corra
show`` and ``GET /v1/processes/{id}`` show while that attempt is launching or running. A note
is not a transition: it is never in the history, and setting one never waits.

A backend whose capabilities say ``status`` also follows what its programs say of how far
they are (the JSON lines they append to ``$CORRA_STATUS``: `corra.chaperone._status` reads
them) and hands the latest to `BackendContext.statuses` (`Statuses.set`), the cheapest way it
has: a file it can read here is looked at once per `BackendContext.status_interval` (the
shared `corra.backends._follow.StatusFollower`), a host's in the poll it makes anyway.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from contextlib import AbstractAsyncContextManager
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

import attrs

from corra._errors import ConfigError
from corra.processes._port import ProcessPort

if TYPE_CHECKING:
    from corra.actors import SupervisorRef
    from corra.processes._lifecycle import Result

#: The stream of `Backend.read_log` that is a program's result value: the file
#: ``$CORRA_RESULT`` names (``result.json`` in its run dir), or where the backend keeps it.
RESULT_STREAM = "result"

#: The group under which backends register (`importlib.metadata.entry_points`).
ENTRY_POINT_GROUP = "corra.backends"

#: A process id as `corra.processes` makes them (and as keys carry them on disk).
_KEY = re.compile(r"(?P<id>[A-Za-z0-9_-]{1,64})\.(?P<attempt>[1-9][0-9]{0,8})")


@attrs.frozen(order=True)
class EffectKey:
    """The idempotency key of one attempt of one process: ``<process id>.<attempt>``.

    Its text form names the attempt's run dir, log keys and jobs, on every backend.
    """

    process_id: str
    attempt: int

    def __str__(self) -> str:
        return f"{self.process_id}.{self.attempt}"

    @classmethod
    def parse(cls, text: str) -> EffectKey:
        """The key whose text is ``text``.

        Raises:
            ConfigError: ``text`` is not ``<process id>.<attempt>``.
        """
        match = _KEY.fullmatch(text) if isinstance(text, str) else None
        if match is None:
            raise ConfigError(f"key: got {text!r}, expected <process id>.<attempt>")
        return cls(match["id"], int(match["attempt"]))


@attrs.frozen
class Limits:
    """What a program may take, in the units the spec gives them (None: no limit)."""

    timeout: float | None = None
    """Seconds the program may run before it is killed."""
    kill_grace: float = 10.0
    """Seconds between SIGTERM and SIGKILL when killing."""
    memory: int | None = None
    """Bytes, where the backend can enforce it."""
    pids: int | None = None
    """Processes and threads, where the backend can enforce it."""
    output: int | None = None
    """Bytes kept of each of stdout and stderr; None: the runtime's default."""


@attrs.frozen
class LaunchRequest:
    """One attempt of one process, as a backend receives it: built once, by the actor.

    A program gets ``env`` plus ``CORRA_PROCESS_ID``, ``CORRA_PROCESS_NAME`` (its name, else
    its id) and ``CORRA_ATTEMPT`` (`environment`); a backend adds nothing of its own to these.
    """

    key: EffectKey
    argv: tuple[str, ...]
    name: str | None = None
    cwd: str | None = None
    env: Mapping[str, str] = attrs.field(factory=dict, repr=False)
    limits: Limits = Limits()
    host: str | None = None
    """The ``[hosts.NAME]`` the program runs on, for backends with hosts."""
    inputs: Mapping[str, str] = attrs.field(factory=dict)
    """Remote path (relative to the work dir) = local file or directory, sent before."""
    outputs: tuple[str, ...] = ()
    """Globs (relative to the work dir) of the files fetched into ``outputs_dir`` after."""
    outputs_dir: str | None = None
    options: Any = None
    """The backend's own options object (its `BackendPlugin.options` class), or None."""

    def environment(self) -> dict[str, str]:
        """The environment the program gets on top of its backend's: env + ``CORRA_*``."""
        return {
            **self.env,
            "CORRA_PROCESS_ID": self.key.process_id,
            "CORRA_PROCESS_NAME": self.name or self.key.process_id,
            "CORRA_ATTEMPT": str(self.key.attempt),
        }


@attrs.frozen
class Capabilities:
    """What of the optional part of `Backend` a backend implements, as data.

    The manager calls every method of `Backend` unconditionally; `BackendBase` gives the
    optional ones their do-nothing defaults. These flags say which a backend really has, for
    validation at submission (a ``host`` for a backend without hosts is refused) and for
    ``corra backends`` and ``GET /v1/backends``.
    """

    slots: bool = False
    """It limits how many programs run at once (`Backend.acquire_slot` may wait)."""
    hosts: bool = False
    """Its programs run on a named host, which the spec must name (``host``)."""
    staging: bool = False
    """It sends ``inputs`` before the launch and fetches ``outputs`` after the exit."""
    pause_hooks: bool = False
    """It is told of pauses and resumes of a launched program (e.g. to hold a queued job)."""
    waits_for_host: bool = False
    """`Backend.wait_available` returns once an unavailable host answers again; without it,
    a process whose host is unavailable fails."""
    log_size: bool = False
    """`Backend.log_size` can tell how much output there is now."""
    freeze: bool = False
    """It can freeze a running program in place and thaw it again."""
    merged_output: bool = False
    """Its programs' stderr reaches it interleaved into their stdout (a container's log):
    ``stdout`` holds both, as written, and ``stderr`` reads empty."""
    shell_env: bool = False
    """Its programs get their env through a shell script (``export NAME=...``): env names
    must be ones a shell can set."""
    status: bool = False
    """It follows the status lines its programs append to ``$CORRA_STATUS`` (`Statuses`)."""


class Backend(Protocol):
    """Where programs run, as a process actor sees it. `BackendBase` has the defaults."""

    capabilities: Capabilities
    """What of the optional part it implements: its plug-in's `BackendPlugin.capabilities`
    (the runtime checks that the two agree when it opens the plug-in)."""
    handle_type: type | None
    """The frozen attrs class of the handles it returns (its plug-in's
    `BackendPlugin.handle`), which the runtime's record codec stores and reads back as that
    class; None: its handles are JSON values (a dict of them), stored as they are. A handle
    with a ``started_at`` (epoch seconds) says when its program started."""

    def check(self, request: LaunchRequest) -> None:
        """Refuse (`ConfigError`, naming the field) a request it cannot run, at submission:
        an unknown host, options it cannot honour. Never blocks."""

    def try_acquire_slot(self, key: EffectKey) -> bool:
        """Take a slot if one is free now and nobody waits for one. Never blocks."""

    async def acquire_slot(self, key: EffectKey) -> None:
        """Wait (in submission order) until another program may run."""

    def release_slot(self, key: EffectKey) -> None:
        """Give the slot of ``key`` back; a no-op if it holds none."""

    def adopt_slot(self, key: EffectKey) -> None:
        """Count a program that runs already (reattached), even above the limit."""

    async def launch(self, request: LaunchRequest) -> Any:
        """Start the program, once per key: a second call returns the first's handle.

        Raises:
            LaunchFailed: the program could not be started (it never ran).
            HostUnavailable: the host does not answer (nothing is known to have started).
        """

    async def find(self, key: EffectKey, host: str | None = None) -> Any | None:
        """The handle of a program launched with ``key`` (on ``host``), or None."""

    async def wait(self, handle: Any) -> Result:
        """Wait for the program's exit.

        Raises:
            ProgramLost: nothing can tell how it ended.
        """

    async def kill(self, handle: Any, grace: float) -> Result | None:
        """SIGTERM, SIGKILL after ``grace`` seconds; the result once it is gone."""

    async def read_log(
        self, key: EffectKey, stream: str, offset: int, size: int, host: str | None = None
    ) -> bytes:
        """Up to ``size`` bytes of ``stream`` from ``offset`` (b"" at the end so far).

        ``stream`` is ``stdout``, ``stderr`` or `RESULT_STREAM`: what the program wrote to
        the file ``$CORRA_RESULT`` named (b"": nothing, or no such file), which the runtime
        reads once the program has ended (`corra.processes._values`), taking a read of fewer
        than ``size`` bytes for its end. A backend whose programs can write no value raises
        `ConfigError` for it (then they have none).
        """

    async def log_size(self, key: EffectKey, stream: str, host: str | None = None) -> int | None:
        """How many bytes `read_log` can read now (None: it cannot tell now)."""

    async def pause(self, handle: Any) -> None:
        """Told once a pause of a launched program is durable."""

    async def resume(self, handle: Any) -> None:
        """Told before a resume of a launched program is durable."""

    async def wait_available(self, host: str) -> None:
        """Return once ``host`` answers again after `HostUnavailable`."""

    async def remove(self, key: EffectKey, host: str | None = None) -> None:
        """Remove what the program of ``key`` (on ``host``) left behind: its run dir and
        its logs, wherever they are (on the host, and the copies brought home). Called once
        the process is terminal and has no actor, for each of its attempts; idempotent
        (nothing there is nothing to do), and again after a crash in the middle.

        Raises:
            BackendError: something could not be removed now (the host does not answer):
                the removal is finished later (`ProcessManager.remove`).
        """


class BackendBase:
    """The do-nothing defaults of `Backend`'s optional methods; subclass and override."""

    capabilities: Capabilities = Capabilities()
    handle_type: type | None = None

    def check(self, request: LaunchRequest) -> None:
        return None

    def try_acquire_slot(self, key: EffectKey) -> bool:
        return True

    async def acquire_slot(self, key: EffectKey) -> None:
        return None

    def release_slot(self, key: EffectKey) -> None:
        return None

    def adopt_slot(self, key: EffectKey) -> None:
        return None

    async def log_size(self, key: EffectKey, stream: str, host: str | None = None) -> int | None:
        return None

    async def pause(self, handle: Any) -> None:
        return None

    async def resume(self, handle: Any) -> None:
        return None

    async def wait_available(self, host: str) -> None:
        raise NotImplementedError("this backend does not wait for hosts")

    async def remove(self, key: EffectKey, host: str | None = None) -> None:
        return None  # (nothing of its own to remove)


#: The metadata key of a handle field that only some handles have (`optional_field`).
_OPTIONAL = "corra.optional"


def optional_field(default: Any) -> Any:
    """A field of a handle class that only some of its handles have: stored only when it
    holds another value than ``default``, so that a handle without it is stored as one was
    before the field existed (and reads back with ``default``)."""
    return attrs.field(default=default, metadata={_OPTIONAL: True})


def handle_data(handle: Any) -> Any:
    """A handle as it is stored (and shown by ``corra show --json``): an attrs handle's
    fields, in their order, but an `optional_field` at its default; a handle of a backend
    without a handle class (JSON values) as it is."""
    if not attrs.has(type(handle)):
        return handle
    return attrs.asdict(handle, filter=_stored)


def _stored(field: attrs.Attribute[Any], value: Any) -> bool:
    return not (field.metadata.get(_OPTIONAL) and value == field.default)


#: The most characters of a note (`Notes.set`) that are kept; the rest is cut.
NOTE_LENGTH = 1000


class Notes(Protocol):
    """Where a backend says, in words, where a launched program is (`BackendContext.notes`).

    One note per process, of one attempt: a later one replaces it, the latest wins. The
    runtime stores it apart from the process's record (no transition, no history) and shows
    it while that attempt is launching or running; it drops a note of an attempt that is not
    (or no longer) the process's current one, and the note of an attempt that ended.
    """

    def set(self, key: EffectKey, text: str | None) -> None:
        """Make ``text`` the note of the attempt ``key`` (None, or only whitespace: clear it).
        Never blocks and never fails for the store: the runtime writes notes in the
        background. Call it from the runtime's trio tasks (not from a worker thread).
        Whitespace runs (newlines too) become one space; past `NOTE_LENGTH` characters the
        text is cut.

        Raises:
            TypeError: ``key`` is not an `EffectKey`, or ``text`` not a string or None.
        """


def note_text(key: EffectKey, text: str | None) -> str | None:
    """The note `Notes.set` keeps of ``text`` (None: none), checked (`Notes.set`)."""
    if type(key) is not EffectKey:
        raise TypeError(f"a note's key must be an EffectKey, not {type(key).__name__}")
    if text is None:
        return None
    if not isinstance(text, str):
        raise TypeError(f"a note must be a string or None, not {type(text).__name__}")
    text = " ".join(text.split())
    if len(text) > NOTE_LENGTH:
        text = text[: NOTE_LENGTH - 1] + "\u2026"
    return text or None


class MemoryNotes:
    """Notes kept in memory (`Notes`): what a `BackendContext` has unless the runtime gives
    it its own (the conformance kit's `corra.testing.open_plugin` opens backends with one)."""

    def __init__(self) -> None:
        self.notes: dict[EffectKey, str] = {}
        """The notes set and not cleared, by key."""

    def set(self, key: EffectKey, text: str | None) -> None:
        kept = note_text(key, text)
        if kept is None:
            self.notes.pop(key, None)
        else:
            self.notes[key] = kept


class Statuses(Protocol):
    """Where a backend hands what its programs say of how far they are
    (`BackendContext.statuses`; `corra.processes._statuses` says what is kept)."""

    def set(
        self, key: EffectKey, value: Mapping[str, Any] | None, error: str | None = None
    ) -> None:
        """The status of the attempt ``key``: ``value`` and ``error`` as
        `corra.chaperone._status.latest` read them (the newest line not refused, and why a
        newer one was); a ``value`` of None keeps the one before. Never blocks, never fails
        for the store; call it from the runtime's trio tasks, when what was read changed.

        Raises:
            TypeError: ``key`` is not an `EffectKey`, ``value`` not a dict or None, or
                ``error`` not a string or None.
        """


def check_status(key: EffectKey, value: Any, error: Any) -> None:
    """`Statuses.set`'s checks.

    Raises:
        TypeError: ``key`` is not an `EffectKey`, ``value`` not a dict or None, or
            ``error`` not a string or None.
    """
    if type(key) is not EffectKey:
        raise TypeError(f"a status's key must be an EffectKey, not {type(key).__name__}")
    if value is not None and not isinstance(value, dict):
        raise TypeError(f"a status must be a dict or None, not {type(value).__name__}")
    if error is not None and not isinstance(error, str):
        raise TypeError(f"a status's error must be a string or None, not {type(error).__name__}")


class MemoryStatuses:
    """Statuses kept in memory (`Statuses`), the latest per key: what a `BackendContext` has
    unless the runtime gives it its own (the conformance kit looks at it)."""

    def __init__(self) -> None:
        self.statuses: dict[EffectKey, tuple[Mapping[str, Any] | None, str | None]] = {}
        """``(value, error)`` by key, as `Statuses.set` makes them."""
        self.sets = 0
        """How many times `set` was called."""

    def set(
        self, key: EffectKey, value: Mapping[str, Any] | None, error: str | None = None
    ) -> None:
        check_status(key, value, error)
        self.sets += 1
        if value is None:
            value = self.statuses.get(key, (None, None))[0]
        self.statuses[key] = (value, error)


@attrs.frozen
class BackendContext:
    """What the runtime gives a backend's ``open``: where it may keep things, and the hosts.

    Attributes:
        state_dir: the runtime's state dir (a backend keeps its files in a directory of its
            own there: its name, or a layout older state dirs already have).
        supervisor: the runtime's root supervisor, under which a backend may start actors
            (a host's pool) so that they are supervised like everything else.
        hosts: the ``[hosts.NAME]`` tables, by name (`corra.backends.ssh.HostConfig`); a
            backend's own ``[hosts.NAME.<backend>]`` table is ``options_for("<backend>")``.
        transport: the `corra.backends.transport.Transport` that reaches a host, by name.
        max_running: programs that may run at once on this machine (None: the default).
        output_limit: bytes kept of each stream when a request's limits give none.
        poll_interval: seconds between two status polls of a host's programs.
        notes: where the backend says, in words, where a launched program is (`Notes`):
            ``context.notes.set(key, "pending: Resources")``, ``set(key, None)`` to clear.
        processes: the runtime's processes (`ProcessPort`), for a backend that needs a
            program of another backend to serve its own (an allocation), submitted as a
            process of the runtime.
        statuses: where a backend with the ``status`` capability hands what its programs
            say of how far they are (`Statuses`).
        status_interval: seconds between two looks at the status files a backend reads
            here (a host's are read in its poll, at its own interval).
    """

    state_dir: Path
    supervisor: SupervisorRef
    hosts: Mapping[str, Any] = attrs.field(factory=dict)
    transport: Callable[[str], Any] | None = None
    max_running: int | None = None
    output_limit: int = 1 << 30
    poll_interval: float = 1.0
    notes: Notes = attrs.field(factory=MemoryNotes)
    processes: ProcessPort = attrs.field(factory=ProcessPort)
    statuses: Statuses = attrs.field(factory=MemoryStatuses)
    status_interval: float = 1.0


@attrs.frozen
class BackendPlugin:
    """A backend, as it registers itself under ``corra.backends`` (see the module doc)."""

    name: str
    open: Callable[[BackendContext], AbstractAsyncContextManager[Backend]]
    handle: type | None
    options: type | None = None
    host_options: type | None = None
    capabilities: Capabilities = Capabilities()
    description: str = ""

    def __attrs_post_init__(self) -> None:
        if not re.fullmatch(r"[a-z][a-z0-9_]{0,31}", self.name):
            raise ConfigError(
                f"backend name: got {self.name!r}, expected a lower-case identifier "
                "(a-z, 0-9, _; at most 32 characters)"
            )
        for field in ("handle", "options", "host_options"):
            value = getattr(self, field)
            if value is not None and not attrs.has(value):
                raise ConfigError(
                    f"backend {self.name!r}: {field}: got {value!r}, expected an attrs class"
                )


def describe_plugin(plugin: BackendPlugin) -> dict[str, Any]:
    """A plug-in as ``corra backends --json`` and ``GET /v1/backends`` show it."""
    return {
        "name": plugin.name,
        "description": plugin.description,
        "capabilities": attrs.asdict(plugin.capabilities),
        "options": _fields(plugin.options),
        "host_options": _fields(plugin.host_options),
    }


def _fields(cls: type | None) -> list[dict[str, Any]]:
    if cls is None:
        return []
    out = []
    for field in attrs.fields(cls):
        metadata = field.metadata or {}
        # (a field may say its type in words where its annotation is loose: "number or text")
        entry: dict[str, Any] = {
            "name": field.name,
            "type": metadata.get("type") or _type_name(field.type),
        }
        if isinstance(field.default, attrs.Factory):  # type: ignore[arg-type]
            if not field.default.takes_self:  # (an empty table or list: what it starts as)
                entry["default"] = field.default.factory()
        elif field.default is not attrs.NOTHING:
            entry["default"] = field.default
        doc = metadata.get("doc")
        if doc:
            entry["doc"] = doc
        out.append(entry)
    return out


def _type_name(annotation: Any) -> str:
    """A field's type as its class says it, whether or not its annotations were resolved
    (`attrs.resolve_types`, which the converters call, turns ``"str | None"`` into a type)."""
    if isinstance(annotation, str):
        return annotation
    if isinstance(annotation, type):
        return annotation.__name__
    return repr(annotation).replace("typing.", "")

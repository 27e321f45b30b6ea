"""A process's ``hyperqueue = { ... }`` table and a server's ``[hosts.NAME.hyperqueue]`` table.

Both are validated where they are read (a spec at submission, a host when the job file or
the API gives it), each error naming its field path (``hyperqueue.resources.gpus``), the
value and what was expected.
"""

from __future__ import annotations

import re
import sys
from collections.abc import Mapping
from typing import Any, Final

import attrs

from corra._errors import ConfigError
from corra.backends._shared import MAX_SECONDS, check_fields, number_check, seconds_check

#: A resource amount as HyperQueue reads one: a count (``2``, ``0.5``) or ``all``, with an
#: optional allocation policy (``2 compact``, ``4 scatter``, ``all``).
_AMOUNT: Final = re.compile(
    r"^(all|[0-9]+(\.[0-9]+)?)( +(compact|compact!|tight|tight!|scatter))?$"
)
#: A resource's name (HyperQueue's ``gpus/nvidia``, ``mem``).
_RESOURCE: Final = re.compile(r"^[A-Za-z][A-Za-z0-9_/.-]{0,63}$")
#: A duration: ``90``, ``90s``, ``10m``, ``2h``, ``1d``, ``1h30m``, ``01:30:00``.
_PARTS: Final = re.compile(r"([0-9]+(?:\.[0-9]+)?)([smhd])")
_UNITS: Final = {"s": 1, "m": 60, "h": 3600, "d": 86400}


def _amount(where: str, value: Any) -> str:
    """A resource amount as HyperQueue reads one (``"2"``, ``"0.5"``, ``"all"``, ``"4
    compact"``), from a positive number or such a string: one form, stored as text."""
    if isinstance(value, bool):
        pass
    elif isinstance(value, int | float) and 0 < value < float("inf"):
        return f"{value:g}"
    elif isinstance(value, str) and _AMOUNT.match(" ".join(value.split())):
        text = " ".join(value.split())
        if text.split()[0] == "all" or float(text.split()[0]) > 0:
            return text
    raise ConfigError(
        f"{where}: got {value!r}, expected an amount > 0 (a number, 'all', or with a policy "
        "such as '2 compact')"
    )


def _cpus(value: Any) -> str:
    return _amount("hyperqueue.cpus", value)


def _resources(value: Any) -> dict[str, str]:
    if not isinstance(value, Mapping):
        raise ConfigError(
            f"hyperqueue.resources: got {value!r}, expected a table of amounts by resource "
            "(gpus = 1)"
        )
    out: dict[str, str] = {}
    for name, amount in value.items():
        if not isinstance(name, str) or not _RESOURCE.match(name):
            raise ConfigError(
                f"hyperqueue.resources: got resource name {name!r}, expected letters, digits, "
                "'_', '/', '.', '-' (starting with a letter)"
            )
        if name == "cpus":
            raise ConfigError("hyperqueue.resources.cpus: set hyperqueue.cpus instead")
        out[name] = _amount(f"hyperqueue.resources.{name}", amount)
    return out


def duration_seconds(where: str, value: Any) -> float | None:
    """Seconds from a number of seconds or a duration string (``90s``, ``10m``, ``1h30m``,
    ``2d``, ``01:30:00``); None stays None.

    Raises:
        ConfigError: naming ``where``, the value and the forms expected.
    """
    if value is None:
        return None
    seconds: float | None = None
    if isinstance(value, bool):
        pass
    elif isinstance(value, int | float):
        seconds = float(value)
    elif isinstance(value, str):
        text = value.strip()
        if re.fullmatch(r"[0-9]+(\.[0-9]+)?", text):
            seconds = float(text)
        elif re.fullmatch(r"[0-9]+(:[0-9]{1,2}){1,2}", text):
            parts = [int(part) for part in text.split(":")]
            seconds = float(sum(part * 60**power for power, part in enumerate(reversed(parts))))
        elif text and _PARTS.sub("", text) == "":
            seconds = sum(float(n) * _UNITS[unit] for n, unit in _PARTS.findall(text))
    if seconds is None or not 0 <= seconds <= MAX_SECONDS:
        raise ConfigError(
            f"{where}: got {value!r}, expected a duration of at most 10 years (seconds, or "
            "'90s', '10m', '1h30m', '2d', '01:30:00')"
        )
    return seconds


@attrs.frozen
class HyperQueueOptions:
    """A process's ``hyperqueue`` table (`corra.processes._backend.BackendPlugin.options`):
    what its task asks of a worker."""

    # (typed Any for the converters of specs and records: a number or a string is given, the
    # text HyperQueue reads is kept)
    cpus: Any = attrs.field(
        default="1",
        converter=_cpus,
        metadata={"type": "number or str", "doc": "CPUs: 2, 0.5, 'all', '4 compact'"},
    )
    """CPUs for the task: a count (``2``, ``0.5``), ``all``, or with HyperQueue's policy
    (``"4 compact"``)."""
    resources: dict[str, Any] = attrs.field(
        factory=dict,
        converter=_resources,
        metadata={"type": "dict[str, number or str]", "doc": "worker resources: gpus = 1"},
    )
    """Other resources of the worker, by name (``gpus = 1``, ``mem = 2048``)."""
    # (Any for the spec's converter: seconds or a duration string are given, seconds kept)
    time_request: Any = attrs.field(
        default=None,
        converter=lambda value: duration_seconds("hyperqueue.time_request", value),
        metadata={"type": "seconds or duration", "doc": "time the task needs: '30m', 5400"},
    )
    """The time the task needs: it goes only to a worker that has at least this much of its
    own time left (HyperQueue's time request; the spec's ``timeout`` is what ends it)."""


def _slurm_table(value: Any) -> dict[str, Any]:
    if not isinstance(value, Mapping) or not all(isinstance(key, str) for key in value):
        raise ConfigError(
            f"hyperqueue.allocation.slurm: got {value!r}, expected a table of the Slurm job's "
            "options (partition, account, qos, mem ...)"
        )
    for key in ("cpus_per_task", "time", "array"):
        if key in value:
            raise ConfigError(
                f"hyperqueue.allocation.slurm.{key}: set by corra (cpus, time_limit); expected none"
            )
    return dict(value)


@attrs.frozen
class AllocationOptions:
    """A host's ``hyperqueue.allocation`` table: the Slurm allocation that runs its server."""

    slurm_host: str = attrs.field()
    """The ``[hosts.NAME]`` whose Slurm runs the allocation."""
    cpus: int = attrs.field(
        default=1, validator=number_check("hyperqueue.allocation.cpus", minimum=1, integer=True)
    )
    """CPUs of the allocation (its worker's cores)."""
    time_limit: str | None = attrs.field(default=None)
    """The Slurm job's time limit (``"2:00:00"``, ``"120"``), else the partition's."""
    # (Any for the converters: seconds or a duration string are given, seconds kept)
    idle_time: Any = attrs.field(
        default=300.0,
        converter=lambda value: duration_seconds("hyperqueue.allocation.idle_time", value),
    )
    """Seconds without a task after which the allocation ends itself."""
    slurm: dict[str, Any] = attrs.field(factory=dict, converter=_slurm_table)
    """More of the Slurm job's options (its process's ``slurm`` table)."""
    python: str = attrs.field(default=sys.executable)
    """The Python that runs the server in the job (it needs the ``hyperqueue`` wheel)."""

    @slurm_host.validator
    def _check_host(self, attribute: Any, value: Any) -> None:
        if not isinstance(value, str) or not value:
            raise ConfigError(
                f"hyperqueue.allocation.slurm_host: got {value!r}, expected a host's name"
            )

    @time_limit.validator
    def _check_time(self, attribute: Any, value: Any) -> None:
        if value is not None and (not isinstance(value, str) or not value.strip()):
            raise ConfigError(
                f"hyperqueue.allocation.time_limit: got {value!r}, expected a Slurm time "
                "limit such as '2:00:00'"
            )


def allocation_options(value: Any) -> AllocationOptions | None:
    """A host's ``allocation`` table (or its options, or None) as `AllocationOptions`."""
    if value is None or isinstance(value, AllocationOptions):
        return value
    if not isinstance(value, Mapping):
        raise ConfigError(
            f"hyperqueue.allocation: got {value!r}, expected a table with slurm_host, cpus, "
            "time_limit"
        )
    known = {field.name for field in attrs.fields(AllocationOptions)}
    check_fields("hyperqueue.allocation", value, known, "setting")
    if "slurm_host" not in value:
        raise ConfigError("hyperqueue.allocation.slurm_host: missing; expected a host's name")
    return AllocationOptions(**value)


def _path(name: str) -> Any:
    def check(instance: Any, attribute: Any, value: Any) -> None:
        if value is not None and (not isinstance(value, str) or not value or "\0" in value):
            raise ConfigError(f"hyperqueue.{name}: got {value!r}, expected a path")

    return check


@attrs.frozen
class HyperQueueHostOptions:
    """A ``[hosts.NAME.hyperqueue]`` table (a HyperQueue server is a host): which server, and
    where the attempts' run dirs go. Errors name ``hyperqueue.FIELD``."""

    server_dir: str | None = attrs.field(
        default=None,
        validator=_path("server_dir"),
        metadata={
            "doc": "the server's directory (hq server start --server-dir), unless the "
            "server runs in an allocation corra makes"
        },
    )
    allocation: AllocationOptions | None = attrs.field(
        default=None,
        converter=allocation_options,
        metadata={
            "type": "table | None",
            "doc": "a Slurm allocation corra makes (and ends once idle) to run the server "
            "and a worker: slurm_host, cpus, time_limit, idle_time, slurm, python",
        },
    )
    run_root: str | None = attrs.field(
        default=None,
        validator=_path("run_root"),
        metadata={
            "doc": "where attempts' run dirs go, on a file system the workers share with "
            "corra (default: <state dir>/hyperqueue/<host>)"
        },
    )
    poll_interval: float = attrs.field(
        default=1.0,
        validator=seconds_check("hyperqueue.poll_interval", minimum=0.05),
        metadata={"doc": "seconds between two status polls of the server (one for all tasks)"},
    )
    python: str = attrs.field(
        default="python3",
        validator=_path("python"),
        metadata={"doc": "the workers' Python 3 (3.6 or newer), which runs each task's wrapper"},
    )
    hq: str | None = attrs.field(
        default=None,
        validator=_path("hq"),
        metadata={"doc": "an hq binary, for the server's own cancel of a killed task"},
    )
    submit_rate: float = attrs.field(
        default=1000.0,
        validator=number_check("hyperqueue.submit_rate", minimum=0.001),
        metadata={"doc": "submissions per second in the long run"},
    )
    submit_burst: int = attrs.field(
        default=1000,
        validator=number_check("hyperqueue.submit_burst", minimum=1, integer=True),
        metadata={"doc": "submissions that may go at once after a quiet period"},
    )

"""Hosts and pool settings, validated at the edge (job files, the API, Python callers).

A ``[hosts.NAME]`` table has the fields of every host (`HOST_FIELDS`: where it is, how to
reach it, its pool) and, beside them, a table per backend that has host options
(``[hosts.NAME.slurm]``): each is structured into the class its backend's plug-in declares
(`corra.processes._backend.BackendPlugin.host_options`) by the wire converter, so its errors
name their field paths as a spec's options' do. Nothing here names a backend.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from typing import Any, Literal

import attrs

from corra._errors import ConfigError
from corra.backends._shared import check_fields, number_check, seconds_check
from corra.processes._convert import parse_options
from corra.processes._registry import Registry, installed
from corra.processes._spec_content import shown

_HOST_NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,63}")
#: The transports a host may have: ``ssh`` (the default), ``local`` (this machine, without
#: SSH), ``kubernetes`` (a cluster: reached through its kubeconfig, never by commands),
#: ``hyperqueue`` (a HyperQueue server: reached through its server dir, never by commands).
TRANSPORTS = ("ssh", "local", "kubernetes", "hyperqueue")
#: A transport whose host has a table of its own, which makes it that transport's when the
#: host names none (``[hosts.NAME.kubernetes]`` alone: the host is a cluster).
TABLE_TRANSPORTS = ("kubernetes", "hyperqueue")
#: The fields of a host reached by commands only (over SSH, or here), refused on a cluster.
_COMMAND_FIELDS = (
    "hostname",
    "port",
    "user",
    "identity_file",
    "known_hosts",
    "proxy_jump",
    "work_root",
)


@attrs.frozen
class PoolSettings:
    """How the pool actor of one host uses it; every default is documented here.

    The defaults keep well inside OpenSSH's own defaults (MaxSessions 10, MaxStartups 10:30:100)
    and inside what HPC login nodes tolerate.
    """

    max_connections: int = attrs.field(
        default=2, validator=number_check("max_connections", minimum=1, integer=True)
    )
    """Connections open to the host at once."""
    channels_per_connection: int = attrs.field(
        default=8, validator=number_check("channels_per_connection", minimum=1, integer=True)
    )
    """Leases (one channel each at a time) per connection; below sshd's MaxSessions of 10.
    A refused channel lowers it for that connection."""
    max_age: float = attrs.field(default=3600.0, validator=seconds_check("max_age", minimum=1))
    """Seconds before a connection is rotated (jittered by up to -10 %): it takes no new
    leases, closes once its leases end and is replaced within the login budget."""
    idle_timeout: float = attrs.field(
        default=60.0, validator=seconds_check("idle_timeout", minimum=0.1)
    )
    """Seconds without a lease after which a connection is closed, before servers' idle
    timeouts close it under a user."""
    keepalive_interval: float = attrs.field(
        default=30.0, validator=seconds_check("keepalive_interval", minimum=0, allow_zero=True)
    )
    """Seconds between keepalives on an open connection (0: none)."""
    keepalive_count_max: int = attrs.field(
        default=3, validator=number_check("keepalive_count_max", minimum=1, integer=True)
    )
    """Unanswered keepalives before the connection counts as dead."""
    connect_timeout: float = attrs.field(
        default=30.0, validator=seconds_check("connect_timeout", minimum=0.1)
    )
    """Seconds for one connection attempt, login included."""
    backoff_initial: float = attrs.field(
        default=1.0, validator=seconds_check("backoff_initial", minimum=0.01)
    )
    """Seconds before the first retry of a failed connect; doubles per failure, with jitter."""
    backoff_max: float = attrs.field(
        default=60.0, validator=seconds_check("backoff_max", minimum=0.01)
    )
    """The longest wait between connect attempts."""
    unavailable_after: int = attrs.field(
        default=5, validator=number_check("unavailable_after", minimum=1, integer=True)
    )
    """Failed connects in a row after which the host is unavailable: leases fail at once with
    `HostUnavailable` while the pool keeps probing (at ``backoff_max`` at most)."""
    operation_retries: int = attrs.field(
        default=4,
        validator=number_check("operation_retries", minimum=0, allow_zero=True, integer=True),
    )
    """Retries of a retry-safe operation whose channel was refused or whose connection broke."""
    on_unavailable: Literal["pause", "fail"] = attrs.field(default="pause")
    """What happens to a host's processes while it is unavailable."""

    @on_unavailable.validator
    def _check_on_unavailable(self, attribute: Any, value: Any) -> None:
        if value not in ("pause", "fail"):
            raise ConfigError(f"on_unavailable: got {value!r}, expected 'pause' or 'fail'")


@attrs.frozen
class LoginSettings:
    """The login budget shared by every pool of a runtime (a token bucket)."""

    rate: float = attrs.field(default=0.2, validator=number_check("logins.rate", minimum=0.0001))
    """New logins per second in the long run (0.2: one per 5 s)."""
    burst: int = attrs.field(
        default=3, validator=number_check("logins.burst", minimum=1, integer=True)
    )
    """Logins that may happen at once after a quiet period."""


def _env_table(instance: Any, attribute: Any, value: Any) -> None:
    if not isinstance(value, dict) or not all(
        isinstance(key, str) and key and "=" not in key and isinstance(item, str)
        for key, item in value.items()
    ):
        # (the values are not shown: an env holds secrets)
        raise ConfigError(
            f'env: got {shown("env", value)}, expected a table of NAME = "value" strings'
        )


def _optional_str(name: str) -> Any:
    def check(instance: Any, attribute: Any, value: Any) -> None:
        if value is not None and (not isinstance(value, str) or not value or "\0" in value):
            raise ConfigError(f"{name}: got {value!r}, expected a non-empty string")

    return check


@attrs.frozen
class HostConfig:
    """One ``[hosts.NAME]`` table: where a host is, how to reach it, and the host options of
    the backends that run programs there (`options_for`).

    ``hostname`` defaults to the name itself, so an alias of ``~/.ssh/config`` works with
    nothing else given (asyncssh reads OpenSSH's config: HostName, Port, User, IdentityFile,
    ProxyJump ...). What is set here wins over that file.
    """

    name: str = attrs.field()
    hostname: str | None = attrs.field(default=None, validator=_optional_str("hostname"))
    port: int | None = attrs.field(default=None)
    user: str | None = attrs.field(default=None, validator=_optional_str("user"))
    identity_file: str | None = attrs.field(default=None, validator=_optional_str("identity_file"))
    known_hosts: str | None = attrs.field(default=None, validator=_optional_str("known_hosts"))
    """A known_hosts file (default: ~/.ssh/known_hosts); keys are always verified (never
    ``"none"``; ``UserKnownHostsFile none`` in ~/.ssh/config is ignored: `_hostkeys`)."""
    proxy_jump: str | None = attrs.field(default=None, validator=_optional_str("proxy_jump"))
    transport: Literal["ssh", "local", "kubernetes", "hyperqueue"] = attrs.field(default="ssh")
    """How the host is reached (`TRANSPORTS`); a ``kubernetes`` host is a cluster, which
    only the kubernetes backend uses (through its ``[hosts.NAME.kubernetes]`` table)."""
    work_root: str | None = attrs.field(default=None, validator=_optional_str("work_root"))
    """Where remote run dirs go (default ``~/.corra/runs`` on the host)."""
    python: str = attrs.field(default="python3", validator=_optional_str("python"))
    """The remote Python that runs the chaperone (3.6 or newer, standard library only)."""
    pool: PoolSettings = attrs.field(factory=PoolSettings)
    env: dict[str, str] = attrs.field(factory=dict, validator=_env_table)
    """Environment for every command corra runs on the host (``SLURM_CONF`` ...)."""
    options: dict[str, Any] = attrs.field(factory=dict)
    """The host options of backends, by backend name: each ``[hosts.NAME.<backend>]`` table
    structured into its plug-in's ``host_options`` class (`parse_host` gives every installed
    backend's, its defaults where the table is absent). Read them with `options_for`."""

    @name.validator
    def _check_name(self, attribute: Any, value: Any) -> None:
        if not isinstance(value, str) or not _HOST_NAME.fullmatch(value):
            raise ConfigError(
                f"hosts: got name {value!r}, expected letters, digits, '_', '.', '-' "
                "(at most 64, not starting with '.' or '-')"
            )

    @known_hosts.validator
    def _check_known_hosts(self, attribute: Any, value: Any) -> None:
        if isinstance(value, str) and value.strip().lower() == "none":
            raise ConfigError(
                f"hosts.{self.name}.known_hosts: got {value!r}, expected a known_hosts file: "
                "corra always checks host keys (leave it out for ~/.ssh/known_hosts)"
            )

    @port.validator
    def _check_port(self, attribute: Any, value: Any) -> None:
        if value is not None and (
            isinstance(value, bool) or not isinstance(value, int) or not 0 < value < 65536
        ):
            raise ConfigError(f"hosts.{self.name}.port: got {value!r}, expected 1-65535")

    @transport.validator
    def _check_transport(self, attribute: Any, value: Any) -> None:
        if value not in TRANSPORTS:
            raise ConfigError(
                f"hosts.{self.name}.transport: got {value!r}, expected one of "
                + ", ".join(repr(name) for name in TRANSPORTS)
            )

    def __attrs_post_init__(self) -> None:
        if self.runs_commands:
            return
        for field in (*_COMMAND_FIELDS, "env"):
            if getattr(self, field):
                raise ConfigError(
                    f"hosts.{self.name}.{field}: got {getattr(self, field)!r} on a host with "
                    f"transport = {self.transport!r}, which is reached through its "
                    f"[hosts.{self.name}.{self.transport}] table and runs no commands; "
                    "expected none"
                )

    @property
    def runs_commands(self) -> bool:
        """Whether the host runs commands (over SSH, or here): not a cluster. Backends that
        reach hosts by commands (ssh, slurm) take only these."""
        return self.transport in ("ssh", "local")

    @options.validator
    def _check_options(self, attribute: Any, value: Any) -> None:
        if not isinstance(value, dict) or not all(
            isinstance(key, str) and attrs.has(type(item)) for key, item in value.items()
        ):
            raise ConfigError(
                f"hosts.{self.name}.options: got {value!r}, expected host options (attrs "
                "instances) by backend name"
            )

    def options_for(self, backend: str) -> Any:
        """The host's options for ``backend`` (its ``[hosts.NAME.<backend>]`` table, typed):
        as given, else the defaults of the backend's host options class; None for a backend
        that has no host options.

        Raises:
            ConfigError: no backend called ``backend`` is installed (and none was given).
        """
        if backend in self.options:
            return self.options[backend]
        options = installed.get(backend).host_options
        return None if options is None else options()

    @property
    def address(self) -> str:
        """``user@hostname:port`` as far as known here (names the host in errors)."""
        user = f"{self.user}@" if self.user else ""
        port = f":{self.port}" if self.port else ""
        return f"{user}{self.hostname or self.name}{port}"

    def connect_options(self) -> dict[str, Any]:
        """Keyword arguments for `asyncssh.connect` (besides the host)."""
        options: dict[str, Any] = {}
        if self.port is not None:
            options["port"] = self.port
        if self.user is not None:
            options["username"] = self.user
        if self.identity_file is not None:
            options["client_keys"] = [os.path.expanduser(self.identity_file)]
        if self.known_hosts is not None:
            options["known_hosts"] = os.path.expanduser(self.known_hosts)
        if self.proxy_jump is not None:
            options["tunnel"] = self.proxy_jump
        if self.pool.keepalive_interval:
            options["keepalive_interval"] = self.pool.keepalive_interval
            options["keepalive_count_max"] = self.pool.keepalive_count_max
        options["connect_timeout"] = self.pool.connect_timeout
        return options


#: The fields of every host's ``[hosts.NAME]`` table, whatever its backends.
HOST_FIELDS = (
    "hostname",
    "port",
    "user",
    "identity_file",
    "known_hosts",
    "proxy_jump",
    "transport",
    "work_root",
    "python",
    "pool",
    "env",
)


def host_options_classes(registry: Registry | None = None) -> dict[str, type]:
    """The host options class of each backend of ``registry`` (default: the installed ones)
    that has one, by backend name: the ``[hosts.NAME.<backend>]`` tables a host may have.

    Raises:
        ConfigError: a backend with host options is named like a field of every host (its
            table would be that field), or as `Registry.plugins`.
    """
    classes = {}
    for plugin in (registry or installed).plugins.values():
        if plugin.host_options is None:
            continue
        if plugin.name in HOST_FIELDS:
            raise ConfigError(
                f"backend {plugin.name!r}: host_options: its [hosts.NAME.{plugin.name}] table "
                f"would be the field {plugin.name!r} of every host; expected another name"
            )
        classes[plugin.name] = plugin.host_options
    return classes


def parse_host(name: str, table: object, registry: Registry | None = None) -> HostConfig:
    """A `HostConfig` from a ``[hosts.NAME]`` table; errors name ``hosts.NAME.field``.

    Each table named after a backend of ``registry`` (default: the installed ones) that has
    host options is structured into its class; a backend's absent table gives its defaults.
    """
    where = f"hosts.{name}"
    if not isinstance(table, Mapping):
        raise ConfigError(f"{where}: expected a table, got {table!r}")
    classes = host_options_classes(registry)
    unknown = sorted(set(table) - {*HOST_FIELDS, *classes})
    if unknown:
        raise ConfigError(
            f"{where}: unknown field(s) {', '.join(unknown)}; expected some of "
            f"{', '.join(sorted(HOST_FIELDS))}, or the table of a backend with host options "
            f"({', '.join(classes) or 'none is installed'})"
        )
    fields = {key: value for key, value in table.items() if key not in classes}
    if "transport" not in table:
        fields["transport"] = next(
            (name for name in TABLE_TRANSPORTS if name in classes and name in table), "ssh"
        )
    fields["options"] = {
        backend: _host_options(f"{where}.{backend}", options, table.get(backend, {}))
        for backend, options in classes.items()
    }
    pool = fields.pop("pool", {})
    if not isinstance(pool, Mapping):
        raise ConfigError(f"{where}.pool: expected a table, got {pool!r}")
    known = {field.name for field in attrs.fields(PoolSettings)}
    check_fields(f"{where}.pool", pool, known, "setting")
    try:
        settings = PoolSettings(**pool)
        return HostConfig(name=name, pool=settings, **fields)
    except ConfigError as exc:
        message = str(exc)
        if not message.startswith("hosts."):
            prefix = f"{where}.pool." if message.split(":")[0] in known else f"{where}."
            message = prefix + message
        raise ConfigError(message) from None
    except TypeError as exc:
        raise ConfigError(f"{where}: {exc}") from None


def _host_options(where: str, options: type, table: object) -> Any:
    """A backend's ``[hosts.NAME.<backend>]`` table (at ``where``) as its ``options``."""
    if not isinstance(table, Mapping):
        raise ConfigError(f"{where}: expected a table, got {table!r}")
    check_fields(where, table, {field.name for field in attrs.fields(options)}, "setting")
    return parse_options(options, table, where)


def host_table(host: HostConfig) -> dict[str, Any]:
    """The ``[hosts.NAME]`` table that `parse_host` takes back as ``host``: its fields but
    those that are None, and its backends' host options as their tables (those it was parsed
    with; for a host made without any, each installed backend's defaults), as plain data
    (JSON)."""
    data = attrs.asdict(host)  # (recursing: the pool, each backend's host options)
    del data["name"]
    options = data.pop("options")
    table = {key: value for key, value in data.items() if value is not None}
    if not options:  # (a host made in Python: the installed backends' defaults)
        for backend in host_options_classes():
            table[backend] = attrs.asdict(host.options_for(backend))
    table.update(options)
    return table

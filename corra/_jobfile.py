"""Job files: TOML with ``[[process]]`` tables and a ``[defaults]`` table applied to all.

::

    [defaults]
    restart = "transient"
    timeout = 600

    [[process]]
    name = "hello"
    argv = ["echo", "hello"]

Remote hosts are ``[hosts.NAME]`` tables (see `corra.backends.ssh.HostConfig` for the
fields and `corra.backends.ssh.PoolSettings` for ``[hosts.NAME.pool]``); a process runs on one
with ``backend = "ssh"`` and ``host = "NAME"``. An optional ``[logins]`` table sets the login
budget that all hosts share (``rate`` per second, ``burst``)::

    [hosts.cluster]
    hostname = "login.cluster.example.org"
    user = "me"
    pool = { max_connections = 2 }

    [[process]]
    name = "remote"
    backend = "ssh"
    host = "cluster"
    argv = ["python3", "fit.py", "data.csv"]
    inputs = { "fit.py" = "scripts/fit.py", "data.csv" = "data/run1.csv" }
    outputs = ["*.png", "results/*.json"]
    outputs_dir = "results/run1"

    [[process]]
    name = "big"
    backend = "slurm"
    host = "cluster"
    argv = ["./simulate", "--steps", "1000"]
    slurm = { partition = "short", time = "1:00:00", cpus_per_task = 4 }

A remote program runs in its own work dir on the host (or an absolute ``cwd`` there); its
``inputs`` (remote path relative to that dir = local file or directory) are sent and verified
before the launch, and the files matching ``outputs`` are fetched into ``outputs_dir`` after
the exit. Relative local paths are relative to where the job is submitted.

Jobs, named and composed of steps, are ``[[job]]`` tables with ``[[job.step]]`` tables in them
(see `corra.workflows` and docs/workflows.md); a file may have jobs, processes or both.
``[defaults]`` applies to every step as to every ``[[process]]``::

    [[job]]
    name = "pipeline"
    params = { samples = 3 }

    [[job.step]]
    name = "prepare"
    argv = ["python3", "prepare.py", "--samples", "${params.samples}"]

The whole file is validated before anything runs; every error names the file, the process
(by index and name), the job and step, or the host, and the field.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

try:  # (compiled, it parses a job file of 100,000 processes in 1.6 s; tomllib in 2.7 s)
    import tomli as tomllib
except ImportError:  # pragma: no cover (a platform without its wheel)
    import tomllib

import attrs

from corra._errors import ConfigError
from corra.backends.ssh._config import HostConfig, LoginSettings, parse_host
from corra.processes._convert import parse_process_spec
from corra.processes._spec import ProcessSpec
from corra.processes._spec_content import shown_tables
from corra.workflows import JobDefinition, merge_defaults, parse_jobs

TOP_LEVEL = ("defaults", "process", "job", "hosts", "logins")


@attrs.frozen
class JobFile:
    path: str
    processes: tuple[ProcessSpec, ...]
    hosts: dict[str, HostConfig] = attrs.field(factory=dict)
    logins: LoginSettings | None = None
    jobs: dict[str, JobDefinition] = attrs.field(factory=dict)


def load_job_file(path: str | Path) -> JobFile:
    """Read and validate a job file.

    Raises:
        ConfigError: listing every problem found, each naming file, process and field.
    """
    where = str(path)
    try:
        text = Path(path).read_bytes().decode("utf-8")
    except FileNotFoundError:
        raise ConfigError(f"{where}: no such job file") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{where}: cannot read: {exc}") from None
    return parse_job_text(text, where)


def parse_job_text(text: str, where: str = "<job file>") -> JobFile:
    """Validate job-file text; see `load_job_file`."""
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{where}: not valid TOML: {exc}") from None
    errors: list[str] = []
    unknown = sorted(set(data) - set(TOP_LEVEL))
    if unknown:
        errors.append(
            f"{where}: unknown table(s) {unknown}; expected [defaults], [[process]], "
            "[[job]], [hosts.NAME] and [logins]"
        )
    hosts = _hosts(data.get("hosts", {}), where, errors)
    logins = _logins(data.get("logins"), where, errors)
    defaults = data.get("defaults", {})
    if not isinstance(defaults, dict):
        errors.append(f"{where}: defaults: expected a table, got {shown_tables(defaults)}")
        defaults = {}
    tables = data.get("process", [])
    if not isinstance(tables, list):
        errors.append(f"{where}: process: expected [[process]] tables, got {shown_tables(tables)}")
        tables = []
    if not tables and "job" not in data and not errors:
        errors.append(f"{where}: no [[process]] or [[job]] tables; nothing to run")
    specs: list[ProcessSpec] = []
    seen: dict[str, int] = {}
    # One copy of each argv word (the parser makes one per occurrence): 100,000 processes
    # of `sleep 60` held 10 MB of copies of "sleep" and "60".
    words: dict[str, str] = {}
    for index, table in enumerate(tables):
        tables[index] = None  # (a table goes as its spec comes: a file of 100,000 holds one)
        argv = table.get("argv") if isinstance(table, dict) else None
        if type(argv) is list:
            table["argv"] = [words.setdefault(w, w) if type(w) is str else w for w in argv]
        label = _label(where, index, table)
        if not isinstance(table, dict):
            errors.append(f"{label}: expected a table, got {shown_tables(table)}")
            continue
        name = table.get("name")
        if name is None:
            errors.append(f"{label}.name: missing; every process in a job file needs a name")
            continue
        if isinstance(name, str) and name in seen:
            errors.append(f"{label}.name: {name!r} is used by process[{seen[name]}] already")
            continue
        if isinstance(name, str):
            seen[name] = index
        try:
            spec = parse_process_spec(merge_defaults(defaults, table), label)
        except ConfigError as exc:
            errors.append(str(exc))
            continue
        if spec.host is not None and spec.host not in hosts:
            errors.append(
                f"{label}.host: got {spec.host!r}, expected one of the [hosts.NAME] tables "
                f"{sorted(hosts)}"
            )
            continue
        specs.append(spec)
    jobs: dict[str, JobDefinition] = {}
    if "job" in data:
        try:
            jobs = parse_jobs(data["job"], where, defaults=defaults, hosts=hosts)
        except ConfigError as exc:
            errors.append(str(exc))
    if errors:
        raise ConfigError("\n".join(errors))
    return JobFile(path=where, processes=tuple(specs), hosts=hosts, logins=logins, jobs=jobs)


def _hosts(tables: object, where: str, errors: list[str]) -> dict[str, HostConfig]:
    if not isinstance(tables, dict):
        errors.append(f"{where}: hosts: expected [hosts.NAME] tables, got {shown_tables(tables)}")
        return {}
    hosts = {}
    for name, table in tables.items():
        try:
            hosts[name] = parse_host(name, table)
        except ConfigError as exc:
            errors.append(f"{where}: {exc}")
    return hosts


def _logins(table: object, where: str, errors: list[str]) -> LoginSettings | None:
    if table is None:
        return None
    if not isinstance(table, dict):
        errors.append(f"{where}: logins: expected a table, got {shown_tables(table)}")
        return None
    unknown = sorted(set(table) - {"rate", "burst"})
    if unknown:
        errors.append(f"{where}: logins: unknown field(s) {unknown}; expected rate, burst")
        return None
    try:
        return LoginSettings(**table)
    except ConfigError as exc:
        errors.append(f"{where}: {exc}")
        return None


def _label(where: str, index: int, table: Any) -> str:
    name = table.get("name") if isinstance(table, dict) else None
    return f"{where}: process[{index}]" + (f" ({name!r})" if isinstance(name, str) else "")

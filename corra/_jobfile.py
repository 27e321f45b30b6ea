"""Job files: TOML with ``[[process]]`` tables and a ``[defaults]`` table applied to all.

::

    [defaults]
    restart = "transient"
    timeout = 600

    [[process]]
    name = "hello"
    argv = ["echo", "hello"]

The whole file is validated before anything runs; every error names the file, the process
(by index and name) and the field.
"""

from __future__ import annotations

import tomllib
from pathlib import Path
from typing import Any

import attrs

from corra._errors import ConfigError
from corra.actors._records import ProcessSpec, parse_process_spec

TOP_LEVEL = ("defaults", "process")
MERGED_TABLES = ("env", "labels")


@attrs.frozen
class JobFile:
    path: str
    processes: tuple[ProcessSpec, ...]


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
        errors.append(f"{where}: unknown table(s) {unknown}; expected [defaults] and [[process]]")
    defaults = data.get("defaults", {})
    if not isinstance(defaults, dict):
        errors.append(f"{where}: defaults: expected a table, got {defaults!r}")
        defaults = {}
    tables = data.get("process", [])
    if not isinstance(tables, list):
        errors.append(f"{where}: process: expected [[process]] tables, got {tables!r}")
        tables = []
    if not tables and not errors:
        errors.append(f"{where}: no [[process]] tables; nothing to run")
    specs: list[ProcessSpec] = []
    seen: dict[str, int] = {}
    for index, table in enumerate(tables):
        label = _label(where, index, table)
        if not isinstance(table, dict):
            errors.append(f"{label}: expected a table, got {table!r}")
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
            specs.append(parse_process_spec(_merge(defaults, table), label))
        except ConfigError as exc:
            errors.append(str(exc))
    if errors:
        raise ConfigError("\n".join(errors))
    return JobFile(path=where, processes=tuple(specs))


def _label(where: str, index: int, table: Any) -> str:
    name = table.get("name") if isinstance(table, dict) else None
    return f"{where}: process[{index}]" + (f" ({name!r})" if isinstance(name, str) else "")


def _merge(defaults: dict[str, Any], table: dict[str, Any]) -> dict[str, Any]:
    merged = {**defaults, **table}
    for key in MERGED_TABLES:
        if isinstance(defaults.get(key), dict) and isinstance(table.get(key), dict):
            merged[key] = {**defaults[key], **table[key]}
    return merged

"""The installed backends as ``corra backends`` and ``GET /v1/backends`` show them.

Both show the same data: `corra.processes._backend.describe_plugin` of every plug-in
registered under ``corra.backends`` (`corra.processes._registry.installed`), sorted by name.
The command line prints it as a table, or as that JSON with ``--json``.
"""

from __future__ import annotations

import json
from typing import Any, TextIO

from corra.processes._backend import describe_plugin
from corra.processes._registry import Registry, installed

#: What a table cell shows for a field without a default (it must be given).
REQUIRED = "(required)"


def backends_json(registry: Registry = installed) -> list[dict[str, Any]]:
    """Every installed backend, described (the JSON of both the CLI and the API).

    Raises:
        ConfigError: a plug-in cannot be loaded (`Registry.plugins` names it).
    """
    return [describe_plugin(plugin) for plugin in registry.plugins.values()]


def print_backends(out: TextIO, *, as_json: bool, registry: Registry = installed) -> None:
    """``corra backends [--json]``: the installed backends, their capabilities and options."""
    described = backends_json(registry)
    if as_json:
        json.dump(described, out, indent=2)
        out.write("\n")
        return
    for number, backend in enumerate(described):
        if number:
            out.write("\n")
        name = backend["name"]
        out.write(f"{name}: {backend['description']}\n" if backend["description"] else f"{name}\n")
        flags = [flag for flag, present in backend["capabilities"].items() if present]
        out.write(f"  capabilities: {', '.join(flags) or 'none'}\n")
        for title, fields in (
            (f"options ([process.{name}])", backend["options"]),
            (f"host options ([hosts.NAME.{name}])", backend["host_options"]),
        ):
            if not fields:
                out.write(f"  {title}: none\n")
                continue
            out.write(f"  {title}:\n")
            _table(out, fields)


def _table(out: TextIO, fields: list[dict[str, Any]]) -> None:
    rows = [("FIELD", "TYPE", "DEFAULT")]
    for field in fields:
        default = json.dumps(field["default"]) if "default" in field else REQUIRED
        rows.append((field["name"], field["type"], default))
    widths = [max(len(row[column]) for row in rows) for column in range(2)]
    for row in rows:
        out.write(f"    {row[0]:<{widths[0]}}  {row[1]:<{widths[1]}}  {row[2]}\n".rstrip() + "\n")

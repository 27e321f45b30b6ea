"""``corra backends [--json]``: the installed backends, with their capabilities and options.

The data is the registry's (`corra.processes._registry.Registry.describe`), the same that
``GET /v1/backends`` answers; ``--json`` prints it as it is, the table lays it out per backend,
as ``docker info`` does.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any, TextIO

from corra.cli._parser import EXIT_OK
from corra.processes._registry import Registry, installed

#: What a table cell shows for a field without a default (it must be given).
REQUIRED = "(required)"


def backends(args: argparse.Namespace, state_dir: Path) -> int:
    """``corra backends``: the state dir plays no part (the backends are this Python's)."""
    print_backends(sys.stdout, as_json=args.json)
    return EXIT_OK


def print_backends(out: TextIO, *, as_json: bool, registry: Registry = installed) -> None:
    """The installed backends, as JSON or as a table per backend."""
    described = registry.describe()
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
        out.write(f"    {row[0]:<{widths[0]}}  {row[1]:<{widths[1]}}  {row[2]}".rstrip() + "\n")

"""corra driven through its command line, as the end-to-end tests of every backend drive it:
a job file's TOML values, `corra COMMAND --state-dir STATE ...`, `corra run --json`'s records.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import trio

CORRA = [sys.executable, "-m", "corra.cli"]


def toml(value: Any) -> str:
    """``value`` as a TOML value (strings, numbers, booleans, lists, inline tables)."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, str):
        return json.dumps(value)
    if isinstance(value, list | tuple):
        return "[" + ", ".join(toml(item) for item in value) + "]"
    if isinstance(value, dict):
        return "{ " + ", ".join(f"{json.dumps(k)} = {toml(v)}" for k, v in value.items()) + " }"
    raise TypeError(value)


async def corra(state: Path, *args: str, within: float = 90) -> subprocess.CompletedProcess:
    """``corra COMMAND --state-dir STATE ARGS...``, run to its end."""
    with trio.fail_after(within):
        return await trio.run_process(
            [*CORRA, args[0], "--state-dir", str(state), *args[1:]],
            capture_stdout=True,
            capture_stderr=True,
            check=False,
        )


def records_of(done: subprocess.CompletedProcess) -> dict[str, dict[str, Any]]:
    """The final records of a ``corra run --json``, by name."""
    try:
        return {record["name"]: record for record in json.loads(done.stdout)}
    except ValueError:
        raise AssertionError(f"corra run said: {done.stdout!r} {done.stderr!r}") from None


async def run(state: Path, jobs: Path, *options: str, within: float = 90) -> Any:
    """``corra run --json JOBS``: its exit status and its final records by name."""
    done = await corra(state, "run", "--json", *options, str(jobs), within=within)
    return done.returncode, records_of(done)

"""The ``corra`` command line.

``corra run`` runs the embedded runtime in the foreground until its processes are done
(`corra.cli._run`); ``corra serve`` runs it as a service with the HTTP API
(`corra.cli._serve`). ``submit``, ``pause``, ``resume`` and ``kill`` talk to a running
service, through its Unix socket in the state dir or at ``--url`` (`corra.cli._service`);
``ps``, ``show`` and ``logs`` do too, and when no service runs they read the state dir
instead, also while a ``corra run`` uses it (`corra.cli._read`). What they print is in
`corra.cli._render`, the parser in `corra.cli._parser`.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

from corra._errors import ConfigError, CorraError
from corra._runtime import default_state_dir
from corra._statedir import check_state_dir
from corra.api._client import ApiError
from corra.cli._backends import backends
from corra.cli._manage import prune, rerun, rm
from corra.cli._parser import EXIT_FAILED, EXIT_OK, EXIT_USAGE, build_parser
from corra.cli._read import history, logs, ps, show
from corra.cli._run import run
from corra.cli._serve import serve
from corra.cli._service import submit
from corra.cli._workflows import control, jobs, runs

__all__ = ["build_parser", "main"]

_COMMANDS: dict[str, Callable[[argparse.Namespace, Path], int]] = {
    "run": run,
    "serve": serve,
    "submit": submit,
    "ps": ps,
    "show": show,
    "history": history,
    "logs": logs,
    "backends": backends,
    "pause": control,
    "resume": control,
    "kill": control,
    "rerun": rerun,
    "rm": rm,
    "prune": prune,
    "jobs": jobs,
    "runs": runs,
}


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``corra`` console script; returns the exit status."""
    parser = build_parser()
    words = list(sys.argv[1:] if argv is None else argv)
    program: list[str] = []
    if "--" in words:  # everything after `--` is the program, never options of ours
        split = words.index("--")
        words, program = words[:split], words[split + 1 :]
    args = parser.parse_args(words)
    args.argv = program
    if args.command is None:
        parser.print_help(sys.stderr)
        return EXIT_USAGE
    state_dir = getattr(args, "state_dir", None) or default_state_dir()
    try:
        # A refused or unusable state dir is one message for every command (exit 2); `run`
        # and `serve` create a missing one (`corra._statedir.make_state_dir`).
        check_state_dir(state_dir)
        return _COMMANDS[args.command](args, state_dir)
    except ConfigError as exc:
        print(f"corra: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except ApiError as exc:
        print(f"corra: {exc}", file=sys.stderr)
        if exc.status == 401:
            print("corra: (the token is in the service's token file)", file=sys.stderr)
        return EXIT_USAGE if exc.status in (400, 413, 422) else EXIT_FAILED
    except CorraError as exc:
        print(f"corra: {exc}", file=sys.stderr)
        return EXIT_FAILED
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        # `corra ps | head`: the reader left; not an error of ours.
        with contextlib.suppress(OSError):
            sys.stdout = open(os.devnull, "w")  # noqa: SIM115 - silence the exit flush
        return EXIT_OK

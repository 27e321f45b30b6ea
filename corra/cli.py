"""The ``corra`` command line."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

import corra


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="corra",
        description="Run programs and keep them running: actors under OTP supervision on trio.",
    )
    parser.add_argument("--version", action="version", version=f"corra {corra.__version__}")
    parser.add_subparsers(dest="command", metavar="COMMAND")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``corra`` console script; returns the exit status."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help(sys.stderr)
        return 2
    return 0  # pragma: no cover - no subcommands yet


if __name__ == "__main__":
    sys.exit(main())

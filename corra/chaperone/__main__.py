"""The chaperone's command line: argv -> an own chaperone, the shared one, or the remote helper.

    python3 -I -S .../chaperone RUN_DIR [--notify-fd N]      one program (`_own`)
    python3 -I -S .../chaperone --serve [ROOT] [--ready-fd N] [--idle-exit SECONDS]
                                                             every program of ROOT (`_shared`)
    python3 -I -S .../chaperone --helper COMMAND ...         the remote helper (`remote_helper`)

The package directory is what runs (``python3 -I -S DIR``): the local backend starts it from
where corra is installed, the SSH backend from the copy it uploaded to a host. Run that way,
this file is not part of the package; it imports the package from the directory above, under
the directory's own name, and hands over to its `main`. ``python -m corra.chaperone`` works
too.
"""

import contextlib
import os
import sys


def main(argv):
    """Run as ``argv`` says; the exit status."""
    from . import _proc, protocol

    if argv[:1] == ["--helper"]:
        from .remote_helper import main as helper

        return helper(argv[1:])
    if argv and argv[0] == "--serve":
        from ._rundir import ROOT_VARIABLE
        from ._shared import IDLE_EXIT, serve

        options = {"--ready-fd": None, "--idle-exit": None}
        root = os.environ.get(ROOT_VARIABLE)
        rest = argv[1:]
        while rest:
            if rest[0] in options and len(rest) >= 2:
                options[rest[0]] = rest[1]
                rest = rest[2:]
            elif not rest[0].startswith("--"):
                root = rest[0]
                rest = rest[1:]
            else:
                break
        if rest or not root:
            sys.stderr.write("usage: chaperone --serve [ROOT] [--ready-fd N] [--idle-exit S]\n")
            return 2
        try:
            ready_fd = None if options["--ready-fd"] is None else int(options["--ready-fd"])
            idle_exit = IDLE_EXIT
            if options["--idle-exit"] is not None:
                given = options["--idle-exit"]
                with contextlib.suppress(ValueError):
                    given = float(given)
                idle_exit = protocol.seconds(given, "--idle-exit")
        except ValueError as error:
            sys.stderr.write(f"chaperone --serve: {error}\n")
            return 2
        root = os.path.abspath(root)
        _proc.detach()
        _proc.close_inherited(ready_fd)
        return serve(root, ready_fd, idle_exit)
    from ._own import WAITED, run_own

    if len(argv) == 1:
        notify_fd = None
    elif len(argv) == 3 and argv[1] == "--notify-fd":
        notify_fd = int(argv[2])
    else:
        sys.stderr.write(
            "usage: chaperone RUN_DIR [--notify-fd N] | --serve [ROOT] [--ready-fd N] | "
            "--helper COMMAND\n"
        )
        return 2
    import signal

    # Blocked before anything else: a kill request must wait for us, never kill us.
    signal.pthread_sigmask(signal.SIG_BLOCK, WAITED)
    _proc.detach()
    _proc.close_inherited(notify_fd)
    return run_own(os.path.abspath(argv[0]), notify_fd)


def _package_main():
    """The package's `main`, this file having been run as the package directory's script."""
    import importlib

    here = os.path.dirname(os.path.abspath(__file__))
    if sys.path and os.path.abspath(sys.path[0]) == here:
        del sys.path[0]  # the package's modules are not top-level ones
    sys.path.append(os.path.dirname(here))  # last: the standard library comes first
    return importlib.import_module(os.path.basename(here) + ".__main__").main


if __name__ == "__main__":
    sys.exit((main if __package__ else _package_main())(sys.argv[1:]))

"""The ``corra`` command line.

``corra run`` runs the embedded runtime in the foreground until its processes are done;
``corra serve`` runs it as a service with the HTTP API (`corra.api`). ``submit``, ``pause``,
``resume`` and ``kill`` talk to a running service, through its Unix socket in the state dir
or at ``--url``; ``ps``, ``show`` and ``logs`` do too, and when no service runs they read the
state dir instead, also while a ``corra run`` uses it (LMDB allows concurrent readers).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import math
import os
import shlex
import signal
import sys
import time
import urllib.parse
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, TextIO

import trio

import corra
from corra._errors import ConfigError, CorraError
from corra._runtime import (
    HISTORY_CODEC,
    RECORD_CODEC,
    STATE_DIR_ENV,
    default_state_dir,
    open_runtime,
)
from corra._statedir import check_state_dir
from corra.api._client import (
    ApiError,
    Client,
    ConnectionLost,
    NotServing,
    connect,
    no_service_message,
)
from corra.api._files import DEFAULT_HOST, DEFAULT_PORT, TOKEN_FILE
from corra.api._wire import detail_json, record_json
from corra.backends.recorded import recorded
from corra.persistence import open_store_readonly
from corra.processes._convert import parse_process_spec, unstructure_spec
from corra.processes._journal import find_record, sorted_records
from corra.processes._lifecycle import ACTIVE, PHASES, TERMINAL, Result, describe, needs_recovery
from corra.processes._record import ProcessRecord, Transition
from corra.processes._spec import DEFAULT_OUTPUT_LIMIT, ProcessSpec, check_output_limit
from corra.processes._spec_content import HIDDEN

if TYPE_CHECKING:
    from corra._jobfile import JobFile

__all__ = ["build_parser", "main", "record_json"]

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_USAGE = 2
#: A control command found no service to talk to.
EXIT_NO_SERVICE = 3

URL_ENV = "CORRA_URL"
TOKEN_ENV = "CORRA_TOKEN"


def build_parser() -> argparse.ArgumentParser:
    # Options every command takes, before or after its name (`corra --state-dir D ps` and
    # `corra ps --state-dir D`): SUPPRESS keeps a subcommand from resetting what was given
    # before it.
    state = argparse.ArgumentParser(add_help=False)
    state.add_argument(
        "--state-dir",
        type=Path,
        default=argparse.SUPPRESS,
        help=f"where state lives (default: ${STATE_DIR_ENV}, else ./.corra)",
    )
    client = argparse.ArgumentParser(add_help=False)
    group = client.add_argument_group("reaching a service (default: its socket in the state dir)")
    group.add_argument(
        "--url",
        default=argparse.SUPPRESS,
        help=f"a service's URL instead (default: ${URL_ENV})",
    )
    group.add_argument(
        "--token", default=argparse.SUPPRESS, help=f"its bearer token (default: ${TOKEN_ENV})"
    )
    group.add_argument(
        "--token-file",
        default=argparse.SUPPRESS,
        help=f"a file with the token (default: the service's, else <state dir>/{TOKEN_FILE})",
    )
    group.add_argument(
        "--cacert", default=argparse.SUPPRESS, help="CA certificate to verify an https URL with"
    )

    parser = argparse.ArgumentParser(
        prog="corra",
        parents=[state],
        description="Run programs and keep them running: actors under OTP supervision on trio.",
    )
    parser.add_argument("--version", action="version", version=f"corra {corra.__version__}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")

    run = commands.add_parser(
        "run",
        parents=[state],
        help="run a job file, or one program, in the foreground until all are done",
        usage="corra run [options] JOBFILE | corra run [options] -- ARGV...",
        description="Run a job file (or `-- ARGV...`) until every process is terminal. "
        "Running it again on the same state dir continues what is unfinished.",
    )
    run.add_argument("jobfile", nargs="?", help="a TOML job file with [[process]] tables")
    run.add_argument("--name", help="name of the process given after --")
    run.add_argument("--max-running", type=int, default=None, help="programs at once")
    run.add_argument("--output-limit", type=int, default=None, metavar="BYTES", help=_OUTPUT_LIMIT)
    run.add_argument("--json", action="store_true", help="print the final records as JSON")
    run.add_argument("-v", "--verbose", action="store_true", help="log every transition")

    serve = commands.add_parser(
        "serve",
        parents=[state],
        help="run the runtime as a service, with the HTTP API",
        description="Run the runtime and its HTTP API until SIGTERM or SIGINT. Programs keep "
        "running when it stops; the next `corra serve` on the state dir reattaches them. "
        "Besides --listen, it listens on <state dir>/api.sock (mode 0600) for the local "
        f"command line. The bearer token is in <state dir>/{TOKEN_FILE} (created on first "
        "start, mode 0600) unless --token-file names another file.",
    )
    serve.add_argument(
        "--listen",
        default=f"{DEFAULT_HOST}:{DEFAULT_PORT}",
        metavar="HOST:PORT",
        help=f"TCP address (default {DEFAULT_HOST}:{DEFAULT_PORT}; port 0: any free port)",
    )
    serve.add_argument("--certfile", help="serve https with this certificate (PEM)")
    serve.add_argument("--keyfile", help="... and this private key")
    serve.add_argument(
        "--token-file", help="the token's file (created, mode 0600, if it does not exist)"
    )
    serve.add_argument("--max-running", type=int, default=None, help="programs at once")
    serve.add_argument(
        "--output-limit", type=int, default=None, metavar="BYTES", help=_OUTPUT_LIMIT
    )
    serve.add_argument("--access-log", action="store_true", help="log every request to stderr")
    serve.add_argument("-v", "--verbose", action="store_true", help="log every transition")

    submit = commands.add_parser(
        "submit",
        parents=[state, client],
        help="submit a job file, or one program, to the running service",
        usage="corra submit [options] JOBFILE | corra submit [options] -- ARGV...",
        description="Submit processes to a running `corra serve` and return at once. A "
        "process whose name exists already is not submitted again.",
    )
    submit.add_argument("jobfile", nargs="?", help="a TOML job file with [[process]] tables")
    submit.add_argument("--name", help="name of the process given after --")
    submit.add_argument(
        "--label", action="append", default=[], metavar="KEY=VALUE", help="a label (repeat)"
    )
    submit.add_argument("--json", action="store_true", help="print the records as JSON")

    ps = commands.add_parser("ps", parents=[state, client], help="list processes")
    ps.add_argument("--json", action="store_true")
    ps.add_argument("--phase", choices=PHASES, help="only processes in this phase")
    ps.add_argument(
        "--label", action="append", default=[], metavar="KEY=VALUE", help="only with this label"
    )

    show = commands.add_parser(
        "show", parents=[state, client], help="one process: spec, state, result, history"
    )
    show.add_argument("process", help="id or name")
    show.add_argument("--json", action="store_true")
    show.add_argument(
        "--show-env",
        action="store_true",
        help=f"show the values of the env (else each is {HIDDEN!r})",
    )

    logs = commands.add_parser("logs", parents=[state, client], help="a process's output")
    logs.add_argument("process", help="id or name")
    logs.add_argument("--stderr", action="store_true", help="standard error instead")
    logs.add_argument("-f", "--follow", action="store_true", help="keep printing new output")

    backends = commands.add_parser(
        "backends",
        parents=[state],
        help="list the installed backends: their capabilities and options",
        description="List the backends installed in this Python environment (registered "
        "under the corra.backends entry-point group), with their capabilities, the fields "
        "of their [process.NAME] options table and of their [hosts.HOST.NAME] table.",
    )
    backends.add_argument("--json", action="store_true", help="as JSON (as GET /v1/backends)")

    for verb, text in (
        ("pause", "pause a process between steps (its program keeps running)"),
        ("resume", "continue a paused process where it was"),
        ("kill", "kill a process: SIGTERM to its group, SIGKILL after its kill_grace"),
    ):
        control = commands.add_parser(verb, parents=[state, client], help=text, description=text)
        control.add_argument("process", help="id or name")
        control.add_argument("--json", action="store_true")
        if verb == "kill":
            control.add_argument(
                "--no-wait", action="store_true", help="return at once, not once it is dead"
            )
    return parser


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
    commands: dict[str, Callable[[argparse.Namespace, Path], int]] = {
        "run": _run,
        "serve": _serve,
        "submit": _submit,
        "ps": _ps,
        "show": _show,
        "logs": _logs,
        "backends": _backends,
        "pause": _control,
        "resume": _control,
        "kill": _control,
    }
    try:
        # A refused or unusable state dir is one message for every command (exit 2); `run`
        # and `serve` create a missing one (`corra._statedir.make_state_dir`).
        check_state_dir(state_dir)
        return commands[args.command](args, state_dir)
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


def _backends(args: argparse.Namespace, state_dir: Path) -> int:
    from corra._backend_list import print_backends

    print_backends(sys.stdout, as_json=args.json)
    return EXIT_OK


# -- corra run ---------------------------------------------------------------------------


def _run(args: argparse.Namespace, state_dir: Path) -> int:
    from corra._jobfile import JobFile, load_job_file

    argv = list(args.argv)
    if args.jobfile and args.name:
        raise ConfigError("run: --name names the program given after --; a job file names its own")
    if args.jobfile and argv:
        raise ConfigError("run: give a job file or `-- ARGV...`, not both")
    if args.jobfile:
        job = load_job_file(args.jobfile)
    elif argv:
        fields: dict[str, Any] = {"argv": argv}
        if args.name:
            fields["name"] = args.name
        job = JobFile(path="<command line>", processes=(parse_process_spec(fields, "argv"),))
    else:
        raise ConfigError("run: nothing to run; give a job file or `-- ARGV...`")
    if args.max_running is not None and args.max_running < 1:
        raise ConfigError(f"--max-running: got {args.max_running}, expected an integer >= 1")
    _output_limit(args)
    if args.verbose:
        logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    return trio.run(_run_async, job, state_dir, args)


#: --output-limit's help.
_OUTPUT_LIMIT = (
    "bytes kept of each of stdout and stderr of a process that sets no output_limit "
    f"(default {DEFAULT_OUTPUT_LIMIT}, 1 GiB)"
)


def _output_limit(args: argparse.Namespace) -> int:
    """--output-limit, checked; the default without it."""
    if args.output_limit is None:
        return DEFAULT_OUTPUT_LIMIT
    check_output_limit("--output-limit", args.output_limit)
    return int(args.output_limit)


async def _run_async(job: JobFile, state_dir: Path, args: argparse.Namespace) -> int:
    # With --json, stdout carries the JSON alone; the progress goes to stderr.
    out = sys.stderr if args.json else sys.stdout
    interrupted: list[int] = []
    async with open_runtime(
        state_dir=state_dir,
        max_running=args.max_running,
        hosts=job.hosts,
        logins=job.logins,
        output_limit=_output_limit(args),
    ) as rt:
        manager = rt.processes
        report = rt.recovery
        if report is not None and (report.resumed or report.set_aside):
            print(
                f"recovered {len(report.resumed)} active process(es) from {state_dir}"
                + (
                    f"; set aside {len(report.set_aside)} corrupt record(s)"
                    if report.set_aside
                    else ""
                ),
                file=out,
            )
        display = Progress(out)
        stops = (signal.SIGTERM, signal.SIGINT)
        with manager.subscribe() as events, trio.open_signal_receiver(*stops) as signals:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(_stop_on_signal, signals, nursery.cancel_scope, out, interrupted)
                nursery.start_soon(display.follow, events)
                ids = []
                for spec in job.processes:
                    record = (await manager.submit(spec)).record
                    ids.append(record.id)
                    if record.state.terminal:
                        display.line(f"{record.name}: already {record.phase}, not run again")
                await _wait_all(manager, ids)
                nursery.cancel_scope.cancel()
        records = [manager.get(process_id) for process_id in ids]
        leftovers = _leftovers(manager, report, ids)
    display.summary(records)
    if leftovers:
        print(
            f"{leftovers} other process(es) recovered from {state_dir} are still active; their "
            "programs keep running under their chaperones, and the next `corra run` or "
            "`corra serve` on this state dir collects them",
            file=out,
        )
    if args.json:
        json.dump([record_json(record) for record in records], sys.stdout, indent=2)
        sys.stdout.write("\n")
    failed = [r for r in records if r.phase in ("failed", "killed")]
    unfinished = [r for r in records if r.phase not in TERMINAL]
    paused = [r for r in unfinished if r.phase == "paused"]
    if len(unfinished) > len(paused):
        print(
            f"{len(unfinished) - len(paused)} process(es) interrupted; run the same command "
            "again to continue them",
            file=out,
        )
    if paused:
        print(f"{len(paused)} process(es) paused; they wait for a resume", file=out)
    if interrupted:
        return 128 + interrupted[0]  # as a shell reports a signal: 130 for SIGINT
    return EXIT_FAILED if failed or unfinished else EXIT_OK


async def _wait_all(manager: Any, ids: list[str]) -> None:
    """Until no process of this run has work left.

    Only this run's: the processes that a runtime killed earlier left active are recovered
    in the background (their actors collect what ended meanwhile), but a one-off never waits
    for them; what is left of them when this run ends keeps running under its chaperone, and
    the next runtime on the state dir collects it (`_leftovers` says how many)."""

    def idle(record: ProcessRecord) -> bool:
        # (a process paused because its host stopped answering resumes by itself: wait)
        return not needs_recovery(record.state)

    for process_id in ids:
        await manager.wait(process_id, until=idle)


def _leftovers(manager: Any, report: Any, ids: list[str]) -> int:
    """How many recovered processes, not of this run, still have work left."""
    if report is None:
        return 0
    own = set(ids)
    count = 0
    for process_id in (*report.resumed, *report.waiting_for_host):
        if process_id in own:
            continue
        record = manager.get(process_id)
        if needs_recovery(record.state):
            count += 1
    return count


async def _stop_on_signal(
    signals: Any, scope: trio.CancelScope, out: TextIO, interrupted: list[int]
) -> None:
    async for signum in signals:
        interrupted.append(signum)
        name = signal.Signals(signum).name
        print(f"{name}: stopping; programs keep running; run again to reattach", file=out)
        scope.cancel()
        return


def _happened(record: ProcessRecord, transition: Transition) -> str | None:
    """One transition in words, for the plain progress lines (None: not worth a line)."""
    event = transition.event
    result = record.state.result
    if event == "launch":
        return None
    if event == "submit":
        return "submitted"
    if event == "started":
        pid = (record.state.handle or {}).get("pid")
        return f"running (attempt {record.state.attempt}" + (f", pid {pid})" if pid else ")")
    if event == "retry":
        return f"will run again: {transition.reason}"
    if event in ("succeed", "fail", "killed") and result is not None:
        took = ""
        if result.started_at is not None and result.ended_at is not None:
            took = f" after {result.ended_at - result.started_at:.1f}s"
        verb = {"succeed": "finished", "fail": "failed", "killed": "killed"}[event]
        return f"{verb}: {describe(result)}{took}"
    if transition.reason:
        return f"{transition.target} ({transition.reason})"
    return transition.target


class Progress:
    """Counts per phase and a line per running process (a terminal), or plain lines."""

    def __init__(self, out: TextIO) -> None:
        self.out = out
        self.tty = out.isatty()
        self.phases: dict[str, str] = {}
        self.names: dict[str, str] = {}
        self.since: dict[str, float] = {}
        self.drawn = 0

    def line(self, text: str) -> None:
        self._erase()
        print(text, file=self.out, flush=True)
        self._draw()

    async def follow(self, events: Any) -> None:
        """Show every transition; on a terminal, also tick the running times twice a second."""
        tick = 0.5 if self.tty else math.inf
        while True:
            with trio.move_on_after(tick):
                try:
                    record, transition = await events.receive()
                except trio.EndOfChannel:
                    return
                self.update(record, transition)
                continue
            self._redraw()

    def update(self, record: ProcessRecord, transition: Transition) -> None:
        self.phases[record.id] = record.phase
        self.names[record.id] = record.name
        if record.phase == "running":
            self.since[record.id] = transition.at
        else:
            self.since.pop(record.id, None)
        what = _happened(record, transition)
        if what is None or (self.tty and transition.event in ("submit", "launch", "started")):
            self._redraw()
            return
        self.line(f"{time.strftime('%H:%M:%S')} {record.name}: {what}")

    def _redraw(self) -> None:
        self._erase()
        self._draw()

    def _erase(self) -> None:
        if self.tty and self.drawn:
            self.out.write(f"\x1b[{self.drawn}F\x1b[J")
            self.drawn = 0

    def _draw(self) -> None:
        if not self.tty:
            return
        counts = Counter(self.phases.values())
        lines = ["  ".join(f"{phase} {counts[phase]}" for phase in PHASES if counts[phase])]
        now = time.time()
        running = sorted(self.since.items(), key=lambda item: item[1])
        for process_id, since in running[:10]:
            lines.append(f"  running {self.names[process_id]:<30} {now - since:7.1f}s")
        if len(running) > 10:
            lines.append(f"  ... and {len(running) - 10} more")
        self.out.write("\n".join(lines) + "\n")
        self.out.flush()
        self.drawn = len(lines)

    def summary(self, records: list[ProcessRecord]) -> None:
        self._erase()
        counts = Counter(record.phase for record in records)
        print(
            "done: " + ", ".join(f"{counts[p]} {p}" for p in PHASES if counts[p]),
            file=self.out,
        )


# -- corra serve ---------------------------------------------------------------------------


def _serve(args: argparse.Namespace, state_dir: Path) -> int:
    from corra.api._files import parse_listen
    from corra.api._server import Listen

    host, port = parse_listen(args.listen)
    if args.max_running is not None and args.max_running < 1:
        raise ConfigError(f"--max-running: got {args.max_running}, expected an integer >= 1")
    _output_limit(args)
    for option in ("certfile", "keyfile"):
        path = getattr(args, option)
        if path is not None and not Path(path).is_file():
            raise ConfigError(f"--{option}: {path}: no such file")
    listen = Listen(
        host=host,
        port=port,
        socket=state_dir.absolute() / "api.sock",
        certfile=args.certfile,
        keyfile=args.keyfile,
        access_log=args.access_log,
    )
    if not listen.tls and host not in ("127.0.0.1", "::1", "localhost"):
        print(
            f"corra serve: warning: listening on {host} without TLS: the token crosses the "
            "network in the clear (--certfile/--keyfile)",
            file=sys.stderr,
        )
    token_file = Path(args.token_file) if args.token_file else state_dir / TOKEN_FILE
    logging.basicConfig(
        level=logging.INFO if args.verbose else logging.WARNING,
        format="%(asctime)s %(name)s: %(message)s",
    )
    try:
        return trio.run(_serve_async, args, state_dir, listen, token_file.absolute())
    except BaseExceptionGroup as group:
        raise _sole(group) from None


def _sole(group: BaseExceptionGroup[BaseException]) -> BaseException:
    """The one exception in a group of nurseries' (a refused address, a locked state dir), so
    that it is reported as itself; else the group."""
    leaves = []
    pending: list[BaseException] = [group]
    while pending:
        exc = pending.pop()
        if isinstance(exc, BaseExceptionGroup):
            pending.extend(exc.exceptions)
        elif not isinstance(exc, trio.Cancelled):
            leaves.append(exc)
    return leaves[0] if len(leaves) == 1 else group


async def _serve_async(
    args: argparse.Namespace, state_dir: Path, listen: Any, token_file: Path
) -> int:
    from corra.api._app import open_api
    from corra.api._files import load_token, remove_info, write_info
    from corra.api._server import serve_api

    stop = trio.Event()
    # Open first: a SIGTERM during the recovery stops the service as gracefully as later.
    with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
        async with trio.open_nursery() as outer:
            outer.start_soon(_watch_signals, signals, stop, outer.cancel_scope)
            async with open_runtime(
                state_dir=state_dir,
                max_running=args.max_running,
                output_limit=_output_limit(args),
            ) as rt:
                token = await trio.to_thread.run_sync(load_token, token_file)
                report = rt.recovery
                if report is not None and (report.resumed or report.set_aside):
                    print(
                        f"corra serve: recovered {len(report.resumed)} active process(es)"
                        + (f", set aside {len(report.set_aside)}" if report.set_aside else ""),
                        file=sys.stderr,
                    )
                async with open_api(rt, token=token) as api, trio.open_nursery() as nursery:
                    urls = await nursery.start(
                        lambda task_status: serve_api(
                            api.app, listen, shutdown_trigger=stop.wait, task_status=task_status
                        )
                    )
                    info = {
                        "pid": os.getpid(),
                        "url": urls[0] if listen.host is not None else None,
                        "socket": str(listen.socket),
                        "token_file": str(token_file),
                        "version": corra.__version__,
                    }
                    await trio.to_thread.run_sync(write_info, state_dir, info)
                    print(
                        f"corra serve: listening on {' and '.join(urls)} "
                        f"(state dir {state_dir}, token in {token_file})",
                        flush=True,
                    )
                    try:
                        await stop.wait()
                    finally:
                        api.stop()  # the streams end, so that the graceful stop is quick
                        remove_info(state_dir)
            outer.cancel_scope.cancel()
    return EXIT_OK


async def _watch_signals(signals: Any, stop: trio.Event, scope: trio.CancelScope) -> None:
    """The first SIGTERM or SIGINT stops the service gracefully; a second one at once."""
    async for signum in signals:
        name = signal.Signals(signum).name
        if not stop.is_set():
            print(
                f"corra serve: {name}: stopping; programs keep running, and the next "
                "`corra serve` reattaches them",
                file=sys.stderr,
                flush=True,
            )
            stop.set()
        else:
            print(f"corra serve: {name} again: stopping now", file=sys.stderr, flush=True)
            scope.cancel()


# -- talking to a service --------------------------------------------------------------------


def _client_options(args: argparse.Namespace) -> dict[str, Any]:
    return {
        "url": getattr(args, "url", None) or os.environ.get(URL_ENV) or None,
        "token": getattr(args, "token", None) or os.environ.get(TOKEN_ENV) or None,
        "token_file": getattr(args, "token_file", None),
        "cacert": getattr(args, "cacert", None),
    }


@contextlib.contextmanager
def _service(args: argparse.Namespace, state_dir: Path) -> Iterator[Client]:
    """A client of the service (`NotServing` if there is none; with --url, an error)."""
    options = _client_options(args)
    try:
        with connect(state_dir, **options) as client:
            yield client
    except NotServing as exc:
        if options["url"]:
            raise CorraError(f"cannot reach the service at {options['url']}: {exc}") from None
        raise


def _quoted(process: str) -> str:
    return urllib.parse.quote(process, safe="")


def _print_json(data: Any) -> None:
    json.dump(data, sys.stdout, indent=2)
    sys.stdout.write("\n")


def _submit(args: argparse.Namespace, state_dir: Path) -> int:
    from corra._jobfile import load_job_file

    argv = list(args.argv)
    if args.jobfile and (args.name or args.label):
        raise ConfigError(
            "submit: --name and --label go with `-- ARGV...`; a job file says its own"
        )
    if args.jobfile and argv:
        raise ConfigError("submit: give a job file or `-- ARGV...`, not both")
    bodies: list[dict[str, Any]] = []
    if args.jobfile:
        job = load_job_file(args.jobfile)
        if job.hosts:
            print(
                "corra submit: note: the job file's [hosts] are not sent; the service knows "
                "the hosts it was started with (remembered in its state dir)",
                file=sys.stderr,
            )
        bodies = [_absolute(spec) for spec in job.processes]
    elif argv:
        fields: dict[str, Any] = {"argv": argv}
        if args.name:
            fields["name"] = args.name
        if args.label:
            fields["labels"] = dict(_label(text) for text in args.label)
        bodies = [_absolute(parse_process_spec(fields, "argv"))]
    else:
        raise ConfigError("submit: nothing to submit; give a job file or `-- ARGV...`")
    try:
        with _service(args, state_dir) as client:
            records = []
            for body in bodies:
                status, record = client.call("POST", "/v1/processes", body=body)
                records.append(record)
                if not args.json:
                    what = "submitted" if status == 201 else f"exists already ({record['phase']})"
                    print(f"{record['name']} ({record['id']}): {what}")
    except NotServing:
        print(f"corra: {no_service_message(state_dir)}", file=sys.stderr)
        print("corra: (or run it in the foreground: `corra run`)", file=sys.stderr)
        return EXIT_NO_SERVICE
    if args.json:
        _print_json(records)
    return EXIT_OK


def _absolute(spec: ProcessSpec) -> dict[str, Any]:
    """A spec as the API takes it: local paths made absolute here, where they were meant."""
    data = unstructure_spec(spec)
    if spec.backend == "local" and spec.cwd is not None:
        data["cwd"] = os.path.abspath(spec.cwd)
    if spec.outputs_dir is not None:
        data["outputs_dir"] = os.path.abspath(spec.outputs_dir)
    data["inputs"] = {remote: os.path.abspath(local) for remote, local in spec.inputs.items()}
    return data


def _label(text: str) -> tuple[str, str]:
    key, equals, value = text.partition("=")
    if not key or not equals:
        raise ConfigError(f"--label: got {text!r}, expected KEY=VALUE")
    return key, value


def _control(args: argparse.Namespace, state_dir: Path) -> int:
    verb = args.command
    params = {"wait": "false"} if verb == "kill" and args.no_wait else None
    try:
        with _service(args, state_dir) as client:
            _, record = client.call(
                "POST", f"/v1/processes/{_quoted(args.process)}/{verb}", params=params
            )
    except NotServing:
        print(f"corra: {no_service_message(state_dir)}", file=sys.stderr)
        return EXIT_NO_SERVICE
    if args.json:
        _print_json(record)
    else:
        reason = f" ({record['reason']})" if record.get("reason") else ""
        print(f"{record['name']} ({record['id']}): {record['phase']}{reason}")
    return EXIT_OK


# -- ps, show, logs: through the service, else from the state dir -------------------------


def _open_readonly(state_dir: Path) -> Any:
    if not (state_dir / "state.lmdb").exists():
        raise ConfigError(
            f"state dir {state_dir}: no corra state here (start one with `corra run` or "
            "`corra serve`)"
        )
    return open_store_readonly(state_dir)


def _read_only(
    args: argparse.Namespace,
    state_dir: Path,
    via_service: Callable[[Client], int],
    from_state_dir: Callable[[], int],
) -> int:
    """``via_service`` if a service runs (or --url is given), else ``from_state_dir``."""
    try:
        with _service(args, state_dir) as client:
            return via_service(client)
    except NotServing:
        return from_state_dir()


def _ps(args: argparse.Namespace, state_dir: Path) -> int:
    labels = dict(_label(text) for text in args.label)

    def via_service(client: Client) -> int:
        items: list[dict[str, Any]] = []
        params: dict[str, Any] = {"limit": 1000}
        if args.phase:
            params["phase"] = args.phase
        if labels:
            params["label"] = [f"{key}={value}" for key, value in labels.items()]
        while True:
            _, page = client.call("GET", "/v1/processes", params=params)
            items += page["items"]
            if not page["next_cursor"]:
                break
            params["cursor"] = page["next_cursor"]
        return _print_ps(items, args.json, corrupt=0)

    def from_state_dir() -> int:
        with _open_readonly(state_dir) as store:
            records, corrupt = sorted_records(store, RECORD_CODEC)
        records = [
            r
            for r in records
            if (not args.phase or r.phase == args.phase)
            and all(r.spec.labels.get(key) == value for key, value in labels.items())
        ]
        items = [record_json(r, _recorded(state_dir, r)) for r in records]
        return _print_ps(items, args.json, corrupt=corrupt)

    return _read_only(args, state_dir, via_service, from_state_dir)


def _print_ps(items: list[dict[str, Any]], as_json: bool, *, corrupt: int) -> int:
    if as_json:
        _print_json(items)
        return EXIT_OK
    rows = [("ID", "NAME", "PHASE", "ATTEMPT", "RC", "UPDATED", "REASON")]
    for item in items:
        if item["returncode"] is not None:
            rc = str(item["returncode"])
        elif item["signal"] is not None:
            rc = f"sig{item['signal']}"
        else:
            rc = ""
        updated = time.strftime("%H:%M:%S", time.localtime(item["updated_at"]))
        rows.append(
            (
                item["id"],
                item["name"],
                _phase_text(item),
                str(item["attempt"]),
                rc,
                updated,
                item["reason"] or "",
            )
        )
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]) - 1)]
    for row in rows:
        print(
            "  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=False))
            + "  "
            + row[-1]
        )
    if corrupt:
        print(f"({corrupt} record(s) could not be read; see corra show)", file=sys.stderr)
    return EXIT_OK


def _recorded(state_dir: Path, record: ProcessRecord) -> dict[str, Any] | None:
    """What the chaperone of ``record``'s program recorded, as JSON (None: no program, or
    nothing worth saying); read, never collected: the next runtime does that."""
    found = recorded(state_dir, record)
    return None if found is None else found.json()


def _phase_text(item: dict[str, Any]) -> str:
    """The phase as `corra ps` shows it: what the chaperone recorded of a program that no
    runtime watches (``exited 0, not yet collected``) when it says more than the record."""
    found = item.get("recorded")
    if found is None or found["state"] not in ("exited", "lost"):
        return str(item["phase"])
    if item["phase"] == "paused":
        return f"paused; {found['summary']}"
    return str(found["summary"])


def _show(args: argparse.Namespace, state_dir: Path) -> int:
    def via_service(client: Client) -> int:
        params = {"show_env": "true"} if args.show_env else None
        _, data = client.call("GET", f"/v1/processes/{_quoted(args.process)}", params=params)
        return _print_show(data, args.json, args.show_env)

    def from_state_dir() -> int:
        with _open_readonly(state_dir) as store:
            record = find_record(store, RECORD_CODEC, args.process)
            history = [HISTORY_CODEC.decode(raw) for raw in store.history(record.id)]
        data = detail_json(record, history, _recorded(state_dir, record), show_env=args.show_env)
        return _print_show(data, args.json, args.show_env)

    return _read_only(args, state_dir, via_service, from_state_dir)


def _print_show(data: dict[str, Any], as_json: bool, show_env: bool) -> int:
    if as_json:
        _print_json(data)
        return EXIT_OK
    print(f"{data['name']} ({data['id']}): {data['phase']}, attempt {data['attempt']}")
    print(f"  argv:    {shlex.join(data['argv'])}")
    env = data["spec"]["env"]
    if env:  # (the values as the shell would read them, if asked for)
        pairs = (f"{k}={shlex.quote(v) if show_env else v}" for k, v in env.items())
        print(f"  env:     {' '.join(pairs)}")
    if data["reason"]:
        print(f"  reason:  {data['reason']}")
    found = data.get("recorded")
    if found is not None and found["state"] in ("exited", "lost"):
        who = (
            "`corra resume` collects it"
            if data["phase"] == "paused"
            else "no runtime watches it: the next `corra run` or `corra serve` collects it"
        )
        print(f"  program: {found['summary']} ({who})")
    if data["result"] is not None:
        result = Result(**data["result"])
        maxrss = "unknown" if result.maxrss_kb is None else f"{result.maxrss_kb} KiB"
        print(
            f"  result:  {describe(result)}; cpu {result.utime + result.stime:.2f}s, "
            f"maxrss {maxrss}, stdout {result.stdout_bytes} B{_dropped(result.stdout_dropped)}, "
            f"stderr {result.stderr_bytes} B{_dropped(result.stderr_dropped)}"
        )
    print("  history:")
    for t in data["history"]:
        stamp = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(t["at"]))
        reason = f"  ({t['reason']})" if t["reason"] else ""
        print(f"    {stamp}  {t['event']:<8} {t['source']} -> {t['target']}{reason}")
    return EXIT_OK


def _dropped(size: int) -> str:
    return f" (and {size} B dropped past the output limit)" if size else ""


def _logs(args: argparse.Namespace, state_dir: Path) -> int:
    stream = "stderr" if args.stderr else "stdout"
    position: dict[str, int] = {}  # attempt and offset reached through the service

    def via_service(client: Client) -> int:
        return _logs_via_service(client, args, stream, position)

    def from_state_dir() -> int:
        return _logs_from_files(
            args, state_dir, stream, position.get("attempt"), position.get("offset", 0)
        )

    return _read_only(args, state_dir, via_service, from_state_dir)


def _logs_via_service(
    client: Client, args: argparse.Namespace, stream: str, position: dict[str, int]
) -> int:
    """Print the entries as they come; with --follow, reconnect from the last offset when
    the service goes away (a restart: nothing is missed or printed twice), or carry on from
    the state dir if none comes back (`NotServing` out of here, with ``position``)."""
    out = sys.stdout.buffer
    path = f"/v1/processes/{_quoted(args.process)}"
    _, record = client.call("GET", path)
    position.update(attempt=record["attempt"], offset=0)
    last = False  # the process was terminal before this stream began
    while True:
        params = {
            "stream": stream,
            "attempt": position["attempt"],
            "offset": position["offset"],
            "follow": "true" if args.follow else "false",
        }
        lost = False
        try:
            for entry in client.lines(f"{path}/logs", params=params):
                out.write(entry["text"].encode())
                out.flush()
                position.update(attempt=entry["attempt"], offset=entry["next_offset"])
        except ConnectionLost:
            if not args.follow:
                raise
            lost = True
        if not args.follow or (last and not lost):
            # (a stream that began after the end drains every attempt, then ends: all read)
            return EXIT_OK
        try:
            _, record = client.call("GET", path)
        except ConnectionLost:
            record = {"phase": "unknown"}
        if record["phase"] in TERMINAL:
            # A stream ends at the end of the log or when the service stops, which look
            # alike: one more stream from here, begun after the end, tells them apart.
            last = True
            continue
        time.sleep(0.5)  # the service stops: wait for the next one (else NotServing)
        _wait_for_service(client)


def _wait_for_service(client: Client, patience: float = 10.0) -> None:
    """Until the service answers again; `NotServing` if it does not within ``patience``."""
    deadline = time.monotonic() + patience
    while True:
        try:
            client.call("GET", "/v1/health")
            return
        except (NotServing, ConnectionLost):
            if time.monotonic() > deadline:
                raise NotServing("the service did not come back") from None
            time.sleep(0.2)


def _logs_from_files(
    args: argparse.Namespace, state_dir: Path, stream: str, attempt: int | None, offset: int
) -> int:
    from corra.backends.local_process import log_file

    out = sys.stdout.buffer
    while True:
        with _open_readonly(state_dir) as store:
            record = find_record(store, RECORD_CODEC, args.process)
        if record.spec.host is not None:
            return trio.run(_remote_logs, args, state_dir, stream, attempt, offset)
        if attempt is None:
            attempt = record.state.attempt
        while attempt < record.state.attempt:
            # A later attempt writes a log of its own: finish this one first.
            _copy_log(log_file(state_dir / "runs", f"{record.id}.{attempt}", stream), offset, out)
            attempt, offset = attempt + 1, 0
        # Looked at before the last read: if the program had ended then, that read got all
        # of its output. (Its record may say running long after: no runtime collected it.)
        ended = _program_ended(state_dir, record)
        offset = _copy_log(log_file(state_dir / "runs", record.key, stream), offset, out)
        if not args.follow or ended:
            return EXIT_OK
        time.sleep(0.2)


async def _remote_logs(
    args: argparse.Namespace, state_dir: Path, stream: str, attempt: int | None, offset: int
) -> int:
    """`corra logs` of a process on a remote host: read over SSH from the host (as the
    state dir remembers it), through a pool of this command's own."""
    from corra._remote import remembered_hosts
    from corra._runtime import open_backends
    from corra.actors import open_runtime as open_kernel
    from corra.processes._backend import EffectKey

    out = sys.stdout.buffer
    async with open_kernel() as kernel:
        hosts = await trio.to_thread.run_sync(remembered_hosts, state_dir)
        with _open_readonly(state_dir) as store:
            name = find_record(store, RECORD_CODEC, args.process).spec.backend
        # (shipped logs, in the state dir: read with no connection at all)
        async with open_backends(kernel.root, state_dir, hosts, names=[name]) as opened:
            while True:
                with _open_readonly(state_dir) as store:
                    record = find_record(store, RECORD_CODEC, args.process)
                if record.spec.host not in hosts:
                    raise ConfigError(
                        f"{record.name}: host {record.spec.host!r} is not among the hosts "
                        f"remembered in {state_dir} ({sorted(hosts)})"
                    )
                backend = opened.backends[name]
                if attempt is None:
                    attempt = record.state.attempt
                # (before the reads: an end seen here means they read all of the output)
                ended = await trio.to_thread.run_sync(_program_ended, state_dir, record)
                while True:
                    key = EffectKey(record.id, attempt)
                    end = None  # (a read without -f stops where the current log ended)
                    if not args.follow and attempt >= record.state.attempt:
                        end = await backend.log_size(key, stream, record.spec.host)
                    while (end is None or offset < end) and (
                        chunk := await backend.read_log(
                            key,
                            stream,
                            offset,
                            1 << 20 if end is None else min(1 << 20, end - offset),
                            record.spec.host,
                        )
                    ):
                        out.write(chunk)
                        offset += len(chunk)
                    if attempt >= record.state.attempt:
                        break
                    attempt, offset = attempt + 1, 0  # a later attempt writes its own log
                out.flush()
                if not args.follow or ended:
                    return EXIT_OK
                await trio.sleep(1.0)


def _program_ended(state_dir: Path, record: ProcessRecord) -> bool:
    """Whether the output of ``record``'s current attempt is complete: the process is not
    active, or its chaperone recorded the end of its program (or lost it)."""
    if record.phase not in ACTIVE:
        return True
    found = recorded(state_dir, record)
    return found is not None and found.state in ("exited", "lost")


def _copy_log(path: Path | None, offset: int, out: Any) -> int:
    """Write ``path`` from ``offset`` to ``out``, up to its size when the copy began (a
    program that writes faster than ``out`` takes it would make "to the end" go on for
    ever; a follow copies the rest next time); the offset reached."""
    if path is None or not path.exists():
        return offset
    with path.open("rb") as handle:
        end = os.fstat(handle.fileno()).st_size
        handle.seek(offset)
        while offset < end and (chunk := handle.read(min(1 << 16, end - offset))):
            out.write(chunk)
            offset += len(chunk)
    out.flush()
    return offset


if __name__ == "__main__":
    sys.exit(main())

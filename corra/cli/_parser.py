"""The command line's words: its parser, exit statuses, environment names, option checks."""

from __future__ import annotations

import argparse
import datetime
import time
from pathlib import Path

import corra
from corra._errors import ConfigError
from corra._runtime import STATE_DIR_ENV
from corra.api._files import DEFAULT_HOST, DEFAULT_PORT, TOKEN_FILE
from corra.processes._lifecycle import PHASES
from corra.processes._spec import DEFAULT_OUTPUT_LIMIT, check_output_limit
from corra.processes._spec_content import HIDDEN
from corra.workflows._runs import RUN_PHASES

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_USAGE = 2
#: A control command found no service to talk to.
EXIT_NO_SERVICE = 3

URL_ENV = "CORRA_URL"
TOKEN_ENV = "CORRA_TOKEN"

#: --output-limit's help.
_OUTPUT_LIMIT = (
    "bytes kept of each of stdout and stderr of a process that sets no output_limit "
    f"(default {DEFAULT_OUTPUT_LIMIT}, 1 GiB)"
)


def build_parser() -> argparse.ArgumentParser:
    """The ``corra`` parser, with every command."""
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
    run.add_argument(
        "--rerun",
        action="append",
        default=[],
        type=_rerun_kinds,
        metavar="failed|changed",
        help="run again what a job file names and was run before: its failed or killed "
        "processes (failed), those whose spec the file changed (changed); repeat or "
        "separate with commas. Without it, a changed spec is refused",
    )
    run.add_argument(
        "--job",
        metavar="NAME",
        help="run the job NAME of the job file (its [[job]] tables): one run, its steps shown "
        "as a tree, until it has ended; exit 0 if it finished, else 1",
    )
    run.add_argument(
        "--param",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="with --job: a param of the run over the job's defaults (repeat; the default's "
        "type says how VALUE is read: 5, 0.5, true, [1,2], text)",
    )
    run.add_argument(
        "--run-name",
        metavar="NAME",
        help="with --job: name the run; a run of that name that exists is followed (and "
        "resumed if paused) instead of starting another",
    )
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
    serve.add_argument(
        "--retain-finished",
        metavar="DURATION",
        help="remove terminal processes (finished, failed, killed) this long after they "
        "ended (30d, 12h ...), checked every minute, in bounded batches (default: keep them)",
    )
    serve.add_argument(
        "--retain-count",
        type=int,
        metavar="N",
        help="keep at most N terminal processes: remove those that ended first, as "
        "--retain-finished does (either rule removes a process; default: no limit)",
    )
    serve.add_argument(
        "--jobs",
        metavar="FILE",
        help="a job file whose [[job]] definitions runs may be requested of "
        "(POST /v1/jobs/NAME/runs); its [hosts] are known too. SIGHUP loads it again; a run "
        "keeps the definition it started with",
    )
    serve.add_argument(
        "--workflows",
        action="append",
        default=[],
        metavar="FILE.py|MODULE",
        help="a Python file or module whose @corra.workflow functions runs may be requested "
        "of by name (repeatable); runs of them that a crash left are replayed",
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

    ps = commands.add_parser(
        "ps",
        parents=[state, client],
        help="list processes (the active ones, and counts per phase)",
        description="List processes, oldest first: the active ones (not finished, failed or "
        "killed) unless --all or --phase says otherwise, then how many there are per phase. "
        "Only what is listed is read, whatever the state dir holds.",
    )
    ps.add_argument(
        "--json",
        action="store_true",
        help='print {"items": [...], "next_cursor": ...} as GET /v1/processes does',
    )
    ps.add_argument("-a", "--all", action="store_true", help="every process, in any phase")
    ps.add_argument(
        "--phase",
        action="append",
        default=[],
        choices=PHASES,
        help="only processes in this phase (repeat: in any of them)",
    )
    _label_option(ps, "only processes with this label (repeat: with all of them)")
    _name_option(
        ps, "only names that start so, or match a glob: train-*-7, job?, run[0-3] (listed by name)"
    )
    ps.add_argument("--limit", type=_positive, metavar="N", help="at most N processes")
    ps.add_argument(
        "--cursor", help="go on after the last of a listing (the next_cursor --json printed)"
    )
    ps.add_argument("-q", "--quiet", action="store_true", help="only the ids, one per line")
    for what in ("created", "ended"):
        for side, words in (("after", "at or after"), ("before", "before")):
            ps.add_argument(
                f"--{what}-{side}",
                type=when,
                metavar="WHEN",
                help=f"only processes {what} {words} WHEN: a time (2026-12-01, "
                "2026-12-01T08:30, epoch seconds) or how long ago (90s, 30m, 12h, 7d)"
                + (" (terminal ones, listed by their end)" if what == "ended" else ""),
            )

    show = commands.add_parser(
        "show",
        parents=[state, client],
        help="one process: spec, state, result, history (or one workflow run: its steps)",
    )
    show.add_argument("process", help="id or name (of a process, else of a workflow run)")
    show.add_argument("--json", action="store_true")
    show.add_argument(
        "--show-env",
        action="store_true",
        help=f"show the values of the env (else each is {HIDDEN!r})",
    )

    history = commands.add_parser(
        "history",
        parents=[state, client],
        help="a process's transitions, oldest first, a page at a time",
        description="A process's transitions, oldest first: every one, or --limit of them "
        "(--cursor goes on after the last of a page). Only what is printed is read, however "
        "long the history.",
    )
    history.add_argument("process", help="id or name")
    history.add_argument("--limit", type=_positive, metavar="N", help="at most N transitions")
    history.add_argument(
        "--cursor", help="go on after the last of a page (the next_cursor --json printed)"
    )
    history.add_argument(
        "--json",
        action="store_true",
        help='print {"items": [...], "next_cursor": ...} as GET /v1/processes/ID/history does',
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

    rerun = commands.add_parser(
        "rerun",
        parents=[state, client],
        help="start terminal processes again as new attempts, keeping their history",
        usage="corra rerun [options] [NAME|ID...]",
        description="Start terminal (finished, failed, killed) processes again as new "
        "attempts; their history, and the logs of their earlier attempts, stay. With a "
        "service running it asks the service and returns; without one it runs them in the "
        "foreground, as `corra run` does.",
    )
    rerun.add_argument("processes", nargs="*", metavar="NAME|ID", help="ids or names")
    rerun.add_argument(
        "--failed",
        action="store_true",
        help="also every failed or killed process (with -l: of those)",
    )
    _label_option(rerun, "also every terminal process with this label (repeat: all of them)")
    _name_option(rerun, "also every terminal process named so (a prefix, or a glob: 'train-*')")
    rerun.add_argument("--max-running", type=int, default=None, help="programs at once")
    rerun.add_argument(
        "--output-limit", type=int, default=None, metavar="BYTES", help=_OUTPUT_LIMIT
    )
    rerun.add_argument("--json", action="store_true", help="print the records as JSON")

    prune = commands.add_parser(
        "prune",
        parents=[state, client],
        help="remove the terminal processes that ended long ago, or beyond the newest N",
        usage="corra prune [--ended-before TIME|DURATION] [--keep N] [-l KEY=VALUE] [--name N]",
        description="Remove every terminal process that ended before TIME (or DURATION "
        "ago), and every one but the N that ended last (--keep; either rule removes a "
        "process), as `corra rm` does: record, history, name, run dirs and logs. With -l or "
        "--name, only among the processes so selected. Through the service when one runs. "
        "`corra serve --retain-finished 30d --retain-count N` does it by itself.",
    )
    prune.add_argument(
        "--ended-before",
        metavar="TIME|DURATION",
        help="30d: 30 days ago (also h, m, s, w); or an ISO 8601 time, 2026-12-01T10:30",
    )
    prune.add_argument(
        "--keep",
        type=int,
        metavar="N",
        help="keep the N terminal processes that ended last, remove the others",
    )
    _label_option(prune, "only processes with this label (repeat: all of them)")
    _name_option(prune, "only processes named so (a prefix, or a glob: 'train-*')")
    prune.add_argument("--json", action="store_true", help="print what was removed as JSON")

    rm = commands.add_parser(
        "rm",
        parents=[state, client],
        help="remove terminal processes completely: record, history, name, run dir, logs",
        usage="corra rm [options] [NAME|ID...]",
        description="Remove terminal processes completely: their record, history and name, "
        "their run dirs and logs (local ones, and those brought home from hosts). An active "
        "process is refused unless --kill. With a service running it asks the service.",
    )
    rm.add_argument("processes", nargs="*", metavar="NAME|ID", help="ids or names")
    _label_option(rm, "also every terminal process with this label (repeat: all of them)")
    _name_option(rm, "also every terminal process named so (a prefix, or a glob: 'train-*')")
    rm.add_argument(
        "--ended-before",
        metavar="TIME|DURATION",
        help="also every terminal process that ended before this (30d: 30 days ago; "
        "2026-12-01T10:30)",
    )
    rm.add_argument(
        "--kill", action="store_true", help="kill active ones first (else they are refused)"
    )
    rm.add_argument("--json", action="store_true", help="print what was removed as JSON")

    jobs = commands.add_parser(
        "jobs",
        parents=[state, client],
        help="list the workflow jobs a service knows (corra serve --jobs FILE), or a file's",
    )
    jobs.add_argument("file", nargs="?", help="list this job file's [[job]] tables instead")
    jobs.add_argument("--json", action="store_true", help='as GET /v1/jobs: {"jobs": [...]}')

    runs = commands.add_parser(
        "runs", parents=[state, client], help="list workflow runs, oldest first"
    )
    runs.add_argument("--phase", choices=RUN_PHASES, help="only runs in this phase")
    runs.add_argument("--job", help="only runs of this job")
    runs.add_argument("--json", action="store_true", help='as GET /v1/runs: {"runs": [...]}')

    for verb, text in (
        (
            "pause",
            "pause a process between steps (its program keeps running), or a workflow "
            "run (no new step starts; --steps pauses its running steps too)",
        ),
        ("resume", "continue a paused process (or workflow run) where it was"),
        (
            "kill",
            "kill a process: SIGTERM to its group, SIGKILL after its kill_grace (or a "
            "workflow run: its running steps)",
        ),
    ):
        control = commands.add_parser(verb, parents=[state, client], help=text, description=text)
        control.add_argument("process", help="id or name (of a process, else of a run)")
        control.add_argument("--json", action="store_true")
        if verb == "pause":
            control.add_argument(
                "--steps", action="store_true", help="a run: pause its running steps too"
            )
        if verb == "resume":
            control.add_argument(
                "--accept",
                action="store_true",
                help="a workflow function's run paused because a step's spec differs from "
                "the recorded one: keep the recorded step (its result; nothing runs again)",
            )
        if verb == "kill":
            control.add_argument(
                "--no-wait", action="store_true", help="return at once, not once it is dead"
            )
    return parser


def _name_option(parser: argparse.ArgumentParser, says: str) -> None:
    """``--name PREFIX|GLOB``, as every command that selects by name takes it."""
    parser.add_argument("--name", metavar="PREFIX|GLOB", help=says)


def _label_option(parser: argparse.ArgumentParser, says: str) -> None:
    """``-l/--label KEY=VALUE``, repeatable, as every command that selects by label takes it."""
    parser.add_argument(
        "-l", "--label", action="append", default=[], metavar="KEY=VALUE", help=says
    )


def _rerun_kinds(text: str) -> list[str]:
    kinds = [kind.strip() for kind in text.split(",")]
    for kind in kinds:
        if kind not in ("failed", "changed"):
            raise argparse.ArgumentTypeError(f"got {kind!r}, expected failed or changed")
    return kinds


def runtime_options(args: argparse.Namespace) -> int:
    """Check --max-running and --output-limit of `corra run` and `corra serve`; the output
    limit (the default without the option).

    Raises:
        ConfigError: either is not valid.
    """
    if args.max_running is not None and args.max_running < 1:
        raise ConfigError(f"--max-running: got {args.max_running}, expected an integer >= 1")
    if args.output_limit is None:
        return DEFAULT_OUTPUT_LIMIT
    check_output_limit("--output-limit", args.output_limit)
    return int(args.output_limit)


_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}


def when(text: str, now: float | None = None) -> float:
    """A time of --created-after and friends, as epoch seconds: how long ago (``30m``, ``7d``),
    an ISO 8601 date or time (local time unless it says its zone), or epoch seconds."""
    text = text.strip()
    now = time.time() if now is None else now
    unit = _UNITS.get(text[-1:])
    if unit is not None:
        try:
            amount = float(text[:-1])
        except ValueError:
            amount = -1.0
        if 0 <= amount < 1e9:
            return max(0.0, now - amount * unit)
    try:
        value = float(text)
    except ValueError:
        pass
    else:
        if 0 <= value < 1e11:
            return value
    try:
        return datetime.datetime.fromisoformat(text).timestamp()
    except (ValueError, OverflowError, OSError):
        raise argparse.ArgumentTypeError(
            f"got {text!r}, expected a time (2026-12-01, 2026-12-01T08:30, epoch seconds) or "
            "how long ago (90s, 30m, 12h, 7d)"
        ) from None


def _positive(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"got {text!r}, expected an integer >= 1")
    return value


def parse_label(text: str) -> tuple[str, str]:
    """``KEY=VALUE`` of --label.

    Raises:
        ConfigError: ``text`` is not ``KEY=VALUE`` with a key.
    """
    key, equals, value = text.partition("=")
    if not key or not equals:
        raise ConfigError(f"--label: got {text!r}, expected KEY=VALUE")
    return key, value


def parse_duration(text: str, option: str) -> float:
    """Seconds given as ``30d``, ``12h``, ``90m``, ``45s`` or ``2w``.

    Raises:
        ConfigError: ``text`` is not one (``option`` names the option).
    """
    seconds = _duration(text)
    if seconds is None or seconds <= 0:
        raise ConfigError(f"{option}: got {text!r}, expected a duration (30d, 12h, 90m, 45s, 2w)")
    return seconds


def _duration(text: str) -> float | None:
    number, unit = text[:-1], text[-1:]
    if unit in _UNITS and number.replace(".", "", 1).isdigit():
        return float(number) * _UNITS[unit]
    return None


def parse_moment(text: str, option: str, *, now: float) -> float:
    """A moment (epoch seconds) as `when` reads it (how long before ``now``: ``30d``; an
    ISO 8601 time; epoch seconds), for ``option``.

    Raises:
        ConfigError: ``text`` is none of them (``option`` names the option).
    """
    try:
        return when(text, now)
    except argparse.ArgumentTypeError as exc:
        raise ConfigError(f"{option}: {exc}") from None

"""Slurm, the first `corra.backends.scheduler.Scheduler`.

Rule 1: the job's name is ``corra-<key>``, so a job submitted just before a crash is found by
its key (`find`, one ``squeue``) and never submitted again; the job script also writes its
job id into the run dir when it starts, which finds it after the queue forgot it.

Rule 2: one ``squeue`` per poll for all of a user's jobs on a host, whatever their number
(`poll`), which also reads the status files of the running ones (`poll_status`: the host's
Python after ``squeue``, in the same command); for jobs that left the queue, one ``scontrol
show job`` for all of them while slurmctld remembers them (MinJobAge), ``sacct`` where
accounting exists, and finally the exit record the job script wrote itself.

Rule 3: every word that reaches a shell is quoted; directives come from validated options
only (``extra`` directives must be ``--name=value`` options, one per line), and paths in
directives are refused where ``#SBATCH`` parsing would change them (whitespace, quotes,
``#``, ``%``); env names are what ``export`` takes (``[A-Za-z_][A-Za-z0-9_]*``). The job
script exports the env's values: it is written readable by its user only.
"""

from __future__ import annotations

import datetime
import json
import re
import shlex
from collections.abc import Mapping, Sequence
from typing import Any

import attrs

from corra._errors import BackendError, ConfigError, ConnectionFailed
from corra.backends._shared import number_check, seconds_check
from corra.backends.scheduler import JobState, JobStatus
from corra.backends.transport import Transport
from corra.chaperone import _status, batch_job
from corra.processes._spec import MAX_SECONDS
from corra.processes._spec_content import ENV_NAME_PATTERN, abbreviated

#: The line between squeue's answer and the status reports in `Slurm.poll_status`'s output.
STATUS_MARKER = "--corra-status-reports--"
#: squeue's and scontrol's words for states, as corra names them.
STATES: dict[str, JobState] = {
    "PENDING": "pending",
    "CONFIGURING": "pending",
    "REQUEUED": "pending",
    "REQUEUE_HOLD": "pending",
    "REQUEUE_FED": "pending",
    "RESV_DEL_HOLD": "pending",
    "SUSPENDED": "running",
    "RUNNING": "running",
    "COMPLETING": "running",
    "STAGE_OUT": "running",
    "SIGNALING": "running",
    "RESIZING": "running",
    "COMPLETED": "completed",
    "FAILED": "failed",
    "BOOT_FAIL": "failed",
    "SPECIAL_EXIT": "failed",
    "REVOKED": "cancelled",
    "CANCELLED": "cancelled",
    "TIMEOUT": "timeout",
    "DEADLINE": "timeout",
    "NODE_FAIL": "node_fail",
    "PREEMPTED": "preempted",
    "OUT_OF_MEMORY": "out_of_memory",
}

#: The source of the program's wrapper in a job (`corra.chaperone.batch_job`), which the job
#: script carries.
BATCH_JOB = batch_job.source()

_TIME = re.compile(r"^(\d+-)?\d+(:\d{1,2}){0,2}$")
_MEM = re.compile(r"^\d+[KMGT]?$")
_ARRAY = re.compile(r"^[0-9][0-9,\-:]*(%\d+)?$")
_WORD = re.compile(r"^[A-Za-z0-9_.:,+=@/-]+$")
_EXTRA = re.compile(r"^--[a-z][a-z0-9-]*(=[^\n\r]*)?$")
#: A path ``#SBATCH`` keeps as it is: no whitespace or control characters, quotes,
#: backslashes, ``#`` (which starts a comment there) or ``%`` (a filename pattern).
_DIRECTIVE_PATH = re.compile(r"^[^\s\x00-\x1f\x7f\"'\\#%]+$")


def _matches(pattern: re.Pattern[str], expected: str) -> Any:
    def check(instance: Any, attribute: Any, value: Any) -> None:
        if value is not None and (not isinstance(value, str) or not pattern.match(value)):
            raise ConfigError(f"slurm.{attribute.name}: got {value!r}, expected {expected}")

    return check


def time_limit_seconds(text: str) -> int:
    """The seconds of a Slurm time limit (``minutes``, ``minutes:seconds``,
    ``hours:minutes:seconds``, ``days-hours``, ``days-hours:minutes``,
    ``days-hours:minutes:seconds``), as sbatch reads it."""
    days, dash, rest = text.rpartition("-")
    parts = [int(part) for part in rest.split(":")]
    if dash:
        hours, minutes, seconds = (*parts, 0, 0)[:3]
        return ((int(days) * 24 + hours) * 60 + minutes) * 60 + seconds
    if len(parts) == 3:
        hours, minutes, seconds = parts
        return (hours * 60 + minutes) * 60 + seconds
    minutes, seconds = (*parts, 0)[:2]
    return minutes * 60 + seconds


def _time(instance: Any, attribute: Any, value: Any) -> None:
    _matches(_TIME, "a time limit such as '10', '1:30:00' or '2-0'")(instance, attribute, value)
    if value is not None and time_limit_seconds(value) > MAX_SECONDS:
        raise ConfigError(
            f"slurm.time: got {value!r} ({time_limit_seconds(value)} s), expected at most "
            f"{MAX_SECONDS} s (10 years)"
        )


def _count(instance: Any, attribute: Any, value: Any) -> None:
    if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
        raise ConfigError(f"slurm.{attribute.name}: got {value!r}, expected an integer >= 1")


def _extra(instance: Any, attribute: Any, value: Any) -> None:
    for index, directive in enumerate(value):
        if not isinstance(directive, str) or not _EXTRA.match(directive):
            raise ConfigError(
                f"slurm.extra[{index}]: got {directive!r}, expected one '--option[=value]' "
                "directive"
            )


@attrs.frozen
class SlurmOptions:
    """A process's ``[process.slurm]`` table: ``#SBATCH`` directives."""

    partition: str | None = attrs.field(default=None, validator=_matches(_WORD, "a name"))
    account: str | None = attrs.field(default=None, validator=_matches(_WORD, "a name"))
    qos: str | None = attrs.field(default=None, validator=_matches(_WORD, "a name"))
    time: str | None = attrs.field(default=None, validator=_time)
    nodes: int | None = attrs.field(default=None, validator=_count)
    ntasks: int | None = attrs.field(default=None, validator=_count)
    cpus_per_task: int | None = attrs.field(default=None, validator=_count)
    mem: str | None = attrs.field(default=None, validator=_matches(_MEM, "memory such as '512M'"))
    gres: str | None = attrs.field(
        default=None, validator=_matches(_WORD, "a gres such as 'gpu:1'")
    )
    array: str | None = attrs.field(
        default=None, validator=_matches(_ARRAY, "an array spec such as '0-3' or '1,5%2'")
    )
    extra: tuple[str, ...] = attrs.field(default=(), converter=tuple, validator=_extra)
    hold_on_pause: bool = attrs.field(default=False)
    """Pausing a pending job also holds it (``scontrol hold``); resume releases it."""

    def directives(self) -> list[str]:
        out = []
        for name in ("partition", "account", "qos", "time", "nodes", "ntasks", "mem", "gres"):
            value = getattr(self, name)
            if value is not None:
                out.append(f"--{name}={value}")
        if self.cpus_per_task is not None:
            out.append(f"--cpus-per-task={self.cpus_per_task}")
        if self.array is not None:
            out.append(f"--array={self.array}")
        out.extend(self.extra)
        return out


@attrs.frozen
class SlurmSettings:
    """A host's ``[hosts.NAME.slurm]`` table: how corra uses the Slurm there (the plug-in's
    host options)."""

    poll_interval: float = attrs.field(
        default=10.0, validator=seconds_check("slurm.poll_interval", minimum=0.01)
    )
    """Seconds between the polls of the host's jobs (one ``squeue`` for all of them)."""
    submit_rate: float = attrs.field(
        default=2.0, validator=number_check("slurm.submit_rate", minimum=0.001)
    )
    """Submissions and polls per second in the long run (Slurm's own limiter: 2/s)."""
    submit_burst: int = attrs.field(
        default=30, validator=number_check("slurm.submit_burst", minimum=1, integer=True)
    )
    """Submissions and polls that may go at once after a quiet period."""
    work_root: str | None = attrs.field(default=None)
    """Where job run dirs go (default ``~/.corra/jobs`` on the host)."""


def _seconds(value: float) -> str:
    """A duration as coreutils' ``timeout`` reads it, exactly (``repr``: no rounding), as a
    quoted shell word."""
    return shlex.quote(f"{float(value)!r}s")


def _exit_code(text: str | None) -> tuple[int | None, int | None]:
    """``3:0`` -> (3, None); ``0:15`` -> (None, 15)."""
    if not text or ":" not in text:
        return None, None
    code, _, signal = text.partition(":")
    try:
        code_number, signal_number = int(code), int(signal)
    except ValueError:
        return None, None
    return (None, signal_number) if signal_number else (code_number, None)


def status_of(
    job_id: str,
    raw: str,
    exit_code: str | None = None,
    reason: str | None = None,
    start: str | None = None,
    end: str | None = None,
) -> JobStatus:
    word = raw.split()[0].rstrip("+") if raw else "UNKNOWN"
    code, signal = _exit_code(exit_code)
    return JobStatus(
        job_id=job_id,
        state=STATES.get(word, "unknown"),
        raw=word,
        exit_code=code,
        signal=signal,
        reason=None if reason in (None, "None", "(null)") else reason,
        started_at=_timestamp(start),
        ended_at=_timestamp(end),
    )


def _timestamp(text: str | None) -> float | None:
    """Seconds since the epoch of a Slurm time (``2026-11-25T02:10:00``, the host's local
    time, which is taken as this machine's); None for ``Unknown``, ``None`` or nonsense."""
    if not text:
        return None
    try:
        return datetime.datetime.fromisoformat(text).timestamp()
    except ValueError:
        return None


class Slurm:
    """Slurm's commands (sbatch, squeue, scontrol, sacct, scancel), through a transport."""

    name = "slurm"

    def __init__(self, *, user: str | None = None) -> None:
        self.user = user
        self.calls: dict[str, int] = {}
        """Commands run so far, by name (``squeue`` ...): what the tests and benchmarks count."""

    async def _run(
        self, transport: Transport, argv: list[str], *, check: bool = True, retry_safe: bool = True
    ) -> str:
        self.calls[argv[0]] = self.calls.get(argv[0], 0) + 1
        result = await transport.run(argv, retry_safe=retry_safe)
        if not retry_safe and result.returncode is None:
            # Killed or cut off (a connection dropped as it ran): whether it did its work is
            # unknown, which is a transport's trouble, not the command's refusal.
            raise ConnectionFailed(
                transport.host,
                f"{argv[0]} ended without an exit status ({result.signal or 'cut off'}); "
                "whether it took effect is unknown",
            )
        if check and not result.ok:
            detail = result.stderr.decode(errors="replace").strip()[-400:]
            raise BackendError(f"{transport.host}: {' '.join(argv[:2])} failed: {detail}")
        return result.stdout.decode(errors="replace")

    def job_name(self, key: str) -> str:
        return f"corra-{key}"

    def render(
        self,
        key: str,
        argv: Sequence[str],
        *,
        run_dir: str,
        work_dir: str,
        options: SlurmOptions,
        env: Mapping[str, str] | None = None,
        timeout: float | None = None,
        kill_grace: float = 10.0,
        python: str = "python3",
    ) -> str:
        """The job script (see `Scheduler.render`). A ``timeout`` is enforced in the script
        by coreutils' ``timeout`` (TERM, then KILL after ``kill_grace``), to the second, not
        at Slurm's own coarse checks of ``time``; exit status 124 then means timed out.

        The program runs under `corra.chaperone.batch_job` (with the node's ``python``): in
        its own process group, which a cancellation's SIGTERM ends after the grace (SIGKILL),
        while the program stays in Slurm's sight; it writes the exit record.

        Raises:
            ConfigError: an env name ``export`` cannot take, or a run dir that ``#SBATCH``
                lines cannot carry (the spec's checks refuse the first at submission).
        """
        environment = dict(env or {})
        for name in environment:
            if not ENV_NAME_PATTERN.fullmatch(name):
                raise ConfigError(
                    f"env: got the name {abbreviated(name)}, expected a name matching "
                    f"{ENV_NAME_PATTERN.pattern} (the job script exports it)"
                )
        for what, text in (("run dir", run_dir), ("key", key)):
            if not _DIRECTIVE_PATH.match(text):
                raise ConfigError(
                    f"{what}: got {abbreviated(text)}, expected no whitespace, quotes, "
                    "backslashes, '#' or '%' (it goes into #SBATCH lines; for the run dir: "
                    "choose another work_root for the host)"
                )
        array = options.array is not None
        command = " ".join(shlex.quote(word) for word in argv)
        if timeout is not None:
            # (coreutils' timeout takes --kill-after=0 for "never": no grace is KILL at once)
            first = f"--kill-after={_seconds(kill_grace)}" if kill_grace > 0 else "--signal=KILL"
            command = f"timeout {shlex.quote(first)} {_seconds(timeout)} {command}"
        out = f"{run_dir}/stdout" + (".%a" if array else "")
        err = f"{run_dir}/stderr" + (".%a" if array else "")
        wrapper = shlex.quote(BATCH_JOB)
        missing = shlex.quote(f"corra: no {python} here to run the job with")
        lines = [
            "#!/bin/sh",
            f"#SBATCH --job-name={self.job_name(key)}",
            f"#SBATCH --output={out}",
            f"#SBATCH --error={err}",
            *(f"#SBATCH {directive}" for directive in options.directives()),
            # (the env first: corra's own variables, set below it, are corra's)
            *(f"export {name}={shlex.quote(value)}" for name, value in environment.items()),
            "# written by corra: the job id when it starts, its exit record when it ends, in",
            "# its run dir, private (umask 077); the program runs with the job's own umask,",
            "# in its own process group under corra's batch_job (a kill ends the whole group)",
            "corra_umask=$(umask) && umask 077",
            f"corra_run={shlex.quote(run_dir)}",
            "corra_suffix=${SLURM_ARRAY_TASK_ID:+.$SLURM_ARRAY_TASK_ID}",
            'echo "${SLURM_ARRAY_JOB_ID:-$SLURM_JOB_ID}" > "$corra_run/job_id$corra_suffix.tmp" '
            '&& mv -f "$corra_run/job_id$corra_suffix.tmp" "$corra_run/job_id$corra_suffix"',
            f"mkdir -p {shlex.quote(work_dir)} && cd {shlex.quote(work_dir)} || exit 1",
            f"command -v {shlex.quote(python)} >/dev/null || {{ echo {missing} >&2; exit 127; }}",
            'umask "$corra_umask"',
            f"corra_batch_job={wrapper}",
            f'exec {shlex.quote(python)} -I -S -c "$corra_batch_job" "$corra_run" '
            f'"$corra_suffix" {shlex.quote(repr(float(kill_grace)))} '
            f"{'timeout' if timeout is not None else 'untimed'} {command}",
        ]
        return "\n".join(lines) + "\n"

    async def submit(self, transport: Transport, script: str, run_dir: str) -> str:
        # Never retried blindly over a broken connection: the job may exist already. The
        # launch fails with the transport's error, and its retry finds the job by its key.
        out = await self._run(transport, ["sbatch", "--parsable", script], retry_safe=False)
        job_id = out.strip().split(";")[0]
        if not job_id.isdigit():
            raise BackendError(f"{transport.host}: sbatch answered {out!r}, expected a job id")
        return job_id

    def _user(self) -> list[str]:
        return ["--me"] if self.user is None else ["-u", self.user]

    async def poll(self, transport: Transport, job_ids: Sequence[str]) -> dict[str, JobStatus]:
        """One ``squeue`` for every job of the user; arrays by their job id (a task's state
        is its job's while any task is queued)."""
        out = await self._run(transport, self._squeue())
        return self._queued(out, job_ids)

    async def poll_status(
        self, transport: Transport, job_ids: Sequence[str], run_dirs: Sequence[str], python: str
    ) -> tuple[dict[str, JobStatus], dict[str, Any]]:
        """`poll`, and the status files of ``run_dirs`` read in the same command (by
        ``python``, the host's, after ``squeue``: `corra.chaperone._status.report`). The
        reports are ``{}`` where they could not be read (no such Python): the queue's
        answer stands alone."""
        if not run_dirs:
            return await self.poll(transport, job_ids), {}
        script = (
            f"{shlex.join(self._squeue())} || exit $?; echo {STATUS_MARKER}; "
            'p=$0; s=$1; shift; exec "$p" -I -S -c "$s" "$@"'
        )
        argv = ["sh", "-c", script, python, _status.source(), *run_dirs]
        self.calls["squeue"] = self.calls.get("squeue", 0) + 1
        result = await transport.run(argv)
        out = result.stdout.decode(errors="replace")
        queue, marker, rest = out.partition(f"\n{STATUS_MARKER}\n")
        if not marker and out.startswith(STATUS_MARKER + "\n"):  # (an empty queue)
            queue, marker, rest = "", "\n", out[len(STATUS_MARKER) + 1 :]
        if not marker:
            detail = result.stderr.decode(errors="replace").strip()[-400:]
            raise BackendError(f"{transport.host}: squeue failed: {detail}")
        try:
            reports = json.loads(rest)
        except ValueError:
            reports = None
        return self._queued(queue, job_ids), reports if isinstance(reports, dict) else {}

    def _squeue(self) -> list[str]:
        return ["squeue", "-h", "-r", *self._user(), "-o", "%i|%T|%r"]

    def _queued(self, out: str, job_ids: Sequence[str]) -> dict[str, JobStatus]:
        wanted = set(job_ids)
        statuses: dict[str, JobStatus] = {}
        for line in out.splitlines():
            parts = line.strip().split("|")
            if len(parts) != 3:
                continue
            job_id, raw, reason = parts
            base = job_id.split("_")[0]
            if base not in wanted:
                continue
            status = status_of(base, raw, reason=reason)
            current = statuses.get(base)
            if current is None or (current.state != "running" and status.state == "running"):
                statuses[base] = status
        return statuses

    async def final_status(self, transport: Transport, job_id: str) -> JobStatus | None:
        statuses = await self.final_statuses(transport, [job_id])
        return statuses.get(job_id)

    async def final_statuses(
        self, transport: Transport, job_ids: Sequence[str]
    ) -> dict[str, JobStatus]:
        """From one ``scontrol show job -o`` (every job slurmctld remembers), then ``sacct``
        for the rest where accounting exists."""
        wanted = set(job_ids)
        found: dict[str, JobStatus] = {}
        out = await self._run(transport, ["scontrol", "show", "job", "-o"], check=False)
        for line in out.splitlines():
            fields = dict(item.split("=", 1) for item in line.split() if "=" in item)
            job_id = fields.get("ArrayJobId") or fields.get("JobId", "")
            if job_id not in wanted:
                continue
            status = status_of(
                job_id,
                fields.get("JobState", ""),
                fields.get("ExitCode"),
                start=fields.get("StartTime"),
                end=fields.get("EndTime"),
            )
            previous = found.get(job_id)
            # an array is as bad as its worst task
            if previous is None or (previous.state == "completed" and status.state != "completed"):
                found[job_id] = status
        missing = sorted(wanted - set(found))
        if missing:
            out = await self._run(
                transport,
                [
                    *("sacct", "-n", "-P", "-X", "-o", "JobID,State,ExitCode,Start,End"),
                    *("-j", ",".join(missing)),
                ],
                check=False,
            )
            for line in out.splitlines():
                parts = line.split("|")
                if len(parts) == 5:
                    base = parts[0].split("_")[0]
                    if base in wanted and base not in found:
                        found[base] = status_of(
                            base, parts[1], parts[2], start=parts[3], end=parts[4]
                        )
        return {job_id: status for job_id, status in found.items() if status.final}

    async def find(self, transport: Transport, key: str) -> str | None:
        out = await self._run(
            transport,
            ["squeue", "-h", *self._user(), "--name", self.job_name(key), "-o", "%i"],
        )
        ids = sorted({line.strip().split("_")[0] for line in out.splitlines() if line.strip()})
        if len(ids) > 1:
            raise BackendError(f"{transport.host}: key {key} names jobs {ids}; expected one")
        return ids[0] if ids else None

    async def cancel(self, transport: Transport, job_id: str, key: str) -> None:
        """Cancel the job if it still is the one submitted with ``key``: after slurmctld lost
        its state, its id may name another job (``--name`` filters it out); a job that ended
        already, or that slurmctld forgot, is no error."""
        argv = ["scancel", f"--name={self.job_name(key)}", job_id]
        self.calls["scancel"] = self.calls.get("scancel", 0) + 1
        result = await transport.run(argv)
        detail = result.stderr.decode(errors="replace").strip()
        if not result.ok and "Invalid job id specified" not in detail:
            raise BackendError(f"{transport.host}: scancel {job_id} failed: {detail[-400:]}")

    async def hold(self, transport: Transport, job_id: str) -> None:
        await self._run(transport, ["scontrol", "hold", job_id])

    async def release(self, transport: Transport, job_id: str) -> None:
        await self._run(transport, ["scontrol", "release", job_id])

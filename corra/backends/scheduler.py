"""The seam for batch schedulers (Slurm first; PBS, LSF ... later).

A `Scheduler` knows one scheduler's commands and words; `SchedulerBackend`
(`corra.backends.batch`) does the rest the same for all of them: run dirs, uploads, the rate
limit, batched polling, recovery by key. Everything a scheduler does goes through a
`Transport`, so the same code drives a scheduler on this machine or behind SSH.

A scheduler must:

- render a job script from the spec (directives, then the program), which writes
  ``job_id`` into its run dir when it starts and an exit record (``exit.json``) when the
  program ends: the fallback that always works once the scheduler has forgotten the job;
- submit it with the idempotency key in the job's name, and answer the job id;
- poll many jobs in one command (`poll`), reading the status files of their run dirs in the
  same one (`poll_status`), and find a job by its key (`find`);
- cancel, hold and release;
- map its final states to `JobState`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, Literal, Protocol, TypeAlias

import attrs

from corra.backends.transport import Transport

JobState: TypeAlias = Literal[
    "pending",
    "running",
    "completed",
    "failed",
    "cancelled",
    "timeout",
    "node_fail",
    "preempted",
    "out_of_memory",
    "unknown",
]
FINAL_STATES = frozenset(
    {"completed", "failed", "cancelled", "timeout", "node_fail", "preempted", "out_of_memory"}
)


@attrs.frozen
class JobStatus:
    """What the scheduler says of one job."""

    job_id: str
    state: JobState
    raw: str
    """The scheduler's own word (``COMPLETED``, ``OUT_OF_MEMORY`` ...)."""
    exit_code: int | None = None
    signal: int | None = None
    reason: str | None = None
    started_at: float | None = None
    """When the job started and ended, as the scheduler says (its host's clock), if known:
    what a job killed before its script wrote its exit record (a time limit) still has."""
    ended_at: float | None = None

    @property
    def final(self) -> bool:
        return self.state in FINAL_STATES


class Scheduler(Protocol):
    """One batch scheduler's commands, as `SchedulerBackend` needs them."""

    name: str

    def render(
        self,
        key: str,
        argv: Sequence[str],
        *,
        run_dir: str,
        work_dir: str,
        options: Any,
        env: Mapping[str, str] | None = None,
        timeout: float | None = None,
        kill_grace: float = 10.0,
        python: str = "python3",
    ) -> str:
        """The job script: it writes the job id when it starts and an exit record (return
        code or signal, times, whether ``timeout`` ended it, whether a kill did) when it
        ends. A cancellation's SIGTERM must end the program's whole process group after
        the grace of the run dir's ``kill.json`` (else ``kill_grace``), while the job runs
        on until the group is gone; ``python`` is the node's, should the script need one."""

    def job_name(self, key: str) -> str:
        """The job's name, which carries the key."""

    async def submit(self, transport: Transport, script: str, run_dir: str) -> str:
        """Submit the script at path ``script``; the job id."""

    async def poll(self, transport: Transport, job_ids: Sequence[str]) -> Mapping[str, JobStatus]:
        """The status of every job the scheduler still knows among ``job_ids``, in one call
        (a job missing from the answer has left the queue)."""

    async def poll_status(
        self, transport: Transport, job_ids: Sequence[str], run_dirs: Sequence[str], python: str
    ) -> tuple[Mapping[str, JobStatus], Mapping[str, Any]]:
        """`poll`, and in the same command the status files of ``run_dirs`` read by the
        host's ``python`` (`corra.chaperone._status.report`: ``{run_dir: {"size", "value",
        "error"}}``, ``{}`` where they could not be read)."""

    async def final_status(self, transport: Transport, job_id: str) -> JobStatus | None:
        """Where the queue has forgotten a job: its final status from the scheduler's memory
        or accounting, or None."""

    async def find(self, transport: Transport, key: str) -> str | None:
        """The id of a job in the queue whose name carries ``key``."""

    async def cancel(self, transport: Transport, job_id: str, key: str) -> None:
        """Cancel the job if it still is the one submitted with ``key``; one that ended or
        that the scheduler forgot is no error."""

    async def hold(self, transport: Transport, job_id: str) -> None: ...

    async def release(self, transport: Transport, job_id: str) -> None: ...

"""What an attempt's Job and pod say, classified with reasons a user can act on.

The watch hands over the Job and its pod as the API gives them (plain JSON objects); `classify`
says where the attempt is:

- ``waiting``: no pod yet, or a pod not running yet (being created, pulling its image). A
  pod the scheduler cannot place is ``unschedulable``, with the scheduler's message: it
  stays waiting, never failed for being pending;
- ``image_error`` and ``config_error``: the container cannot start (``ErrImagePull``,
  ``ImagePullBackOff``, ``InvalidImageName``; ``CreateContainerConfigError``,
  ``CreateContainerError``): the backend fails the attempt once its grace is over;
- ``running``;
- ``succeeded`` and ``failed``: the container ended, with its exit code (and signal), and
  what the program wrote to its termination message file (its value: ``$CORRA_RESULT``);
- ``out_of_memory``: the container was ``OOMKilled``, whatever its exit code (0 included);
- ``deadline``: the Job's ``activeDeadlineSeconds`` (the spec's timeout) ran out;
- ``node_failure``: the pod was evicted, or deleted by the cluster (a lost node's pods are
  deleted by its taint manager) without corra asking: the program did not fail, its node
  did (a transient process reruns).
"""

from __future__ import annotations

import datetime
from collections.abc import Mapping
from typing import Any, Final, Literal, TypeAlias

import attrs

from corra.processes._lifecycle import Result

AttemptState: TypeAlias = Literal[
    "waiting",
    "unschedulable",
    "image_error",
    "config_error",
    "running",
    "succeeded",
    "failed",
    "out_of_memory",
    "deadline",
    "node_failure",
]
#: The states after which the attempt's pod runs no more.
ENDED: Final = frozenset({"succeeded", "failed", "out_of_memory", "deadline", "node_failure"})
_IMAGE_ERRORS: Final = frozenset({"ErrImagePull", "ImagePullBackOff", "InvalidImageName"})
_CONFIG_ERRORS: Final = frozenset({"CreateContainerConfigError", "CreateContainerError"})
#: A terminated container's reasons that say its program never ran: its message is then the
#: container runtime's, not the program's.
_START_ERRORS: Final = frozenset({"StartError", "ContainerCannotRun"})


@attrs.frozen
class AttemptView:
    """Where an attempt is (`classify`)."""

    state: AttemptState
    reason: str | None = None
    """The cluster's word for it (``OOMKilled``, ``Unschedulable``, ``Evicted`` ...)."""
    message: str | None = None
    """What the cluster says of it, for `corra show` (the scheduler's message ...)."""
    exit_code: int | None = None
    signal: int | None = None
    started_at: float | None = None
    ended_at: float | None = None
    termination_message: str | None = None
    """What the program wrote to its termination message file (``$CORRA_RESULT``: its
    value), as the cluster reports it; None where it wrote nothing or never ran."""

    @property
    def ended(self) -> bool:
        return self.state in ENDED


def classify(
    job: Mapping[str, Any] | None,
    pod: Mapping[str, Any] | None,
    *,
    container: str = "main",
    deleting: bool = False,
) -> AttemptView:
    """Where the attempt whose Job is ``job`` and pod ``pod`` is (None: not seen). ``deleting``:
    corra asked for the deletion (a kill), so a pod going away is no node failure."""
    failed = _condition(job, "Failed") if job is not None else None
    if failed is not None and failed.get("reason") == "DeadlineExceeded":
        return AttemptView(
            "deadline", "DeadlineExceeded", failed.get("message"), ended_at=_time(failed)
        )
    if pod is None:
        return AttemptView("waiting")
    if job is not None and _deleted_for_its_deadline(job, pod):
        # (the Job controller deletes the pods first, then says why on the Job)
        message = "the Job was active longer than its activeDeadlineSeconds (the timeout)"
        return AttemptView("deadline", "DeadlineExceeded", message)
    status = pod.get("status") or {}
    phase = status.get("phase")
    if phase == "Failed" and status.get("reason") == "Evicted":
        return AttemptView("node_failure", "Evicted", status.get("message"))
    terminated, waiting, running = _container_state(status, container)
    if terminated is not None:
        return _ended(terminated, phase)
    if phase in ("Succeeded", "Failed"):  # (no container status: it never ran)
        return AttemptView("failed", status.get("reason"), status.get("message"))
    metadata = pod.get("metadata") or {}
    if metadata.get("deletionTimestamp") and not deleting:
        return AttemptView(
            "node_failure",
            status.get("reason") or "Deleted",
            status.get("message") or "the cluster deleted the pod (its node was lost?)",
        )
    if waiting is not None:
        reason = waiting.get("reason")
        if reason in _IMAGE_ERRORS:
            return AttemptView("image_error", reason, waiting.get("message"))
        if reason in _CONFIG_ERRORS:
            return AttemptView("config_error", reason, waiting.get("message"))
    if running is not None or phase == "Running":
        started = _time(running, "startedAt") if running is not None else None
        return AttemptView("running", started_at=started)
    scheduled = _condition(pod, "PodScheduled")
    if scheduled is not None and scheduled.get("status") == "False":
        return AttemptView("unschedulable", scheduled.get("reason"), scheduled.get("message"))
    reason = waiting.get("reason") if waiting is not None else None
    return AttemptView("waiting", reason, waiting.get("message") if waiting else None)


def _deleted_for_its_deadline(job: Mapping[str, Any], pod: Mapping[str, Any]) -> bool:
    """Whether ``pod`` is being deleted because its Job's deadline ran out: its deletion
    started when the deadline was over (whole seconds, as the API says times)."""
    deadline = (job.get("spec") or {}).get("activeDeadlineSeconds")
    started = _time(job.get("status"), "startTime")
    metadata = pod.get("metadata") or {}
    deleted = _time(metadata, "deletionTimestamp")
    if deadline is None or started is None or deleted is None:
        return False
    deleted -= metadata.get("deletionGracePeriodSeconds") or 0
    return deleted >= started + deadline - 1


def _ended(terminated: Mapping[str, Any], phase: str | None) -> AttemptView:
    reason = terminated.get("reason")
    code = terminated.get("exitCode")
    signal = terminated.get("signal") or None
    times = {
        "started_at": _time(terminated, "startedAt"),
        "ended_at": _time(terminated, "finishedAt"),
    }
    if reason == "OOMKilled":
        return AttemptView(
            "out_of_memory",
            reason,
            "out of memory (OOMKilled)",
            code,
            signal,
            **times,
            termination_message=terminated.get("message") or None,
        )
    state: AttemptState = "succeeded" if code == 0 and phase != "Failed" else "failed"
    message = terminated.get("message") or None
    if reason in _START_ERRORS:  # (the runtime's words: the program never ran)
        return AttemptView(state, reason, message, code, signal, **times)
    return AttemptView(state, reason, None, code, signal, **times, termination_message=message)


def _container_state(
    status: Mapping[str, Any], container: str
) -> tuple[Mapping[str, Any] | None, Mapping[str, Any] | None, Mapping[str, Any] | None]:
    """The container's terminated, waiting and running states (None where absent)."""
    for entry in status.get("containerStatuses") or ():
        if entry.get("name") == container:
            state = entry.get("state") or {}
            return state.get("terminated"), state.get("waiting"), state.get("running")
    return None, None, None


def _condition(thing: Mapping[str, Any], kind: str) -> Mapping[str, Any] | None:
    for condition in (thing.get("status") or {}).get("conditions") or ():
        if condition.get("type") == kind and (
            kind == "PodScheduled" or condition.get("status") == "True"
        ):
            return condition
    return None


def _time(thing: Mapping[str, Any] | None, field: str = "lastTransitionTime") -> float | None:
    """An RFC 3339 time of the API (``2026-12-07T10:00:00Z``) as epoch seconds."""
    text = (thing or {}).get(field)
    if not isinstance(text, str):
        return None
    try:
        return datetime.datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()
    except ValueError:
        return None


def exit_status(view: AttemptView | None) -> tuple[int | None, int | None]:
    """The return code and signal of an ended container (above 128: a signal, as container
    runtimes report one)."""
    if view is None:
        return None, None
    code, signal = view.exit_code, view.signal
    if signal is None and code is not None and 128 < code <= 128 + 64:
        return None, code - 128
    return code, signal


def attempt_result(view: AttemptView, stdout: int, dropped: int, *, grace: float) -> Result:
    """The result of an attempt that ended as ``view`` says (``stdout``: the bytes of its log
    at home, ``dropped``: those past the output limit; ``grace``: the image error grace)."""
    code, signal = exit_status(view)
    error = None
    said = ": ".join(w for w in (view.reason, view.message) if w)
    if view.state == "out_of_memory":
        error = "out of memory (OOMKilled)"
    elif view.state == "node_failure":
        error = f"node failure: {said or 'its node was lost'}"
    elif view.state in ("image_error", "config_error"):
        what = "image" if view.state == "image_error" else "configuration"
        error = f"{what} error for {grace:.0f} s, Job deleted: {said}"
    elif view.state == "failed" and code is None and signal is None:
        error = f"could not start: {said}" if said else "failed without an exit code"
    elif view.state == "failed" and view.reason in _START_ERRORS:
        error = f"could not start: {said}"
    return Result(
        returncode=code,
        signal=signal,
        started_at=view.started_at,
        ended_at=view.ended_at,
        stdout_bytes=stdout,
        stdout_dropped=dropped,
        timed_out=view.state == "deadline",
        error=error,
    )

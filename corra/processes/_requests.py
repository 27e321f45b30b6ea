"""What a backend gets of a process record: the key of its effects and its launch request.

The one place where a `ProcessRecord` becomes the seam's typed values
(`corra.processes._backend`): the actor launches with `launch_request`, the manager checks it
at submission, and every effect, slot and log read carries `effect_key`.
"""

from __future__ import annotations

from corra.processes._backend import EffectKey, LaunchRequest, Limits
from corra.processes._record import ProcessRecord


def effect_key(record: ProcessRecord) -> EffectKey:
    """The key of the effects of ``record``'s current attempt."""
    return EffectKey(record.id, record.state.attempt)


def launch_request(record: ProcessRecord) -> LaunchRequest:
    """What a backend gets to launch ``record``'s current attempt: the one typed value."""
    spec = record.spec
    return LaunchRequest(
        key=effect_key(record),
        argv=spec.argv,
        name=spec.name,
        cwd=spec.cwd,
        env=spec.env,
        limits=Limits(
            timeout=spec.timeout,
            kill_grace=spec.kill_grace,
            memory=spec.memory_limit,
            pids=spec.pids_limit,
            output=spec.output_limit,
        ),
        host=spec.host,
        inputs=spec.inputs,
        outputs=spec.outputs,
        outputs_dir=spec.outputs_dir,
        options=spec.options,
    )

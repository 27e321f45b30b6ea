"""Backend tests' stand-in specs, as the process actor hands them to a backend."""

from __future__ import annotations

from typing import Any

from corra.processes._backend import EffectKey, LaunchRequest, Limits


def request(key: str, spec: Any) -> LaunchRequest:
    """The `LaunchRequest` the process actor would build for ``spec`` (a test's stand-in
    with some of a `ProcessSpec`'s fields) under ``key`` (``<process id>.<attempt>``)."""
    return LaunchRequest(
        key=EffectKey.parse(key),
        argv=tuple(spec.argv),
        name=getattr(spec, "name", None),
        cwd=getattr(spec, "cwd", None),
        env=dict(getattr(spec, "env", None) or {}),
        limits=Limits(
            timeout=getattr(spec, "timeout", None),
            kill_grace=getattr(spec, "kill_grace", 10.0),
            output=getattr(spec, "output_limit", None),
        ),
        host=getattr(spec, "host", None),
        inputs=dict(getattr(spec, "inputs", None) or {}),
        outputs=tuple(getattr(spec, "outputs", None) or ()),
        outputs_dir=getattr(spec, "outputs_dir", None),
        options=getattr(spec, "options", None),
    )

"""What an attempt is called on a cluster: its Job's name, labels and annotation.

One Kubernetes Job per attempt, named from the attempt's idempotency key (`EffectKey`), so
that a runtime that crashed between its durable intent and the create finds the Job again by
name, and a create that answers "already exists" is an adoption, never a second launch.

A Job's name must be a DNS-1123 label of at most 63 characters (the controller copies it
into the ``job-name`` label of its pods, whose values are limited to 63), lower case. A key
(``<process id>.<attempt>``: ids may hold upper case and ``_``) is spelled as it is where it
can be (``corra-p1abc-2``); where it cannot (upper case, ``_``, too long), a digest of the
exact key keeps two keys from ever sharing a name.
"""

from __future__ import annotations

import hashlib
import re
from typing import Final

from corra.processes._backend import EffectKey

#: Labels and the annotation corra puts on its Jobs (and the Job's pod template).
INSTANCE_LABEL: Final = "corra.dev/instance"
PROCESS_LABEL: Final = "corra.dev/process"
ATTEMPT_LABEL: Final = "corra.dev/attempt"
KEY_ANNOTATION: Final = "corra.dev/key"

_MAX_NAME: Final = 63
_PREFIX: Final = "corra-"
_DIGEST: Final = 10
_LABEL_VALUE = re.compile(r"^(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?$")


def job_name(key: EffectKey) -> str:
    """The name of the Job of the attempt ``key`` (a DNS-1123 label, at most 63 characters,
    the same for the same key, never the same for two keys)."""
    spelled = f"{_PREFIX}{key.process_id}-{key.attempt}"
    if len(spelled) <= _MAX_NAME and spelled == spelled.lower() and "_" not in spelled:
        return spelled
    digest = hashlib.sha256(str(key).encode()).hexdigest()[:_DIGEST]
    tail = f"-{key.attempt}-{digest}"
    readable = re.sub(r"[^a-z0-9-]", "-", key.process_id.lower()).strip("-")
    room = _MAX_NAME - len(_PREFIX) - len(tail)
    return f"{_PREFIX}{readable[:room].rstrip('-')}{tail}"


def job_labels(instance: str, key: EffectKey) -> dict[str, str]:
    """The labels of the attempt's Job and pods: the runtime's instance (recovery sweeps
    orphans by it; one watch selects all of corra's objects by it), the process, the
    attempt. Label values are at most 63 characters: a longer process id is digested."""
    return {
        INSTANCE_LABEL: label_value(instance),
        PROCESS_LABEL: label_value(key.process_id),
        ATTEMPT_LABEL: str(key.attempt),
    }


def label_value(text: str) -> str:
    """``text`` as a label value (itself where it is one, else a readable start and a
    digest of the whole)."""
    if len(text) <= _MAX_NAME and _LABEL_VALUE.match(text):
        return text
    digest = hashlib.sha256(text.encode()).hexdigest()[:_DIGEST]
    readable = re.sub(r"[^A-Za-z0-9_.-]", "-", text)[: _MAX_NAME - _DIGEST - 1].strip("-_.")
    return f"{readable}-{digest}" if readable else digest


def adoptable(metadata_labels: dict[str, str] | None, instance: str, key: EffectKey) -> bool:
    """Whether a Job found under the attempt's name is this attempt's (its labels say so):
    a create that answers "already exists" adopts only such a Job."""
    found = metadata_labels or {}
    return all(found.get(name) == value for name, value in job_labels(instance, key).items())

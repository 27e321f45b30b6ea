"""The Job an attempt is: its manifest, made from the process's spec and ``kubernetes`` table.

- One attempt, one Job, one pod: ``backoffLimit: 0`` and ``restartPolicy: Never`` (corra owns
  retries, each a new attempt with a new Job), ``completions`` and ``parallelism`` 1.
- The spec's ``timeout`` is the Job's ``activeDeadlineSeconds`` (whole seconds, rounded up:
  the cluster never kills it before corra would), its ``kill_grace`` the pod's
  ``terminationGracePeriodSeconds``.
- The container (``main``) runs the request's ``argv`` as its command, with its environment
  (``env`` and corra's ``CORRA_*``; ``$CORRA_RESULT`` is its termination message file,
  ``terminationMessagePolicy: File``), both as they are (``$`` escaped from the kubelet's
  ``$(VAR)`` expansion) and, if given, its ``cwd`` as the working directory; the
  request's ``memory`` limit is the container's memory limit where ``resources`` give none.
- ``pod_template`` is merged under corra's fields: corra's win where both set one (the
  command, the restart policy, the labels corra selects by), tables merge key by key, the
  ``main`` container's ``env`` by name (a variable from a Secret stays), and the template's
  containers other than ``main`` (sidecars) stay.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Mapping
from typing import Any, Final

from corra.backends.kubernetes._naming import KEY_ANNOTATION, job_labels, job_name
from corra.backends.kubernetes._options import KubernetesOptions
from corra.chaperone._rundir import RESULT_VARIABLE
from corra.processes._backend import LaunchRequest

#: The name of the container that runs the program.
CONTAINER: Final = "main"
#: Where the program writes its value: ``$CORRA_RESULT``, the container's termination
#: message file.
TERMINATION_LOG: Final = "/dev/termination-log"


def job_manifest(
    request: LaunchRequest,
    options: KubernetesOptions,
    *,
    instance: str,
    namespace: str,
    suspend: bool = False,
) -> dict[str, Any]:
    """The Job of the attempt ``request`` (see the module's docstring), as the API takes it."""
    key, limits = request.key, request.limits
    labels = job_labels(instance, key)
    container: dict[str, Any] = {
        "name": CONTAINER,
        "image": options.image,
        "command": [_verbatim(arg) for arg in request.argv],
        "env": [
            {"name": name, "value": _verbatim(value)}
            for name, value in {**request.environment(), RESULT_VARIABLE: TERMINATION_LOG}.items()
        ],
        # (the program's value: what it writes to $CORRA_RESULT, which Kubernetes reports
        # as its terminated state's message, at most 4096 bytes: `_attempts.keep_value`)
        "terminationMessagePath": TERMINATION_LOG,
        "terminationMessagePolicy": "File",
    }
    if request.cwd is not None:
        container["workingDir"] = request.cwd
    resources = copy.deepcopy(options.resources)
    if limits.memory is not None and "memory" not in resources.get("limits", {}):
        resources.setdefault("limits", {})["memory"] = str(limits.memory)
    if resources:
        container["resources"] = resources
    pod: dict[str, Any] = {
        "restartPolicy": "Never",
        "terminationGracePeriodSeconds": math.ceil(limits.kill_grace),
        "containers": [container],
    }
    if options.node_selector:
        pod["nodeSelector"] = dict(options.node_selector)
    if options.tolerations:
        pod["tolerations"] = [dict(toleration) for toleration in options.tolerations]
    if options.service_account is not None:
        pod["serviceAccountName"] = options.service_account
    template = options.pod_template
    job_spec: dict[str, Any] = {
        "backoffLimit": 0,
        "completions": 1,
        "parallelism": 1,
        "template": {
            "metadata": _merged(template.get("metadata", {}), {"labels": labels}),
            "spec": _pod_spec(template.get("spec", {}), pod),
        },
    }
    if limits.timeout is not None:
        job_spec["activeDeadlineSeconds"] = max(1, math.ceil(limits.timeout))
    if suspend:
        job_spec["suspend"] = True
    return {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": {
            "name": job_name(key),
            "namespace": namespace,
            "labels": labels,
            "annotations": {KEY_ANNOTATION: str(key)},
        },
        "spec": job_spec,
    }


def _verbatim(text: str) -> str:
    """``text`` as the program gets it: the kubelet expands ``$(VAR)`` and ``$$`` in a
    container's command and env values, which corra's argv and env (exec semantics, as on
    every backend) do not have; ``$$`` is its escape of ``$``."""
    return text.replace("$", "$$")


def _pod_spec(template: Mapping[str, Any], ours: dict[str, Any]) -> dict[str, Any]:
    """The pod spec: ``ours`` over the template's, the ``main`` container merged over the
    template's container of that name (or its first, if none has it), other containers
    kept."""
    theirs = [dict(container) for container in template.get("containers", [])]
    main = next((c for c in theirs if c.get("name") == CONTAINER), theirs[0] if theirs else None)
    merged = _merged({k: v for k, v in template.items() if k != "containers"}, ours)
    if main is not None:
        container = _merged(main, ours["containers"][0])
        # (the template's variables, e.g. from a Secret, after corra's, which win by name)
        env = container["env"]
        named = {variable["name"] for variable in env}
        container["env"] = env + [
            copy.deepcopy(variable)
            for variable in main.get("env") or ()
            if not isinstance(variable, Mapping) or variable.get("name") not in named
        ]
        merged["containers"] = [container if c is main else c for c in theirs]
    return merged


def _merged(under: Mapping[str, Any], over: Mapping[str, Any]) -> dict[str, Any]:
    """``over`` merged over ``under``: tables key by key, anything else from ``over``."""
    out = copy.deepcopy(dict(under))
    for name, value in over.items():
        if isinstance(value, Mapping) and isinstance(out.get(name), Mapping):
            out[name] = _merged(out[name], value)
        else:
            out[name] = copy.deepcopy(value)
    return out

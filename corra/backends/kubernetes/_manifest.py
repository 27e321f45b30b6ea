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
- Statuses (``status = true``, the default): an ``emptyDir`` (`STATUS_VOLUME`) mounted at
  `STATUS_DIR` in ``main``, ``$CORRA_STATUS`` a file in it, and a container of the same image,
  `STATUS_CONTAINER`, that copies what the program appends to it to its own log
  (`status_script`), which the backend follows like ``main``'s. ``sidecar = "native"``
  (Kubernetes >= 1.29): an init container with ``restartPolicy: Always``, which the kubelet
  stops once ``main`` ended; ``"container"`` (older servers): a second container, which runs
  until the Job is deleted (the backend deletes it once the result is home). The image must
  have ``/bin/sh`` and ``tail -F`` (coreutils, busybox).
"""

from __future__ import annotations

import copy
import math
from collections.abc import Mapping
from typing import Any, Final, Literal

from corra.backends.kubernetes._naming import KEY_ANNOTATION, job_labels, job_name
from corra.backends.kubernetes._options import KubernetesOptions
from corra.chaperone._rundir import RESULT_VARIABLE, STATUS_FILE, STATUS_VARIABLE
from corra.processes._backend import LaunchRequest

#: The name of the container that runs the program.
CONTAINER: Final = "main"
#: Where the program writes its value: ``$CORRA_RESULT``, the container's termination
#: message file.
TERMINATION_LOG: Final = "/dev/termination-log"
#: The container that copies the program's status lines to its log.
STATUS_CONTAINER: Final = "corra-status"
#: The ``emptyDir`` the status file is in, and where both containers mount it.
STATUS_VOLUME: Final = "corra-status"
STATUS_DIR: Final = "/var/run/corra"
#: ``$CORRA_STATUS`` in the pod.
STATUS_PATH: Final = f"{STATUS_DIR}/{STATUS_FILE}"
#: What `STATUS_CONTAINER` runs (``sh -c``): the file's bytes as they are appended (whole
#: lines or not: the backend's reader takes complete lines only), from its start, to stdout;
#: tail's complaints (truncated ...) not in the log. The file is made first, writable by any
#: user (the program may run as another): tail follows a file that exists at once, one that
#: does not only from its next retry, a second later. On SIGTERM tail has ``{linger}``
#: seconds for the last lines: 1 for a native sidecar (the kubelet stops it once ``main``
#: ended), 0 for a second container (stopped when the Job is deleted, its log home).
STATUS_SCRIPT: Final = (
    '(umask 0; : >> "$CORRA_STATUS") 2>/dev/null; '
    'tail -c +1 -F "$CORRA_STATUS" 2>/dev/null & copier=$!; '
    "trap 'sleep {linger}; kill $copier 2>/dev/null; exit 0' TERM; "
    "wait $copier"
)
#: Where the status sidecar is: ``native`` (an init container with ``restartPolicy:
#: Always``, Kubernetes >= 1.29), ``container`` (a second container), or none.
Sidecar = Literal["native", "container"]


def job_manifest(
    request: LaunchRequest,
    options: KubernetesOptions,
    *,
    instance: str,
    namespace: str,
    suspend: bool = False,
    sidecar: Sidecar | None = None,
) -> dict[str, Any]:
    """The Job of the attempt ``request`` (see the module's docstring), as the API takes it.
    ``sidecar``: where the status sidecar goes (None: no statuses)."""
    key, limits = request.key, request.limits
    labels = job_labels(instance, key)
    container: dict[str, Any] = {
        "name": CONTAINER,
        "image": options.image,
        "command": [_verbatim(arg) for arg in request.argv],
        "env": [
            {"name": name, "value": _verbatim(value)}
            for name, value in _environment(request, sidecar).items()
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
    if sidecar is not None:
        _add_status_sidecar(pod, options, sidecar)
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


def _environment(request: LaunchRequest, sidecar: Sidecar | None) -> dict[str, str]:
    """The program's environment: the request's, ``$CORRA_RESULT`` and, with a status
    sidecar, ``$CORRA_STATUS``."""
    env = {**request.environment(), RESULT_VARIABLE: TERMINATION_LOG}
    if sidecar is not None:
        env[STATUS_VARIABLE] = STATUS_PATH
    return env


def _add_status_sidecar(pod: dict[str, Any], options: KubernetesOptions, sidecar: Sidecar) -> None:
    """The status file's ``emptyDir``, mounted in ``main`` and in the sidecar that copies it
    to its log (see the module's docstring)."""
    mount = {"name": STATUS_VOLUME, "mountPath": STATUS_DIR}
    pod["volumes"] = [{"name": STATUS_VOLUME, "emptyDir": {}}]
    pod["containers"][0]["volumeMounts"] = [mount]
    copier: dict[str, Any] = {
        "name": STATUS_CONTAINER,
        "image": options.image,
        "command": ["/bin/sh", "-c", _verbatim(status_script(sidecar))],
        "env": [{"name": STATUS_VARIABLE, "value": STATUS_PATH}],
        "volumeMounts": [dict(mount)],
        # (a few lines of a file: it asks for little, and the pod's QoS barely notices it)
        "resources": {"requests": {"cpu": "10m", "memory": "16Mi"}},
    }
    if sidecar == "native":
        copier["restartPolicy"] = "Always"
        pod["initContainers"] = [copier]
    else:
        pod["containers"].append(copier)


def status_script(sidecar: Sidecar) -> str:
    """What the status sidecar runs (`STATUS_SCRIPT`)."""
    return STATUS_SCRIPT.format(linger=1 if sidecar == "native" else 0)


def _verbatim(text: str) -> str:
    """``text`` as the program gets it: the kubelet expands ``$(VAR)`` and ``$$`` in a
    container's command and env values, which corra's argv and env (exec semantics, as on
    every backend) do not have; ``$$`` is its escape of ``$``."""
    return text.replace("$", "$$")


def _pod_spec(template: Mapping[str, Any], ours: dict[str, Any]) -> dict[str, Any]:
    """The pod spec: ``ours`` over the template's, the ``main`` container merged over the
    template's container of that name (or its first, if none has it), other containers
    kept; the template's volumes and init containers, and ``main``'s volume mounts, kept
    beside corra's (the status sidecar's)."""
    theirs = [dict(container) for container in template.get("containers", [])]
    main = next((c for c in theirs if c.get("name") == CONTAINER), theirs[0] if theirs else None)
    merged = _merged({k: v for k, v in template.items() if k != "containers"}, ours)
    for field in ("volumes", "initContainers"):
        if field in ours and template.get(field):
            merged[field] = copy.deepcopy(list(template[field])) + copy.deepcopy(ours[field])
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
        if "volumeMounts" in ours["containers"][0] and main.get("volumeMounts"):
            container["volumeMounts"] = copy.deepcopy(list(main["volumeMounts"])) + copy.deepcopy(
                ours["containers"][0]["volumeMounts"]
            )
        merged["containers"] = [container if c is main else c for c in theirs]
        merged["containers"] += copy.deepcopy(ours["containers"][1:])
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

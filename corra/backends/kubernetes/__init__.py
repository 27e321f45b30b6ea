"""The ``kubernetes`` backend: processes as Kubernetes Jobs, one per attempt, on clusters that
are hosts (``[hosts.NAME]`` with ``transport = "kubernetes"``), managed from outside the
cluster through lightkube's async client. See docs/kubernetes.md.

- `_naming`: an attempt's Job name (from its key), labels and the adoption check;
- `_options`: a process's ``kubernetes`` table, validated with field paths;
- `_client`: a cluster as a host: its client, errors, write bucket, request count;
- `_credentials`: a kubeconfig's context and credentials (exec plug-ins run on trio);
- `_manifest`: the Job of an attempt;
- `_watch`: one list+watch of corra's Jobs and pods per namespace (relists on 410 Gone);
- `_outcomes`: what a Job and its pod say, classified;
- `_logs`: an attempt's log followed home while it runs (`_logstream` splits the API's
  timestamped records, `_logfiles` keeps them with the position shipping resumes from);
- `_shipping`: one shipping per attempt, from its launch to its end;
- `_statuses`: the program's ``$CORRA_STATUS`` through a sidecar's log (where the sidecar
  goes: native on servers >= 1.29, a second container before);
- `_attempts`: what the backend keeps of its attempts at home;
- `_backend`: the backend (launch, wait, kill, recovery's sweep).
"""

from __future__ import annotations

from corra.backends.kubernetes._backend import KubeHandle, KubernetesBackend, open_kubernetes
from corra.backends.kubernetes._client import KubernetesHostOptions
from corra.backends.kubernetes._options import KubernetesOptions
from corra.processes._backend import BackendPlugin

PLUGIN = BackendPlugin(
    name="kubernetes",
    open=open_kubernetes,
    handle=KubeHandle,
    options=KubernetesOptions,
    host_options=KubernetesHostOptions,
    capabilities=KubernetesBackend.capabilities,
    description='Kubernetes Jobs on a cluster (a host with transport = "kubernetes"), watched',
)

__all__ = ["PLUGIN", "KubeHandle", "KubernetesBackend", "KubernetesHostOptions"]

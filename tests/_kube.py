"""A real Kubernetes control plane with corra's stand-in node, in a scratch dir, for tests.

`scripts/kube-test-cluster.sh start DIR` starts etcd, kube-apiserver, kube-controller-manager,
kube-scheduler (1.20.2, built once per machine by its ``build``) and the stand-in node
(`corra.testing.kubenode`, with this interpreter); ``stop`` stops them by their pids.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import attrs

ROOT = Path(__file__).resolve().parent.parent
SCRIPT = ROOT / "scripts" / "kube-test-cluster.sh"
NODE = "corra-test-node"
#: How long the node may miss heartbeats before the controller-manager marks it unreachable
#: (its Lease is renewed every 2 s).
NODE_GRACE = "10s"
BINARIES = ("kube-apiserver", "kube-controller-manager", "kube-scheduler")


def _cache() -> Path:
    default = Path.home() / ".cache" / "corra" / "kube-1.20.2"
    return Path(os.environ.get("CORRA_KUBE_CACHE", default)) / "bin"


def unbuildable() -> str | None:
    """Why the control plane cannot be built (or started) here, or None.

    Missing Debian packages are no reason as root (``build`` installs them)."""
    if all((_cache() / binary).exists() for binary in BINARIES):
        return None if shutil.which("etcd") else "etcd missing (apt-get install etcd-server)"
    if os.geteuid() == 0 and shutil.which("apt-get"):
        return None
    missing = [command for command in ("go", "etcd", "rsync") if shutil.which(command) is None]
    if missing:
        return f"kube-apiserver cannot be built here: {', '.join(missing)} missing, not root"
    return None


def built() -> bool:
    """Whether ``scripts/kube-test-cluster.sh build`` has run on this machine."""
    return all((_cache() / binary).exists() for binary in BINARIES)


@attrs.define
class NodeProcess:
    """The stand-in node the script started: a handle to play node loss."""

    pid: int
    name: str = NODE

    def cut_off(self) -> None:
        """No heartbeats and no API writes (SIGUSR1) until `reconnect`."""
        os.kill(self.pid, signal.SIGUSR1)

    def reconnect(self) -> None:
        """Heartbeats again (SIGUSR2); the node posts its status at once."""
        os.kill(self.pid, signal.SIGUSR2)


@attrs.define
class KubeCluster:
    """One running cluster (`start` it; `stop` stops it)."""

    scratch: Path
    node: NodeProcess | None = None

    @property
    def kubeconfig(self) -> Path:
        return self.scratch / "kubeconfig"

    def _script(self, command: str) -> None:
        env = {
            **os.environ,
            "CORRA_PYTHON": sys.executable,
            "CORRA_KUBE_NODE": NODE,
            "CORRA_KUBE_NODE_GRACE": NODE_GRACE,
        }
        completed = subprocess.run(
            ["bash", str(SCRIPT), command, str(self.scratch)],
            env=env,
            capture_output=True,
            text=True,
            timeout=120,
        )
        if completed.returncode != 0:
            raise RuntimeError(f"kube-test-cluster {command} failed: {completed.stderr}")

    def start(self) -> KubeCluster:
        self._script("start")
        pids = dict(
            reversed(line.split()) for line in (self.scratch / "pids").read_text().splitlines()
        )
        self.node = NodeProcess(int(pids["node"]))
        return self

    def stop(self) -> None:
        self._script("stop")

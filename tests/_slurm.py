"""A real single-node Slurm (munged, slurmctld, slurmd) in a scratch dir, for the tests.

`tests/slurm/slurm-single-node.sh` (a copy of the script the project was given, known to work
on Debian 12 with slurm-wlm 22.05 and munge 0.5) writes the config, starts the daemons on
ports we choose and waits until the node is idle; ``stop`` cancels every job, then stops the
daemons by their pids. Nothing is written outside the scratch dir.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path

import attrs

SCRIPT = Path(__file__).with_name("slurm") / "slurm-single-node.sh"
COMMANDS = ("sbatch", "squeue", "scontrol", "scancel", "slurmctld", "slurmd", "munged")


def unavailable() -> str | None:
    """Why no Slurm can be started here, or None."""
    missing = [command for command in COMMANDS if shutil.which(command) is None]
    if missing:
        return f"{', '.join(missing)} missing (apt-get install slurm-wlm munge)"
    return None


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@attrs.define
class SlurmCluster:
    """One running single-node cluster."""

    scratch: Path
    ctld_port: int = attrs.field(factory=_free_port)
    slurmd_port: int = attrs.field(factory=_free_port)

    @property
    def conf(self) -> Path:
        return self.scratch / "etc" / "slurm.conf"

    @property
    def env(self) -> dict[str, str]:
        """What a client command needs (SLURM_CONF), on top of os.environ."""
        return {**os.environ, "SLURM_CONF": str(self.conf)}

    def _script(self, command: str) -> None:
        env = {
            **os.environ,
            "SLURM_SCRATCH": str(self.scratch),
            "SLURM_CTLD_PORT": str(self.ctld_port),
            "SLURM_SLURMD_PORT": str(self.slurmd_port),
        }
        completed = subprocess.run(
            ["bash", str(SCRIPT), command], env=env, capture_output=True, text=True, timeout=120
        )
        if completed.returncode != 0:
            raise RuntimeError(f"slurm {command} failed: {completed.stdout}{completed.stderr}")

    def start(self) -> SlurmCluster:
        self.scratch.mkdir(parents=True, exist_ok=True)
        self._script("start")
        return self

    def stop(self) -> None:
        self._script("stop")

    def run(self, *argv: str) -> str:
        """A client command against this cluster; its stdout."""
        return subprocess.run(
            list(argv), env=self.env, capture_output=True, text=True, check=True, timeout=60
        ).stdout

    def forget_every_job(self) -> None:
        """Restart slurmctld with its state cleared (``-c``), as after the loss of its state
        dir: it forgets every job, and has slurmd kill the ones still running, which then
        leave no exit record. The cluster serves new jobs again when this returns."""
        pid_file = self.scratch / "run" / "slurmctld.bgpid"
        pid = int(pid_file.read_text())
        os.kill(pid, signal.SIGTERM)
        deadline = time.monotonic() + 20
        while _exists(pid):
            if time.monotonic() > deadline:
                os.kill(pid, signal.SIGKILL)
            time.sleep(0.05)
        # Started as the cluster's script starts it: in the background of a shell that
        # exits, its pid in the pid file, so that `stop` stops this one.
        subprocess.run(
            [
                *("sh", "-c", 'slurmctld -D -c -i -f "$1" >>"$2" 2>&1 </dev/null & echo $! > "$3"'),
                *("sh", str(self.conf), str(self.scratch / "log" / "slurmctld.out")),
                str(pid_file),
            ],
            env=self.env,
            check=True,
            timeout=60,
        )
        deadline = time.monotonic() + 30
        while True:
            ready = subprocess.run(
                ["sinfo", "-h", "-o", "%T"], env=self.env, capture_output=True, text=True
            )
            if ready.returncode == 0 and ready.stdout.strip() == "idle":
                return
            if time.monotonic() > deadline:
                raise RuntimeError(f"slurmctld did not come back: {ready.stdout}{ready.stderr}")
            time.sleep(0.2)


def _exists(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True

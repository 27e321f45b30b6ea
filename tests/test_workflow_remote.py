"""One job whose steps run on this machine, on a real sshd (tests/_sshd.py) and on a real
single-node Slurm (tests/_slurm.py), run as a user runs it: ``corra run FILE --job NAME
--json``.

The sshd's programs run as its test user on this machine, and the Slurm jobs as us, so a
ledger in a scratch dir every user may write shows what ran where, and how often.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import _slurm
import _sshd
import pytest
import trio

from corra._errors import ConfigError
from corra._jobfile import load_job_file
from corra._runtime import open_runtime
from corra.processes._backend import EffectKey
from corra.processes._spec import ProcessSpec

pytestmark = pytest.mark.slow

CORRA = [sys.executable, "-m", "corra.cli"]


@pytest.fixture
def shared_dir() -> Iterator[Path]:
    """A scratch dir that every user may write in (pytest's are 0700)."""
    path = Path(tempfile.mkdtemp(prefix="corra-workflow-remote-"))
    path.chmod(0o777)
    (path / "ledger").touch()
    (path / "ledger").chmod(0o666)  # (each user's programs append to it)
    yield path
    shutil.rmtree(path, ignore_errors=True)


def writes_result(expression: str) -> list[str]:
    """argv of a program that writes ``expression`` (Python, over ``args``: its arguments)
    as JSON to ``$CORRA_RESULT``, and appends its step's process name and arguments to
    ``$LEDGER``."""
    code = (
        "import json, os, sys\n"
        "args = sys.argv[1:]\n"
        "with open(os.environ['LEDGER'], 'a') as ledger:\n"
        "    ledger.write(' '.join([os.environ['CORRA_PROCESS_NAME'], *args]) + '\\n')\n"
        f"json.dump({expression}, open(os.environ['CORRA_RESULT'], 'w'))\n"
    )
    return ["python3", "-c", code]


def job_file(path: Path, sshd: _sshd.Sshd, slurm: _slurm.SlurmCluster, shared: Path) -> Path:
    """Two jobs over the hosts ``far`` (the sshd) and ``here`` (the Slurm, on this machine).

    ``spread``: ``prepare`` (local) gives two words, each of which a step on ``far`` takes
    (a fan-out), and one on ``here`` too; ``report`` (local) counts what ran. Results pass
    from a local step to remote ones only.

    ``relay``: ``prepare`` (local) -> ``remote`` (ssh) -> ``batch`` (Slurm) -> ``report``
    (local), each taking the result of the one before.
    """
    ledger = str(shared / "ledger")
    user = 'os.environ.get("USER") or __import__("getpass").getuser()'
    steps: dict[str, list[dict[str, Any]]] = {
        "spread": [
            {"name": "prepare", "argv": [*writes_result('{"words": ["alpha", "beta"]}')]},
            {
                "name": "remote",
                "needs": ["prepare"],
                "for_each": "${steps.prepare.result.words}",
                "backend": "ssh",
                "host": "far",
                "argv": [*writes_result("args"), "${item}"],
            },
            {
                "name": "batch",
                "needs": ["prepare"],
                "backend": "slurm",
                "host": "here",
                "argv": [*writes_result("args"), "${steps.prepare.result.words}"],
            },
            {
                "name": "report",
                "needs": ["remote", "batch"],
                "argv": [*writes_result('{"done": args}'), "${steps.prepare.result.words}"],
            },
        ],
        "relay": [
            {"name": "prepare", "argv": [*writes_result('{"word": args[0].upper()}'), "hi"]},
            {
                "name": "remote",
                "needs": ["prepare"],
                "backend": "ssh",
                "host": "far",
                "argv": [
                    *writes_result(f'{{"seen": args[0], "user": {user}}}'),
                    "${steps.prepare.result.word}",
                ],
            },
            {
                "name": "batch",
                "needs": ["remote"],
                "backend": "slurm",
                "host": "here",
                "argv": [
                    *writes_result('{"relayed": args[0], "job": os.environ["SLURM_JOB_ID"]}'),
                    "${steps.remote.result.seen}",
                ],
            },
            {
                "name": "report",
                "needs": ["batch"],
                "argv": [*writes_result('{"got": args[0]}'), "${steps.batch.result.relayed}"],
            },
        ],
    }
    lines = [
        "[hosts.far]",
        f'hostname = "{sshd.host}"',
        f"port = {sshd.port}",
        f'user = "{sshd.user}"',
        f'identity_file = "{sshd.client_key}"',
        f'known_hosts = "{sshd.known_hosts}"',
        f'work_root = "corra-tests/workflow-{os.getpid()}"',
        "",
        "[hosts.here]",
        'transport = "local"',
        f"env = {{ SLURM_CONF = {json.dumps(str(slurm.conf))} }}",
        "",
        "[hosts.here.slurm]",
        "poll_interval = 0.5",
        f"work_root = {json.dumps(str(shared / 'jobs'))}",
        "",
    ]
    for name, job_steps in steps.items():
        lines += ["[[job]]", f'name = "{name}"', ""]
        for step in job_steps:
            lines.append("[[job.step]]")
            lines += [f"{key} = {json.dumps(value)}" for key, value in step.items()]
            lines += [f"env = {{ LEDGER = {json.dumps(ledger)} }}", ""]
    path.write_text("\n".join(lines))
    return path


def corra_run(state: Path, jobs: Path, job: str) -> tuple[int, dict[str, Any], str]:
    """``corra run JOBS --job JOB --json``: its exit status, the run as it printed it, and
    what it printed on stderr (the steps as they went)."""
    done = subprocess.run(
        [*CORRA, "--state-dir", str(state), "run", str(jobs), "--job", job, "--json"],
        capture_output=True,
        text=True,
        timeout=180,
        check=False,
    )
    assert done.stdout.strip(), done.stderr
    return done.returncode, json.loads(done.stdout), done.stderr


def by_key(run: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {step["key"]: step for step in run["steps"]}


def ledger_lines(shared: Path) -> list[str]:
    ledger = shared / "ledger"
    return sorted(ledger.read_text().splitlines()) if ledger.exists() else []


def without_results(tmp_path: Path, jobs: Path) -> list[str]:
    """The remote backends of ``jobs`` that do not read a program's ``$CORRA_RESULT`` back
    (their ``read_log`` refuses the stream ``result``), as `corra.processes._values` asks."""

    async def probe() -> list[str]:
        hosts = load_job_file(jobs).hosts
        missing = []
        async with open_runtime(state_dir=tmp_path / "probe", hosts=hosts) as rt:
            for backend, host in (("ssh", "far"), ("slurm", "here")):
                spec = ProcessSpec(argv=("true",), backend=backend, host=host)
                try:
                    with trio.fail_after(60):
                        await rt.processes.backend_for(spec).read_log(
                            EffectKey("pnone", 1), "result", 0, 1, host
                        )
                except ConfigError as exc:
                    if "stream" in str(exc):
                        missing.append(f"{backend} ({exc})")
                except Exception:  # (it took the stream: that no run dir has the key is fine)
                    pass
        return missing

    return trio.run(probe)


def test_a_jobs_steps_run_here_over_ssh_and_on_slurm(
    slurm: _slurm.SlurmCluster, sshd: _sshd.Sshd, shared_dir: Path, tmp_path: Path
) -> None:
    jobs = job_file(tmp_path / "jobs.toml", sshd, slurm, shared_dir)
    status, run, stderr = corra_run(tmp_path / "state", jobs, "spread")
    assert status == 0, (run.get("reason"), stderr)
    assert run["phase"] == "finished" and run["job"] == "spread"
    steps = by_key(run)
    assert {key: step["phase"] for key, step in steps.items()} == {
        "prepare": "finished",
        "remote": "expanded",
        "remote[0]": "finished",
        "remote[1]": "finished",
        "batch": "finished",
        "report": "finished",
    }
    # Each ran once, where it was meant to, with the words the local step gave.
    rid = run["id"]
    assert ledger_lines(shared_dir) == sorted(
        [
            f"{rid}.prepare",
            f"{rid}.remote.0 alpha",
            f"{rid}.remote.1 beta",
            f'{rid}.batch ["alpha","beta"]',
            f'{rid}.report ["alpha","beta"]',
        ]
    )
    assert run["result"] == {"done": ['["alpha","beta"]']}
    state = str(tmp_path / "state")
    records = {}
    for key in ("remote[0]", "batch", "prepare"):
        shown = subprocess.run(
            [*CORRA, "--state-dir", state, "show", steps[key]["process"], "--json"],
            capture_output=True,
            text=True,
            timeout=60,
            check=True,
        )
        records[key] = json.loads(shown.stdout)
    assert [records[key]["spec"]["backend"] for key in ("remote[0]", "batch", "prepare")] == [
        "ssh",
        "slurm",
        "local",
    ]
    assert records["batch"]["handle"]["job_id"].isdigit(), records["batch"]["handle"]


def test_results_pass_from_ssh_to_slurm_and_home(
    slurm: _slurm.SlurmCluster, sshd: _sshd.Sshd, shared_dir: Path, tmp_path: Path
) -> None:
    jobs = job_file(tmp_path / "jobs.toml", sshd, slurm, shared_dir)
    missing = without_results(tmp_path, jobs)
    if missing:
        pytest.skip(f"these backends do not read $CORRA_RESULT back yet: {', '.join(missing)}")
    status, run, stderr = corra_run(tmp_path / "state", jobs, "relay")
    assert status == 0, (run.get("reason"), stderr)
    steps = by_key(run)
    assert steps["prepare"]["result"] == {"word": "HI"}
    assert steps["remote"]["result"] == {"seen": "HI", "user": sshd.user}
    batch = steps["batch"]["result"]
    assert batch["relayed"] == "HI" and batch["job"].isdigit()
    assert run["result"] == {"got": "HI"}
    rid = run["id"]
    assert ledger_lines(shared_dir) == sorted(
        [f"{rid}.prepare hi", f"{rid}.remote HI", f"{rid}.batch HI", f"{rid}.report HI"]
    )

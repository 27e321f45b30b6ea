"""The README's Python examples run as written."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

README = Path(__file__).resolve().parent.parent / "README.md"


def run_block(index: int, tmp_path: Path) -> str:
    blocks = re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.S)
    assert len(blocks) > index, "the README lost an example"
    script = tmp_path / "example.py"
    script.write_text(blocks[index])
    done = subprocess.run(
        [sys.executable, str(script)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        cwd=tmp_path,
    )
    assert done.returncode == 0, done.stderr
    return done.stdout


def test_readme_actor_tour_runs(tmp_path):
    out = run_block(0, tmp_path)
    assert "crashed: boom" in out
    assert "/workers/counter running 1" in out


def test_readme_process_tour_runs(tmp_path):
    out = run_block(1, tmp_path).splitlines()
    assert out == [
        "running",
        "finished 0",
        "b'hello\\n'",
        "failed 2 exited with 3",
    ]


def test_readme_job_files_are_valid():
    from corra._jobfile import parse_job_text

    blocks = re.findall(r"```toml\n(.*?)```", README.read_text(), flags=re.S)
    assert len(blocks) >= 2, "the README lost a job file example"
    jobs = [parse_job_text(block, f"README toml block {n}") for n, block in enumerate(blocks)]
    remote = jobs[1]
    assert sorted(remote.hosts) == ["cluster"]
    assert [(p.name, p.backend, p.host) for p in remote.processes] == [
        ("fit", "ssh", "cluster"),
        ("simulate", "slurm", "cluster"),
    ]

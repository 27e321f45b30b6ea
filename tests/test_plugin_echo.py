"""A third-party backend, for real: examples/plugins/echo, outside corra, found by its entry
point in a fresh interpreter, passes the conformance kit and runs a process of a job file.

The package is made importable as an installed distribution is: a directory on PYTHONPATH
with the package and a ``.dist-info`` holding the entry points of its own pyproject.toml
(what pip writes; pip is not used, so no index and no build backend are needed).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

ECHO = Path(__file__).resolve().parents[1] / "examples" / "plugins" / "echo"
CORRA = [sys.executable, "-m", "corra.cli"]

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A directory that holds corra-echo as installed: its package and its dist-info."""
    site = tmp_path_factory.mktemp("site")
    shutil.copytree(ECHO / "corra_echo", site / "corra_echo")
    project = tomllib.loads((ECHO / "pyproject.toml").read_text())["project"]
    info = site / f"{project['name'].replace('-', '_')}-{project['version']}.dist-info"
    info.mkdir()
    (info / "METADATA").write_text(
        f"Metadata-Version: 2.1\nName: {project['name']}\nVersion: {project['version']}\n"
    )
    (info / "entry_points.txt").write_text(
        "".join(
            f"[{group}]\n" + "".join(f"{name} = {value}\n" for name, value in points.items())
            for group, points in project["entry-points"].items()
        )
    )
    return site


def run(argv: list[str], site: Path | None, **options: object) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONDONTWRITEBYTECODE": "1"}
    if site is not None:
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(site), env.get("PYTHONPATH")]))
    return subprocess.run(
        argv, env=env, capture_output=True, text=True, timeout=300, check=False, **options
    )


DISCOVER = """
import json
from corra.processes._registry import installed
print(json.dumps({name: plugin.open.__module__ for name, plugin in installed.plugins.items()}))
"""


def test_the_registry_finds_a_backend_installed_apart_from_corra(site: Path) -> None:
    found = run([sys.executable, "-c", DISCOVER], site)
    assert found.returncode == 0, found.stderr
    modules = json.loads(found.stdout)
    assert sorted(modules) == ["echo", "hyperqueue", "kubernetes", "local", "slurm", "ssh"]
    assert modules["echo"] == "corra_echo"
    assert all(
        modules[name].startswith("corra.backends.")
        for name in ("hyperqueue", "kubernetes", "local", "slurm", "ssh")
    )
    without = run([sys.executable, "-c", DISCOVER], None)
    assert "echo" not in json.loads(without.stdout)


def test_the_echo_backend_passes_the_conformance_kit(site: Path) -> None:
    tests = run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "tests"], site, cwd=ECHO
    )
    assert tests.returncode == 0, tests.stdout + tests.stderr
    # every test of the kit ran: none skipped (an echo handle is typed, a program can be lost)
    assert " passed" in tests.stdout and "skipped" not in tests.stdout, tests.stdout


def test_corra_run_runs_a_process_on_a_third_party_backend(site: Path, tmp_path: Path) -> None:
    jobs = tmp_path / "jobs.toml"
    jobs.write_text(
        '[[process]]\nname = "greet"\nbackend = "echo"\nargv = ["echo", "world"]\n'
        'echo = { prefix = "hello from echo: " }\n'
    )
    state = tmp_path / "state"
    ran = run([*CORRA, "--state-dir", str(state), "run", str(jobs)], site)
    assert ran.returncode == 0, ran.stdout + ran.stderr
    assert "greet: finished" in ran.stdout
    logs = run([*CORRA, "--state-dir", str(state), "logs", "greet"], site)
    assert logs.stdout == "hello from echo: world\n", logs.stderr


def test_corra_backends_lists_a_third_party_backend(site: Path) -> None:
    listed = run([*CORRA, "backends", "--json"], site)
    assert listed.returncode == 0, listed.stderr
    described = json.loads(listed.stdout)  # (a list of backends, or a mapping by name)
    entries = described.values() if isinstance(described, dict) else described
    echo = next(entry for entry in entries if entry["name"] == "echo")
    assert [option["name"] for option in echo["options"]] == ["prefix"]
    assert echo["capabilities"]["log_size"] is True
    plain = run([*CORRA, "backends"], site)
    assert "echo" in plain.stdout and "prefix" in plain.stdout, plain.stderr

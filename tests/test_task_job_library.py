"""The HyperQueue task wrapper shipped once to a directory of the run root (`task_job.ship`)
and imported by every task (`task_job.argv`'s ``library``): written whole and the user's
only, compiled once per Python into the directory's ``__pycache__``, and still run (compiled
every time) where that cache cannot be written."""

from __future__ import annotations

import ast
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from corra.chaperone import task_job

HQ_ENV = {"HQ_JOB_ID": "17", "HQ_TASK_ID": "0", "HQ_INSTANCE_ID": "0"}


def mode(path: Path) -> int:
    return path.stat().st_mode & 0o777


def run_task(tmp_path: Path, library: Path | str, name: str, program: list[str]) -> tuple[int, str]:
    """Run a task of run dir ``tmp_path/name`` to its end: its status and stderr."""
    run_dir = tmp_path / name
    run_dir.mkdir(mode=0o700)
    command = task_job.argv(run_dir, 1.0, None, program, python=sys.executable, library=library)
    finished = subprocess.run(
        command, env={**os.environ, **HQ_ENV}, cwd=tmp_path, capture_output=True, timeout=60
    )
    return finished.returncode, finished.stderr.decode()


def cached(library: Path) -> list[Path]:
    return sorted((library / "__pycache__").glob(f"{task_job.module_name()}.*.pyc"))


def test_the_wrapper_is_shipped_whole_once_and_the_user_s_only(tmp_path: Path):
    library = tmp_path / ".corra"
    assert task_job.ship(library) == str(library)
    module = library / f"{task_job.module_name()}.py"
    assert module.read_text() == task_job.source()
    assert (mode(library), mode(library / "__pycache__"), mode(module)) == (0o700, 0o700, 0o600)
    assert sorted(path.name for path in library.iterdir()) == ["__pycache__", module.name]
    shipped = module.stat()
    assert task_job.ship(str(library)) == str(library)  # (there already: not written again)
    assert (module.stat().st_ino, module.stat().st_mtime_ns) == (
        shipped.st_ino,
        shipped.st_mtime_ns,
    )
    assert task_job.module_name().startswith("task_job_") and task_job.module_name().isidentifier()


def test_tasks_compile_the_wrapper_once(tmp_path: Path):
    # (-I ignores PYTHONDONTWRITEBYTECODE, which this environment may set: the cache is
    # written all the same; and read by the tasks after the first, not written again)
    library = Path(task_job.ship(tmp_path / ".corra"))
    command = task_job.argv(tmp_path / "run", 1.0, None, ["true"], library=library)
    assert len(command[4]) < 400  # (what the server holds per task, rather than 27 KB)
    ast.parse(command[4], feature_version=(3, 6))  # (the oldest python3 a worker may have)
    assert run_task(tmp_path, library, "first", ["sh", "-c", "echo one"]) == (0, "")
    [bytecode] = cached(library)
    assert bytecode.name.endswith(f".{sys.implementation.cache_tag}.pyc")
    assert mode(bytecode) == 0o600
    compiled = bytecode.stat().st_mtime_ns, bytecode.stat().st_ino
    assert run_task(tmp_path, library, "second", ["sh", "-c", "echo two"]) == (0, "")
    assert (bytecode.stat().st_mtime_ns, bytecode.stat().st_ino) == compiled
    assert (tmp_path / "second" / "stdout").read_text() == "two\n"
    record = json.loads((tmp_path / "second" / task_job.EXIT_FILE).read_text())
    assert record["returncode"] == 0 and record["killed"] is False


def test_a_cache_that_cannot_be_written_only_costs_time(tmp_path: Path):
    # (a __pycache__ that is no directory: Python cannot write there, root or not, as where
    # a worker mounts the run root read-only; shipping would refuse it, so it comes after)
    library = Path(task_job.ship(tmp_path / ".corra"))
    (library / "__pycache__").rmdir()
    (library / "__pycache__").write_text("not a directory")
    for name in ("first", "second"):
        assert run_task(tmp_path, library, name, ["sh", "-c", "echo ran; exit 3"]) == (3, "")
        assert (tmp_path / name / "stdout").read_text() == "ran\n"
        assert json.loads((tmp_path / name / task_job.EXIT_FILE).read_text())["returncode"] == 3
    assert (library / "__pycache__").read_text() == "not a directory"


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes to a read-only directory")
def test_a_read_only_library_only_costs_time(tmp_path: Path):
    library = Path(task_job.ship(tmp_path / ".corra"))
    (library / "__pycache__").rmdir()
    library.chmod(0o500)
    try:
        assert run_task(tmp_path, library, "run", ["sh", "-c", "echo ran"]) == (0, "")
    finally:
        library.chmod(0o700)
    assert (tmp_path / "run" / "stdout").read_text() == "ran\n"
    assert not (library / "__pycache__").exists()


def test_a_library_without_the_wrapper_runs_nothing_and_says_so(tmp_path: Path):
    # (a run root the workers do not share, or one cleaned under corra)
    library = tmp_path / "elsewhere"
    library.mkdir()
    program = ["sh", "-c", f"echo ran > {tmp_path / 'ledger'}"]
    status, stderr = run_task(tmp_path, library, "run", program)
    assert status == task_job.FAILED
    assert stderr == (f"corra task: {library}: No module named '{task_job.module_name()}'\n")
    assert not (tmp_path / "ledger").exists() and list((tmp_path / "run").iterdir()) == []


def test_a_library_others_may_write_is_refused(tmp_path: Path):
    # (every task runs the module of a name anyone can tell: planted there, it would run)
    library = tmp_path / ".corra"
    library.mkdir()
    library.chmod(0o777)
    with pytest.raises(PermissionError, match=r"group or others may write it \(mode 777\)"):
        task_job.ship(library)
    assert list(library.iterdir()) == []


def test_a_module_that_is_a_link_is_refused(tmp_path: Path):
    library = Path(task_job.ship(tmp_path / ".corra"))
    module = library / f"{task_job.module_name()}.py"
    (tmp_path / "elsewhere.py").write_text(task_job.source())
    module.unlink()
    module.symlink_to(tmp_path / "elsewhere.py")
    with pytest.raises(PermissionError, match="not a file"):
        task_job.ship(library)


@pytest.mark.skipif(os.geteuid() != 0, reason="only root gives a file away")
def test_a_module_of_another_user_is_refused(tmp_path: Path):
    library = Path(task_job.ship(tmp_path / ".corra"))
    module = library / f"{task_job.module_name()}.py"
    os.chown(module, 65534, -1)
    with pytest.raises(PermissionError, match="owned by uid 65534, not by you"):
        task_job.ship(library)
    os.chown(library / "__pycache__", 65534, -1)
    module.unlink()
    with pytest.raises(PermissionError, match="__pycache__"):
        task_job.ship(library)

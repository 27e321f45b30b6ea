"""The README runs as written: its Python examples, its job files, and every shell block, in
order, as a new user on a fresh clone would type them."""

from __future__ import annotations

import contextlib
import fcntl
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import attrs
import pytest

ROOT = Path(__file__).resolve().parent.parent
README = ROOT / "README.md"


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
    with_jobs = [job for job in jobs if job.jobs]
    assert [sorted(job.jobs) for job in with_jobs] == [["pipeline"]]
    pipeline = with_jobs[0].jobs["pipeline"]
    assert [step.name for step in pipeline.steps] == ["prepare", "work", "report"]


def test_the_readme_job_is_the_example_file():
    """The README shows examples/jobs.toml, and its shell block runs that file."""
    blocks = re.findall(r"```toml\n(.*?)```", README.read_text(), flags=re.S)
    example = (ROOT / "examples" / "jobs.toml").read_text()
    assert example in blocks, "the README's [[job]] example differs from examples/jobs.toml"


# -- the shell blocks ------------------------------------------------------------------------
#
# Every ```sh, ```bash and ```console block of the README runs, in order, each in a fresh
# `bash -eo pipefail` (a failing command fails its block) from the top of a scratch copy of
# the repository: the files a fresh clone has, as they are in the work tree. A block that is
# not meant to run says so in an HTML comment on the line before it,
# ``<!-- readme-test: skip: REASON -->``; there must be very few. In a ```console block, the
# lines that start with ``$ `` are the commands (the rest is their output, not checked).
#
# The scratch copy's ``.venv`` is this test's venv (a symlink), and ``make`` is told that the
# venv is made already (``-o``), so ``make run`` runs corra without installing anything: the
# test works offline, and never reinstalls the venv it runs in. ``make test`` is the one block
# that must not run here: it runs the whole test suite, this test included.
#
# The blocks start ``corra serve`` on its default address (127.0.0.1:7878): two runs of this
# test at once (two work trees on one machine) would meet there, so they take turns (a lock
# file). Each block runs in a session of its own, which the test ends at the end (the
# service, left running in the background by its block, goes with it).

SHELL_LANGUAGES = ("sh", "bash", "console")
SKIP = re.compile(r"<!--\s*readme-test:\s*skip:\s*(?P<reason>.+?)\s*-->")
FENCE = re.compile(r"^```(?P<language>[\w-]*)[^\n]*\n(?P<body>.*?)^```\s*$", re.S | re.M)
#: Seconds one block may take.
BLOCK_TIMEOUT = 180
#: The most blocks that may be marked as not run.
MAX_SKIPPED = 2

#: What some blocks print: {a command the block has: [text its output must contain]}. Each
#: must name exactly one block, so that a README that loses the command fails here.
EXPECTED = {
    "make run ": ["done: 5 finished"],
    "corra ps                  #": [
        "hello",
        "counter",
        "flaky",
        "fan-out",
        "env",
        "finished",
        "processes: ",  # (the footer of counts per phase)
    ],
    "corra show flaky": ["flaky (", "finished, attempt 2", "retry"],
    "corra logs counter": ["tick 1\ntick 2\ntick 3\ntick 4\ntick 5\n"],
    "corra ps -a --json": ['"phase": "finished"', '"next_cursor": null'],
    "corra run -- sh -c 'echo one-off'": ["finished: exited with 0", "done: 1 finished"],
    "examples/supervision.py": ["crash 1", "the runtime stopped"],
    "corra show steps": ["80% step 4 of 4", "last status: 80% step 4 of 4 (at "],
    "corra serve &": [],
    "corra rerun again": ["): rerun as attempt 2", "finished, attempt 2", "): removed"],
    "$API/v1/health": [
        '{"status":',
        '"name":"greeting"',
        '"text": "hi 3\\n"',
        '"name":"nap"',
        '"phase":"paused"',
        '"phase":"killed"',
        "corra_processes{",
    ],
    "corra run examples/jobs.toml --job pipeline --run-name first": [
        "prepare: finished",
        "work: expanded (3 items)",
        "work[2]: finished",
        'finished; result: {"samples":3,"total":60}',
        "pipeline first (",
        "[*] work: expanded (3 items: 3 finished)",
        "[+] report: finished",
        "{'samples': 5, 'total': 100}",
    ],
    "corra pause ticker": [
        ": submitted",
        "hello (",
        "exists already (finished)",
        "tick 5",
        "ticker (",
        ": paused",
        '"phase": "killed"',
    ],
}


@attrs.frozen
class Block:
    line: int
    language: str
    text: str
    skip: str | None

    @property
    def script(self) -> str:
        if self.language != "console":
            return self.text
        return "".join(line[2:] + "\n" for line in self.text.splitlines() if line.startswith("$ "))


def shell_blocks(readme: str) -> list[Block]:
    """The README's shell blocks, in order, each with the reason it is skipped (or None)."""
    blocks = []
    for match in FENCE.finditer(readme):
        if match["language"] not in SHELL_LANGUAGES:
            continue
        before = readme[: match.start()].rstrip("\n").rpartition("\n")[2]
        skip = SKIP.search(before)
        line = readme.count("\n", 0, match.start()) + 1
        blocks.append(
            Block(line, match["language"], match["body"], skip["reason"] if skip else None)
        )
    return blocks


def test_the_readme_convention_finds_its_blocks():
    text = "\n".join(
        [
            "```sh",
            "echo one",
            "```",
            "<!-- readme-test: skip: not here -->",
            "```bash",
            "echo two",
            "```",
            "```python",
            "print(3)",
            "```",
            "```console",
            "$ echo four",
            "four",
            "```",
            "",
        ]
    )
    blocks = shell_blocks(text)
    assert [(b.language, b.script, b.skip) for b in blocks] == [
        ("sh", "echo one\n", None),
        ("bash", "echo two\n", "not here"),
        ("console", "echo four\n", None),
    ]


def scratch_clone(destination: Path) -> Path:
    """The files a fresh clone has, as the work tree has them now, copied to ``destination``,
    with this test's venv as its ``.venv``."""
    listed = subprocess.run(
        ["git", "-C", str(ROOT), "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
        capture_output=True,
        check=False,
    )
    if listed.returncode == 0:
        for name in filter(None, listed.stdout.decode().split("\0")):
            source = ROOT / name
            if source.is_file():  # (a file deleted but not yet committed is not)
                target = destination / name
                target.parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(source, target)
    else:  # not a git work tree (an unpacked archive): everything but what is made
        shutil.copytree(
            ROOT,
            destination,
            ignore=shutil.ignore_patterns(
                ".git", ".venv", ".corra", "__pycache__", "*.egg-info", ".*_cache", ".hypothesis"
            ),
        )
    (destination / ".venv").symlink_to(sys.prefix, target_is_directory=True)
    return destination


def make_shim(directory: Path) -> Path:
    """A ``make`` that treats the venv as made: its rules (create, pip install) never run."""
    made = [".venv/bin/python", *(f".venv/.installed-{extra}" for extra in ("base", "test"))]
    real = shutil.which("make")
    assert real is not None
    directory.mkdir()
    shim = directory / "make"
    options = " ".join(f"-o {target}" for target in made)
    # (VENV on the command line: a VENV in the environment would point make elsewhere)
    shim.write_text(f'#!/bin/sh\nexec {real} {options} VENV=.venv "$@"\n')
    shim.chmod(0o700)
    return directory


@contextlib.contextmanager
def taking_turns() -> Iterator[None]:
    """One run of the README at a time on this machine (it serves on a fixed port)."""
    path = Path(tempfile.gettempdir()) / f"corra-readme-test-{os.getuid()}.lock"
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


@pytest.mark.slow
@pytest.mark.skipif(shutil.which("make") is None, reason="needs make")
@pytest.mark.skipif(shutil.which("curl") is None, reason="needs curl")
@pytest.mark.skipif(
    not (Path(sys.prefix) / "bin" / "corra").exists(), reason="needs corra installed in a venv"
)
def test_every_shell_block_of_the_readme_runs_in_order(tmp_path):
    blocks = shell_blocks(README.read_text())
    skipped = [block for block in blocks if block.skip]
    assert len(skipped) <= MAX_SKIPPED, f"too many blocks not run: {skipped}"
    assert any("make test" in block.text for block in skipped), "make test must not run here"
    for key in EXPECTED:
        named = [block.line for block in blocks if key in block.text]
        assert len(named) == 1, f"{key!r} should name one block of the README, names {named}"

    clone = scratch_clone(tmp_path / "corra")
    env = {
        name: value
        for name, value in os.environ.items()
        if name
        not in ("CORRA_STATE_DIR", "CORRA_URL", "CORRA_TOKEN", "MAKEFLAGS", "MFLAGS", "MAKELEVEL")
    }
    env["PATH"] = f"{make_shim(tmp_path / 'bin')}{os.pathsep}{env.get('PATH', '')}"
    sessions: list[int] = []
    with taking_turns():
        try:
            for number, block in enumerate(blocks):
                if block.skip:
                    continue
                out = run_shell_block(clone, tmp_path, number, block, env, sessions)
                # (a new user's first look at corra: no tracebacks, no library's warnings)
                for noise in ("Traceback", "Warning:"):
                    assert noise not in out, f"README line {block.line}: {noise} in\n{out}"
                for key, wanted in EXPECTED.items():
                    if key in block.text:
                        for text in wanted:
                            assert text in out, (
                                f"README line {block.line}: {text!r} not in the output of\n"
                                f"{block.text}\n--- it printed:\n{out}"
                            )
        finally:
            for session in sessions:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(session, signal.SIGTERM)
            wait_until_gone(sessions)


def run_shell_block(
    clone: Path,
    tmp_path: Path,
    number: int,
    block: Block,
    env: dict[str, str],
    sessions: list[int],
) -> str:
    """Run one block; its output (stdout and stderr). Its output goes to a file, not a pipe:
    a program it leaves in the background (the service) would keep a pipe open."""
    script = tmp_path / f"block-{number}.sh"
    script.write_text(block.script)
    output = tmp_path / f"block-{number}.out"
    with open(output, "wb") as sink:
        shell = subprocess.Popen(
            ["bash", "-eo", "pipefail", str(script)],
            cwd=clone,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=sink,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    sessions.append(shell.pid)
    try:
        status = shell.wait(timeout=BLOCK_TIMEOUT)
    except subprocess.TimeoutExpired:
        status = None
    out = output.read_text(errors="replace")
    assert status == 0, (
        f"README line {block.line}: the block "
        + ("timed out" if status is None else f"exited with {status}")
        + f":\n{block.text}\n--- it printed:\n{out}"
    )
    return out


def wait_until_gone(sessions: list[int], patience: float = 30.0) -> None:
    """Until no process of ``sessions`` is left (SIGKILL for what outstays ``patience``)."""
    deadline = time.monotonic() + patience
    while True:
        left = [session for session in sessions if _session_alive(session)]
        if not left:
            return
        if time.monotonic() > deadline:
            for session in left:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(session, signal.SIGKILL)
            return
        time.sleep(0.1)


def _session_alive(session: int) -> bool:
    try:
        os.killpg(session, 0)
    except ProcessLookupError:
        return False
    return True

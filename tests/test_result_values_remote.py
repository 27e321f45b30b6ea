"""A program's result value ($CORRA_RESULT) through the whole runtime on remote backends:
a real sshd (the remote helper's own chaperone) and a real Slurm (the job's wrapper). A
value larger than a read of the ssh backend (1 MiB) comes home whole, kept as a file."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import _slurm
import _sshd
import pytest
import trio
from test_slurm_processes import cluster, here  # noqa: F401 (a fixture)

from corra._runtime import open_runtime
from corra.processes._values import VALUE_LIMIT

pytestmark = pytest.mark.slow

#: Writes a dict to $CORRA_RESULT (a shell's printf: the hosts' Python is not needed).
SMALL = [
    "sh",
    "-c",
    'printf \'{"host": "%s", "n": [1, 2]}\' "$CORRA_PROCESS_NAME" > "$CORRA_RESULT"',
]


def large(size: int) -> list[str]:
    """Writes a JSON string of ``size`` x's (and its quotes) to $CORRA_RESULT."""
    return [
        "sh",
        "-c",
        f"{{ printf '\"'; head -c {size} /dev/zero | tr '\\0' x; printf '\"'; }}"
        ' > "$CORRA_RESULT"',
    ]


async def test_values_of_remote_programs_over_ssh_small_and_larger_than_a_read(
    sshd: _sshd.Sshd, tmp_path: Path
) -> None:
    host = sshd.host_config("far", work_root=f"corra-tests/values-{os.getpid()}")
    size = 3 * (1 << 20) + 5  # (three reads and a bit)
    async with open_runtime(state_dir=tmp_path / "state", hosts={"far": host}) as rt:
        small = await rt.spawn_process(SMALL, name="small", backend="ssh", host="far")
        big = await rt.spawn_process(large(size), name="big", backend="ssh", host="far")
        silent = await rt.spawn_process(["true"], name="silent", backend="ssh", host="far")
        with trio.fail_after(60):
            for ref in (small, big, silent):
                assert (await ref.wait()).phase == "finished", ref.record().state.reason
        assert small.result is not None
        assert small.result.value == {"host": "small", "n": [1, 2]}
        assert big.result is not None and big.result.has_value and big.result.value is None
        kept = Path(str(big.result.value_file))
        assert kept.stat().st_size == size + 2
        assert await big.value() == "x" * size
        assert silent.result is not None and not silent.result.has_value
        await rt.processes.remove("big")
        assert not kept.exists()


async def test_values_of_slurm_jobs(cluster: _slurm.SlurmCluster, tmp_path: Path) -> None:  # noqa: F811
    host = here(cluster, tmp_path / "jobs")
    async with open_runtime(state_dir=tmp_path / "state", hosts={"here": host}) as rt:
        small = await rt.spawn_process(SMALL, name="small", backend="slurm", host="here")
        big = await rt.spawn_process(large(VALUE_LIMIT), name="big", backend="slurm", host="here")
        bad = await rt.spawn_process(
            [sys.executable, "-c", "import os; open(os.environ['CORRA_RESULT'], 'w').write('{x')"],
            name="bad",
            backend="slurm",
            host="here",
        )
        with trio.fail_after(90):
            for ref in (small, big, bad):
                assert (await ref.wait()).phase == "finished", ref.record().state.reason
        assert small.result is not None
        assert small.result.value == {"host": "small", "n": [1, 2]}
        assert big.result is not None and big.result.value_file is not None
        assert json.loads(Path(big.result.value_file).read_bytes()) == "x" * VALUE_LIMIT
        assert bad.result is not None and not bad.result.has_value
        assert "line 1, column 2" in str(bad.result.value_error)

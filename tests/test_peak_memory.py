"""``maxrss`` is the program's own peak resident set, never its chaperone's: real programs,
both kinds of chaperone, with a memory cgroup of their own and without."""

from __future__ import annotations

import contextlib
import json
import os
import sys
from pathlib import Path

import pytest
import trio
from _local import Local
from _local import Spec as LaunchSpec

from corra._runtime import open_runtime
from corra.chaperone import _cgroups, _proc, _run

MIB = 1 << 20
#: Allocates 200 MiB and touches every page of it.
TOUCH_200_MIB = "b = bytearray(200 << 20); b[::4096] = bytes(len(b) // 4096)"


@pytest.fixture(params=["shared", "own"])
async def backend(tmp_path: Path, request: pytest.FixtureRequest):
    async with Local(tmp_path / "runs", chaperone=request.param) as backend:
        yield backend
    with contextlib.suppress(OSError, ValueError):
        os.kill(json.loads((tmp_path / "runs" / ".chaperone.pid").read_text())["pid"], 15)


@pytest.fixture(params=[None, 1 << 30], ids=["no-memory-cgroup", "memory-cgroup"])
def memory_limit(request: pytest.FixtureRequest, backend: Local) -> int | None:
    if request.param is not None and backend.cgroups.memory is None:
        pytest.skip(f"no writable memory cgroup here: {backend.cgroups}")
    return request.param


async def test_maxrss_of_true_is_never_the_chaperones(backend: Local, memory_limit: int | None):
    handle = await backend.launch("true.1", LaunchSpec(argv=("true",), memory_limit=memory_limit))
    record = await backend.wait(handle)
    assert record.returncode == 0
    # /usr/bin/time says about 1 MB; the chaperone is 10 to 20 MB: unknown is the honest
    # answer where no cgroup measured the program alone.
    assert record.maxrss is None or record.maxrss < 5 * MIB, record


async def test_maxrss_of_a_program_that_touches_200_mib_is_its_own(
    backend: Local, memory_limit: int | None
):
    spec = LaunchSpec(argv=(sys.executable, "-c", TOUCH_200_MIB), memory_limit=memory_limit)
    handle = await backend.launch("big.1", spec)
    record = await backend.wait(handle)
    assert record.returncode == 0
    assert record.maxrss is not None
    assert 200 * MIB <= record.maxrss <= 220 * MIB, record.maxrss / MIB


async def test_the_process_record_says_unknown_rather_than_the_chaperones_size(tmp_path: Path):
    state = tmp_path / "state"
    try:
        async with open_runtime(state_dir=state) as rt:
            small = await (await rt.spawn_process(["true"], name="small")).wait()
            big = await (await rt.spawn_process([sys.executable, "-c", TOUCH_200_MIB])).wait()
    finally:
        with contextlib.suppress(OSError, ValueError):
            os.kill(json.loads((state / "runs" / ".chaperone.pid").read_text())["pid"], 15)
    assert small.state.result is not None and big.state.result is not None
    kilobytes = small.state.result.maxrss_kb
    assert kilobytes is None or kilobytes < 5 * 1024
    show = await trio.run_process(
        [sys.executable, "-m", "corra.cli", "--state-dir", str(state), "show", "small"],
        capture_stdout=True,
    )
    said = "maxrss unknown" if kilobytes is None else f"maxrss {kilobytes} KiB"
    assert said in show.stdout.decode()
    assert big.state.result.maxrss_kb is not None
    assert 200 * 1024 <= big.state.result.maxrss_kb <= 220 * 1024


# the choice, on stand-in cgroup directories (no v2 memory controller on every machine) -------


def test_a_pooled_cgroup_tells_its_peak_only_to_its_first_program(tmp_path: Path):
    pool = _cgroups.CgroupPool("1.2")
    path = pool._take(str(tmp_path), "@x")
    (Path(path) / "memory.peak").write_text("123456\n")
    first = _cgroups.PooledCgroup(pool, path, ())
    assert first.peak() == 123456
    pool.release(path)
    assert pool._take(str(tmp_path), "@x") == path  # reused
    assert _cgroups.PooledCgroup(pool, path, ()).peak() is None  # the highest of both


def test_a_cgroup_made_for_the_program_tells_its_peak(tmp_path: Path):
    unified, memory = tmp_path / "unified", tmp_path / "memory"
    cgroups = _cgroups.Cgroups([{"path": str(unified / "k")}, {"path": str(memory / "k")}])
    assert cgroups.peak() is None
    (memory / "k" / "memory.max_usage_in_bytes").write_text("7000000\n")  # v1
    assert cgroups.peak() == 7000000


def test_wait4s_maxrss_counts_only_above_the_chaperones_own_high_water_mark():
    own = _proc.own_peak()
    assert own is not None and own > MIB

    class Usage:
        def __init__(self, kilobytes: int) -> None:
            self.ru_maxrss = kilobytes

    assert _run.program_peak(Usage(own // 1024), None) is None  # could be ours
    assert _run.program_peak(Usage(own // 1024 + 1), None) == own + 1024

"""The fresh interpreter of ``paused_memory`` (suite ``process``), and the records it counts.

Run as ``python _process_memory.py MODE STATE_DIR COUNT``; it prints one JSON object: the
memory lines of /proc/self/status (``VmRSS``, ``RssAnon``, ``RssFile``, in bytes), the number
of inactive (paused or terminal) processes the runtime's recovery counted, and the seconds
``open_runtime`` took to open the store and recover (``recovery_s``). Every mode runs the same
code up to the point where they differ, so that their figures can be subtracted:

- ``runtime``: ``open_runtime(state_dir=STATE_DIR)``, which recovers what is there (COUNT paused
  processes, or none for the empty runtime); memory once recovery has finished.
- ``in-memory``: the same on an empty state dir, then COUNT paused records built and kept in a
  dict, as a runtime that held its paused processes in memory would (at the very least).

This file imports nothing of ``benchmarks``: run as a script, it stays as lean as a runtime.
"""

from __future__ import annotations

import gc
import json
import sys
import time

import trio
import trio.testing

from corra._runtime import open_runtime
from corra.processes._lifecycle import ProcessState
from corra.processes._record import ProcessRecord
from corra.processes._spec import ProcessSpec

#: Epoch seconds of the first record; record n was created and paused n seconds later.
EPOCH = 1_750_000_000.0


def paused_record(number: int) -> ProcessRecord:
    """Process ``number``, paused before it ever launched (about 400 bytes encoded)."""
    at = EPOCH + number
    return ProcessRecord(
        id=f"p{number:09d}",
        spec=ProcessSpec(
            argv=("python", "sim.py", f"case-{number:06d}.toml"),
            cwd=f"/home/ana/runs/{number:06d}",
        ),
        state=ProcessState(
            phase="paused", paused_from="created", reason="paused on request", updated_at=at
        ),
        created_at=at,
    )


def memory() -> dict[str, int]:
    """The resident set of this process, from /proc/self/status, in bytes."""
    figures = {}
    with open("/proc/self/status") as status:
        for line in status:
            name, _, value = line.partition(":")
            if name in ("VmRSS", "RssAnon", "RssFile", "RssShmem"):
                figures[name] = int(value.split()[0]) * 1024
    return figures


async def measure(mode: str, state_dir: str, count: int) -> dict[str, float]:
    started = time.perf_counter()
    async with open_runtime(state_dir=state_dir) as runtime:
        recovery_s = time.perf_counter() - started
        assert runtime.recovery is not None
        kept = {}
        if mode == "in-memory":
            for number in range(count):
                record = paused_record(number)
                kept[record.id] = record
        elif mode != "runtime":
            raise SystemExit(f"unknown mode {mode!r}")
        await trio.testing.wait_all_tasks_blocked()
        gc.collect()
        figures: dict[str, float] = {**memory()}
        figures["inactive"] = runtime.recovery.inactive
        figures["kept"] = len(kept)
        figures["recovery_s"] = recovery_s
    return figures


if __name__ == "__main__":
    mode, state_dir, count = sys.argv[1], sys.argv[2], int(sys.argv[3])
    print(json.dumps(trio.run(measure, mode, state_dir, count)))

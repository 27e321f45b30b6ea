"""The one read model (`corra.processes._query`): a live runtime and a state dir read without
one list, page, show and follow processes alike."""

from __future__ import annotations

import subprocess
import sys

import trio

from corra._readonly import open_state_query
from corra._runtime import open_runtime
from corra.backends.recorded import recorded
from corra.processes._listing import Selection
from corra.processes._query import ProcessQuery

CORRA = [sys.executable, "-m", "corra.cli"]


async def test_a_live_runtime_and_its_state_dir_list_and_page_alike(tmp_path):
    state = tmp_path / "state"
    filters = [
        (Selection(), 100),
        (Selection(phases=("finished",)), 100),
        (Selection(phases=("failed",)), 100),
        (Selection(labels=(("team", "a"),)), 100),
        (Selection(name="p3"), 100),
        (Selection(), 2),
        (Selection(labels=(("team", "b"),)), 2),
    ]

    async def pages(query: ProcessQuery) -> list[tuple[list[str], str | None]]:
        seen = []
        for selection, limit in filters:
            page = await query.list(selection, limit=limit)
            seen.append(([view.record.id for view in page.items], page.next_cursor))
            if page.next_cursor is not None:  # and the page after it
                page = await query.list(selection, cursor=page.next_cursor, limit=limit)
                seen.append(([view.record.id for view in page.items], page.next_cursor))
        return seen

    async with open_runtime(state_dir=state) as rt:
        manager = rt.processes
        for index in range(6):
            argv = ["true"] if index % 3 else ["false"]
            team = "a" if index % 2 else "b"
            await rt.spawn_process(argv, name=f"p{index}", labels={"team": team})
        for record in manager.list():
            await manager.wait(record.id)
        live = await pages(ProcessQuery.of_manager(manager, lambda r: recorded(state, r)))
        every = [record.id for record in manager.list()]
    async with open_state_query(state) as query:
        from_state_dir = await pages(query)
        shown = await query.show("p3")
    assert from_state_dir == live
    assert live[0] == (every, None)
    assert live[-2][0] == every[0:4:2] and live[-1][0] == every[4:6:2]
    assert shown.record.name == "p3"
    assert shown.history is not None and shown.history[0].event == "submit"


def test_logs_read_without_a_service_are_the_bytes_the_program_wrote(tmp_path):
    state = tmp_path / "state"
    program = "import sys; sys.stdout.buffer.write(b'caf\\xc3\\xa9 \\xff\\xfe ok\\n')"
    command = [*CORRA, "--state-dir", str(state), "run", "--name", "raw"]
    ran = subprocess.run(
        [*command, "--", sys.executable, "-c", program],
        capture_output=True,
        timeout=120,
        check=False,
    )
    assert ran.returncode == 0, ran.stderr
    logs = subprocess.run(
        [*CORRA, "--state-dir", str(state), "logs", "raw"],
        capture_output=True,
        timeout=60,
        check=False,
    )
    assert (logs.returncode, logs.stdout) == (0, b"caf\xc3\xa9 \xff\xfe ok\n"), logs.stderr


async def test_a_follow_from_the_state_dir_ends_with_the_program(tmp_path):
    """Without a runtime, the record says running long after the program ended: what its
    chaperone recorded ends the follow."""
    state = tmp_path / "state"
    async with open_runtime(state_dir=state) as rt:
        ref = await rt.spawn_process(["sh", "-c", "echo one; sleep 1; echo two"], name="w")
        with trio.fail_after(30):
            while rt.processes.get(ref.id).phase != "running":
                await trio.sleep(0.02)
    # (the runtime is gone, its program goes on under its chaperone)
    async with open_state_query(state) as query:
        record = query.get("w")
        assert record.phase == "running"
        with trio.fail_after(30):
            entries = query.follow_logs(
                record.id, stream="stdout", attempt=1, offset=0, follow=True
            )
            text = "".join([entry.text async for entry in entries])
    assert text == "one\ntwo\n"

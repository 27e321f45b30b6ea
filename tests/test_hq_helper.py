"""The HyperQueue helper process and its trio client, against a real server and worker.

The session's server (`hq_server`) serves the tests that leave it as they found it; those that
stop, pause or kill a server use one of their own (`fresh_hq_server`).
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import sys
from pathlib import Path
from typing import Any

import _hq
import hyperqueue
import pytest
import trio
import trio.testing

from corra._errors import BackendError, HostUnavailable
from corra.backends.hyperqueue._client import HqHelper, open_helper

pytestmark = pytest.mark.slow

FINAL = {"finished", "failed", "canceled"}


def job(args: list[str], cwd: Path, **fields: Any) -> dict[str, Any]:
    return {"name": "corra-test", "args": args, "env": {}, "cwd": str(cwd), **fields}


async def final_state(helper: HqHelper, job_id: int) -> str:
    """Poll until the job is over (within 30 s); its state."""
    with trio.fail_after(30):
        while True:
            answer = await helper.call("poll", job_ids=[job_id])
            state = answer["jobs"][str(job_id)]["state"]
            if state in FINAL:
                return state
            await trio.sleep(0.05)


async def dead(helper: HqHelper) -> None:
    """Wait until the helper's process has exited (all its threads: its pipes are closed)."""
    with trio.fail_after(10):
        while helper.pid is not None:
            await trio.sleep(0.01)


async def pause(pid: int) -> None:
    """SIGSTOP the process and wait until every thread of it is stopped: it answers nothing."""
    os.kill(pid, signal.SIGSTOP)
    with trio.fail_after(10):
        while True:
            states = []
            for task in Path(f"/proc/{pid}/task").iterdir():
                with contextlib.suppress(FileNotFoundError):  # a thread that just ended
                    states.append((task / "stat").read_text().rpartition(")")[2].split()[0])
            if all(state in "tT" for state in states):
                return
            await trio.sleep(0.01)


async def test_hello_names_the_server(hq_server: _hq.HqServer) -> None:
    access = json.loads((hq_server.server_dir / "hq-current" / "access.json").read_text())
    async with open_helper("hq", hq_server.server_dir) as helper:
        answer = await helper.call("hello")
    assert answer == {
        "uid": access["server_uid"],
        "version": hyperqueue.get_version(),
        "server_dir": str(hq_server.server_dir),
    }


async def test_a_program_runs_until_finished(hq_server: _hq.HqServer, tmp_path: Path) -> None:
    fields = {"stdout": str(tmp_path / "out"), "stderr": str(tmp_path / "err")}
    fields["env"] = {"GREETING": "hello there"}
    script = 'echo "$GREETING from $(pwd) asking $HQ_RESOURCE_REQUEST_cpus"; echo oops >&2'
    async with open_helper("hq", hq_server.server_dir) as helper:
        submitted = await helper.call("submit", job=job(["sh", "-c", script], tmp_path, **fields))
        assert await final_state(helper, submitted["job_id"]) == "finished"
        uid = (await helper.call("hello"))["uid"]
    assert submitted["uid"] == uid
    assert (tmp_path / "out").read_text() == f"hello there from {tmp_path} asking 1 compact\n"
    assert (tmp_path / "err").read_text() == "oops\n"


async def test_cpus_resources_and_min_time_reach_the_server(
    hq_server: _hq.HqServer, tmp_path: Path
) -> None:
    # HQ_CPUS lists the cores given (their ids, separated by commas).
    script = 'echo "$HQ_RESOURCE_REQUEST_cpus:$HQ_CPUS" | tr , " "'
    spec = job(["sh", "-c", script], tmp_path, stdout=str(tmp_path / "out"), stderr=None)
    async with open_helper("hq", hq_server.server_dir) as helper:
        fits = await helper.call("submit", job={**spec, "cpus": "2 compact", "min_time": 5})
        assert await final_state(helper, fits["job_id"]) == "finished"
        # A resource no worker has: the job waits (and is not over, so forget leaves it).
        waits = await helper.call("submit", job={**spec, "resources": {"gpus": 1}})
        await trio.sleep(0.5)
        answer = await helper.call("poll", job_ids=[waits["job_id"]])
        assert answer["jobs"] == {str(waits["job_id"]): {"state": "waiting"}}
        forgot = await helper.call("forget", job_ids=[fits["job_id"], waits["job_id"], 999999])
        assert forgot["forgotten"] == [fits["job_id"]]
        answer = await helper.call("poll", job_ids=[fits["job_id"], waits["job_id"]])
        assert list(answer["jobs"]) == [str(waits["job_id"])]
    request, cores = (tmp_path / "out").read_text().split(":")
    assert (request, len(cores.split())) == ("2 compact", 2)


async def test_a_failing_program_is_failed_with_its_message(
    hq_server: _hq.HqServer, tmp_path: Path
) -> None:
    async with open_helper("hq", hq_server.server_dir) as helper:
        bad = await helper.call("submit", job=job(["sh", "-c", "exit 3"], tmp_path))
        missing = await helper.call(
            "submit", job=job([str(tmp_path / "no-such-program")], tmp_path)
        )
        good = await helper.call("submit", job=job(["true"], tmp_path))
        ids = [bad["job_id"], missing["job_id"], good["job_id"]]
        assert [await final_state(helper, i) for i in ids] == ["failed", "failed", "finished"]
        answer = await helper.call("failed", job_ids=[*ids, 999999])
    assert set(answer["tasks"]) == {str(bad["job_id"]), str(missing["job_id"])}
    assert answer["tasks"][str(bad["job_id"])] == "Program terminated with exit code 3."
    assert "no-such-program" in answer["tasks"][str(missing["job_id"])]
    assert "Stack backtrace" not in answer["tasks"][str(missing["job_id"])]


async def test_unknown_ids_are_missing_from_a_poll(hq_server: _hq.HqServer, tmp_path: Path) -> None:
    async with open_helper("hq", hq_server.server_dir) as helper:
        known = (await helper.call("submit", job=job(["true"], tmp_path)))["job_id"]
        answer = await helper.call("poll", job_ids=[known, 999998, 999999])
        assert list(answer["jobs"]) == [str(known)]
        assert (await helper.call("poll", job_ids=[999999]))["jobs"] == {}
        assert (await helper.call("poll", job_ids=[]))["jobs"] == {}


async def test_200_jobs_are_polled_in_one_request(hq_server: _hq.HqServer, tmp_path: Path) -> None:
    async with open_helper("hq", hq_server.server_dir) as helper:
        ids = [
            (await helper.call("submit", job=job(["true"], tmp_path)))["job_id"] for _ in range(200)
        ]
        assert helper.polls == 0
        answer = await helper.call("poll", job_ids=ids)
        assert helper.polls == 1
    assert sorted(int(i) for i in answer["jobs"]) == sorted(ids)
    assert {state["state"] for state in answer["jobs"].values()} <= {"waiting", "finished"}


async def test_a_stopped_server_is_unavailable(
    fresh_hq_server: _hq.HqServer, tmp_path: Path
) -> None:
    async with open_helper("hq", fresh_hq_server.server_dir) as helper:
        job_id = (await helper.call("submit", job=job(["true"], tmp_path)))["job_id"]
        fresh_hq_server.stop()
        for op, fields in [
            ("poll", {"job_ids": [job_id]}),  # the connection is lost
            ("submit", {"job": job(["true"], tmp_path)}),  # no server to connect to
            ("hello", {}),
        ]:
            with pytest.raises(HostUnavailable) as caught:
                await helper.call(op, **fields)
            assert caught.value.host == "hq"
        assert helper.starts == 1  # the helper itself lives on
    with pytest.raises(HostUnavailable, match="not a directory"):
        async with open_helper("hq", tmp_path / "nowhere") as helper:
            await helper.call("hello")


async def test_a_server_started_again_at_the_dir_answers_with_its_new_uid(
    fresh_hq_server: _hq.HqServer, tmp_path: Path
) -> None:
    async with open_helper("hq", fresh_hq_server.server_dir) as helper:
        first = await helper.call("submit", job=job(["true"], tmp_path))
        fresh_hq_server.stop()
        again = _hq.start_server(fresh_hq_server.server_dir.parent)
        try:
            with pytest.raises(HostUnavailable, match="connection lost"):
                await helper.call("poll", job_ids=[first["job_id"]])
            # The next call connects to the new server: its job ids start from 1 again,
            # and only the uid tells its answers from the old one's.
            answer = await helper.call("poll", job_ids=[first["job_id"]])
            assert answer["jobs"] == {}
            assert answer["uid"] != first["uid"]
            second = await helper.call("submit", job=job(["true"], tmp_path))
            assert second["job_id"] == first["job_id"]
            assert second["uid"] == answer["uid"] == (await helper.call("hello"))["uid"]
        finally:
            again.stop()


async def test_a_call_in_flight_when_the_helper_dies_is_unavailable(
    fresh_hq_server: _hq.HqServer, tmp_path: Path
) -> None:
    async with open_helper("hq", fresh_hq_server.server_dir) as helper:
        job_id = (await helper.call("submit", job=job(["true"], tmp_path)))["job_id"]
        pid = helper.pid
        assert pid is not None
        try:
            await pause(fresh_hq_server.pid)  # the poll waits for the server
            async with trio.open_nursery() as nursery:

                async def in_flight() -> None:
                    with pytest.raises(HostUnavailable, match="helper failed"):
                        await helper.call("poll", job_ids=[job_id])

                nursery.start_soon(in_flight)
                await trio.testing.wait_all_tasks_blocked()
                os.kill(pid, signal.SIGKILL)
        finally:
            os.kill(fresh_hq_server.pid, signal.SIGCONT)
        assert await final_state(helper, job_id) == "finished"  # through a new helper
        assert helper.starts == 2


async def test_a_server_of_another_version_is_unavailable_and_says_so(
    hq_server: _hq.HqServer, tmp_path: Path
) -> None:
    access = json.loads((hq_server.server_dir / "hq-current" / "access.json").read_text())
    (tmp_path / "001").mkdir()
    (tmp_path / "001" / "access.json").write_text(json.dumps({**access, "version": "v0.26.0"}))
    (tmp_path / "hq-current").symlink_to(tmp_path / "001")
    async with open_helper("hq", tmp_path) as helper:
        with pytest.raises(HostUnavailable, match=r"(?s)version mismatch.*v0\.26\.0"):
            await helper.call("hello")


async def test_a_killed_helper_is_started_again(hq_server: _hq.HqServer, tmp_path: Path) -> None:
    async with open_helper("hq", hq_server.server_dir) as helper:
        await helper.call("hello")
        pid = helper.pid
        assert pid is not None
        os.kill(pid, signal.SIGKILL)
        await dead(helper)
        answer = await helper.call("submit", job=job(["true"], tmp_path))
        assert await final_state(helper, answer["job_id"]) == "finished"
        assert helper.starts == 2
        assert helper.pid not in (None, pid)
        last = helper.pid
    assert last is not None
    assert not Path(f"/proc/{last}").exists()  # stopped and reaped on exit


async def test_the_helper_is_stopped_by_its_pid_on_exit(
    hq_server: _hq.HqServer, tmp_path: Path
) -> None:
    async with open_helper("hq", hq_server.server_dir) as helper:
        await helper.call("hello")
        calm = helper.pid
    assert helper.stopped_with == 0  # it read the end of its stdin and exited
    # A helper that cannot read its stdin (stopped here; hung in the client in real life):
    # TERM is not acted on by a stopped process either, KILL is.
    async with open_helper("hq", hq_server.server_dir, stop_grace=0.2) as helper:
        await helper.call("hello")
        stuck = helper.pid
        assert stuck is not None
        await pause(stuck)
    assert helper.stopped_with == -signal.SIGKILL
    for pid in (calm, stuck):
        assert not Path(f"/proc/{pid}").exists()  # reaped too


async def test_malformed_requests_get_bad_request(hq_server: _hq.HqServer, tmp_path: Path) -> None:
    lines = [
        b"not json",
        b"[1, 2]",
        b'{"id": "one", "op": "hello"}',
        b'{"id": 4, "op": "launch"}',
        b'{"id": 5, "op": "poll", "job_ids": "1,2"}',
        b'{"id": 6, "op": "submit", "job": {"name": "x", "args": []}}',
        b'{"id": 7, "op": "submit", "job": {"name": "x", "args": ["true"], "cpus": 0}}',
        b'{"id": 8, "op": "submit", "job": {"name": "x", "args": ["true"],'
        b' "resources": {"mem": -1}}}',
        b'{"id": 9, "op": "hello"}',
    ]
    helper_argv = [
        sys.executable,
        "-m",
        "corra.backends.hyperqueue._helper",
        str(hq_server.server_dir),
    ]
    done = await trio.run_process(helper_argv, stdin=b"\n".join(lines) + b"\n", capture_stdout=True)
    answers = [json.loads(line) for line in done.stdout.splitlines()]
    assert [a["id"] for a in answers] == [None, None, None, 4, 5, 6, 7, 8, 9]
    assert [a["error"]["kind"] for a in answers[:-1]] == ["bad_request"] * 8
    assert answers[-1]["ok"]["server_dir"] == str(hq_server.server_dir)  # the server lives on
    async with open_helper("hq", hq_server.server_dir) as helper:
        with pytest.raises(BackendError, match="bad_request") as caught:
            await helper.call("submit", job=job(["true"], tmp_path, cpus=-1))
        assert not isinstance(caught.value, HostUnavailable)
        with pytest.raises(BackendError, match="refused"):  # HyperQueue's own parser says no
            await helper.call("submit", job=job(["true"], tmp_path, cpus="lots"))


async def test_a_python_without_hyperqueue_is_refused_with_the_remedy(
    hq_server: _hq.HqServer, tmp_path: Path
) -> None:
    script = tmp_path / "python"
    script.write_text(
        f'#!/bin/sh\nexec {sys.executable} -c \'import sys; sys.modules["hyperqueue"] = None;'
        " sys.argv[1:] = sys.argv[3:]; from corra.backends.hyperqueue._helper import main;"
        ' sys.exit(main())\' "$@"\n'
    )
    script.chmod(0o700)
    async with open_helper("hq", hq_server.server_dir, python=str(script)) as helper:
        with pytest.raises(BackendError, match=r"pip install 'corra\[hyperqueue\]'") as caught:
            await helper.call("hello")
    assert not isinstance(caught.value, HostUnavailable)
    async with open_helper("hq", hq_server.server_dir, python=str(tmp_path / "none")) as helper:
        with pytest.raises(HostUnavailable, match="cannot start the HyperQueue helper"):
            await helper.call("hello")


async def test_a_cancelled_call_leaves_the_pipe_in_step(
    fresh_hq_server: _hq.HqServer, tmp_path: Path
) -> None:
    async with open_helper("hq", fresh_hq_server.server_dir) as helper:
        job_id = (await helper.call("submit", job=job(["true"], tmp_path)))["job_id"]
        assert await final_state(helper, job_id) == "finished"
        try:
            await pause(fresh_hq_server.pid)  # the server answers nothing now
            with trio.move_on_after(1) as scope:
                await helper.call("poll", job_ids=[job_id])
            assert scope.cancelled_caught
        finally:
            os.kill(fresh_hq_server.pid, signal.SIGCONT)
        # The stale answer to the cancelled poll comes first: it is read and dropped.
        answer = await helper.call("poll", job_ids=[job_id])
        assert answer["jobs"] == {str(job_id): {"state": "finished"}}
        assert helper.starts == 1
        # A server that hangs for longer than call_timeout: the helper is taken for hung.
        helper.call_timeout = 1
        try:
            await pause(fresh_hq_server.pid)
            with pytest.raises(HostUnavailable, match="did not answer poll"):
                await helper.call("poll", job_ids=[job_id])
        finally:
            os.kill(fresh_hq_server.pid, signal.SIGCONT)
        helper.call_timeout = 60
        answer = await helper.call("poll", job_ids=[job_id])
        assert answer["jobs"] == {str(job_id): {"state": "finished"}}
        assert helper.starts == 2


async def test_a_call_cancelled_while_writing_its_line_replaces_the_helper(
    hq_server: _hq.HqServer,
) -> None:
    async with open_helper("hq", hq_server.server_dir) as helper:
        await helper.call("hello")
        first = helper.pid
        assert first is not None
        await pause(first)  # it reads nothing: a line longer than the pipe's buffer blocks
        with trio.move_on_after(0.5) as scope:
            await helper.call("poll", job_ids=list(range(200_000)))
        assert scope.cancelled_caught
        # Half a line may be in the pipe: the helper was killed, and the next call gets a new one.
        assert (await helper.call("poll", job_ids=[]))["jobs"] == {}
        assert helper.starts == 2
        assert not Path(f"/proc/{first}").exists()


async def test_the_workers_python3_is_the_venvs(hq_server: _hq.HqServer, tmp_path: Path) -> None:
    """The task wrapper runs as ``python3`` on the worker: that must be this venv's."""
    out = tmp_path / "out"
    async with open_helper("hq", hq_server.server_dir) as helper:
        spec = job(["sh", "-c", "command -v python3"], tmp_path, stdout=str(out))
        answer = await helper.call("submit", job=spec)
        assert await final_state(helper, answer["job_id"]) == "finished"
    assert out.read_text().strip() == str(Path(sys.executable).parent / "python3")

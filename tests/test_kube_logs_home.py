"""A pod's log brought home (corra.backends.kubernetes._logs) while it runs and after, through
the real apiserver from the stand-in node (tests/_kube.py); and the record splitting of
``_logstream`` on its own."""

from __future__ import annotations

import os
import secrets
import signal
import stat
import sys
from pathlib import Path
from typing import Any

import _kube
import pytest
import trio
from lightkube import AsyncClient
from lightkube.core.exceptions import ApiError
from lightkube.resources.batch_v1 import Job
from lightkube.resources.core_v1 import Node, Pod
from lightkube.types import CascadeType

from corra.backends.kubernetes._logs import POSITION_FILE, LogFiles, Position, ship_logs
from corra.backends.kubernetes._logstream import Record, RecordReader, format_second
from corra.testing.kubenode import BEHAVIOUR

kubernetes = pytest.mark.kubernetes

T1 = b"2026-12-07T17:31:50.000000001Z "
T2 = b"2026-12-07T17:31:50.000000002Z "
OLDER = b"2026-12-07T17:31:49.999999999Z "


def records_of(data: bytes, *, piece: int = 1) -> list[Record]:
    """The records of a whole response fed ``piece`` bytes at a time."""
    reader = RecordReader()
    found = []
    for start in range(0, len(data), piece):
        found += reader.feed(data[start : start + piece])
    rest = reader.rest()
    return found + ([rest] if rest is not None else [])


@pytest.mark.parametrize("piece", [1, 7, 1 << 20])
def test_partial_entries_are_split_at_the_next_records_time(piece: int) -> None:
    # A line split by the runtime (T1's part has no newline), a line that prints times of
    # its own (at its start, and older than its record), binary bytes, no last newline.
    data = T1 + b"a" * 40 + T2 + b"b\n" + T2 + OLDER + b"x " + OLDER + b"\n" + T2 + b"\xff\x00"
    found = records_of(data, piece=piece)
    assert [record.data for record in found] == [
        b"a" * 40,
        b"b\n",
        OLDER + b"x " + OLDER + b"\n",
        b"\xff\x00",
    ]
    assert [record.stamp for record in found] == [T1[:-1].decode()] + [T2[:-1].decode()] * 3
    assert found[0].time == 1_796_664_710_000_000_001


def test_other_time_forms_split_at_newlines_only() -> None:
    found = records_of(b"2023-11-14T22:13:20Z hi 2023-11-14T22:13:21Z x\nnot stamped\n")
    assert [(record.second, record.data) for record in found] == [
        (1_700_000_000, b"hi 2023-11-14T22:13:21Z x\n"),
        (1_700_000_000, b"not stamped\n"),  # (kept, under the time before)
    ]


def record(second: int, data: bytes, nanosecond: int = 0) -> Record:
    stamp = f"{format_second(second)[:-1]}.{nanosecond:09d}Z"
    return Record(second * 1_000_000_000 + nanosecond, stamp, data)


def test_the_position_counts_the_records_of_the_latest_second(tmp_path: Path) -> None:
    files = LogFiles(tmp_path / "logs")
    assert files.position() == Position() and files.read("stdout", 0, 10) == b""
    files.write([record(10, b"a\n"), record(11, b"b\n", 5), record(11, b"c\n", 2)])
    # (Out of order within a second, as two runtime writers may stamp them: still counted.)
    assert files.position() == Position(6, 0, 11, 2, "1970-01-01T00:00:11.000000005Z", False)
    files.write([record(10, b"late\n")])  # an older second: not in an answer from 11
    files.flush()
    assert files.position().skip == 2
    files.write([record(12, b"d")], complete=True)
    assert files.position() == Position(12, 0, 12, 1, "1970-01-01T00:00:12.000000000Z", True)
    assert files.read("stdout", 0, 100) == b"a\nb\nc\nlate\nd"
    assert LogFiles(tmp_path / "logs").complete


def test_the_position_is_written_at_most_every_quarter_second_and_when_stopped(
    tmp_path: Path,
) -> None:
    files = LogFiles(tmp_path / "logs")
    files.write([record(1, b"a\n")])  # (the first at once)
    for index in range(100):
        files.write([record(1, b"b\n", index + 1)])
    assert files.size("stdout") == 202
    assert files.position().size < 202  # (not 100 renames in a row)
    files.flush()
    assert files.position().size == 202 and files.position().skip == 101


def test_the_limit_keeps_the_first_bytes(tmp_path: Path) -> None:
    files = LogFiles(tmp_path / "logs", limit=5)
    files.write([record(1, b"abc\n"), record(1, b"defg\n")])
    files.write([record(2, b"more\n")], complete=True)
    assert (files.read("stdout", 0, 100), files.dropped, files.complete) == (b"abc\nd", 9, True)


def test_the_data_is_made_to_agree_with_the_position_on_open(tmp_path: Path) -> None:
    files = LogFiles(tmp_path / "logs")
    files.write([record(1, b"abc\n")])  # (its position written at once)
    files.write([record(2, b"more\n")])  # (its position not yet)
    assert (files.size("stdout"), files.position().size) == (9, 4)
    # Killed there: the next shipping cuts the data back, and asks for the rest again.
    files = LogFiles(tmp_path / "logs")
    assert files.open() == Position(4, 0, 1, 1, "1970-01-01T00:00:01.000000000Z", False)
    assert files.read("stdout", 0, 100) == b"abc\n"
    # Data lost (a machine crash): start over.
    (tmp_path / "logs" / "stdout").write_bytes(b"ab")
    assert LogFiles(tmp_path / "logs").open() == Position()
    assert files.size("stdout") == 0
    # The data file gone: start over.
    files = LogFiles(tmp_path / "logs")
    files.write([record(2, b"abc\n")])
    files.flush()
    (tmp_path / "logs" / "stdout").unlink()
    assert LogFiles(tmp_path / "logs").open() == Position()
    assert files.position() == Position()
    # A position that cannot be read: start over too.
    files = LogFiles(tmp_path / "logs")
    files.write([record(1, b"abc\n")])
    files.flush()
    (tmp_path / "logs" / POSITION_FILE).write_bytes(b"{not json")
    assert LogFiles(tmp_path / "logs").open() == Position()
    assert files.size("stdout") == 0


# -- against the real apiserver -------------------------------------------------------------


async def start_pod(
    client: AsyncClient,
    namespace: str,
    code: str,
    *,
    annotations: dict[str, str] | None = None,
    pod: dict[str, Any] | None = None,
) -> tuple[str, str]:
    """A Job whose pod runs the Python ``code`` (on the stand-in node: a local program);
    the Job's name and its pod's."""
    job = f"j-{secrets.token_hex(3)}"
    template = {
        "metadata": {"annotations": annotations or {}},
        "spec": {
            "restartPolicy": "Never",
            "containers": [
                {"name": "main", "image": "python", "command": [sys.executable, "-c", code]}
            ],
        }
        | (pod or {}),
    }
    body = {
        "metadata": {"name": job, "namespace": namespace},
        "spec": {"backoffLimit": 0, "template": template},
    }
    await client.create(Job.from_dict(body))
    with trio.fail_after(20):
        while True:
            found = [
                p async for p in client.list(Pod, namespace=namespace, labels={"job-name": job})
            ]
            if found:
                return job, found[0].metadata.name
            await trio.sleep(0.1)


class Ended:
    """``ended()`` for `ship_logs`, from the pod's status (as the backend's watch says it)."""

    def __init__(self) -> None:
        self.ended = False

    def __call__(self) -> bool:
        return self.ended

    async def follow(self, client: AsyncClient, namespace: str, pod: str) -> None:
        while not self.ended:
            try:
                found = await client.get(Pod, pod, namespace=namespace)
            except Exception:  # (the apiserver restarting)
                await trio.sleep(0.2)
                continue
            statuses = found.status.containerStatuses or []
            self.ended = bool(statuses) and statuses[0].state.terminated is not None
            await trio.sleep(0.1)


def append(path: Path, data: bytes) -> None:
    with path.open("ab") as file:
        file.write(data)


async def until(check: Any, within: float = 20) -> None:
    with trio.fail_after(within):
        while not check():
            await trio.sleep(0.02)


@kubernetes
async def test_output_comes_home_while_it_runs_and_exactly_once_it_ends(
    client: AsyncClient, namespace: str, tmp_path: Path
) -> None:
    mark = tmp_path / "go-on"
    code = f"""
import os, time
os.write(1, b"first line\\n")
while not os.path.exists({str(mark)!r}):
    time.sleep(0.02)
os.write(2, b"to stderr\\n")
os.write(1, b"\\xff\\xfe\\x00 not UTF-8\\n")
os.write(1, b"x" * 40000 + b"\\n")  # (split by the node in partial entries of 16 KiB)
os.write(1, b"0123456789")
"""
    _, pod = await start_pod(client, namespace, code)
    files = LogFiles(tmp_path / "logs" / "attempt")
    ended = Ended()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(ended.follow, client, namespace, pod)
        nursery.start_soon(lambda: ship_logs(client, namespace, pod, files, ended=ended))
        await until(lambda: files.read("stdout", 0, 100) == b"first line\n")
        assert not files.complete and not ended()
        mark.touch()
    expected = b"first line\nto stderr\n\xff\xfe\x00 not UTF-8\n" + b"x" * 40000 + b"\n0123456789"
    assert files.read("stdout", 0, 1 << 20) == expected
    assert files.size("stdout") == len(expected)
    assert files.read("stdout", len(expected), 10) == b""
    assert (files.read("stderr", 0, 100), files.size("stderr")) == (b"", 0)
    assert files.complete and files.dropped == 0
    directory = tmp_path / "logs" / "attempt"
    assert stat.S_IMODE(directory.stat().st_mode) == 0o700
    for name in ("stdout", POSITION_FILE):
        assert stat.S_IMODE((directory / name).stat().st_mode) == 0o600
    # Complete: a new shipping has nothing to do, even with the pod gone.
    await client.delete(Pod, pod, namespace=namespace, grace_period=0)
    with trio.fail_after(5):
        await ship_logs(client, namespace, pod, LogFiles(directory), ended=lambda: True)
    files.remove()
    files.remove()
    assert not directory.exists() and files.read("stdout", 0, 10) == b""


@kubernetes
async def test_a_shipping_cut_many_times_brings_every_line_once(
    client: AsyncClient, namespace: str, tmp_path: Path
) -> None:
    # 1000 numbered lines, hundreds within each second: each cut comes in the middle of a
    # second's lines, and the resume asks from that second.
    code = """
import os, time
for i in range(1000):
    os.write(1, b"line %d\\n" % i)
    time.sleep(0.001)
"""
    _, pod = await start_pod(client, namespace, code)
    expected = b"".join(b"line %d\n" % i for i in range(1000))
    directory = tmp_path / "logs"
    ended = Ended()
    cuts, skips = 0, []
    async with trio.open_nursery() as nursery:
        nursery.start_soon(ended.follow, client, namespace, pod)
        for threshold in (1, 1500, 3000, 4500, 6000, 7500, None):
            files = LogFiles(directory)  # (as after a restart of corra)
            skips.append(files.position().skip)
            with trio.move_on_after(30) as timer:
                async with trio.open_nursery() as shipping:
                    shipping.start_soon(
                        lambda files=files: ship_logs(client, namespace, pod, files, ended=ended)
                    )
                    if threshold is not None:
                        await until(
                            lambda files=files, threshold=threshold: (
                                files.size("stdout") >= threshold
                            )
                        )
                        shipping.cancel_scope.cancel()
                        cuts += 1
            assert not timer.cancelled_caught
            if threshold == 4500:
                # A crash after data was written but before its position: cut back on open.
                append(directory / "stdout", b"line 99999\n")
    files = LogFiles(directory)
    assert files.read("stdout", 0, 1 << 20) == expected
    assert files.complete and cuts == 6
    assert max(skips) > 1  # (resumed in the middle of a second's lines)


@kubernetes
async def test_the_limit_keeps_the_first_bytes_and_counts_the_rest(
    client: AsyncClient, namespace: str, tmp_path: Path
) -> None:
    code = 'import os\nos.write(1, b"0123456789abcdef\\n" * 10)'
    _, pod = await start_pod(client, namespace, code)
    files = LogFiles(tmp_path / "logs", limit=10)
    ended = Ended()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(ended.follow, client, namespace, pod)
        with trio.fail_after(30):
            await ship_logs(client, namespace, pod, files, ended=ended)
    assert files.read("stdout", 0, 1000) == b"0123456789"
    assert (files.size("stdout"), files.dropped, files.complete) == (10, 160, True)


@kubernetes
async def test_a_pod_gone_ends_the_shipping_with_what_came_home(
    client: AsyncClient, namespace: str, tmp_path: Path
) -> None:
    code = 'import os, time\nos.write(1, b"early\\n")\ntime.sleep(1000)'
    job, pod = await start_pod(client, namespace, code)
    files = LogFiles(tmp_path / "logs")
    async with trio.open_nursery() as nursery:
        nursery.start_soon(lambda: ship_logs(client, namespace, pod, files, ended=lambda: False))
        await until(lambda: files.size("stdout") == 6)
        nursery.cancel_scope.cancel()
    await client.delete(Job, job, namespace=namespace, cascade=CascadeType.FOREGROUND)
    with trio.fail_after(30):
        while True:
            try:
                await client.get(Pod, pod, namespace=namespace)
            except ApiError as error:
                assert error.status.code == 404
                break
            await trio.sleep(0.1)
        again = LogFiles(tmp_path / "logs")
        await ship_logs(client, namespace, pod, again, ended=lambda: False)
    assert again.read("stdout", 0, 100) == b"early\n"
    assert not again.complete


@kubernetes
async def test_a_pod_not_started_yet_is_waited_for(
    kube: _kube.KubeCluster, client: AsyncClient, namespace: str, tmp_path: Path
) -> None:
    # Unschedulable (no node has its label) until the node gets that label.
    label = f"corra.test/logs-{secrets.token_hex(3)}"
    code = 'import os\nos.write(1, b"late\\n")'
    _, pod = await start_pod(client, namespace, code, pod={"nodeSelector": {label: "yes"}})
    files = LogFiles(tmp_path / "logs")
    ended = Ended()
    try:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(ended.follow, client, namespace, pod)
            nursery.start_soon(lambda: ship_logs(client, namespace, pod, files, ended=ended))
            await trio.sleep(1.5)
            assert files.size("stdout") == 0 and not files.complete
            await client.patch(Node, _kube.NODE, {"metadata": {"labels": {label: "yes"}}})
            await until(ended, within=30)
    finally:
        await client.patch(Node, _kube.NODE, {"metadata": {"labels": {label: None}}})
    assert files.read("stdout", 0, 100) == b"late\n" and files.complete


@kubernetes
async def test_a_container_that_never_starts_is_waited_for_until_it_ended(
    client: AsyncClient, namespace: str, tmp_path: Path
) -> None:
    # Its log endpoint answers 400 (waiting to start) until the backend gives up on it.
    _, pod = await start_pod(client, namespace, "", annotations={BEHAVIOUR: "image-pull-backoff"})
    files = LogFiles(tmp_path / "logs")
    given_up = trio.current_time() + 1.5
    with trio.fail_after(20):
        await ship_logs(client, namespace, pod, files, ended=lambda: trio.current_time() > given_up)
    assert trio.current_time() > given_up
    assert files.complete and files.size("stdout") == 0


async def restart_apiserver(cluster: _kube.KubeCluster) -> None:
    """Kill the cluster's apiserver (SIGKILL: as a crash) and start it again as it was,
    within the node's grace (its heartbeats fail meanwhile)."""
    pids = cluster.scratch / "pids"
    lines = pids.read_text().splitlines()
    [old] = [int(line.split()[0]) for line in lines if line.split()[1] == "kube-apiserver"]
    argv = Path(f"/proc/{old}/cmdline").read_bytes().rstrip(b"\0").split(b"\0")
    os.kill(old, signal.SIGKILL)
    with trio.fail_after(10):
        while Path(f"/proc/{old}").exists() and alive(old):
            await trio.sleep(0.05)
    # Started as the script starts it: in a session of its own, its parent gone at once.
    log = cluster.scratch / "kube-apiserver.log"
    started = await trio.run_process(
        ["bash", "-c", 'setsid "$@" >>"$0" 2>&1 </dev/null & echo $!', log, *argv],
        capture_stdout=True,
    )
    pid = int(started.stdout)
    pids.write_text(
        "".join(
            f"{pid} kube-apiserver\n" if line.split()[1] == "kube-apiserver" else line + "\n"
            for line in lines
        )
    )


def alive(pid: int) -> bool:
    """Whether ``pid`` is a process that is not a zombie (waiting to be reaped by no one)."""
    try:
        status = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return False
    return status.rsplit(")", 1)[1].split()[0] != "Z"


@kubernetes
async def test_a_restarted_apiserver_loses_no_line_and_doubles_none(
    kube: _kube.KubeCluster, client: AsyncClient, namespace: str, tmp_path: Path
) -> None:
    code = """
import os, time
for i in range(80):
    os.write(1, b"line %d\\n" % i)
    time.sleep(0.05)
"""
    _, pod = await start_pod(client, namespace, code)
    files = LogFiles(tmp_path / "logs")
    ended = Ended()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(ended.follow, client, namespace, pod)
        nursery.start_soon(lambda: ship_logs(client, namespace, pod, files, ended=ended))
        await until(lambda: files.size("stdout") > 0)
        await restart_apiserver(kube)
    assert files.read("stdout", 0, 1 << 20) == b"".join(b"line %d\n" % i for i in range(80))
    assert files.complete

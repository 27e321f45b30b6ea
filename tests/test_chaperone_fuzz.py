"""Whatever a chaperone is given, it answers and lives on (issue 11, items 1 and 2).

Hypothesis feeds the chaperone's three inputs: the shared chaperone's ``launch`` request (spec
fields at their limits and of wrong types), any line on its socket, and an own chaperone's
spec.json. After each example, the shared chaperone is alive and still runs a normal launch
to completion; an own chaperone has answered (and, if it started the program, reported the
exit). One shared chaperone serves a whole test, so the examples cost a launch each.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import os
import re
import signal
import subprocess
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from test_chaperone import (
    PYTHON,
    SCRIPT,
    Connection,
    alive,
    serve,
    start,
    wait_gone,
    write_spec,
)

FUZZ = settings(
    max_examples=40,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)

#: Durations at the edges: the C int of epoll's milliseconds, the 64-bit nanoseconds of
#: sigtimedwait, the largest float, ints no float holds, and the values that are no durations.
EDGE_SECONDS = [
    0,
    -0.0,
    2147483.647,
    2147483.648,
    2592000,
    315360000,
    9.3e9,
    1e300,
    1.7976931348623157e308,
    10**400,
    -1,
    -(10**400),
    float("nan"),
    float("inf"),
    float("-inf"),
]
seconds = st.one_of(
    st.sampled_from(EDGE_SECONDS),
    st.floats(),
    st.integers(),
    st.none(),
    st.booleans(),
    st.text(max_size=5),
    st.lists(st.integers(), max_size=2),
    st.dictionaries(st.text(max_size=3), st.integers(), max_size=2),
)
#: Strings that no system call takes (NUL, a lone surrogate), and strings.
bad_text = st.sampled_from(["", "a\0b", "\ud800", "=", "A=B"])
anything = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=8) | bad_text,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=4), inner),
    max_leaves=6,
)
#: Never an argv that runs something else than ``true`` (or nothing), nor a cgroup path that
#: names a real directory: a spec that passes must be harmless.
argv = st.one_of(
    st.just(["true"]),
    st.just([]),
    st.lists(bad_text, min_size=1, max_size=2),
    st.lists(st.integers() | st.none(), min_size=1, max_size=2),
    anything,
)
env = st.one_of(
    st.dictionaries(st.text(max_size=6) | bad_text, st.text(max_size=6) | bad_text, max_size=3),
    st.dictionaries(st.text(max_size=6), anything, max_size=2),
    anything,
)
cgroups = st.one_of(
    st.just([]),
    st.lists(
        st.fixed_dictionaries(
            {"path": st.none() | st.integers() | st.just("a\0b") | st.just("\ud800")},
            optional={"before": anything, "after": anything},
        ),
        max_size=2,
    ),
    anything,
)
spec = st.fixed_dictionaries(
    {"argv": st.just(["true"]) | argv},  # mostly a spec that runs, with odd other fields
    optional={
        "timeout": seconds,
        "kill_grace": seconds,
        "cwd": st.none() | bad_text | anything,
        "env": env,
        "cgroups": cgroups,
        "cgroup_notes": anything,
    },
)
key = st.one_of(st.just("fresh"), st.just(""), st.just("../x"), st.just(".hidden"), anything)
OPS = ["hello", "launch", "watch", "kill", "env", "exited", "nosuch"]
request = st.fixed_dictionaries(
    {"op": st.sampled_from(OPS) | anything},
    optional={
        "id": anything,
        "key": key,
        "grace": seconds,
        "spec": spec | anything,
        "env": env,
        "umask": anything,
        "version": anything,
    },
)


def dumps(value: object) -> bytes:
    """JSON as a runtime (or anybody) may send it: NaN, Infinity and huge ints included."""
    try:
        return json.dumps(value).encode("utf-8", "surrogatepass")
    except ValueError:  # an int too long for str(): sent as digits all the same
        return b"1" + b"0" * 5000


class Shared:
    """The shared chaperone of a test, and what checks that it still works."""

    def __init__(self, root: Path) -> None:
        self.root = root
        answer, self.daemon = serve(root, idle_exit=60)
        assert answer == "ready"
        self.keys = (f"k{number}.1" for number in itertools.count())

    def still_serves(self) -> None:
        """Alive, and a new connection runs ``true`` to its end."""
        assert alive(self.daemon["pid"]), "the shared chaperone died"
        connection = Connection(self.root)
        try:
            key = next(self.keys)
            reply = connection.request(op="launch", key=key, spec={"argv": ["true"]})
            assert reply["op"] == "started", reply
            while True:
                event = connection.event()
                if event.get("op") == "exited" and event["key"] == key:
                    break
            assert event["record"]["returncode"] == 0
        finally:
            connection.close()

    def close(self) -> None:
        if alive(self.daemon["pid"]):
            os.kill(self.daemon["pid"], signal.SIGTERM)  # it kills what is left, then leaves
            wait_gone(self.daemon["pid"])
        assert not (self.root / ".chaperone.log").exists(), (
            self.root / ".chaperone.log"
        ).read_text()


@pytest.fixture
def shared(tmp_path: Path):
    root = tmp_path / "root"
    root.mkdir()
    chaperone = Shared(root)
    yield chaperone
    chaperone.close()


SPEC_FIELDS = re.compile(r"(argv|cwd|env|timeout|kill_grace|cgroups|cgroup_notes)\b")
REPLIES = {"hello", "env", "invalid", "error", "started", "claimed", "failed", "unknown"}
PROBE = "probe/ce1a"  # an id no example sends


@FUZZ
@given(spec=spec, fresh=st.booleans())
def test_fuzzed_launch_specs_never_end_the_shared_chaperone(shared: Shared, spec: dict, fresh):
    connection = Connection(shared.root)
    try:
        key = next(shared.keys) if fresh else "same.1"
        reply = connection.request(op="launch", key=key, spec=spec)
        assert reply["op"] in ("started", "claimed", "failed", "invalid"), reply
        if reply["op"] == "invalid":
            assert SPEC_FIELDS.match(reply["error"]), reply  # names the field
    finally:
        connection.close()
    shared.still_serves()


@FUZZ
@given(lines=st.lists(request.map(dumps) | st.binary(max_size=60), min_size=1, max_size=3))
def test_fuzzed_socket_lines_are_answered_once_each(shared: Shared, lines: list[bytes]):
    connection = Connection(shared.root)
    try:
        data = b"\n".join(lines) + b"\n"
        probe = json.dumps({"op": "watch", "key": "probe.1", "id": PROBE}).encode() + b"\n"
        connection.sock.sendall(data + probe)  # the probe's reply comes after theirs
        answered = []
        while (message := connection.receive()).get("id") != PROBE:
            if message.get("op") != "exited" or "id" in message:  # not an exit event
                answered.append(message)
        assert message["op"] == "unknown"  # the connection works on
        assert len(answered) == data.count(b"\n"), answered  # one reply a line, no more
        for reply in answered:
            assert reply["op"] in REPLIES | {"watching", "killing"}, reply
            assert reply["op"] not in ("invalid", "error") or reply["error"], reply
    finally:
        connection.close()
    shared.still_serves()


@FUZZ
@given(grace=seconds)
def test_fuzzed_kill_graces_never_end_the_shared_chaperone(shared: Shared, grace: object):
    connection = Connection(shared.root)
    try:
        key = next(shared.keys)
        program = ["sh", "-c", "trap '' TERM; while :; do sleep 0.05; done"]
        assert connection.request(op="launch", key=key, spec={"argv": program})["op"] == "started"
        line = b'{"op":"kill","key":"%s","grace":%s,"id":"%s"}\n'
        connection.sock.sendall(line % (key.encode(), dumps(grace), PROBE.encode()))
        reply = connection.receive()
        assert reply["id"] == PROBE and reply["op"] in ("killing", "invalid"), reply
        if reply["op"] == "invalid":
            assert reply["error"].startswith("grace: expected"), reply
        assert connection.request(op="kill", key=key, grace=0)["op"] in ("killing", "unknown")
        while (event := connection.event()).get("key") != key:
            pass
        assert event["op"] == "exited" and event["record"]["killed"], event
    finally:
        connection.close()
    shared.still_serves()


def test_long_request_lines(shared: Shared):
    """A long line is answered; one longer than MAX_REQUEST costs its connection only."""
    connection = Connection(shared.root)
    try:
        long = connection.request(op="watch", key="x" * (1 << 20))
        assert long["op"] == "unknown"  # no such program
        bad = connection.request(op="launch", key="l.1", spec={"argv": ["x" * (1 << 20), 1]})
        assert bad["op"] == "invalid" and len(bad["error"]) < 200, bad
        connection.sock.settimeout(30)
        with contextlib.suppress(OSError):  # reset while we still send, or closed after
            connection.sock.sendall(b'{"op": "watch", "key": "' + b"x" * ((64 << 20) + 1))
            assert connection.lines.readline() == b""
    finally:
        connection.close()
    shared.still_serves()


@FUZZ
@given(spec=spec | anything, raw=st.none() | st.binary(max_size=40))
def test_fuzzed_spec_files_are_answered_by_an_own_chaperone(
    tmp_path_factory: pytest.TempPathFactory, spec: object, raw: bytes | None
):
    run_dir = tmp_path_factory.mktemp("own") / "run"
    run_dir.mkdir()
    if isinstance(spec, dict) and spec.get("argv") == ["true"]:
        spec = {**spec, "argv": ["sleep", "0.02"]}  # still running when the wait begins
        spec.setdefault("env", dict(os.environ))
    (run_dir / "spec.json").write_bytes(dumps(spec) if raw is None else raw)
    _, notify = start(run_dir)
    with notify:  # type: ignore[attr-defined]
        reply = json.loads(notify.readline())  # type: ignore[attr-defined]
        assert reply["status"] in ("started", "failed", "invalid"), reply
        if reply["status"] == "started":
            finished = json.loads(notify.readline())  # type: ignore[attr-defined]
            assert finished["status"] == "exited", finished
        else:
            assert reply["error"]
    assert not (run_dir / "chaperone.log").exists(), (run_dir / "chaperone.log").read_text()


@pytest.mark.parametrize(
    "grace", ["NaN", "Infinity", "-1", "1e400", "1e300", '"3"', "true", "1" + "0" * 400, "[]"]
)
def test_an_own_chaperone_takes_any_kill_request(tmp_path: Path, grace: str):
    """kill.json's grace, whatever it is: a number of seconds is taken, anything else is
    refused (the spec's kill_grace then); the program is killed either way."""
    run_dir = tmp_path / "run"
    write_spec(run_dir, ["sleep", "30"], kill_grace=0.2)
    _, notify = start(run_dir)
    with notify:  # type: ignore[attr-defined]
        reply = json.loads(notify.readline())  # type: ignore[attr-defined]
        assert reply["status"] == "started"
        (run_dir / "kill.json").write_text(f'{{"grace": {grace}}}')
        os.kill(reply["chaperone"]["pid"], signal.SIGTERM)
        finished = json.loads(notify.readline())  # type: ignore[attr-defined]
    record = finished["record"]
    assert record["killed"] and record["signal"] == signal.SIGTERM
    assert not (run_dir / "chaperone.log").exists()


def test_a_bad_idle_exit_is_a_usage_error(tmp_path: Path):
    for value in ("nan", "inf", "-1", "soon"):
        command = [PYTHON, "-I", "-S", SCRIPT, "--serve", str(tmp_path), "--idle-exit", value]
        done = subprocess.run(command, capture_output=True, text=True, timeout=10)
        assert done.returncode == 2 and "--idle-exit" in done.stderr, done


NOT_SECONDS = ['"3"', "true", "NaN", "Infinity", "-Infinity", "-1", "1" + "0" * 400, "[]", "{}"]


@pytest.mark.parametrize("field", ["timeout", "kill_grace"])
def test_a_duration_that_is_no_number_of_seconds_is_invalid(
    shared: Shared, tmp_path: Path, field: str
):
    """Refused by both kinds of chaperone before anything is claimed, naming the field and
    the value; the shared one serves on."""
    connection = Connection(shared.root)
    try:
        for number, value in enumerate(NOT_SECONDS):
            key = f"{field}{number}.1"
            line = '{"op":"launch","key":"%s","id":7,"spec":{"argv":["true"],"%s":%s}}\n'
            connection.sock.sendall((line % (key, field, value)).encode())
            reply = connection.receive()
            expected = f"{field}: expected a finite number of seconds >= 0, got "
            assert reply["op"] == "invalid" and reply["error"].startswith(expected), reply
            assert not (shared.root / key).exists()
            run_dir = tmp_path / key
            write_spec(run_dir, ["true"])
            spec = (run_dir / "spec.json").read_text()  # a later key wins:
            (run_dir / "spec.json").write_text(spec[:-1] + f', "{field}": {value}}}')
            _, notify = start(run_dir)
            with notify:  # type: ignore[attr-defined]
                reply = json.loads(notify.readline())  # type: ignore[attr-defined]
            assert reply["status"] == "invalid", reply
            assert reply["error"].startswith("spec.json: " + expected), reply
            assert not (run_dir / "chaperone.pid").exists()
    finally:
        connection.close()
    shared.still_serves()


SECRET = "s3cr3t-Value"


@pytest.mark.parametrize(
    "env",
    [
        {"TOKEN": SECRET + "\0"},
        {"TOKEN": SECRET + "\ud800"},
        {"TOKEN": [SECRET]},
        [f"TOKEN={SECRET}"],
    ],
    ids=["nul", "surrogate", "list-value", "list-env"],
)
def test_an_invalid_env_is_refused_without_showing_its_values(
    shared: Shared, tmp_path: Path, env: object
):
    """Both kinds of chaperone name the env, never a value (a secret: the reply becomes a
    launch failure, kept in the process's record)."""
    connection = Connection(shared.root)
    try:
        for op, fields in (
            ("launch", {"key": "env.1", "spec": {"argv": ["true"], "env": env}}),
            ("env", {"env": env}),
        ):
            line = dumps({"op": op, "id": 7, **fields}) + b"\n"
            connection.sock.sendall(line)
            reply = connection.receive()
            assert reply["op"] == "invalid" and reply["error"].startswith("env"), reply
            assert SECRET not in reply["error"], reply
        run_dir = tmp_path / "own"
        write_spec(run_dir, ["true"])
        spec = json.loads((run_dir / "spec.json").read_text())
        spec["env"] = env
        (run_dir / "spec.json").write_bytes(dumps(spec))
        _, notify = start(run_dir)
        with notify:  # type: ignore[attr-defined]
            reply = json.loads(notify.readline())  # type: ignore[attr-defined]
        assert reply["status"] == "invalid" and reply["error"].startswith("spec.json: env"), reply
        assert SECRET not in reply["error"], reply
    finally:
        connection.close()
    shared.still_serves()

"""A program's result value ($CORRA_RESULT): real programs on the local backend, under both
chaperones, through the runtime, `corra show` and the API's record; and the checks of a
value (`corra.processes._values`)."""

from __future__ import annotations

import json
import os
import stat
import sys
import time
from pathlib import Path

import pytest
import trio
from test_api_service import Service
from test_notes import conforms
from test_output_limit import stop_chaperones

import corra
from corra._runtime import open_runtime
from corra.backends.local import LocalBackend
from corra.processes._lifecycle import Result
from corra.processes._values import FILE_LIMIT, VALUE_LIMIT, result_value

CORRA = [sys.executable, "-m", "corra.cli"]


def writes(text: str) -> list[str]:
    """A program that writes ``text`` (Python source of the value's text) to $CORRA_RESULT."""
    code = (
        "import os, sys\n"
        f"data = {text}\n"
        "with open(os.environ['CORRA_RESULT'], 'wb') as f:\n"
        "    f.write(data if isinstance(data, bytes) else data.encode())\n"
    )
    return [sys.executable, "-c", code]


@pytest.fixture(params=["shared", "own"])
async def runtime(tmp_path: Path, request: pytest.FixtureRequest):
    state = tmp_path / "state"
    try:
        async with (
            LocalBackend(state / "runs", chaperone=request.param) as local,
            open_runtime(state_dir=state, backends={"local": local}) as rt,
        ):
            yield rt
    finally:
        stop_chaperones(state / "runs")


async def run(rt: corra.Runtime, argv: list[str], **spec: object) -> corra.ProcessRef:
    ref = await rt.spawn_process(argv, **spec)
    await ref.wait()
    return ref


async def test_a_program_writing_a_dict_has_it_in_its_record_and_in_corra_show(runtime, tmp_path):
    ref = await run(runtime, writes('\'{"items": [1, 2, "three"], "ok": true}\''), name="dict")
    result = ref.result
    assert result is not None and result.ok
    assert (result.value, result.has_value) == ({"items": [1, 2, "three"], "ok": True}, True)
    assert (result.value_file, result.value_error) == (None, None)
    assert await ref.value() == {"items": [1, 2, "three"], "ok": True}
    assert ref.record().phase == "finished"


async def test_the_environment_names_the_run_dir_files(runtime):
    code = "import os; print(os.environ['CORRA_RESULT']); print(os.environ['CORRA_STATUS'])"
    ref = await run(runtime, [sys.executable, "-c", code], env={"CORRA_RESULT": "/nowhere"})
    lines = (await ref.logs()).decode().split()
    run_dir = runtime.state_dir / "runs" / f"{ref.id}.1"
    assert lines == [str(run_dir / "result.json"), str(run_dir / "status.jsonl")]
    assert ref.result is not None and not ref.result.has_value


async def test_no_value_and_an_empty_one_are_none_and_a_null_is_a_value(runtime):
    none = await run(runtime, ["true"])
    empty = await run(runtime, writes("'  \\n'"))
    null = await run(runtime, writes("'null'"))
    for ref in (none, empty):
        assert ref.result is not None
        assert (ref.result.has_value, ref.result.value, ref.result.value_error) == (
            False,
            None,
            None,
        )
    assert null.result is not None and (null.result.has_value, null.result.value) == (True, None)
    assert await null.value() is None


async def test_invalid_json_is_refused_with_its_line_and_column_and_the_exit_decides(runtime):
    ref = await run(runtime, writes("'{\"a\": 1,\\n  oops}'"))
    result = ref.result
    assert result is not None and result.ok and ref.record().phase == "finished"
    assert not result.has_value and result.value is None
    assert result.value_error is not None
    assert "not JSON" in result.value_error and "line 2, column 3" in result.value_error
    nan = await run(runtime, writes("'[NaN]'"), restart="temporary")
    assert nan.result is not None and "NaN is not a JSON number" in str(nan.result.value_error)
    binary = await run(runtime, writes("b'\"\\xff\"'"))
    assert binary.result is not None and "not UTF-8" in str(binary.result.value_error)


async def test_a_large_value_is_kept_as_a_private_file_and_removal_removes_it(runtime):
    big = "x" * (VALUE_LIMIT + 10)
    ref = await run(runtime, writes(f"'[\"' + 'x' * {VALUE_LIMIT + 10} + '\"]'"), name="big")
    result = ref.result
    assert result is not None and result.has_value and result.value is None
    assert result.value_file is not None
    path = Path(result.value_file)
    assert path == runtime.state_dir.absolute() / "results" / f"{ref.id}.1.json"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700
    assert await ref.value() == [big]
    assert result_value(result) == [big]
    await runtime.processes.remove(ref.id)
    assert not path.exists()
    with pytest.raises(corra.ValueGone):
        result_value(result)


async def test_a_value_over_16_mib_is_refused_saying_the_limit(runtime):
    ref = await run(runtime, writes(f"'\"' + 'x' * {FILE_LIMIT} + '\"'"))
    result = ref.result
    assert result is not None and result.ok and not result.has_value
    assert result.value_error is not None and "over the limit of 16 MiB" in result.value_error
    assert not (runtime.state_dir / "results").exists()


async def test_a_rerun_starts_with_no_value(runtime, tmp_path):
    flag = tmp_path / "second"
    code = (
        "import os, sys\n"
        f"if os.path.exists({str(flag)!r}): sys.exit(0)\n"
        f"open({str(flag)!r}, 'w').close()\n"
        "open(os.environ['CORRA_RESULT'], 'w').write('[1]')\n"
    )
    ref = await run(runtime, [sys.executable, "-c", code], name="rerun")
    assert ref.result is not None and ref.result.value == [1]
    await runtime.processes.rerun(ref.id)
    record = await ref.wait()
    assert record.state.attempt == 2
    assert record.state.result is not None and not record.state.result.has_value
    assert await ref.value() is None


def test_result_value_of_nothing_and_of_a_refused_one_is_none():
    assert result_value(None) is None
    assert result_value(Result(0)) is None
    assert result_value(Result(0, value_error="refused")) is None
    assert result_value(Result(0, value=[1], has_value=True)) == [1]


async def test_corra_show_and_the_json_record_give_the_value(tmp_path: Path):
    state = tmp_path / "state"
    value = {"items": list(range(100)), "name": "x" * 300}
    try:
        async with open_runtime(state_dir=state) as rt:
            await run(rt, writes(repr(json.dumps(value))), name="shown")
            await run(rt, writes("'{'"), name="refused")
            await run(rt, writes(f"'\"' + 'y' * {VALUE_LIMIT} + '\"'"), name="kept")
    finally:
        stop_chaperones(state / "runs")

    async def show(*args: str) -> str:
        done = await trio.run_process(
            [*CORRA, "--state-dir", str(state), "show", *args], capture_stdout=True
        )
        return done.stdout.decode()

    text = await show("shown")
    line = next(line for line in text.splitlines() if line.strip().startswith("value:"))
    compact = json.dumps(value, separators=(",", ":"))
    assert compact[:150] in line and f"({len(compact)} bytes, --json for all)" in line
    data = json.loads(await show("shown", "--json"))
    assert data["result"]["value"] == value and data["result"]["has_value"] is True
    assert "value:   $CORRA_RESULT refused: not JSON" in await show("refused")
    kept = await show("kept")
    assert f"value:   kept in {state.absolute()}/results/" in kept, kept
    kept_json = json.loads(await show("kept", "--json"))
    assert kept_json["result"]["value"] is None
    assert kept_json["result"]["value_file"].endswith(".1.json")
    listed = await trio.run_process(
        [*CORRA, "--state-dir", str(state), "ps", "-a", "--json"], capture_stdout=True
    )
    items = {item["name"]: item for item in json.loads(listed.stdout)["items"]}
    assert items["shown"]["result"]["value"] == value
    assert items["refused"]["result"]["value_error"] is not None


def test_the_api_gives_the_value_and_its_openapi_document_describes_it(tmp_path: Path):
    state = tmp_path / "state"
    env = {key: value for key, value in os.environ.items() if not key.startswith("CORRA_")}
    value = {"items": ["a", "b"], "score": 0.5, "none": None}
    try:
        with Service(state, env=env) as service, service.client() as http:
            for name, argv in (
                ("valued", writes(repr(json.dumps(value)))),
                ("refused", writes("'[1,'")),
                ("kept", writes(f"'\"' + 'z' * {VALUE_LIMIT} + '\"'")),
            ):
                created = http.post("/v1/processes", json={"argv": argv, "name": name})
                assert created.status_code == 201, created.text
            records = {}
            for name in ("valued", "refused", "kept"):
                deadline = time.monotonic() + 30
                while True:
                    record = http.get(f"/v1/processes/{name}").json()
                    if record["phase"] == "finished" or time.monotonic() > deadline:
                        break
                    time.sleep(0.05)
                records[name] = record
                conforms(service, name)
            values = {name: http.get(f"/v1/processes/{name}/value") for name in records}
            assert service.stop() == 0
    finally:
        stop_chaperones(state / "runs")
    valued = records["valued"]["result"]
    assert (valued["value"], valued["has_value"], valued["value_error"]) == (value, True, None)
    refused = records["refused"]["result"]
    assert refused["has_value"] is False and "line 1, column 4" in refused["value_error"]
    kept = records["kept"]["result"]
    assert kept["value"] is None and kept["has_value"] is True
    assert Path(kept["value_file"]).read_bytes() == b'"' + b"z" * VALUE_LIMIT + b'"'
    # GET /v1/processes/{id}/value: the value wherever it is kept, or why there is none
    assert (values["valued"].status_code, values["valued"].json()) == (200, value)
    assert values["kept"].status_code == 200
    assert values["kept"].content == b'"' + b"z" * VALUE_LIMIT + b'"'
    refusal = values["refused"]
    assert refusal.status_code == 404 and refusal.json()["error"] == "no_value"
    assert "its value was refused" in refusal.json()["message"]


async def test_a_value_written_while_no_runtime_watched_is_read_by_the_next(tmp_path: Path):
    # (as after a crash: the program ends with no runtime; the next reads its run dir)
    state = tmp_path / "state"
    gate = tmp_path / "gate"
    code = (
        "import os, time\n"
        f"while not os.path.exists({str(gate)!r}): time.sleep(0.02)\n"
        "open(os.environ['CORRA_RESULT'], 'w').write('{\"after\": \"the crash\"}')\n"
    )
    try:
        async with open_runtime(state_dir=state) as rt:
            ref = await rt.spawn_process([sys.executable, "-c", code], name="later")
            with trio.fail_after(30):
                while ref.record().phase != "running":
                    await trio.sleep(0.02)
        gate.touch()
        async with open_runtime(state_dir=state) as rt:
            record = await rt.processes.wait("later")
            assert record.phase == "finished"
            assert record.state.result is not None
            assert record.state.result.value == {"after": "the crash"}
    finally:
        stop_chaperones(state / "runs")


class Written:
    """What `with_value` reads of a backend: ``data`` as the stream ``result`` (None: a
    backend that reads no values refuses the stream)."""

    def __init__(self, data: bytes | None) -> None:
        self.data = data
        self.reads = 0

    async def read_log(self, key, stream, offset, size, host=None):
        assert stream == "result"
        self.reads += 1
        if self.data is None:
            raise corra.ConfigError("stream: got 'result', expected 'stdout' or 'stderr'")
        return self.data[offset : offset + size]


#: A value nested as deep as a value may: 200 levels.
DEEPEST: object = [1]
for _ in range(199):
    DEEPEST = {"a": DEEPEST}


@pytest.mark.parametrize(
    ("data", "value", "has_value", "error"),
    [
        (b"", None, False, None),
        (b" \n\t", None, False, None),
        (None, None, False, None),  # (a backend that reads no values)
        (b"null\n", None, True, None),
        (b'"\xc3\xa9t\xc3\xa9"', "\u00e9t\u00e9", True, None),
        (b"[1] [2]", None, False, "not JSON: Extra data at line 1, column 5"),
        (b"[" * 100_000, None, False, "nested more than 200 levels deep"),
        (b"[" * 201 + b"]" * 201, None, False, "nested more than 200 levels deep"),
        (json.dumps(DEEPEST).encode(), DEEPEST, True, None),
        (b"Infinity", None, False, "Infinity is not a JSON number"),
    ],
)
async def test_what_a_written_value_becomes(data, value, has_value, error, tmp_path: Path):
    from corra.processes._backend import EffectKey
    from corra.processes._values import with_value

    got = await with_value(Result(0), Written(data), EffectKey("p1", 1), None, tmp_path)
    assert (got.value, got.has_value) == (value, has_value)
    if error is None:
        assert got.value_error is None
    else:
        assert error in str(got.value_error)
    assert got.returncode == 0


async def test_a_value_too_large_for_the_record_is_refused_without_a_place_for_files():
    from corra.processes._backend import EffectKey
    from corra.processes._values import with_value

    # (half the limit as written, in UTF-8; three times that as the record writes it)
    data = b'"' + "\u00e9".encode() * (VALUE_LIMIT // 4) + b'"'
    written = Written(data)
    got = await with_value(Result(0), written, EffectKey("p1", 1), None, None)
    assert "over the record's limit of 64 KiB" in str(got.value_error)
    backend_said = Result(0, value_error="said by the backend")
    assert await with_value(backend_said, written, EffectKey("p1", 1), None, None) is backend_said

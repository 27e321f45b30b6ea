"""The codec: round trips for every kind of field, and CorruptRecord for every kind of damage."""

from __future__ import annotations

import datetime
import enum
import json
from pathlib import Path
from typing import Any, Literal

import attrs
import cattrs
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from corra._errors import CorruptRecord
from corra.persistence import Codec

# A representative snapshot: nested frozen attrs values, optional fields, tuples, a
# dict[str, str], a Literal, an enum, datetimes, paths and a tagged union of attrs classes.


class Restart(enum.Enum):
    NEVER = "never"
    ON_FAILURE = "on-failure"


@attrs.frozen
class Local:
    cwd: Path
    environment: dict[str, str] = attrs.field(factory=dict)


@attrs.frozen
class Remote:
    host: str
    port: int = 22
    user: str | None = None


@attrs.frozen
class Spec:
    argv: tuple[str, ...]
    where: Local | Remote
    restart: Restart = Restart.NEVER
    limits: tuple[float, int] = (1.0, 3)


@attrs.frozen
class Exit:
    code: int | None
    signal: str | None
    ended: datetime.datetime


@attrs.frozen
class State:
    phase: Literal["created", "running", "paused", "finished"]
    spec: Spec
    attempt: int = 0
    exit: Exit | None = None
    paused_from: Literal["created", "running"] | None = None
    fallback: Local | Remote | None = None
    labels: dict[str, str] = attrs.field(factory=dict)
    started: datetime.datetime | None = None
    ready: bool = False


def rename_try_to_attempt(data: dict[str, Any]) -> dict[str, Any]:
    """Schema 1 called the attempt number "try"."""
    data = dict(data)
    data["attempt"] = data.pop("try", 0)
    return data


codec = Codec(State, 2, migrations={1: rename_try_to_attempt})

texts = st.text(max_size=12)
datetimes = st.datetimes(
    min_value=datetime.datetime(1970, 1, 2), timezones=st.none() | st.just(datetime.UTC)
)
places = st.builds(
    Local, cwd=st.builds(Path, texts), environment=st.dictionaries(texts, texts, max_size=3)
) | st.builds(Remote, host=texts, port=st.integers(0, 65535), user=st.none() | texts)
states = st.builds(
    State,
    phase=st.sampled_from(["created", "running", "paused", "finished"]),
    spec=st.builds(
        Spec,
        argv=st.lists(texts, max_size=4).map(tuple),
        where=places,
        restart=st.sampled_from(Restart),
        limits=st.tuples(st.floats(allow_nan=False, allow_infinity=False), st.integers()),
    ),
    attempt=st.integers(0, 2**40),
    exit=st.none()
    | st.builds(
        Exit, code=st.none() | st.integers(-255, 255), signal=st.none() | texts, ended=datetimes
    ),
    paused_from=st.sampled_from([None, "created", "running"]),
    fallback=st.none() | places,
    labels=st.dictionaries(texts, texts, max_size=3),
    started=st.none() | datetimes,
    ready=st.booleans(),
)

EXAMPLE = State(
    phase="running",
    spec=Spec(argv=("sleep", "10"), where=Remote(host="login1", user="ana")),
    attempt=1,
    labels={"project": "x"},
    started=datetime.datetime(2025, 3, 1, 12, 0, tzinfo=datetime.UTC),
)


def document(data: Any, *, schema: Any = 2, type_name: Any = "State") -> bytes:
    return json.dumps({"schema": schema, "type": type_name, "data": data}).encode()


def example_data() -> dict[str, Any]:
    return json.loads(codec.encode(EXAMPLE))["data"]


def decode_error(raw: bytes) -> str:
    with pytest.raises(CorruptRecord) as caught:
        codec.decode(raw)
    return str(caught.value)


# Round trips ---------------------------------------------------------------------------------


@given(states)
@settings(max_examples=300, suppress_health_check=[HealthCheck.too_slow])
def test_round_trip(state):
    assert codec.decode(codec.encode(state)) == state


def test_record_is_compact_versioned_json():
    raw = codec.encode(EXAMPLE)
    assert raw.startswith(b'{"schema":2,"type":"State","data":{')
    assert b" " not in raw.replace(b'"sleep","10"', b"")
    assert raw.isascii()
    data = json.loads(raw)["data"]
    assert data["spec"]["where"] == {"host": "login1", "port": 22, "user": "ana", "_type": "Remote"}
    assert data["started"] == "2025-03-01T12:00:00+00:00"


def test_non_ascii_text_round_trips():
    state = attrs.evolve(EXAMPLE, labels={"résumé": "naïve ✓", "lone": "\udc80"})
    assert codec.decode(codec.encode(state)) == state


def test_datetime_is_also_read_from_float_seconds():
    data = {**example_data(), "started": 86400.5}
    decoded = codec.decode(document(data))
    assert decoded.started == datetime.datetime(1970, 1, 2, 0, 0, 0, 500000, tzinfo=datetime.UTC)


def test_encode_refuses_other_types_and_nan():
    with pytest.raises(TypeError, match="expected a State"):
        codec.encode(EXAMPLE.spec)  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        codec.encode(
            attrs.evolve(EXAMPLE, spec=attrs.evolve(EXAMPLE.spec, limits=(float("nan"), 1)))
        )


def test_older_schema_is_migrated():
    data = example_data()
    data["try"] = data.pop("attempt")
    assert codec.decode(document(data, schema=1)) == EXAMPLE


def test_migrations_chain_one_step_at_a_time():
    steps = []

    def step(version: int):
        def upgrade(data: dict[str, Any]) -> dict[str, Any]:
            steps.append(version)
            return data

        return upgrade

    chained = Codec(State, 4, migrations={1: step(1), 2: step(2), 3: step(3)})
    assert chained.decode(document(example_data(), schema=2)) == EXAMPLE
    assert steps == [2, 3]


def test_failing_migration_is_corrupt():
    def needs_try(data: dict[str, Any]) -> dict[str, Any]:
        return {**data, "attempt": data["try"]}

    strict = Codec(State, 2, migrations={1: needs_try})
    with pytest.raises(CorruptRecord, match=r"migration from schema 1 to 2 failed: KeyError"):
        strict.decode(document(example_data(), schema=1))


def test_private_converter_leaves_the_global_one_alone():
    Codec(State, 1)
    assert cattrs.structure("5", int) == 5  # the global converter still coerces
    with pytest.raises(CorruptRecord, match=r"expected an integer, got str @ \$\.data\.attempt"):
        codec.decode(document({**example_data(), "attempt": "5"}))


def test_codec_arguments_are_checked():
    with pytest.raises(TypeError):
        Codec(dict, 1)
    with pytest.raises(ValueError):
        Codec(State, 0)
    with pytest.raises(ValueError, match="migrations"):
        Codec(State, 2, migrations={2: lambda data: data})


# Damage ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        (b"", "not a JSON record"),
        (b"\xff\xfe", "not a JSON record"),
        ('{"schema":2}'.encode("utf-16"), "not a JSON record"),
        (b'{"schema": 2, "type": "State", "data": {', "not a JSON record"),
        (b"[" * 100_000, "not a JSON record"),
        (b"[]", "not a record: a JSON list"),
        (b'{"type": "State", "data": {}}', "missing schema"),
        (b'{"schema": 2, "data": {}}', "missing type"),
        (b'{"schema": 2, "type": "State"}', "missing data"),
        (b'{"schema": 2, "type": "State", "data": {}, "x": 1}', "unexpected keys"),
        (document({}, schema="2"), "schema must be an integer"),
        (document({}, schema=True), "schema must be an integer"),
        (document({}, schema=3), "schema 3, newer than this corra knows (2)"),
        (document({}, schema=0), "older than any this corra can migrate"),
        (document({}, type_name="Job"), "a 'Job' record where a State was expected"),
        (document([]), r"expected an object, got list @ $.data"),
    ],
)
def test_damaged_envelope(raw, message):
    assert message in decode_error(raw)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"phase": "lost"}, "@ $.data.phase"),
        ({"attempt": 1.5}, "expected an integer, got float @ $.data.attempt"),
        ({"attempt": True}, "expected an integer, got bool @ $.data.attempt"),
        ({"ready": 1}, "expected true or false, got int @ $.data.ready"),
        ({"labels": {"a": 1}}, "expected a string, got int @ $.data.labels['a']"),
        ({"labels": []}, "@ $.data.labels"),
        ({"started": "yesterday"}, "expected an ISO 8601 date and time, got 'yesterday'"),
        ({"started": 1e300}, "seconds since the epoch out of range: 1e+300 @ $.data.started"),
        ({"unknown": 1}, "extra fields found (unknown) @ $.data"),
        ({"spec": None}, "@ $.data.spec"),
        (
            {"spec": {"argv": ["a", 5], "where": {"_type": "Local", "cwd": "/"}}},
            "$.data.spec.argv[1]",
        ),
        ({"spec": {"argv": [], "where": {"cwd": "/"}}}, "'_type' to be one of Local, Remote"),
        ({"spec": {"argv": [], "where": {"_type": "Pod"}}}, "got 'Pod' @ $.data.spec.where"),
        (
            {"spec": {"argv": [], "where": {"_type": "Local"}}},
            "required field missing @ $.data.spec.where.cwd",
        ),
        ({"spec": {"argv": [], "where": {"_type": "Local", "cwd": 3}}}, "expected a path"),
        (
            {"spec": {"argv": [], "where": {"_type": "Remote", "host": "h"}, "restart": "always"}},
            "$.data.spec.restart",
        ),
        (
            {"spec": {"argv": [], "where": {"_type": "Remote", "host": "h"}, "limits": [1.0]}},
            "$.data.spec.limits",
        ),
        ({"exit": {"code": 0, "signal": None}}, "required field missing @ $.data.exit.ended"),
        ({"fallback": 3}, "expected an object tagged '_type', got int @ $.data.fallback"),
    ],
)
def test_damaged_data_names_the_field_path(change, message):
    reason = decode_error(document({**example_data(), **change}))
    assert reason.startswith("invalid State record: ")
    assert message in reason


def test_missing_field_is_named():
    data = example_data()
    del data["spec"]
    assert "required field missing @ $.data.spec" in decode_error(document(data))


@given(st.binary(max_size=300))
@settings(max_examples=500)
def test_arbitrary_bytes_are_corrupt_never_a_crash(raw):
    try:
        decoded = codec.decode(raw)
    except CorruptRecord:
        return
    assert isinstance(decoded, State)


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=8),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4)
    ),
    max_leaves=20,
)


def _paths(value: Any, path: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    found = [path]
    if isinstance(value, dict):
        for key, item in value.items():
            found += _paths(item, (*path, key))
    elif isinstance(value, list):
        for index, item in enumerate(value):
            found += _paths(item, (*path, index))
    return found


@given(st.data(), json_values)
@settings(max_examples=500, suppress_health_check=[HealthCheck.too_slow])
def test_any_json_anywhere_is_corrupt_never_a_crash(data, replacement):
    """Replace any part of a valid record with any JSON value."""
    envelope = {"schema": 2, "type": "State", "data": data.draw(states.map(codec.encode)).decode()}
    envelope["data"] = json.loads(envelope["data"])["data"]
    path = data.draw(st.sampled_from(_paths(envelope)))
    if path:
        parent = envelope
        for step in path[:-1]:
            parent = parent[step]
        parent[path[-1]] = replacement
        raw = json.dumps(envelope).encode()
    else:
        raw = json.dumps(replacement).encode()
    try:
        decoded = codec.decode(raw)
    except CorruptRecord:
        return
    assert isinstance(decoded, State)


@pytest.mark.parametrize("schema", [-(10**20), -1, 0])
def test_an_absurd_old_schema_is_refused_at_once(schema):
    raw = json.dumps({"schema": schema, "type": "State", "data": {}}).encode()
    with pytest.raises(CorruptRecord, match="older than any this corra can migrate"):
        codec.decode(raw)


# The hand-written encoders of the process records ------------------------------------------
#
# `corra._runtime`'s codecs encode process records and transitions with hand-written
# functions (`corra.processes._fast_json`); what they write must be byte for byte what the
# converter writes, and whatever they do not expect must take the converter's way.

import functools  # noqa: E402
import gc  # noqa: E402
import math  # noqa: E402

from corra._errors import ConfigError  # noqa: E402
from corra._runtime import HISTORY_CODEC, RECORD_CODEC, record_codec  # noqa: E402
from corra.backends.batch import JobHandle  # noqa: E402
from corra.backends.local import Handle as LocalHandle  # noqa: E402
from corra.backends.slurm import SlurmOptions  # noqa: E402
from corra.backends.ssh import RemoteHandle  # noqa: E402
from corra.persistence import Codec  # noqa: E402
from corra.processes._convert import configure_history, configure_snapshot  # noqa: E402
from corra.processes._fast_json import RecordEncoder, transition_encoder  # noqa: E402
from corra.processes._lifecycle import PHASES, ProcessState, Result  # noqa: E402
from corra.processes._record import ProcessRecord, Transition  # noqa: E402
from corra.processes._spec import MAX_SECONDS, ProcessSpec  # noqa: E402

any_text = st.text(max_size=8)
clean_text = any_text.filter(lambda text: "\0" not in text)
finite = st.floats(allow_nan=False, allow_infinity=False)
json_scalars = st.none() | st.booleans() | st.integers() | finite | any_text
json_values = st.recursive(
    json_scalars,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(any_text, inner, max_size=3),
    max_leaves=8,
)
seconds = st.integers(0, 10**6) | st.floats(0, 1e9)  # ints where floats are declared, too
record_results = st.builds(
    Result,
    returncode=st.none() | st.integers(-(2**70), 2**70),
    signal=st.none() | st.integers(1, 64),
    started_at=st.none() | seconds,
    ended_at=st.none() | seconds,
    utime=seconds,
    stime=seconds,
    maxrss_kb=st.none() | st.integers(0, 1 << 40),
    stdout_bytes=st.integers(0, 1 << 40),
    stderr_bytes=st.integers(0, 1 << 40),
    timed_out=st.booleans(),
    killed=st.booleans(),
    error=st.none() | any_text,
    stdout_dropped=st.integers(0, 1 << 50),
    stderr_dropped=st.integers(0, 1 << 50),
    value=json_values,
    has_value=st.booleans(),
    value_file=st.none() | clean_text,
    value_error=st.none() | any_text,
)
process_specs = st.builds(
    ProcessSpec,
    argv=st.lists(clean_text, min_size=1, max_size=3).filter(lambda argv: argv[0] != "").map(tuple),
    name=st.none() | st.from_regex(r"\A[a-z0-9][a-z0-9_.@+-]{0,10}\Z"),
    cwd=st.none() | clean_text.filter(bool),
    env=st.dictionaries(st.from_regex(r"\A[A-Z_]{1,6}\Z"), clean_text, max_size=2),
    timeout=st.none() | st.integers(1, 10**6) | st.floats(0.1, 1e6),
    restart=st.sampled_from(("temporary", "transient", "permanent")),
    max_attempts=st.integers(1, 10),
    kill_grace=st.integers(0, MAX_SECONDS) | st.floats(0, MAX_SECONDS),
    memory_limit=st.none() | st.integers(1, 1 << 40),
    output_limit=st.none() | st.integers(1, 1 << 40),
    labels=st.dictionaries(any_text, any_text, max_size=2),
)
relative_paths = st.from_regex(r"\A[a-z0-9_.*-]{1,6}(/[a-z0-9_*-]{1,6})?\Z").filter(
    lambda path: ".." not in path.split("/")
)
remote_specs = st.builds(
    ProcessSpec,
    argv=st.lists(clean_text, min_size=1, max_size=2).filter(lambda argv: argv[0] != "").map(tuple),
    backend=st.sampled_from(("ssh", "slurm")),
    host=st.from_regex(r"\A[a-z0-9][a-z0-9_.-]{0,8}\Z"),
    cwd=st.none() | st.from_regex(r"\A/[a-z0-9/]{0,8}\Z"),
    inputs=st.dictionaries(relative_paths, clean_text.filter(bool), max_size=2),
    outputs=st.lists(relative_paths, max_size=2).map(tuple),
    outputs_dir=st.just("/tmp/out"),
)
slurm_specs = st.builds(
    ProcessSpec,
    argv=st.just(("true",)),
    backend=st.just("slurm"),
    host=st.just("cluster"),
    options=st.builds(
        SlurmOptions,
        partition=st.none() | st.from_regex(r"\A[a-z0-9_.:-]{1,8}\Z"),
        time=st.none() | st.sampled_from(("10", "1:30:00", "2-0")),
        nodes=st.none() | st.integers(1, 64),
        extra=st.lists(st.from_regex(r"\A--[a-z][a-z0-9-]{0,8}(=[a-z0-9 ]{0,8})?\Z"), max_size=2),
        hold_on_pause=st.booleans(),
    ),
)


def process_states(handles: st.SearchStrategy[Any]) -> st.SearchStrategy[ProcessState]:
    return st.builds(
        ProcessState,
        phase=st.sampled_from(PHASES),
        attempt=st.integers(1, 10**6),
        paused_from=st.none() | st.sampled_from(PHASES),
        paused_by=st.none() | st.sampled_from(("user", "host")),
        handle=st.none() | handles,
        reason=st.none() | any_text,
        result=st.none() | record_results,
        updated_at=seconds,
        started_at=st.none() | seconds,
    )


process_records = st.builds(
    ProcessRecord,
    id=any_text.filter(bool),
    spec=process_specs | remote_specs | slurm_specs,
    state=process_states(st.dictionaries(any_text, json_values, max_size=3)),
    created_at=seconds,
)
pids = st.none() | st.integers(1, 1 << 22)
ticks = st.none() | st.integers(0, 1 << 40)
output_fields = {
    "outputs": st.lists(relative_paths, max_size=2).map(tuple),
    "outputs_to": st.none() | any_text,
    "work_dir": st.none() | any_text,
}
#: A handle of each built-in backend, by backend name (every field, optional ones too).
built_in_handles: dict[str, st.SearchStrategy[Any]] = {
    "local": st.builds(
        LocalHandle,
        key=any_text,
        run_dir=any_text,
        chaperone_pid=st.integers(1, 1 << 22),
        chaperone_start=st.integers(0, 1 << 40),
        pid=pids,
        cgroup=st.none() | any_text,
        cgroup_note=st.none() | any_text,
        started_at=st.none() | seconds,
        shared=st.booleans(),
    ),
    "ssh": st.builds(
        RemoteHandle,
        host=any_text,
        key=any_text,
        run_dir=any_text,
        chaperone_pid=pids,
        chaperone_start=ticks,
        pid=pids,
        program_start=ticks,
        started_at=st.none() | seconds,
        output_limit=st.none() | st.integers(1, 1 << 40),
        **output_fields,
    ),
    "slurm": st.builds(
        JobHandle,
        host=any_text,
        key=any_text,
        run_dir=any_text,
        job_id=st.from_regex(r"\A[0-9]{1,9}\Z"),
        array=st.booleans(),
        hold_on_pause=st.booleans(),
        **output_fields,
    ),
}
HANDLE_TYPES = {"local": LocalHandle, "ssh": RemoteHandle, "slurm": JobHandle}
typed_records = (process_specs | remote_specs | slurm_specs).flatmap(
    lambda spec: st.builds(
        ProcessRecord,
        id=any_text.filter(bool),
        spec=st.just(spec),
        state=process_states(built_in_handles[spec.backend]),
        created_at=seconds,
    )
)
transitions = st.builds(
    Transition,
    at=seconds,
    event=st.sampled_from(("submit", "launch", "started", "succeed", "kill")) | any_text,
    source=st.sampled_from(PHASES),
    target=st.sampled_from(PHASES),
    attempt=st.integers(1, 10**6),
    reason=st.none() | any_text,
)


def codecs_as_the_runtimes(
    handles: dict[str, type] | None = None,
) -> tuple[Codec[Any], Codec[Any], Any, Any]:
    """A record codec (of ``handles``' classes) and a history codec made as
    `corra._runtime`'s, and their encoders."""
    made: list[Any] = []

    def keep(factory: Any) -> Any:
        def make(converter: Any) -> Any:
            made.append(factory(converter))
            return made[-1]

        return make

    records = Codec(
        ProcessRecord,
        schema=RECORD_CODEC.schema,
        configure=functools.partial(configure_snapshot, handles=handles),
        fast_encoder=keep(RecordEncoder),
    )
    history = Codec(
        Transition,
        schema=HISTORY_CODEC.schema,
        configure=configure_history,
        fast_encoder=keep(transition_encoder),
    )
    return records, history, made[0], made[1]


RECORDS, HISTORY, ENCODE_RECORD, ENCODE_TRANSITION = codecs_as_the_runtimes()
TYPED_RECORDS, _, ENCODE_TYPED_RECORD, _ = codecs_as_the_runtimes(HANDLE_TYPES)
RUNTIMES_TYPED_RECORDS = record_codec(HANDLE_TYPES)


@given(process_records)
@settings(max_examples=300, deadline=None)
def test_the_record_encoder_writes_what_the_converter_writes(record):
    assert ENCODE_RECORD(record) is not None  # the fast way was taken
    raw = RECORDS.encode(record)
    assert raw == RECORDS.encode_generic(record)
    assert RECORDS.encode(record) == raw  # and again, from the cached texts
    assert RECORDS.decode(raw) == record
    assert RECORD_CODEC.encode(record) == raw  # (the runtime's, made the same way)


@given(typed_records)
@settings(max_examples=300, deadline=None)
def test_the_record_encoder_writes_typed_handles_as_the_converter_does(record):
    assert ENCODE_TYPED_RECORD(record) is not None  # the fast way was taken
    raw = TYPED_RECORDS.encode(record)
    assert raw == TYPED_RECORDS.encode_generic(record)
    decoded = TYPED_RECORDS.decode(raw)
    assert decoded == record
    assert type(decoded.state.handle) is type(record.state.handle)
    assert RUNTIMES_TYPED_RECORDS.encode(record) == raw  # (the runtime's, made the same way)
    assert RECORD_CODEC.encode(record) == raw  # (a codec that knows no class writes it alike)


@given(transitions)
@settings(max_examples=300, deadline=None)
def test_the_transition_encoder_writes_what_the_converter_writes(transition):
    assert ENCODE_TRANSITION(transition) is not None
    raw = HISTORY.encode(transition)
    assert raw == HISTORY.encode_generic(transition)
    assert HISTORY.decode(raw) == transition


def test_a_rerun_keeps_its_result_in_history_and_other_entries_are_stored_as_before():
    from corra.processes._lifecycle import Result

    plain = Transition(1.0, "succeed", "running", "finished", 1)
    assert b"result" not in HISTORY.encode(plain)  # (entries written before issue 13 too)
    rerun = Transition(2.0, "rerun", "failed", "created", 2, "rerun on request", Result(3))
    assert ENCODE_TRANSITION(rerun) is None  # (the converter's way: rare)
    raw = HISTORY.encode(rerun)
    assert HISTORY.decode(raw) == rerun
    assert HISTORY_CODEC.encode(rerun) == raw


def test_what_the_encoders_do_not_expect_takes_the_converters_way():
    spec = ProcessSpec(argv=("true",))
    record = ProcessRecord("p1", spec, ProcessState(updated_at=1.0), 1.0)

    class Handle(dict):  # not a dict exactly
        pass

    class Number(int):
        pass

    unusual = [
        attrs.evolve(record, state=ProcessState(handle=Handle(a=1))),
        attrs.evolve(record, state=ProcessState(attempt=Number(2))),
        attrs.evolve(record, created_at=True),  # a bool is not a number here
        attrs.evolve(record, state=ProcessState(handle={"a": {1, 2}})),  # not JSON at all
    ]
    assert all(ENCODE_RECORD(value) is None for value in unusual[:3])
    for value in unusual[:3]:
        assert RECORDS.encode(value) == RECORDS.encode_generic(value)
    with pytest.raises(TypeError):
        RECORDS.encode(unusual[3])  # as the converter's way refuses it
    for bad in (math.nan, math.inf):
        with pytest.raises(ValueError, match="Out of range float"):
            RECORDS.encode(attrs.evolve(record, created_at=bad))
        with pytest.raises(ValueError, match="Out of range float"):
            HISTORY.encode(Transition(bad, "launch", "created", "launching", 1))
        with pytest.raises(ValueError, match="Out of range float"):
            RECORDS.encode(attrs.evolve(record, state=ProcessState(handle={"x": [bad]})))


def test_the_record_texts_follow_their_spec_and_go_with_it():
    shared = ProcessSpec(argv=("true",))
    one = ProcessRecord("p1", shared, ProcessState(updated_at=1.0), 1.0)
    two = ProcessRecord("p2", shared, ProcessState(updated_at=2.0), 2.0)  # the same spec
    for record in (one, two, one):
        assert RECORDS.encode(record) == RECORDS.encode_generic(record)
    before = len(ENCODE_RECORD)
    del one, two, shared, record
    gc.collect()
    assert len(ENCODE_RECORD) < before


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        (
            {"timeout": True},
            "timeout: got True, expected seconds > 0 and at most 315360000 (10 years), or nothing",
        ),
        ({"timeout": -1}, "timeout: got -1, expected seconds > 0 and at most"),
        (
            {"kill_grace": math.nan},
            "kill_grace: got nan, expected seconds >= 0 and at most 315360000",
        ),
        ({"kill_grace": "x"}, "kill_grace: got 'x', expected seconds >= 0"),
        ({"max_attempts": True}, "max_attempts: got True, expected an integer >= 1"),
        ({"argv": (), "timeout": -1}, "argv: got (), expected a non-empty list of strings"),
        ({"memory_limit": 0}, "memory_limit: got 0, expected bytes > 0, or nothing"),
        ({"labels": {"a": 1}}, "labels: got {'a': 1}, expected a table of string values"),
        (
            {"backend": "mars"},
            "backend: got 'mars', expected one of ['hyperqueue', 'kubernetes', 'local', 'slurm', "
            "'ssh'] (the installed",
        ),
        ({"backend": "ssh"}, "host: missing; backend 'ssh' runs the program on a host"),
        ({"host": "h"}, "host: got 'h', expected nothing for backend 'local'"),
        ({"outputs": ("*.dat",)}, "outputs: got ('*.dat',), expected nothing for backend 'local'"),
        (
            {"backend": "ssh", "host": "h", "inputs": {"../x": "y"}},
            "inputs: got {'../x': 'y'}, expected a table of remote path = local path",
        ),
        (
            {"backend": "ssh", "host": "h", "outputs": ("/etc/*",)},
            "outputs: got ('/etc/*',), expected a list of globs relative to the work dir",
        ),
        (
            {"backend": "ssh", "host": "h", "outputs": ("*.dat",)},
            "outputs_dir: missing; outputs ['*.dat'] need a local directory",
        ),
        (
            {"backend": "ssh", "host": "h", "cwd": "work"},
            "cwd: got 'work', expected an absolute path on the host for backend 'ssh'",
        ),
        (
            {"backend": "ssh", "host": "h", "options": SlurmOptions(time="5")},
            "slurm: got {'time': '5'}, expected nothing for backend 'ssh'",
        ),
        (
            {"backend": "slurm", "host": "h", "options": {"nodes": 1}},
            "options: got {'nodes': 1}, expected the options of backend 'slurm' (SlurmOptions)",
        ),
    ],
)
def test_a_spec_built_in_python_names_the_first_bad_field(fields, message):
    with pytest.raises(ConfigError) as caught:
        ProcessSpec(**{"argv": ("true",), **fields})
    assert str(caught.value).startswith(message)


anything = st.none() | st.booleans() | st.integers(-2, 2) | st.floats() | any_text | st.just({})


@given(
    st.fixed_dictionaries(
        {"argv": st.just(("true",)) | st.tuples(any_text) | anything},
        optional={name: anything for name in ("name", "cwd", "env", "timeout", "restart")}
        | {name: anything for name in ("max_attempts", "kill_grace", "memory_limit")}
        | {name: anything for name in ("pids_limit", "output_limit", "labels", "backend")},
    )
)
@settings(max_examples=300, deadline=None)
def test_a_spec_is_built_or_refused_with_a_config_error_never_anything_else(fields):
    try:
        ProcessSpec(**fields)
    except ConfigError as exc:
        assert str(exc).split(":")[0] in attrs.fields_dict(ProcessSpec)  # names the field


# The stored spec: read without the edge's checks, and migrated ------------------------------


def stored(record: ProcessRecord) -> dict[str, Any]:
    return json.loads(RECORD_CODEC.encode(record))


def test_a_stored_spec_is_read_without_the_edges_checks():
    # A check that a newer corra adds (here: bounds the stored values exceed) must not make
    # an old record unreadable; its types are still checked.
    record = ProcessRecord("p1", ProcessSpec(argv=("true",), backend="slurm", host="c"), *_AT)
    document = stored(record)
    spec = document["data"]["spec"]
    spec.update(kill_grace=1e12, labels={str(i): "v" for i in range(100)}, env={"A-B": "1"})
    spec["slurm"]["time"] = "99999-0"
    decoded = RECORD_CODEC.decode(json.dumps(document).encode())
    assert (decoded.spec.kill_grace, len(decoded.spec.labels)) == (1e12, 100)
    assert decoded.spec.env == {"A-B": "1"} and decoded.spec.options.time == "99999-0"
    with pytest.raises(ConfigError):
        ProcessSpec(argv=("true",), kill_grace=1e12)  # (what the edge refuses)
    spec["kill_grace"] = "soon"
    spec["slurm"]["nodes"] = "2"
    with pytest.raises(CorruptRecord) as caught:
        RECORD_CODEC.decode(json.dumps(document).encode())
    assert "$.data.spec.kill_grace" in str(caught.value)
    assert "$.data.spec.slurm.nodes" in str(caught.value)


_AT = (ProcessState(updated_at=1.0), 1.0)


def test_records_of_schema_2_keep_options_only_in_the_table_named_after_their_backend():
    local = ProcessRecord("p1", ProcessSpec(argv=("true",)), *_AT)
    document = stored(local)
    assert "slurm" not in document["data"]["spec"]  # (schema 3: no table for local)
    document["schema"] = 2
    document["data"]["spec"]["slurm"] = {}  # every spec had one
    assert RECORD_CODEC.decode(json.dumps(document).encode()) == local

    job = ProcessRecord("p2", ProcessSpec(argv=("true",), backend="slurm", host="c"), *_AT)
    document = stored(job)
    document["schema"] = 2
    document["data"]["spec"]["slurm"] = {"partition": "long", "nodes": 1}  # as given
    decoded = RECORD_CODEC.decode(json.dumps(document).encode())
    assert decoded.spec.options == SlurmOptions(partition="long", nodes=1)

    document = stored(local)
    document["schema"] = 2
    document["data"]["spec"]["slurm"] = {"partition": "long"}  # never written by corra
    with pytest.raises(CorruptRecord, match="migration from schema 2 to 3 failed"):
        RECORD_CODEC.decode(json.dumps(document).encode())


def test_the_openapi_spec_schemas_follow_the_specs_fields_and_the_plugins():
    from corra.api._schemas import SCHEMAS
    from corra.processes._convert import SPEC_FIELDS, wire_fields

    assert list(SCHEMAS["ProcessDetail"]["properties"]["spec"]["properties"]) == wire_fields()
    local = SCHEMAS["LocalSpec"]["properties"]
    assert list(local) == [name for name in SPEC_FIELDS if name not in _PLACEMENT]
    slurm = SCHEMAS["RemoteSpec"]["properties"]["slurm"]["properties"]
    assert list(slurm) == [field.name for field in attrs.fields(SlurmOptions)]


_PLACEMENT = ("host", "inputs", "outputs", "outputs_dir")

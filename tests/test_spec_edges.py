"""What a spec (and every other setting a user gives) may hold, refused at the edge: durations
of at most 10 years, strings UTF-8 can encode, sizes within limits, env names a shell can
set where one sets them; and env values that no error, repr or default answer shows.

The API's and the command line's sides of the same checks are in tests/test_api_spec_edges.py;
the Slurm job script's, against the real Slurm, in tests/test_slurm_processes.py.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import attrs
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from corra._errors import ConfigError
from corra._jobfile import load_job_file, parse_job_text
from corra._runtime import open_runtime
from corra.backends.slurm import Slurm, SlurmOptions
from corra.backends.ssh import HostConfig, SshProgramBackend
from corra.backends.ssh._config import parse_host
from corra.processes._convert import parse_options, parse_process_spec
from corra.processes._lifecycle import ProcessState
from corra.processes._record import ProcessRecord
from corra.processes._spec import MAX_SECONDS, ProcessSpec
from corra.processes._spec_content import (
    MAX_LABEL_KEY,
    MAX_LABEL_VALUE,
    MAX_LABELS,
    MAX_SPEC_BYTES,
    content_fits,
    content_problem,
    json_size,
)

SECRET = "s3cr3t-Value"
THIRTY_DAYS = 2_592_000


def refused(fields: dict[str, Any], where: str = "process") -> str:
    """The message of the ConfigError that parsing ``fields`` raises."""
    with pytest.raises(ConfigError) as caught:
        parse_process_spec(fields, where)
    return str(caught.value)


def slurm_fields(**fields: Any) -> dict[str, Any]:
    return {"argv": ["true"], "backend": "slurm", "host": "cluster", **fields}


def python_spec(data: dict[str, Any]) -> ProcessSpec:
    """``data`` as the Python API takes it: lists as tuples, a ``slurm`` table as options."""
    data = {
        key: tuple(value) if key in ("argv", "outputs") else value for key, value in data.items()
    }
    if "slurm" in data:
        data["options"] = SlurmOptions(**data.pop("slurm"))
    return ProcessSpec(**data)


# -- durations (issue 11, item 1: validated at the edge) --------------------------------------


@pytest.mark.parametrize("field", ["timeout", "kill_grace"])
def test_spec_durations_above_ten_years_are_refused_naming_field_value_and_limit(field):
    # A service's 30 days, and the limit itself, are fine.
    assert getattr(parse_process_spec({"argv": ["true"], field: THIRTY_DAYS}), field) == THIRTY_DAYS
    assert getattr(ProcessSpec(argv=("true",), **{field: MAX_SECONDS}), field) == MAX_SECONDS
    for value in (MAX_SECONDS + 1, 1e10, 9.3e9, math.inf, math.nan):
        message = refused({"argv": ["true"], field: value})
        assert message.startswith(f"process.{field}: got {value!r}"), message
        assert f"at most {MAX_SECONDS} (10 years)" in message
        with pytest.raises(ConfigError, match=f"^{field}: got"):
            ProcessSpec(argv=("true",), **{field: value})


def test_job_file_durations_above_ten_years_are_refused():
    with pytest.raises(ConfigError) as caught:
        parse_job_text(
            '[[process]]\nname = "a"\nargv = ["true"]\ntimeout = 1e10\n\n'
            '[[process]]\nname = "b"\nargv = ["true"]\nkill_grace = inf\n',
            "jobs.toml",
        )
    lines = str(caught.value).splitlines()
    assert lines[0].startswith("jobs.toml: process[0] ('a').timeout: got 10000000000.0")
    assert lines[1].startswith("jobs.toml: process[1] ('b').kill_grace: got inf")
    assert all(f"at most {MAX_SECONDS}" in line for line in lines)


@pytest.mark.parametrize(
    ("table", "field"),
    [
        ({"pool": {"max_age": MAX_SECONDS + 1}}, "pool.max_age"),
        ({"pool": {"idle_timeout": 1e12}}, "pool.idle_timeout"),
        ({"pool": {"keepalive_interval": 1e12}}, "pool.keepalive_interval"),
        ({"pool": {"connect_timeout": 1e12}}, "pool.connect_timeout"),
        ({"pool": {"backoff_initial": 1e12}}, "pool.backoff_initial"),
        ({"pool": {"backoff_max": math.inf}}, "pool.backoff_max"),
        ({"slurm": {"poll_interval": 1e12}}, "slurm.poll_interval"),
    ],
)
def test_host_durations_above_ten_years_are_refused_naming_field_value_and_limit(table, field):
    with pytest.raises(ConfigError) as caught:
        parse_host("h", table)
    message = str(caught.value)
    assert message.startswith(f"hosts.h.{field}: got "), message
    assert f"<= {MAX_SECONDS} (10 years)" in message
    section, name = field.split(".")
    parse_host("h", {section: {name: MAX_SECONDS}})  # the limit itself is fine


def test_slurm_time_limits_above_ten_years_are_refused():
    assert parse_options(SlurmOptions, {"time": "3650-0"}, "slurm").time == "3650-0"  # 10 years
    for text in ("3651-0", "5256001", "87601:00:00"):
        with pytest.raises(ConfigError) as caught:
            parse_options(SlurmOptions, {"time": text}, "process.slurm")
        assert str(caught.value).startswith(f"process.slurm.time: got {text!r} (")
        assert f"expected at most {MAX_SECONDS} s (10 years)" in str(caught.value)


async def test_the_runtimes_poll_interval_above_ten_years_is_refused(tmp_path):
    for value in (1e10, math.inf, math.nan, 0, True):
        with pytest.raises(ConfigError, match=r"^remote_poll_interval: got .* at most 315360000"):
            async with open_runtime(state_dir=tmp_path / "state", remote_poll_interval=value):
                pass
    assert not (tmp_path / "state").exists()  # refused before anything was made


@pytest.mark.parametrize("value", [1e10, math.inf, math.nan, 0, -1, True])
def test_durations_of_the_backends_own_specs_and_settings_are_bounded(value):
    # What the runtime checks in a ProcessSpec, the backends check in what they are given
    # directly (one `check_seconds`): a NaN poll interval would poll without a pause.
    with pytest.raises(ConfigError, match=r"^poll_interval: got .* at most 315360000"):
        SshProgramBackend({}, {}, poll_interval=value)
    # (the local backend takes the spec's own durations, checked there once)
    with pytest.raises(ConfigError, match=r"^kill_grace: got .* at most 315360000"):
        ProcessSpec(argv=("true",), kill_grace=value if value != 0 else -1)
    with pytest.raises(ConfigError, match=r"^timeout: got .* at most 315360000"):
        ProcessSpec(argv=("true",), timeout=value)
    ProcessSpec(argv=("true",), timeout=MAX_SECONDS, kill_grace=MAX_SECONDS)  # the limit is fine


def test_a_launch_spec_never_shows_env_values():
    # (the local backend's specs are the process specs: one check, one repr)
    spec = ProcessSpec(argv=("true",), env={"TOKEN": SECRET})
    assert SECRET not in repr(spec) and "'TOKEN': '***'" in repr(spec)
    assert spec.env == {"TOKEN": SECRET}
    for env in ({"TOKEN": SECRET + "\0"}, [("TOKEN", SECRET)]):
        with pytest.raises(ConfigError, match=r"^env") as caught:
            ProcessSpec(argv=("true",), env=env)  # type: ignore[arg-type]
        assert SECRET not in str(caught.value)


# -- strings UTF-8 cannot encode (item 6) -----------------------------------------------------

LONE = "\ud800"


@pytest.mark.parametrize(
    ("fields", "path"),
    [
        ({"argv": ["true", f"a{LONE}"]}, "argv[1]"),
        ({"argv": [LONE]}, "argv[0]"),
        ({"cwd": f"/tmp/{LONE}"}, "cwd"),
        ({"labels": {"k": LONE}}, "labels.k"),
        ({"labels": {LONE: "v"}}, "labels"),
        ({"env": {"A": f"x{LONE}"}}, "env.A"),
        ({"env": {LONE: "x"}}, "env"),
        (slurm_fields(inputs={"in.txt": f"/data/{LONE}"}), "inputs.in.txt"),
        (slurm_fields(inputs={f"in{LONE}": "/data/x"}), "inputs"),
        (slurm_fields(outputs=[f"*{LONE}"], outputs_dir="/tmp/out"), "outputs[0]"),
        (slurm_fields(outputs=["*"], outputs_dir=f"/tmp/{LONE}"), "outputs_dir"),
        (slurm_fields(slurm={"partition": LONE}), "slurm.partition"),
        (slurm_fields(slurm={"extra": ["--x", LONE]}), "slurm.extra"),
        (slurm_fields(slurm={LONE: "x"}), "slurm"),
    ],
)
def test_strings_utf8_cannot_encode_are_refused_naming_the_field(fields, path):
    # (names and hosts are ASCII by their patterns already: see the last assertions)
    message = refused({"argv": ["true"], **fields})
    assert message.startswith(f"process.{path}: got "), message
    assert "expected text that UTF-8 can encode" in message
    assert "lone surrogate '\\ud800'" in message
    message.encode()  # the message itself can be printed, logged and sent
    if path != "slurm":  # (options are a SlurmOptions there, which has no such field)
        with pytest.raises(ConfigError, match=f"^{path.split('.')[0].split('[')[0]}"):
            python_spec({"argv": ["true"], **fields})  # the Python API, too
    assert refused({"argv": ["true"], "name": f"n{LONE}"}).startswith(
        "process.name: got 'n\\ud800'"
    )
    assert refused(slurm_fields(host=f"c{LONE}")).startswith("process.host: got 'c\\ud800'")


async def test_the_python_api_refuses_a_lone_surrogate_and_creates_nothing(tmp_path):
    async with open_runtime(state_dir=tmp_path / "state", durable=False) as runtime:
        with pytest.raises(ConfigError, match=r"^process\.labels\.k: got '\\ud800'"):
            await runtime.spawn_process(["true"], labels={"k": LONE})
        with pytest.raises(ConfigError, match=r"^process\.argv\[1\]: got '\\udfff'"):
            await runtime.spawn_process({"argv": ["echo", "\udfff"]})
        assert runtime.processes.list() == []


def test_a_job_file_cannot_carry_a_lone_surrogate(tmp_path):
    escaped = tmp_path / "escaped.toml"
    escaped.write_text('[[process]]\nname = "a"\nargv = ["true"]\nlabels = { k = "\\ud800" }\n')
    with pytest.raises(ConfigError, match=r"escaped\.toml: not valid TOML"):
        load_job_file(escaped)
    raw = tmp_path / "raw.toml"  # the surrogate's bytes as CESU/WTF-8 would write them
    raw.write_bytes(b'[[process]]\nname = "a"\nargv = ["true", "\xed\xa0\x80"]\n')
    with pytest.raises(ConfigError, match=r"raw\.toml: cannot read"):
        load_job_file(raw)


# -- sizes (item 16) --------------------------------------------------------------------------


def test_labels_are_bounded_naming_field_value_and_limit():
    most = {f"k{i:02d}".ljust(MAX_LABEL_KEY, "k"): "v" * MAX_LABEL_VALUE for i in range(MAX_LABELS)}
    assert parse_process_spec({"argv": ["true"], "labels": most}).labels == most

    many = {str(i): "" for i in range(MAX_LABELS + 1)}
    assert refused({"argv": ["true"], "labels": many}) == (
        "process.labels: got 65 labels, expected at most 64"
    )
    message = refused({"argv": ["true"], "labels": {"k" * (MAX_LABEL_KEY + 1): "v"}})
    assert message.startswith("process.labels: got the key 'kkkk")
    assert message.endswith("... (129 characters), expected keys of at most 128 characters")
    message = refused({"argv": ["true"], "labels": {"team": "v" * (MAX_LABEL_VALUE + 1)}})
    assert message.startswith("process.labels.team: got 'vvvv")
    assert message.endswith("... (1025 characters), expected at most 1024 characters")


@pytest.mark.parametrize("field", ["argv", "env", "cwd", "name"])
def test_a_spec_is_at_most_a_mebibyte_as_json_naming_the_largest_field(field):
    big = "x" * MAX_SPEC_BYTES
    fields = {
        "argv": {"argv": ["true", big]},
        "env": {"env": {"BIG": big}},
        "cwd": {"cwd": "/" + big},
        "name": {"labels": {str(i): "v" * 1000 for i in range(40)}, "argv": ["a"] * 400_000},
    }[field]
    fields = {"argv": ["true"], **fields}
    message = refused(fields)
    largest = "argv" if field == "name" else field
    assert message.startswith(f"process.{largest}: got "), message[:200]
    assert f"expected a whole spec of at most {MAX_SPEC_BYTES} bytes (1 MiB)" in message
    assert len(message) < 400  # the value abbreviated: an error is read, not scrolled


def test_a_spec_just_under_a_mebibyte_is_accepted_and_just_over_is_not():
    base = json_size(ProcessSpec(argv=("true", "")))
    fits = parse_process_spec({"argv": ["true", "é" * ((MAX_SPEC_BYTES - base) // 2)]})
    assert json_size(fits) <= MAX_SPEC_BYTES
    over = "é" * ((MAX_SPEC_BYTES - base) // 2) + "x" * 2
    assert refused({"argv": ["true", over]}).startswith("process.argv: got ")


# The fast check of every submission agrees with the full one, near every limit.
texts = st.text(st.characters(codec=None, exclude_categories=("Cc",)), max_size=6)
#: Strings of one character repeated, up to beyond the whole spec's limit.
long_texts = st.builds(
    lambda character, count: character * count,
    st.sampled_from(["a", "é", "\0", "\U0001f600", LONE]),
    st.sampled_from([0, 1, 1000, MAX_SPEC_BYTES // 6, MAX_SPEC_BYTES // 2, MAX_SPEC_BYTES]),
)


@st.composite
def raw_specs(draw: st.DrawFn) -> ProcessSpec:
    """A spec built without its checks (so that anything near a limit can be tried)."""
    spec = object.__new__(ProcessSpec)
    key_length = st.sampled_from([0, 1, MAX_LABEL_KEY, MAX_LABEL_KEY + 1])
    value_length = st.sampled_from([0, 1, MAX_LABEL_VALUE, MAX_LABEL_VALUE + 1])
    labels = draw(
        st.dictionaries(
            st.builds(lambda n, t: t + "k" * n, key_length, texts),
            st.builds(lambda n, t: t + "v" * n, value_length, texts),
            max_size=draw(st.sampled_from([3, MAX_LABELS + 1])),
        )
    )
    fields = {
        "argv": tuple(draw(st.lists(texts | long_texts, min_size=1, max_size=4))),
        "name": None,
        "cwd": draw(st.none() | texts),
        "env": draw(st.dictionaries(texts, texts | long_texts, max_size=3)),
        "timeout": None,
        "restart": "temporary",
        "max_attempts": 3,
        "kill_grace": 10.0,
        "memory_limit": None,
        "pids_limit": None,
        "labels": labels,
        "backend": "slurm",
        "host": draw(texts),
        "inputs": draw(st.dictionaries(texts, texts, max_size=2)),
        "outputs": tuple(draw(st.lists(texts, max_size=2))),
        "outputs_dir": draw(st.none() | texts),
        "options": draw(raw_slurm_options()),
    }
    for field in attrs.fields(ProcessSpec):  # a field added later keeps its default
        default = field.default
        if isinstance(default, attrs.Factory):  # type: ignore[arg-type]
            default = default.factory()
        object.__setattr__(spec, field.name, fields.get(field.name, default))
    return spec


@st.composite
def raw_slurm_options(draw: st.DrawFn) -> SlurmOptions:
    """Slurm options built without their checks (anything near a limit)."""
    options = object.__new__(SlurmOptions)
    fields = {
        "partition": draw(st.none() | texts | long_texts),
        "nodes": draw(st.none() | st.integers()),
        "extra": tuple(draw(st.lists(texts | long_texts, max_size=2))),
    }
    for field in attrs.fields(SlurmOptions):
        object.__setattr__(options, field.name, fields.get(field.name, field.default))
    return options


@given(raw_specs())
@settings(max_examples=300, deadline=None)
def test_the_fast_content_check_agrees_with_the_full_one(spec):
    assert content_fits(spec) == (content_problem(spec) is None)


# -- env names where a shell sets them (item 5) -----------------------------------------------


@pytest.mark.parametrize("name", ["X;touch pwned;Y", "A-B", "1A", "A B", "A\nB", "É"])
def test_env_names_a_shell_cannot_set_are_refused_for_slurm_naming_them(name):
    message = refused(slurm_fields(env={name: SECRET}))
    assert message.startswith("process.env."), message
    assert f"got the name {name!r}, expected a name matching [A-Za-z_][A-Za-z0-9_]*" in message
    assert "for backend 'slurm'" in message
    assert SECRET not in message
    # Where no shell is involved (execve's environment), any name without '=' is fine.
    assert parse_process_spec({"argv": ["true"], "env": {name: "x"}}).env == {name: "x"}


def test_the_job_script_refuses_what_it_could_not_quote():
    slurm = Slurm()
    render = {"run_dir": "/r", "work_dir": "/r/w", "options": SlurmOptions()}
    with pytest.raises(ConfigError, match=r"^env: got the name 'X;touch pwned;Y'"):
        slurm.render("k.1", ["true"], env={"X;touch pwned;Y": "1"}, **render)
    for run_dir in ("/home/a b/jobs", "/tmp/x\ntouch pwned", "/tmp/%j", "/tmp/#x", '/t"'):
        with pytest.raises(ConfigError, match=r"^run dir: got .*work_root"):
            slurm.render("k.1", ["true"], **{**render, "run_dir": run_dir})
    script = slurm.render(
        "k.1",
        ["printf", "%s", "a b"],
        env={"A": "it's $(x) `y`\nz"},
        timeout=1234567.25,
        kill_grace=0.5,
        **render,
    )
    assert "export A='it'\"'\"'s $(x) `y`\nz'\n" in script
    # Durations exactly (``:g`` made 1234567.25 into 1.23457e+06), each word quoted.
    assert "timeout --kill-after=0.5s 1234567.25s printf %s 'a b'\n" in script


# -- env values are never shown (item 17) -----------------------------------------------------


@pytest.mark.parametrize(
    "fields",
    [
        {"env": {"TOKEN": SECRET, "A=B": SECRET}},
        {"env": {"TOKEN": SECRET + "\0"}},
        {"env": {"TOKEN": SECRET, "PORT": 8080}},
        {"env": {"TOKEN": SECRET + LONE}},
        {"env": f"TOKEN={SECRET}"},
        {"env": [SECRET]},
        {"env": {"TOKEN": SECRET}, "timeout": -1},
        {"env": {"TOKEN": SECRET}, "slurm": {"time": "5"}},
        {"env": {"TOKEN": SECRET}, "bogus": 1},
        {"env": {"TOKEN": SECRET, "BIG": "x" * MAX_SPEC_BYTES}},
        {**slurm_fields(env={"TOKEN": SECRET, "A-B": SECRET})},
    ],
)
def test_errors_never_show_env_values(fields):
    data = {"argv": ["true"], **fields}
    assert SECRET not in refused(data)
    if "bogus" not in data:  # (a keyword ProcessSpec lacks: Python's TypeError, no values)
        with pytest.raises(ConfigError) as caught:
            python_spec(data)
        assert SECRET not in str(caught.value)


@pytest.mark.parametrize(
    "data",
    [[{"argv": ["true"], "env": {"TOKEN": SECRET}}], ({"env": {"TOKEN": SECRET}},), SECRET],
    ids=["list", "tuple", "text"],
)
def test_a_spec_that_is_not_a_table_is_refused_without_its_env_values(data):
    # (an API body that is a list of specs, say: the message shows what came, env hidden)
    message = refused(data)  # type: ignore[arg-type]
    assert message.startswith("process: expected a table of fields, got ")
    if not isinstance(data, str):
        assert SECRET not in message
        assert "'TOKEN': '***'" in message


def test_repr_of_a_spec_and_its_record_never_show_env_values():
    spec = ProcessSpec(argv=("true",), env={"TOKEN": SECRET})
    record = ProcessRecord("p1", spec, ProcessState(), 0.0)
    for text in (repr(spec), str(spec), repr(record), repr(attrs.evolve(spec, name="n"))):
        assert SECRET not in text
        assert "'TOKEN': '***'" in text
    assert spec.env == {"TOKEN": SECRET}  # hidden from view, not lost


@pytest.mark.parametrize(
    "text",
    [
        # another field's error, beside the env
        f'[[process]]\nname = "a"\nargv = ["true"]\ntimeout = -1\nenv = {{ TOKEN = "{SECRET}" }}\n',
        # an env from [defaults], merged
        f'[defaults]\nenv = {{ TOKEN = "{SECRET}" }}\n\n[[process]]\nname = "a"\nargv = 1\n',
        f'[[process]]\nname = "a"\nargv = ["true"]\nenv = {{ TOKEN = "{SECRET}", N = 1 }}\n',
        # a table where [[process]] tables belong: the whole of it is shown
        f'process = {{ name = "a", argv = ["true"], env = {{ TOKEN = "{SECRET}" }} }}\n',
        f'process = ["a", {{ env = {{ TOKEN = "{SECRET}" }} }}]\n',
        f'defaults = [{{ env = {{ TOKEN = "{SECRET}" }} }}]\n'
        '[[process]]\nname = "a"\nargv = ["x"]\n',
        f'[hosts.h]\nenv = {{ SLURM_CONF = 1, TOKEN = "{SECRET}" }}\n\n'
        '[[process]]\nname = "a"\nargv = ["true"]\n',
    ],
)
def test_job_file_errors_never_show_env_values(text):
    with pytest.raises(ConfigError) as caught:
        parse_job_text(text, "jobs.toml")
    assert SECRET not in str(caught.value), str(caught.value)


def test_host_env_errors_never_show_its_values():
    with pytest.raises(ConfigError) as caught:
        HostConfig(name="h", env={"TOKEN": SECRET, "N": 1})  # type: ignore[dict-item]
    assert SECRET not in str(caught.value)
    assert "'TOKEN': '***'" in str(caught.value)


def test_a_job_file_with_secrets_fails_without_a_traceback_or_its_values(tmp_path: Path):
    job = tmp_path / "jobs.toml"
    job.write_text(
        f'[[process]]\nname = "a"\nargv = ["true"]\nenv = {{ TOKEN = "{SECRET}" }}\n'
        "kill_grace = 1e99\n"
    )
    with pytest.raises(ConfigError) as caught:
        load_job_file(job)
    assert str(caught.value).startswith(f"{job}: process[0] ('a').kill_grace: got 1e+99")
    assert SECRET not in str(caught.value)


# -- a backend's options: its plug-in's class, structured once (issue 12) ---------------------


def test_a_backends_options_table_is_structured_into_its_plugins_class_with_field_paths():
    spec = parse_process_spec(slurm_fields(slurm={"time": "1:00", "extra": ["--exclusive"]}))
    assert spec.options == SlurmOptions(time="1:00", extra=("--exclusive",))
    assert parse_process_spec(slurm_fields()).options == SlurmOptions()  # its defaults
    assert ProcessSpec(argv=("true",), backend="slurm", host="c").options == SlurmOptions()
    assert parse_process_spec({"argv": ["true"]}).options is None  # local takes none
    assert refused(slurm_fields(slurm={"time": 5, "nodes": "2"})) == (
        "process.slurm.time: got 5, expected a string; "
        "process.slurm.nodes: got '2', expected an integer"
    )
    assert refused(slurm_fields(slurm={"time": "soon"})).startswith(
        "process.slurm.time: got 'soon', expected a time limit"
    )
    assert refused(slurm_fields(slurm={"bogus": 1})).startswith(
        "process.slurm: unknown field(s) bogus; expected some of account, array"
    )
    assert refused(slurm_fields(slurm=["--x"])) == "process.slurm: got ['--x'], expected a table"
    # On the wire the table is named after the backend; "options" is no key there.
    assert refused({"argv": ["true"], "options": {}}).startswith(
        "process: unknown field(s) ['options']"
    )
    assert refused({"argv": ["true"], "slurm": {"time": "5"}}) == (
        "process.slurm: got {'time': '5'}, expected nothing for backend 'local' "
        "(only backend 'slurm' has it)"
    )
    # An empty table of another backend says nothing (every spec has always shown one).
    assert parse_process_spec({"argv": ["true"], "slurm": {}}).options is None


def test_an_unknown_backend_is_refused_naming_the_installed_ones():
    assert refused({"argv": ["true"], "backend": "pbs"}) == (
        "process.backend: got 'pbs', expected one of ['hyperqueue', 'kubernetes', 'local', "
        "'slurm', 'ssh'] (the installed backends: corra backends)"
    )


def test_where_a_field_belongs_is_its_backends_capabilities():
    # ssh has hosts and staging but takes its env without a shell; slurm through one.
    assert parse_process_spec(
        {"argv": ["true"], "backend": "ssh", "host": "h", "env": {"A-B": "1"}}
    ).env == {"A-B": "1"}
    assert refused(slurm_fields(env={"A-B": "1"})).startswith("process.env.A-B: got the name")
    assert refused({"argv": ["true"], "inputs": {"a": "b"}}).startswith(
        "process.inputs: got {'a': 'b'}, expected nothing for backend 'local' "
        "(only backends ['slurm', 'ssh'] have it)"
    )

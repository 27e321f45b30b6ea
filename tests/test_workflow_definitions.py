"""Job definitions: every validation error by its message, params, each step's spec, the
order of steps, the stored copy, and jobs in a job file (through `corra.load_job_file`)."""

from __future__ import annotations

import itertools
import json
import subprocess
import sys
import textwrap

import pytest
from hypothesis import given
from hypothesis import strategies as st

import corra
from corra._errors import WorkflowError
from corra._jobfile import load_job_file, parse_job_text
from corra.workflows import (
    JobDefinition,
    StepDefinition,
    apply_params,
    job_data,
    job_from_data,
    job_result,
    parse_jobs,
    parse_template,
    result_step,
    step_items,
    step_runs,
    step_spec,
    topological_order,
    upstream,
)

#: The issue's example, as given (with the host it names).
EXAMPLE = """
[hosts.cluster]
hostname = "login.cluster.example.org"

[[job]]
name = "pipeline"              # requested by this name
params = { samples = 3 }       # defaults, overridden per request

[[job.step]]
name = "prepare"
argv = ["python3", "prepare.py", "--samples", "${params.samples}"]   # writes {"items": [...]}

[[job.step]]
name = "work"
needs = ["prepare"]
for_each = "${steps.prepare.result.items}"   # one step per item: work[0], work[1], ...
argv = ["python3", "work.py", "${item}"]
backend = "slurm"                            # any process field, any backend
host = "cluster"
restart = "transient"

[[job.step]]
name = "report"
needs = ["work"]
when = "${steps.prepare.result.items}"       # a restricted expression
argv = ["python3", "report.py"]
"""


def jobs_of(text: str) -> dict[str, JobDefinition]:
    return parse_job_text(textwrap.dedent(text), "jobs.toml").jobs


def errors_of(text: str) -> list[str]:
    with pytest.raises(corra.ConfigError) as info:
        parse_job_text(textwrap.dedent(text), "jobs.toml")
    return str(info.value).splitlines()


def test_the_issues_example_parses():
    job = jobs_of(EXAMPLE)["pipeline"]
    assert job.params == {"samples": 3}
    assert [step.name for step in job.steps] == ["prepare", "work", "report"]
    work = job.step("work")
    assert work.needs == ("prepare",)
    assert work.for_each == parse_template("${steps.prepare.result.items}")
    assert dict(work.process) == {
        "argv": ["python3", "work.py", "${item}"],
        "backend": "slurm",
        "host": "cluster",
        "restart": "transient",
    }
    assert job.step("report").when == parse_template("${steps.prepare.result.items}")
    assert topological_order(job) == ("prepare", "work", "report")
    assert upstream(job, "report") == {"prepare", "work"}
    assert result_step(job) == "report"


def test_a_file_may_have_jobs_processes_or_both_and_defaults_apply_to_steps(tmp_path):
    path = tmp_path / "both.toml"
    path.write_text(
        textwrap.dedent("""
        [defaults]
        timeout = 30
        env = { A = "1" }
        labels = { team = "x" }

        [[process]]
        name = "alone"
        argv = ["true"]

        [[job]]
        name = "j"
        description = "one step"

        [[job.step]]
        name = "s"
        argv = ["echo", "${params.who}"]
        env = { B = "2" }
        """).replace('"${params.who}"', '"hi"')
    )
    job_file = load_job_file(path)
    assert [spec.name for spec in job_file.processes] == ["alone"]
    job = job_file.jobs["j"]
    assert job.description == "one step"
    assert dict(job.steps[0].process) == {
        "timeout": 30,
        "env": {"A": "1", "B": "2"},
        "labels": {"team": "x"},
        "argv": ["echo", "hi"],
    }
    only_jobs = tmp_path / "jobs.toml"
    only_jobs.write_text('[[job]]\nname = "j"\n[[job.step]]\nname = "s"\nargv = ["true"]\n')
    assert load_job_file(only_jobs).processes == ()
    assert list(load_job_file(only_jobs).jobs) == ["j"]


def test_a_file_with_neither_has_nothing_to_run():
    assert errors_of("[defaults]\ntimeout = 1\n") == [
        "jobs.toml: no [[process]] or [[job]] tables; nothing to run"
    ]


def test_corra_run_of_a_file_with_only_jobs_says_how_to_run_them(tmp_path):
    path = tmp_path / "jobs.toml"
    path.write_text('[[job]]\nname = "j"\n[[job.step]]\nname = "s"\nargv = ["true"]\n')
    done = subprocess.run(
        [sys.executable, "-m", "corra.cli", "run", "--state-dir", str(tmp_path / "s"), str(path)],
        capture_output=True,
        text=True,
        check=False,
        timeout=60,
    )
    assert done.returncode != 0
    assert "has no [[process]] tables, only the job(s) 'j'" in done.stderr
    assert "Traceback" not in done.stderr


STEP = '[[job.step]]\nname = "s"\nargv = ["true"]\n'


@pytest.mark.parametrize(
    "text,errors",
    [
        pytest.param(
            '[[job]]\nname = "j"\nbogus = 1\n' + STEP,
            [
                "jobs.toml: job 'j': unknown field(s) ['bogus']; expected some of name, "
                "description, params, result, step"
            ],
            id="unknown job field",
        ),
        pytest.param(
            '[[job]]\nname = "j"\n[[job.step]]\nname = "s"\nargv = ["true"]\nfrob = 1\n',
            [
                "jobs.toml: job 'j' step 's': unknown field(s) ['frob']; expected some of name, "
                "needs, for_each, when, continue_on_failure, and a process's: argv, cwd, env, "
                "timeout, restart, max_attempts, kill_grace, memory_limit, pids_limit, "
                "output_limit, labels, backend, host, inputs, outputs, outputs_dir, hyperqueue, "
                "kubernetes, slurm"
            ],
            id="unknown step field",
        ),
        pytest.param(
            '[[job]]\nname = "j"\n' + STEP + '[[job]]\nname = "j"\n' + STEP,
            ["jobs.toml: job[1].name: 'j' is the name of job[0] already"],
            id="duplicate job",
        ),
        pytest.param(
            "[[job]]\n" + STEP,
            ["jobs.toml: job[0].name: missing; every job needs a name"],
            id="job without a name",
        ),
        pytest.param(
            '[[job]]\nname = "a b"\n' + STEP,
            ["jobs.toml: job[0].name: got 'a b', expected ^[A-Za-z0-9][A-Za-z0-9_.@+-]{0,127}$"],
            id="bad job name",
        ),
        pytest.param(
            '[[job]]\nname = "j"\n' + STEP + STEP,
            ["jobs.toml: job 'j' step[1].name: 's' is the name of step[0] already"],
            id="duplicate step",
        ),
        pytest.param(
            '[[job]]\nname = "j"\n[[job.step]]\nname = "s[0]"\nargv = ["true"]\n',
            ["jobs.toml: job 'j' step[0].name: got 's[0]', expected ^[A-Za-z][A-Za-z0-9_-]{0,63}$"],
            id="bad step name",
        ),
        pytest.param(
            '[[job]]\nname = "j"\n[[job.step]]\nargv = ["true"]\n',
            ["jobs.toml: job 'j' step[0].name: missing; every step needs a name"],
            id="step without a name",
        ),
        pytest.param(
            '[[job]]\nname = "j"\n',
            ["jobs.toml: job 'j': no [[job.step]] tables; a job needs at least one step"],
            id="no steps",
        ),
        pytest.param(
            '[[job]]\nname = "j"\n' + STEP + 'needs = ["t"]\n',
            ["jobs.toml: job 'j' step 's'.needs: no step 't' in the job (its steps: 's')"],
            id="needs naming no step",
        ),
        pytest.param(
            '[[job]]\nname = "j"\n' + STEP + 'needs = "t"\n',
            ["jobs.toml: job 'j' step 's'.needs: got 't', expected a list of step names"],
            id="needs not a list",
        ),
        pytest.param(
            '[[job]]\nname = "j"\n[[job.step]]\nname = "a"\nargv = ["true"]\nneeds = ["c"]\n'
            '[[job.step]]\nname = "b"\nargv = ["true"]\nneeds = ["a"]\n'
            '[[job.step]]\nname = "c"\nargv = ["true"]\nneeds = ["b"]\n',
            [
                "jobs.toml: job 'j' step 'a'.needs: a cycle: a -> b -> c -> a (each step needs "
                "the one before it)"
            ],
            id="cycle",
        ),
        pytest.param(
            '[[job]]\nname = "j"\n' + STEP + 'needs = ["s"]\n',
            [
                "jobs.toml: job 'j' step 's'.needs: a cycle: s -> s (each step needs the one "
                "before it)"
            ],
            id="a step needing itself",
        ),
        pytest.param(
            '[[job]]\nname = "j"\n[[job.step]]\nname = "a"\nargv = ["true"]\n'
            '[[job.step]]\nname = "b"\nargv = ["${steps.a.result}"]\n',
            [
                "jobs.toml: job 'j' step 'b'.argv[0]: ${steps.a.result}: step 'a' is not "
                "upstream of this step (add it to needs)"
            ],
            id="a step that is not upstream",
        ),
        pytest.param(
            '[[job]]\nname = "j"\n[[job.step]]\nname = "a"\nargv = ["true"]\n'
            '[[job.step]]\nname = "b"\nargv = ["true"]\nneeds = ["a"]\n'
            '[[job.step]]\nname = "c"\nargv = ["true"]\nneeds = ["a"]\n'
            "when = \"${steps.b.phase == 'finished'}\"\n",
            [
                "jobs.toml: job 'j' step 'c'.when: ${steps.b.phase == 'finished'}: step 'b' is "
                "not upstream of this step (add it to needs)"
            ],
            id="a sibling is not upstream",
        ),
        pytest.param(
            '[[job]]\nname = "j"\n' + STEP + 'cwd = "${steps.zz.result}"\n',
            ["jobs.toml: job 'j' step 's'.cwd: ${steps.zz.result}: the job has no step 'zz'"],
            id="a step that does not exist",
        ),
        pytest.param(
            '[[job]]\nname = "j"\n' + STEP + 'for_each = "${steps.s.result}"\n',
            [
                "jobs.toml: job 'j' step 's'.for_each: ${steps.s.result}: step 's' cannot use "
                "its own result"
            ],
            id="a step's own result",
        ),
        pytest.param(
            '[[job]]\nname = "j"\nparams = { n = 1 }\n' + STEP + 'env = { N = "${params.m}" }\n',
            [
                "jobs.toml: job 'j' step 's'.env.N: ${params.m}: the job has no param 'm' "
                "(its params: 'n')"
            ],
            id="no such param",
        ),
        pytest.param(
            '[[job]]\nname = "j"\nresult = "${params.m}"\n' + STEP,
            ["jobs.toml: job 'j'.result: ${params.m}: the job has no param 'm' (its params: none)"],
            id="no such param in the result",
        ),
        pytest.param(
            '[[job]]\nname = "j"\nresult = "${steps.t.result}"\n' + STEP,
            ["jobs.toml: job 'j'.result: ${steps.t.result}: the job has no step 't'"],
            id="no such step in the result",
        ),
        pytest.param(
            '[[job]]\nname = "j"\n[[job.step]]\nname = "s"\nargv = ["echo", "${item.x}"]\n',
            [
                "jobs.toml: job 'j' step 's'.argv[1]: ${item.x}: there is no item: the step "
                "has no for_each"
            ],
            id="item without for_each",
        ),
        pytest.param(
            '[[job]]\nname = "j"\n' + STEP + 'for_each = "${item}"\n',
            [
                "jobs.toml: job 'j' step 's'.for_each: ${item}: there is no item yet: for_each "
                "gives the items"
            ],
            id="item in for_each",
        ),
        pytest.param(
            '[[job]]\nname = "j"\n' + STEP + 'for_each = [1]\nwhen = "${item}"\n',
            [
                "jobs.toml: job 'j' step 's'.when: ${item}: there is no item in when: it decides "
                "for the whole step, before its items"
            ],
            id="item in when",
        ),
        pytest.param(
            '[[job]]\nname = "j"\nresult = "${item}"\n' + STEP,
            [
                "jobs.toml: job 'j'.result: ${item}: there is no item: the job's result is not "
                "a step's"
            ],
            id="item in the result",
        ),
        pytest.param(
            '[[job]]\nname = "j"\n[[job.step]]\nname = "s"\nargv = ["echo", "${item +}"]\n',
            [
                "jobs.toml: job 'j' step 's'.argv[1]: '${item +}', column 8: unexpected "
                "character '+'"
            ],
            id="an expression that does not parse",
        ),
        pytest.param(
            '[[job]]\nname = "j"\n' + STEP + "when = \"${steps.a.phase = 'x'}\"\n",
            [
                "jobs.toml: job 'j' step 's'.when: \"${steps.a.phase = 'x'}\", column 17: "
                "unexpected character '='; did you mean '=='?"
            ],
            id="when that does not parse",
        ),
        pytest.param(
            '[[job]]\nname = "j"\n' + STEP + 'when = "run ${params.x}"\n',
            [
                "jobs.toml: job 'j' step 's'.when: got 'run ${params.x}', expected one ${...} "
                "expression and no text"
            ],
            id="when with text",
        ),
        pytest.param(
            '[[job]]\nname = "j"\n' + STEP + "when = true\n",
            ["jobs.toml: job 'j' step 's'.when: got True, expected a string with ${...}"],
            id="when not a string",
        ),
        pytest.param(
            '[[job]]\nname = "j"\n' + STEP + 'for_each = "a,b"\n',
            [
                "jobs.toml: job 'j' step 's'.for_each: got 'a,b', expected one ${...} "
                "expression and no text"
            ],
            id="for_each a plain string",
        ),
        pytest.param(
            '[[job]]\nname = "j"\n' + STEP + "for_each = [1, 1979-05-27]\n",
            [
                "jobs.toml: job 'j' step 's'.for_each: got [1, datetime.date(1979, 5, 27)], "
                "expected a list of JSON values"
            ],
            id="for_each a list of other values",
        ),
        pytest.param(
            '[[job]]\nname = "j"\n' + STEP + 'continue_on_failure = "yes"\n',
            ["jobs.toml: job 'j' step 's'.continue_on_failure: got 'yes', expected true or false"],
            id="continue_on_failure not a boolean",
        ),
        pytest.param(
            '[[job]]\nname = "j"\nparams = { n = 1 }\n' + STEP + 'timeout = "${params.n}"\n',
            [
                "jobs.toml: job 'j' step 's'.timeout: got '${params.n}'; ${...} may stand only "
                "in argv, env values and cwd"
            ],
            id="a template in timeout",
        ),
        pytest.param(
            '[hosts.c]\nhostname = "h"\n[[job]]\nname = "j"\n'
            + STEP
            + 'backend = "slurm"\nhost = "c"\nslurm = { partition = "${x}" }\n',
            [
                "jobs.toml: job 'j' step 's'.slurm.partition: got '${x}'; ${...} may stand "
                "only in argv, env values and cwd"
            ],
            id="a template in a backend's table",
        ),
        pytest.param(
            '[[job]]\nname = "j"\n' + STEP + 'env = { "${N}" = "1" }\n',
            ["jobs.toml: job 'j' step 's'.env: the name '${N}'; ${...} may not stand there"],
            id="a template in an env name",
        ),
        pytest.param(
            '[[job]]\nname = "j"\n' + STEP + "timeout = -1\n",
            [
                "jobs.toml: job 'j' step 's'.timeout: got -1.0, expected seconds > 0 and at most "
                "315360000 (10 years), or nothing"
            ],
            id="a process field",
        ),
        pytest.param(
            '[[job]]\nname = "j"\n[[job.step]]\nname = "s"\n',
            ["jobs.toml: job 'j' step 's'.argv: missing; expected a non-empty list of strings"],
            id="a step without argv",
        ),
        pytest.param(
            '[[job]]\nname = "j"\n' + STEP + 'backend = "ssh"\nhost = "nowhere"\n',
            [
                "jobs.toml: job 'j' step 's'.host: got 'nowhere', expected one of the "
                "[hosts.NAME] tables []"
            ],
            id="a host the file does not have",
        ),
        pytest.param(
            '[[job]]\nname = "j"\nparams = { "a b" = 1, d = 1979-05-27 }\n' + STEP,
            [
                "jobs.toml: job 'j'.params: got the name 'a b', expected a name matching "
                "[A-Za-z_][A-Za-z0-9_-]*",
                "jobs.toml: job 'j'.params.d: got datetime.date(1979, 5, 27), expected a JSON "
                "value (a string, a number, true or false, a list or a table of them)",
            ],
            id="bad params",
        ),
        pytest.param(
            '[[job]]\nname = "j"\ndescription = 1\n' + STEP,
            ["jobs.toml: job 'j'.description: got 1, expected a string"],
            id="description not a string",
        ),
        pytest.param(
            '[job]\nname = "j"\n',
            ["jobs.toml: job: expected [[job]] tables, got {'name': 'j'}"],
            id="job not an array",
        ),
    ],
)
def test_every_validation_error_names_the_file_job_step_and_field(text, errors):
    assert errors_of(text) == errors


def test_every_error_of_a_file_is_reported_at_once():
    errors = errors_of("""
        [[process]]
        name = "p"
        argv = "no"

        [[job]]
        name = "j"
        params = { n = 1 }

        [[job.step]]
        name = "a"
        argv = ["echo", "${params.m}", "${steps.b.result}"]
        needs = ["c"]
        timeout = "${params.n}"

        [[job.step]]
        name = "b"
        argv = ["x"]
        needs = ["a", "nope"]

        [[job.step]]
        name = "c"
        argv = ["x"]
        needs = ["b"]

        [[job]]
        name = "k"
        result = "${item}"
        """)
    assert errors == [
        "jobs.toml: process[0] ('p').argv: got 'no', expected a list of strings",
        "jobs.toml: job 'j' step 'a'.timeout: got '${params.n}'; ${...} may stand only in "
        "argv, env values and cwd",
        "jobs.toml: job 'j' step 'b'.needs: no step 'nope' in the job (its steps: 'a', 'b', 'c')",
        "jobs.toml: job 'j' step 'a'.needs: a cycle: a -> b -> c -> a (each step needs the one "
        "before it)",
        "jobs.toml: job 'j' step 'a'.argv[1]: ${params.m}: the job has no param 'm' (its "
        "params: 'n')",
        "jobs.toml: job 'k': no [[job.step]] tables; a job needs at least one step",
        "jobs.toml: job 'k'.result: ${item}: there is no item: the job's result is not a step's",
    ]


def test_escaped_dollars_are_text_and_other_fields_may_hold_them():
    job = jobs_of("""
        [[job]]
        name = "j"
        [[job.step]]
        name = "s"
        argv = ["echo", "$${HOME} ${'$'}5"]
        labels = { note = "costs $${x}" }
        """)["j"]
    spec = step_spec(job, job.steps[0], {"params": {}, "steps": {}})
    assert spec.argv == ("echo", "${HOME} $5")
    assert spec.labels == {"note": "costs $${x}"}  # (only argv, env and cwd are templates)


# What a run renders ----------------------------------------------------------------------


def test_params_take_their_defaults_types_from_a_command_line():
    job = jobs_of("""
        [[job]]
        name = "j"
        params = { n = 3, x = 0.5, flag = false, who = "me", tags = ["a"], opts = { k = 1 } }
        [[job.step]]
        name = "s"
        argv = ["true"]
        """)["j"]
    assert apply_params(job, {}) == {
        "n": 3,
        "x": 0.5,
        "flag": False,
        "who": "me",
        "tags": ["a"],
        "opts": {"k": 1},
    }
    given = {"n": "5", "x": "2", "flag": "true", "who": "7", "tags": '["b", "c"]', "opts": "{}"}
    assert apply_params(job, given) == {
        "n": 5,
        "x": 2.0,
        "flag": True,
        "who": "7",
        "tags": ["b", "c"],
        "opts": {},
    }
    assert apply_params(job, {"n": 6, "x": 1, "tags": []})["x"] == 1.0  # (JSON, from the API)
    for key, value, expected in [
        ("n", "five", "an integer"),
        ("n", "5.5", "an integer"),
        ("n", True, "an integer"),
        ("x", "true", "a number"),
        ("flag", "1", "true or false"),
        ("who", 7, "a string"),
        ("tags", "a,b", "a list"),
        ("opts", "[]", "a table"),
    ]:
        with pytest.raises(WorkflowError) as info:
            apply_params(job, {key: value})
        shown = repr(json.loads(value)) if value in ("5.5", "true", "1", "[]") else repr(value)
        assert str(info.value) == (
            f"job 'j': param {key!r}: got {shown}, expected {expected} (as its default is)"
        )
    with pytest.raises(WorkflowError) as info:
        apply_params(job, {"m": "1", "nn": "2"})
    assert str(info.value) == (
        "job 'j': unknown param(s) 'm', 'nn'; its params: 'n', 'x', 'flag', 'who', 'tags', 'opts'"
    )


def pipeline() -> JobDefinition:
    return jobs_of(
        EXAMPLE
        + """
[[job.step]]
name = "env"
needs = ["prepare"]
argv = ["run", "--n=${params.samples}", "${steps.prepare.result}", "${steps.prepare.result.n}"]
env = { TOKEN = "${steps.prepare.result.secret}", PLAIN = "x", COUNT = "${params.samples}" }
cwd = "/tmp/${steps.prepare.result.items[0]}"
labels = { kind = "env" }
"""
    )["pipeline"]


def context(**result):
    return {
        "params": {"samples": 3},
        "steps": {"prepare": {"result": result, "phase": "finished"}},
    }


def test_step_spec_renders_argv_env_and_cwd_never_through_a_shell():
    job = pipeline()
    ctx = context(items=["a b", {"k": [1, True]}], n=2, secret="hunter2")
    spec = step_spec(job, job.step("env"), ctx)
    assert spec.argv == (
        "run",
        "--n=3",
        '{"items":["a b",{"k":[1,true]}],"n":2,"secret":"hunter2"}',
        "2",
    )
    assert spec.env == {"TOKEN": "hunter2", "PLAIN": "x", "COUNT": "3"}
    assert spec.cwd == "/tmp/a b"
    assert spec.labels == {"kind": "env"} and spec.name is None
    work = job.step("work")
    assert step_items(job, work, ctx) == ["a b", {"k": [1, True]}]
    item = step_spec(job, work, {**ctx, "item": {"k": [1, True]}})
    assert item.argv == ("python3", "work.py", '{"k":[1,true]}')
    assert (item.backend, item.host, item.restart) == ("slurm", "cluster", "transient")
    assert step_spec(job, work, {**ctx, "item": "a b"}).argv[-1] == "a b"  # (one word)


def test_a_rendering_error_names_job_step_and_field_and_never_an_env_value():
    job = pipeline()
    with pytest.raises(WorkflowError) as info:
        step_spec(job, job.step("env"), context(items=["x"], n=1))
    assert str(info.value) == (
        "job 'pipeline' step 'env'.env.TOKEN: ${steps.prepare.result.secret}: the result of "
        "step 'prepare' has no key 'secret' (it has: 'items', 'n')"
    )
    with pytest.raises(WorkflowError) as info:
        step_spec(job, job.step("env"), context(items=[], n=1, secret="hunter2"))
    assert str(info.value) == (
        "job 'pipeline' step 'env'.cwd: ${steps.prepare.result.items[0]}: "
        "steps.prepare.result.items has no index [0] (it has 0 item(s))"
    )
    # A spec that the rendering makes invalid: named as the wire names it, env values hidden.
    bad = jobs_of("""
        [[job]]
        name = "j"
        params = { program = "", token = "" }
        [[job.step]]
        name = "s"
        argv = ["${params.program}"]
        env = { TOKEN = "${params.token}" }
        """)["j"]
    with pytest.raises(WorkflowError) as info:
        step_spec(bad, bad.steps[0], {"params": {"program": "", "token": ""}})
    assert str(info.value) == (
        "job 'j' step 's'.argv: got ('',), expected a non-empty list of strings without NUL bytes"
    )
    with pytest.raises(WorkflowError) as info:
        step_spec(bad, bad.steps[0], {"params": {"program": "x", "token": "a\0hunter2"}})
    assert str(info.value).startswith("job 'j' step 's'.env: got ")
    assert "hunter2" not in str(info.value)
    secret = jobs_of(
        '[[job]]\nname = "j"\n[[job.step]]\nname = "s"\nargv = ["x"]\nenv = { T = "hunter2" }\n'
    )["j"]
    assert "hunter2" not in repr(secret) and "'T': '***'" in repr(secret)


def test_for_each_and_when_and_the_result():
    job = pipeline()
    work, report = job.step("work"), job.step("report")
    with pytest.raises(WorkflowError) as info:
        step_items(job, work, context(items={"a": 1}))
    assert str(info.value) == (
        "job 'pipeline' step 'work'.for_each: ${steps.prepare.result.items} gave a table, "
        "expected a list"
    )
    with pytest.raises(WorkflowError, match="gave null, expected a list"):
        step_items(job, work, context(items=None))
    literal = jobs_of(
        '[[job]]\nname = "j"\n[[job.step]]\nname = "s"\nargv = ["echo", "${item}"]\n'
        'for_each = [1, "two", [3]]\n'
    )["j"]
    assert step_items(literal, literal.steps[0], {}) == [1, "two", [3]]
    assert [step_spec(literal, literal.steps[0], {"item": i}).argv[1] for i in [1, "two", [3]]] == [
        "1",
        "two",
        "[3]",
    ]
    assert step_runs(job, report, context(items=[1])) is True
    assert step_runs(job, report, context(items=[])) is False
    assert step_runs(job, work, {}) is True
    done = {
        "params": {"samples": 3},
        "steps": {
            "prepare": {"result": {"items": [1]}, "phase": "finished"},
            "work": {"result": [{"y": 1}], "phase": "finished"},
            "report": {"result": "all done", "phase": "finished"},
        },
    }
    assert job_result(jobs_of(EXAMPLE)["pipeline"], done) == "all done"
    with_result = JobDefinition(
        job.name, job.params, job.steps, result=parse_template("${steps.work.result[0].y}")
    )
    assert job_result(with_result, done) == 1
    with pytest.raises(WorkflowError, match=r"^job 'pipeline'.result: \$\{steps.work.result"):
        job_result(with_result, {**done, "steps": {**done["steps"], "work": {"result": []}}})


def test_the_order_puts_each_step_after_its_needs_and_else_keeps_the_file_order():
    job = jobs_of("""
        [[job]]
        name = "j"
        [[job.step]]
        name = "d"
        argv = ["x"]
        needs = ["b", "c"]
        [[job.step]]
        name = "c"
        argv = ["x"]
        needs = ["a"]
        [[job.step]]
        name = "b"
        argv = ["x"]
        [[job.step]]
        name = "a"
        argv = ["x"]
        [[job.step]]
        name = "e"
        argv = ["x"]
        """)["j"]
    assert topological_order(job) == ("b", "a", "c", "d", "e")
    assert upstream(job, "d") == {"a", "b", "c"} and upstream(job, "a") == frozenset()
    assert result_step(job) == "e"  # (the last step in the file that no step needs)


def test_a_long_chain_is_checked_without_recursion():
    steps = "".join(
        f'[[job.step]]\nname = "s{i}"\nargv = ["x", "${{steps.s{i - 1}.result}}"]\n'
        f'needs = ["s{i - 1}"]\n'
        for i in range(1, 3000)
    )
    job = jobs_of('[[job]]\nname = "j"\n[[job.step]]\nname = "s0"\nargv = ["x"]\n' + steps)["j"]
    assert topological_order(job)[-1] == "s2999"
    assert len(upstream(job, "s2999")) == 2999


# The stored copy -------------------------------------------------------------------------


def test_the_stored_copy_reads_back_the_same_through_json():
    for job in [*jobs_of(EXAMPLE).values(), pipeline()]:
        data = json.loads(json.dumps(job_data(job)))
        assert job_from_data(data) == job
        assert job_data(job_from_data(data)) == data
    job = jobs_of("""
        [[job]]
        name = "j"
        description = "d"
        params = { n = 1, l = [1, { a = "b" }] }
        result = "n=${steps.s.result}"
        [[job.step]]
        name = "s"
        argv = ["echo", "${item}"]
        for_each = [1, { x = [2] }]
        continue_on_failure = true
        when = "${params.n == 1}"
        """)["j"]
    data = json.loads(json.dumps(job_data(job)))
    assert data["steps"][0]["for_each"] == [1, {"x": [2]}]
    assert data["result"] == "n=${steps.s.result}"
    assert job_from_data(data) == job


def test_the_stored_copy_shares_nothing_with_its_source_and_refuses_another_layout():
    job = jobs_of(EXAMPLE)["pipeline"]
    data = job_data(job)
    data["steps"][0]["process"]["argv"].append("changed")
    data["params"]["samples"] = 9
    assert job.params == {"samples": 3} and "changed" not in job.steps[0].process["argv"]
    with pytest.raises(WorkflowError, match="a stored job definition of version 2, not 1"):
        job_from_data({**job_data(job), "version": 2})
    broken = job_data(job)
    del broken["steps"][0]["needs"]
    with pytest.raises(WorkflowError, match="without its field 'needs'"):
        job_from_data(broken)


def test_parse_jobs_takes_the_array_alone():
    tables = [{"name": "j", "step": [{"name": "s", "argv": ["echo", "${params.x}"]}]}]
    with pytest.raises(corra.ConfigError) as info:
        parse_jobs(tables, "api")
    assert str(info.value) == (
        "api: job 'j' step 's'.argv[1]: ${params.x}: the job has no param 'x' (its params: none)"
    )
    tables[0]["params"] = {"x": "1"}
    (job,) = parse_jobs(tables, "api", defaults={"timeout": 5}).values()
    assert isinstance(job.steps[0], StepDefinition) and job.steps[0].process["timeout"] == 5
    assert tables[0]["step"][0] == {"name": "s", "argv": ["echo", "${params.x}"]}


def test_the_example_of_docs_workflows_md_parses():
    from pathlib import Path

    text = (Path(__file__).parent.parent / "docs" / "workflows.md").read_text()
    example = text.split("```toml\n", 1)[1].split("```", 1)[0]
    job = jobs_of('[hosts.cluster]\nhostname = "h"\n' + example)["pipeline"]
    assert job.result == parse_template("${steps.report.result}")
    assert [step.name for step in job.steps] == ["prepare", "work", "report"]


# Random jobs (Hypothesis) ----------------------------------------------------------------


@st.composite
def dags(draw):
    """Step tables in a random file order whose needs follow a random hidden order (so no
    cycle), each step's argv using the result of a random step of the job."""
    name = st.from_regex(r"[a-z][a-z0-9_-]{0,5}", fullmatch=True)
    names = draw(st.lists(name, min_size=1, max_size=10, unique=True))
    rank = draw(st.permutations(names))
    tables = []
    for name in draw(st.permutations(names)):
        before = rank[: rank.index(name)]
        needs = draw(st.lists(st.sampled_from(before), unique=True)) if before else []
        used = draw(st.sampled_from(names))
        tables.append({"name": name, "needs": needs, "argv": ["x", f"${{steps.{used}.result}}"]})
    return tables


def closure(tables: list[dict]) -> dict[str, set[str]]:
    needs = {table["name"]: set(table["needs"]) for table in tables}
    above = {name: set(direct) for name, direct in needs.items()}
    changed = True
    while changed:
        changed = False
        for name in above:
            more = set().union(*(above[need] for need in above[name])) - above[name]
            if more:
                above[name] |= more
                changed = True
    return above


@given(dags())
def test_random_dags_order_and_references(tables):
    above = closure(tables)
    wrong = {
        table["name"]: table["argv"][1]
        for table in tables
        if table["argv"][1].split(".")[1] not in above[table["name"]]
    }
    if wrong:
        with pytest.raises(corra.ConfigError) as info:
            parse_jobs([{"name": "j", "step": tables}], "f")
        lines = str(info.value).splitlines()
        assert len(lines) == len(wrong)
        for line, (name, source) in zip(lines, wrong.items(), strict=True):
            assert line.startswith(f"f: job 'j' step {name!r}.argv[1]: {source}: step ")
        for table in tables:
            table["argv"] = ["x"]
    job = parse_jobs([{"name": "j", "step": tables}], "f")["j"]
    order = topological_order(job)
    # Each step after its needs, and each the first in file order of those that could go.
    file_order = [table["name"] for table in tables]
    placed: set[str] = set()
    for name in order:
        ready = [n for n in file_order if n not in placed and above[n] <= placed]
        assert name == ready[0]
        placed.add(name)
    assert sorted(order) == sorted(file_order)
    for name in file_order:
        assert upstream(job, name) == above[name]
    assert job_from_data(json.loads(json.dumps(job_data(job)))) == job


@given(dags(), st.data())
def test_a_random_cycle_is_named_in_order(tables, data):
    # A step needing one downstream of it (or itself) closes a cycle.
    above = closure(tables)
    name = data.draw(st.sampled_from([table["name"] for table in tables]))
    below = [other for other in above if name in above[other]] + [name]
    other = data.draw(st.sampled_from(below))
    for table in tables:
        table["argv"] = ["x"]
        if table["name"] == name and other not in table["needs"]:
            table["needs"] = [*table["needs"], other]
    with pytest.raises(corra.ConfigError) as info:
        parse_jobs([{"name": "j", "step": tables}], "f")
    needs = {table["name"]: set(table["needs"]) for table in tables}
    position = {table["name"]: index for index, table in enumerate(tables)}
    for line in str(info.value).splitlines():
        head, _, cycle = line.partition(".needs: a cycle: ")
        steps = cycle.removesuffix(" (each step needs the one before it)").split(" -> ")
        assert steps[0] == steps[-1] and head == f"f: job 'j' step {steps[0]!r}"
        assert steps[0] == min(steps, key=position.__getitem__)
        for before, after in itertools.pairwise(steps):
            assert before in needs[after]


@pytest.mark.parametrize(
    "tables,message",
    [
        ([1], "api: job[0]: expected a table, got 1"),
        ([{"name": "j", "step": 1}], "api: job 'j'.step: expected [[job.step]] tables, got 1"),
        ([{"name": "j", "step": [1]}], "api: job 'j' step[0]: expected a table, got 1"),
        (
            [{"name": "j", "params": [1], "step": [{"name": "s", "argv": ["x"]}]}],
            "api: job 'j'.params: expected a table, got [1]",
        ),
        (
            [{"name": "j", "step": [{"name": "s", "argv": ["x"], "env": {"T": 5}}]}],
            "api: job 'j' step 's'.env: got 'T' = a value of type int (not shown), expected "
            "string values",
        ),
    ],
)
def test_tables_that_toml_cannot_give_are_refused_too(tables, message):
    with pytest.raises(corra.ConfigError) as info:
        parse_jobs(tables, "api")
    assert str(info.value) == message


def test_a_step_without_for_each_has_no_items_and_a_cycle_has_no_order():
    job = jobs_of(EXAMPLE)["pipeline"]
    with pytest.raises(WorkflowError, match=r"^job 'pipeline' step 'prepare': it has no for_each$"):
        step_items(job, job.step("prepare"), {})
    looped = JobDefinition("j", {}, (StepDefinition("a", {"argv": ["x"]}, needs=("a",)),))
    with pytest.raises(WorkflowError, match=r"^job 'j': its needs make a cycle$"):
        topological_order(looped)
    with pytest.raises(KeyError):
        job.step("nope")

"""Job files and process specs: validated whole, errors name the file, process and field."""

from __future__ import annotations

import pytest

import corra
from corra._jobfile import parse_job_text
from corra.processes._convert import parse_process_spec
from corra.processes._spec import ProcessSpec


def test_defaults_apply_to_every_process_and_tables_merge():
    job = parse_job_text(
        """
[defaults]
timeout = 5
restart = "transient"
env = { A = "1" }

[[process]]
name = "a"
argv = ["echo", "a"]
env = { B = "2" }

[[process]]
name = "b"
argv = ["echo", "b"]
restart = "temporary"
""",
        "jobs.toml",
    )
    a, b = job.processes
    assert (a.timeout, a.restart, a.env) == (5.0, "transient", {"A": "1", "B": "2"})
    assert (b.timeout, b.restart, b.env) == (5.0, "temporary", {"A": "1"})


def test_every_problem_is_reported_at_once_naming_file_process_and_field():
    text = """
[[process]]
name = "a"
argv = "echo hi"

[[process]]
argv = ["x"]

[[process]]
name = "a"
argv = ["x"]

[[process]]
name = "c"
argv = ["x"]
bogus = 1

[surprise]
"""
    with pytest.raises(corra.ConfigError) as info:
        parse_job_text(text, "jobs.toml")
    assert str(info.value).splitlines() == [
        "jobs.toml: unknown table(s) ['surprise']; expected [defaults], [[process]], [[job]], "
        "[hosts.NAME] and [logins]",
        "jobs.toml: process[0] ('a').argv: got 'echo hi', expected a list of strings",
        "jobs.toml: process[1].name: missing; every process in a job file needs a name",
        "jobs.toml: process[2] ('a').name: 'a' is used by process[0] already",
        "jobs.toml: process[3] ('c'): unknown field(s) ['bogus']; expected some of: argv, "
        "name, cwd, env, timeout, restart, max_attempts, kill_grace, memory_limit, "
        "pids_limit, output_limit, labels, backend, host, inputs, outputs, outputs_dir, "
        "hyperqueue, kubernetes, slurm",
    ]


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({}, "p.argv: missing"),
        ({"argv": []}, "p.argv: got (), expected a non-empty list"),
        ({"argv": ["a", 1]}, "p.argv: got 1 at [1], expected a string"),
        ({"argv": ["a"], "timeout": 0}, "p.timeout: got 0.0, expected seconds > 0"),
        ({"argv": ["a"], "timeout": True}, "p.timeout: got True, expected a number"),
        ({"argv": ["a"], "restart": "always"}, "p.restart: got 'always', expected one of"),
        ({"argv": ["a"], "max_attempts": 0}, "p.max_attempts: got 0, expected an integer >= 1"),
        ({"argv": ["a"], "env": {"A=B": "x"}}, "p.env: got {'A=B': '***'}, expected NAME"),
        ({"argv": ["a"], "labels": ["x"]}, "p.labels: got ['x'], expected a table"),
        ({"argv": ["a"], "name": "../up"}, "p.name: got '../up', expected a name matching"),
        ({"argv": ["a"], "backend": "mars"}, "p.backend: got 'mars', expected one of"),
    ],
)
def test_bad_process_fields(fields, message):
    with pytest.raises(corra.ConfigError) as info:
        parse_process_spec(fields, "p")
    assert str(info.value).startswith(message), str(info.value)


def test_a_spec_built_in_python_is_checked_too():
    with pytest.raises(corra.ConfigError, match="argv: got"):
        ProcessSpec(argv=())


def test_hosts_and_the_login_budget_are_read_and_validated():
    job = parse_job_text(
        """
[logins]
rate = 0.5
burst = 2

[hosts.cluster]
hostname = "login.example.org"
user = "me"
pool = { max_connections = 3, idle_timeout = 20 }

[hosts.alias]

[[process]]
name = "a"
argv = ["true"]
""",
        "jobs.toml",
    )
    assert job.hosts["cluster"].pool.max_connections == 3
    assert job.hosts["alias"].address == "alias"  # an ~/.ssh/config alias needs nothing else
    assert job.logins is not None and (job.logins.rate, job.logins.burst) == (0.5, 2)

    with pytest.raises(corra.ConfigError) as caught:
        parse_job_text(
            """
[logins]
rate = -1

[hosts.cluster]
port = 70000
pool = { channels_per_connection = 0, bogus = 1 }

[hosts.other]
hostnme = "x"

[[process]]
name = "a"
argv = ["true"]
""",
            "jobs.toml",
        )
    message = str(caught.value)
    assert "jobs.toml: hosts.cluster.pool: unknown setting(s) bogus" in message
    assert "jobs.toml: hosts.other: unknown field(s) hostnme" in message
    assert "jobs.toml: logins.rate: got -1" in message


def test_a_slurm_table_is_checked_once_by_the_spec_with_the_files_field_paths():
    # (the job file no longer parses it a second time: the wire converter types it)
    text = """
[hosts.cluster]

[[process]]
name = "ok"
backend = "slurm"
host = "cluster"
argv = ["true"]
slurm = { partition = "short", time = "1:00:00", cpus_per_task = 4 }

[[process]]
name = "bad"
backend = "slurm"
host = "cluster"
argv = ["true"]
slurm = { time = "soon", nodes = "2", bogus = 1 }
"""
    with pytest.raises(corra.ConfigError) as caught:
        parse_job_text(text, "jobs.toml")
    assert str(caught.value).splitlines() == [
        "jobs.toml: process[1] ('bad').slurm.nodes: got '2', expected an integer; "
        "jobs.toml: process[1] ('bad').slurm: unknown field(s) bogus; expected some of "
        "account, array, cpus_per_task, extra, gres, hold_on_pause, mem, nodes, ntasks, "
        "partition, qos, time",
    ]
    job = parse_job_text(text.split('[[process]]\nname = "bad"')[0], "jobs.toml")
    options = job.processes[0].options
    assert options.directives() == ["--partition=short", "--time=1:00:00", "--cpus-per-task=4"]

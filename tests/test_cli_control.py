"""The command line against a running `corra serve`, and without one."""

from __future__ import annotations

import contextlib
import json
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from test_api_service import CORRA, Service, corra

pytestmark = pytest.mark.slow


def wait_phase(where: Path | Service, name: str, *phases: str, timeout: float = 30) -> dict:
    """The process once it is in one of ``phases``: asked over HTTP of a service, else with
    `corra show` (slower: a command per look)."""
    deadline = time.monotonic() + timeout
    while True:
        if isinstance(where, Service):
            with where.client() as http:
                response = http.get(f"/v1/processes/{name}")
            record = response.json() if response.status_code == 200 else {"phase": None}
        else:
            shown = corra(where, "show", name, "--json")
            record = json.loads(shown.stdout) if shown.returncode == 0 else {"phase": None}
        if record["phase"] in phases:
            return record
        assert time.monotonic() < deadline, record
        time.sleep(0.1)


@pytest.fixture
def service(tmp_path):  # type: ignore[no-untyped-def]
    with Service(tmp_path / "state") as running:
        yield running
        running.stop()


def test_control_commands_without_a_service_say_how_to_start_one(tmp_path):
    state = tmp_path / "state"
    for args in (("pause", "x"), ("resume", "x"), ("kill", "x"), ("submit", "--", "true")):
        done = corra(state, *args)
        assert done.returncode == 3, (args, done.stderr)
        assert "no corra service is running" in done.stderr
        assert f"corra serve --state-dir {state}" in done.stderr
    # The read-only ones read the state dir instead: here there is none.
    assert corra(state, "ps").returncode == 2


@contextlib.contextmanager
def napping_run(state: Path) -> Iterator[subprocess.Popen]:
    """A `corra run` of ``sleep 30`` (named ``nap``) holding the state dir, its program
    running; stopped after the block (SIGINT), and its program killed through a service
    (programs outlive `corra run`)."""
    runner = subprocess.Popen(
        [*CORRA, "--state-dir", str(state), "run", "--name", "nap", "--", "sleep", "30"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        wait_phase(state, "nap", "running")
        yield runner
    finally:
        runner.send_signal(signal.SIGINT)
        runner.wait(timeout=30)
    with Service(state) as running:
        assert corra(state, "kill", "nap").returncode == 0
        running.stop()


def test_control_commands_while_a_corra_run_holds_the_state_dir(tmp_path):
    state = tmp_path / "state"
    with napping_run(state) as runner:
        paused = corra(state, "pause", "nap")
        assert paused.returncode == 3
        assert f"another corra runtime (pid {runner.pid})" in paused.stderr
        listing = corra(state, "ps", "--json")  # read from the state dir, beside the run
        assert [r["name"] for r in json.loads(listing.stdout)["items"]] == ["nap"]


def test_submit_ps_show_logs_through_the_service(service, tmp_path):
    state = service.state_dir
    done = corra(state, "submit", "--name", "hello", "--label", "k=v", "--", "sh", "-c", "echo hi")
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("hello (p") and done.stdout.endswith(": submitted\n")
    again = corra(state, "submit", "--name", "hello", "--label", "k=v", "--", "sh", "-c", "echo hi")
    assert again.returncode == 0 and "exists already" in again.stdout
    changed = corra(state, "submit", "--name", "hello", "--", "true")  # (another spec)
    assert changed.returncode == 1 and "argv, labels differ" in changed.stderr

    job = tmp_path / "jobs.toml"
    job.write_text(
        '[[process]]\nname = "a"\nargv = ["sh", "-c", "echo a"]\ncwd = "."\n\n'
        '[[process]]\nname = "b"\nargv = ["sh", "-c", "echo b >&2; exit 4"]\n'
    )
    submitted = corra(state, "submit", str(job), "--json", cwd=tmp_path)
    assert submitted.returncode == 0, submitted.stderr
    assert [r["name"] for r in json.loads(submitted.stdout)] == ["a", "b"]

    wait_phase(service, "hello", "finished")
    wait_phase(service, "a", "finished")
    shown = wait_phase(service, "b", "failed")
    assert shown["reason"] == "exited with 4"
    assert shown["spec"]["cwd"] is None
    assert json.loads(corra(state, "show", "a", "--json").stdout)["spec"]["cwd"] == str(tmp_path)

    listing = corra(state, "ps", "-a", "--json")
    assert [(r["name"], r["phase"]) for r in json.loads(listing.stdout)["items"]] == [
        ("hello", "finished"),
        ("a", "finished"),
        ("b", "failed"),
    ]
    table = corra(state, "ps", "--phase", "failed").stdout.splitlines()
    assert table[1].split()[1:5] == ["b", "failed", "1", "4"]
    assert table[2:] == ["", "3 processes: 2 finished, 1 failed"]  # (the footer: every phase)
    labelled = json.loads(corra(state, "ps", "-a", "--label", "k=v", "--json").stdout)
    assert [r["name"] for r in labelled["items"]] == ["hello"]
    human = corra(state, "show", "b").stdout
    assert "b (p" in human and "reason:  exited with 4" in human and "fail" in human
    assert corra(state, "logs", "hello").stdout == "hi\n"
    assert corra(state, "logs", "b", "--stderr").stdout == "b\n"
    missing = corra(state, "show", "nope")
    assert missing.returncode == 1 and "process nope: no process with this id or name" in (
        missing.stderr
    )


def test_pause_resume_kill_and_logs_follow(service):
    state = service.state_dir
    script = "i=0; while [ $i -lt 20 ]; do echo n $i; i=$((i+1)); sleep 0.1; done; sleep 30"
    assert corra(state, "submit", "--name", "w", "--", "sh", "-c", script).returncode == 0
    wait_phase(service, "w", "running")
    follower = subprocess.Popen(
        [*CORRA, "logs", "-f", "w", "--state-dir", str(state)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    paused = corra(state, "pause", "w")
    assert paused.returncode == 0 and paused.stdout.endswith(": paused (paused on request)\n")
    twice = corra(state, "pause", "w", "--json")
    assert twice.returncode == 1 and "cannot pause in phase 'paused'" in twice.stderr
    resumed = corra(state, "resume", "w", "--json")
    assert resumed.returncode == 0 and json.loads(resumed.stdout)["phase"] == "running"
    time.sleep(2.5)  # all 20 lines written
    killed = corra(state, "kill", "w")
    assert killed.returncode == 0 and ": killed" in killed.stdout
    out, err = follower.communicate(timeout=30)
    assert follower.returncode == 0, err
    assert out.splitlines() == [f"n {i}" for i in range(20)]
    assert corra(state, "kill", "w").returncode == 1  # terminal: 409

    assert corra(state, "submit", "--name", "z", "--", "sleep", "30").returncode == 0
    wait_phase(service, "z", "running")
    quick = corra(state, "kill", "z", "--no-wait", "--json")
    assert quick.returncode == 0 and json.loads(quick.stdout)["phase"] in ("killing", "killed")
    wait_phase(service, "z", "killed")


def test_url_and_token_options(service, tmp_path):
    elsewhere = tmp_path / "elsewhere"  # no state here: everything goes to the URL
    url = ["--url", service.url]
    done = corra(elsewhere, "submit", *url, "--token", service.token, "--name", "r", "--", "true")
    assert done.returncode == 0, done.stderr
    token_file = tmp_path / "token"
    token_file.write_text(service.token)
    token_file.chmod(0o600)  # a token readable by others is refused
    listing = corra(elsewhere, "ps", *url, "--token-file", str(token_file), "-a", "--json")
    assert [r["name"] for r in json.loads(listing.stdout)["items"]] == ["r"]
    wrong = corra(elsewhere, "ps", *url, "--token", "wrong")
    assert wrong.returncode == 1 and "not this service's" in wrong.stderr
    env = {"CORRA_URL": service.url, "CORRA_TOKEN": service.token, "PATH": "/usr/bin:/bin"}
    assert corra(elsewhere, "show", "r", env=env).returncode == 0
    gone = corra(elsewhere, "ps", "--url", "http://127.0.0.1:9", "--token", "x")
    assert gone.returncode == 1 and "cannot reach the service at http://127.0.0.1:9" in gone.stderr
    assert not elsewhere.exists()


def test_the_service_refuses_what_the_job_file_cannot_know(service, tmp_path):
    job = tmp_path / "remote.toml"
    job.write_text(
        '[hosts.far]\nhostname = "far.example"\n\n'
        '[[process]]\nname = "r"\nbackend = "ssh"\nhost = "far"\nargv = ["true"]\n'
    )
    done = corra(service.state_dir, "submit", str(job))
    assert done.returncode == 2
    assert ("[hosts] are not sent" in done.stderr and "host: got 'far'" in done.stderr) or (
        "backend" in done.stderr
    )


def test_https_with_a_private_ca(tmp_path):
    from test_api import _certificate

    cert, key = _certificate(tmp_path)
    state = tmp_path / "state"
    with Service(state, "--certfile", str(cert), "--keyfile", str(key)) as running:
        assert running.url.startswith("https://127.0.0.1:")
        url = ["--url", running.url, "--token", running.token]
        done = corra(tmp_path / "x", "submit", *url, "--cacert", str(cert), "--", "true")
        assert done.returncode == 0, done.stderr
        untrusted = corra(tmp_path / "x", "ps", *url)
        assert untrusted.returncode == 1 and "CERTIFICATE_VERIFY_FAILED" in untrusted.stderr
        local = corra(state, "ps", "-a", "--json")  # the socket stays plain (and private)
        assert local.returncode == 0 and len(json.loads(local.stdout)["items"]) == 1
        running.stop()


def test_logs_follow_ends_when_a_rerun_wrote_nothing(service):
    # Each attempt writes its own log; the last one writes nothing on stdout. The follower
    # learns of attempt 2 only from the record, never from an entry: it must still end.
    state = service.state_dir
    body = {
        "name": "quiet-rerun",
        # attempt 1 lasts long enough that even a slow follower starts while it runs
        "argv": ["sh", "-c", '[ "$CORRA_ATTEMPT" = 1 ] && sleep 5 && echo first; exit 1'],
        "restart": "transient",
        "max_attempts": 2,
    }
    with service.client() as http:
        assert http.post("/v1/processes", json=body).status_code == 201
    follower = subprocess.run(
        [*CORRA, "logs", "-f", "quiet-rerun", "--state-dir", str(state)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert (follower.returncode, follower.stdout) == (0, "first\n"), follower.stderr
    assert wait_phase(service, "quiet-rerun", "failed")["attempt"] == 2

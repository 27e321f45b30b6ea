"""A job file run again, and a spec submitted again under its name: decided per name, never
silently keeping an old spec (issue 13)."""

from __future__ import annotations

import json

import pytest
from test_api import serving, submit, wait_for
from test_api_service import Service, corra

pytestmark = pytest.mark.slow


def job_text(b_exit: int, c_argv: str = '["true"]') -> str:
    return (
        '[[process]]\nname = "a"\nargv = ["true"]\n\n'
        f'[[process]]\nname = "b"\nargv = ["sh", "-c", "exit {b_exit}"]\n\n'
        f'[[process]]\nname = "c"\nargv = {c_argv}\nlabels = {{k = "v"}}\n'
    )


def test_a_job_file_run_again_decides_per_name(tmp_path):
    state = tmp_path / "state"
    job = tmp_path / "job.toml"
    job.write_text(job_text(3))
    first = corra(state, "run", str(job))
    assert first.returncode == 1 and "done: 2 finished, 1 failed" in first.stdout

    # Unchanged: nothing runs; the failed one is reported with the way to rerun it.
    again = corra(state, "run", str(job))
    assert again.returncode == 1
    assert "a: already finished, not run again" in again.stdout
    assert "b: already failed, not run again (--rerun failed runs it again)" in again.stdout
    assert "running" not in again.stdout

    # --rerun failed: only the failed one, as its next attempt.
    rerun = corra(state, "run", str(job), "--rerun", "failed", "--json")
    assert rerun.returncode == 1, rerun.stderr
    records = {r["name"]: r for r in json.loads(rerun.stdout)}
    assert (records["a"]["attempt"], records["b"]["attempt"], records["c"]["attempt"]) == (1, 2, 1)
    assert records["b"]["phase"] == "failed"

    # A changed spec is refused, naming the fields, and nothing runs.
    job.write_text(job_text(0, '["sh", "-c", "echo new"]'))
    refused = corra(state, "run", str(job))
    assert refused.returncode == 2, refused.stderr
    assert "b: its spec changed (argv)" in refused.stderr
    assert "c: its spec changed (argv)" in refused.stderr
    assert "--rerun changed" in refused.stderr
    shown = json.loads(corra(state, "show", "c", "--json").stdout)
    assert shown["spec"]["argv"] == ["true"] and shown["attempt"] == 1

    # --rerun changed: the changed ones run with their new spec; the rest stays.
    changed = corra(state, "run", str(job), "--rerun", "changed", "--json")
    assert changed.returncode == 0, changed.stderr
    records = {r["name"]: r for r in json.loads(changed.stdout)}
    assert {name: r["attempt"] for name, r in records.items()} == {"a": 1, "b": 3, "c": 2}
    assert all(r["phase"] == "finished" for r in records.values())
    shown = json.loads(corra(state, "show", "c", "--json").stdout)
    assert shown["spec"]["argv"] == ["sh", "-c", "echo new"]
    (entry,) = [t for t in shown["history"] if t["event"] == "rerun"]
    assert entry["reason"] == "rerun on request, with a new spec: argv changed"
    assert corra(state, "logs", "c").stdout == "new\n"
    assert corra(state, "run", str(job)).returncode == 0  # (all finished: nothing to do)


async def test_post_of_an_existing_name_is_200_if_identical_and_409_naming_the_fields(tmp_path):
    async with serving(tmp_path / "state") as served:
        http = served.http
        created = await submit(http, ["true"], name="same", labels={"k": "v"}, timeout=10)
        await wait_for(http, "same", "finished")
        spec = {"name": "same", "argv": ["true"], "labels": {"k": "v"}, "timeout": 10}
        identical = await http.post("/v1/processes", json=spec)
        assert identical.status_code == 200 and identical.json()["id"] == created["id"]
        different = await http.post(
            "/v1/processes", json={**spec, "argv": ["false"], "labels": {}, "timeout": 10}
        )
        assert different.status_code == 409, different.text
        body = different.json()
        assert body["error"] == "spec_changed" and body["fields"] == ["argv", "labels"]
        assert body["id"] == created["id"] and "argv, labels differ" in body["message"]
        assert (await http.get("/v1/processes/same")).json()["spec"]["argv"] == ["true"]


def test_corra_submit_reports_a_changed_spec_and_submits_the_others(tmp_path):
    job = tmp_path / "job.toml"
    with Service(tmp_path / "state") as service:
        state = service.state_dir
        assert corra(state, "submit", "--name", "b", "--", "true").returncode == 0
        job.write_text(job_text(0))
        done = corra(state, "submit", str(job))
        assert done.returncode == 1
        assert "'b'" in done.stderr and "argv differ" in done.stderr
        assert "a (p" in done.stdout and "c (p" in done.stdout
        service.stop()

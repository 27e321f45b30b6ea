"""A job file run again, and a spec submitted again under its name: decided per name, never
silently keeping an old spec (issue 13)."""

from __future__ import annotations

import json

import pytest
from test_api import serving, submit, wait_for
from test_api_service import Service, corra

from corra._errors import ConfigError
from corra._jobfile import parse_job_text
from corra._runtime import open_runtime
from corra.cli._run import plan_job

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


async def test_a_job_file_run_again_decodes_no_record_of_a_process_it_leaves_alone(
    tmp_path, monkeypatch
):
    # What a run again decides of a process over with the same spec is told from the bytes
    # of its record (`corra.processes._settled`): a job file of 100,000 finished processes
    # run again must not decode 100,000 records. A changed spec is still found and named.
    text = job_text(3) + (
        '\n[[process]]\nname = "d"\nargv = ["sleep", "30"]\n'
        '\n[[process]]\nname = "e"\nargv = ["true"]\ncwd = "."\n'  # (stored absolute)
    )
    job = parse_job_text(text, "job.toml")
    async with open_runtime(state_dir=tmp_path / "state") as runtime:
        manager = runtime.processes
        for spec in job.processes:
            await manager.submit(spec)
        for name in "abce":
            await manager.wait(name)
        failed = manager.get("b").id
        decoded = []
        codec = manager.codec
        monkeypatch.setattr(
            codec, "decode", lambda raw, decode=codec.decode: decoded.append(raw) or decode(raw)
        )

        plan = plan_job(manager, job, set())
        assert [(what, known.name if known else None) for what, _, known in plan] == [
            ("already finished, not run again", "a"),
            ("already failed, not run again (--rerun failed runs it again)", "b"),
            ("already finished, not run again", "c"),
            ("submit", None),  # (d runs: memory knows better than the store, it goes on)
            ("already finished, not run again", "e"),
        ]
        assert decoded == []
        plan = plan_job(manager, job, {"failed"})
        assert [what for what, _, _ in plan] == [
            "already finished, not run again",
            "rerun",
            "already finished, not run again",
            "submit",
            "already finished, not run again",
        ]
        assert plan[1][2].id == failed and decoded == []

        changed = parse_job_text(job_text(3, '["sh", "-c", "echo new"]'), "job.toml")
        assert manager.settled(changed.processes)[2] is None
        with pytest.raises(ConfigError, match=r"c: its spec changed \(argv\)"):
            plan_job(manager, changed, set())
        assert len(decoded) == 1  # (only the changed one's record: a, b unchanged)
        await manager.kill("d")

"""Rerun and remove: through the API (a runtime in process) and the command line (a real
`corra serve`, and `corra rerun` without one), with real programs."""

from __future__ import annotations

import argparse
import json
import subprocess

import pytest
from test_api import serving, submit, wait_for
from test_api_service import CORRA, Service, corra
from test_cli_control import napping_run, wait_phase

from corra._runtime import open_runtime
from corra.cli import _manage
from corra.persistence._lmdb import Reads

pytestmark = pytest.mark.slow

# A program that fails until a file exists (the cause the user fixes between runs).
FLAKY = 'test -e "$1" && echo fixed || { echo broken >&2; exit 3; }'


async def test_a_rerun_starts_a_terminal_process_again_keeping_its_history(tmp_path):
    fixed = tmp_path / "fixed"
    async with serving(tmp_path / "state") as served:
        http = served.http
        created = await submit(http, ["sh", "-c", FLAKY, "sh", str(fixed)], name="flaky")
        failed = await wait_for(http, "flaky", "failed")
        assert failed["reason"] == "exited with 3" and failed["attempt"] == 1
        assert (await http.get("/v1/processes/flaky")).json()["phase"] == "failed"  # (cached)

        fixed.touch()
        rerun = await http.post("/v1/processes/flaky/rerun")
        assert rerun.status_code == 200, rerun.text
        assert rerun.json()["id"] == created["id"] and rerun.json()["attempt"] == 2
        assert rerun.json()["phase"] in ("created", "launching", "running", "finished")
        finished = await wait_for(http, "flaky", "finished")
        assert finished["attempt"] == 2 and finished["returncode"] == 0
        events = [(t["event"], t["attempt"]) for t in finished["history"]]
        assert events[:3] == [("submit", 1), ("launch", 1), ("started", 1)]
        assert ("fail", 1) in events and ("rerun", 2) in events and events[-1] == ("succeed", 2)
        (entry,) = [t for t in finished["history"] if t["event"] == "rerun"]
        assert (entry["source"], entry["target"]) == ("failed", "created")
        assert entry["result"]["returncode"] == 3  # the old result, kept in history
        # Each attempt's output stays readable.
        old = await http.get("/v1/processes/flaky/logs", params={"stream": "stderr", "attempt": 1})
        assert [json.loads(line)["text"] for line in old.text.splitlines()] == ["broken\n"]
        new = await http.get("/v1/processes/flaky/logs")
        assert [json.loads(line)["text"] for line in new.text.splitlines()] == ["fixed\n"]


async def test_rerun_is_404_for_an_unknown_process_and_409_naming_the_phase(tmp_path):
    async with serving(tmp_path / "state") as served:
        http = served.http
        unknown = await http.post("/v1/processes/nope/rerun")
        assert unknown.status_code == 404 and unknown.json()["error"] == "not_found"
        await submit(http, ["sleep", "30"], name="sleeper", kill_grace=0.5)
        await wait_for(http, "sleeper", "running")
        active = await http.post("/v1/processes/sleeper/rerun")
        assert active.status_code == 409
        assert active.json()["error"] == "invalid_transition"
        assert active.json()["phase"] == "running" and "rerun" in active.json()["message"]
        await http.post("/v1/processes/sleeper/kill")
        killed = await wait_for(http, "sleeper", "killed")
        assert killed["attempt"] == 1
        again = await http.post("/v1/processes/sleeper/rerun")
        assert again.status_code == 200 and again.json()["attempt"] == 2
        await wait_for(http, "sleeper", "running")
        await http.post("/v1/processes/sleeper/kill")


def test_corra_rerun_asks_the_service_and_selects_failed_ones_and_labels(tmp_path):
    fixed = tmp_path / "fixed"
    with Service(tmp_path / "state") as service:
        state = service.state_dir
        for name, label in (("a", "x"), ("b", "x"), ("c", "y")):
            argv = ["sh", "-c", FLAKY, "sh", str(fixed)]
            done = corra(state, "submit", "--name", name, "--label", f"k={label}", "--", *argv)
            assert done.returncode == 0, done.stderr
        assert corra(state, "submit", "--name", "ok", "--", "true").returncode == 0
        for name in ("a", "b", "c"):
            wait_phase(state, name, "failed")
        wait_phase(state, "ok", "finished")
        fixed.touch()

        labelled = corra(state, "rerun", "--failed", "-l", "k=x")
        assert labelled.returncode == 0, labelled.stderr
        assert sorted(line.split()[0] for line in labelled.stdout.splitlines()) == ["a", "b"]
        assert all(line.endswith("rerun as attempt 2") for line in labelled.stdout.splitlines())
        for name in ("a", "b"):
            assert wait_phase(state, name, "finished")["attempt"] == 2
        assert json.loads(corra(state, "show", "c", "--json").stdout)["phase"] == "failed"

        by_name = corra(state, "rerun", "c", "nope", "--json")
        assert by_name.returncode == 1  # one of them is unknown: said, the other rerun
        assert "nope" in by_name.stderr
        assert [r["name"] for r in json.loads(by_name.stdout)] == ["c"]
        assert wait_phase(state, "c", "finished")["attempt"] == 2
        nothing = corra(state, "rerun", "--failed")
        assert nothing.returncode == 0 and nothing.stdout == ""
        service.stop()


def test_corra_rerun_without_a_service_runs_them_in_the_foreground(tmp_path):
    state = tmp_path / "state"
    fixed = tmp_path / "fixed"
    job = tmp_path / "job.toml"
    job.write_text(
        f'[[process]]\nname = "flaky"\nargv = ["sh", "-c", {json.dumps(FLAKY)}, "sh", '
        f'"{fixed}"]\n\n[[process]]\nname = "fine"\nargv = ["true"]\n'
    )
    first = corra(state, "run", str(job))
    assert first.returncode == 1 and "1 finished, 1 failed" in first.stdout
    refused = corra(state, "rerun", "fine", "nope")
    assert refused.returncode == 1  # rerun of `fine` ran; `nope` is no process
    assert "nope" in refused.stderr and "done: 1 finished" in refused.stdout
    fixed.touch()
    again = corra(state, "rerun", "--failed", "--json")
    assert again.returncode == 0, again.stderr
    (record,) = json.loads(again.stdout)
    assert (record["name"], record["phase"], record["attempt"]) == ("flaky", "finished", 2)
    assert corra(state, "logs", "flaky").stdout == "fixed\n"
    shown = json.loads(corra(state, "show", "fine", "--json").stdout)
    assert [t["event"] for t in shown["history"]].count("rerun") == 1


def listed(state, *, records: bool = False) -> list:
    """Every process (its name, or its record), as `corra ps --json` lists them: all of
    them (``-a`` where ps lists only active ones by default), in either JSON shape (a list,
    or a page: ``{"items": [...]}``)."""
    done = corra(state, "ps", "--json", "-a")
    if done.returncode == 2:  # (a ps without -a lists every process)
        done = corra(state, "ps", "--json")
    assert done.returncode == 0, done.stderr
    data = json.loads(done.stdout)
    items = data["items"] if isinstance(data, dict) else data
    return items if records else [item["name"] for item in items]


def test_a_rerun_without_a_service_is_refused_while_a_corra_run_holds_the_state_dir(tmp_path):
    state = tmp_path / "state"
    with napping_run(state):
        refused = corra(state, "rerun", "nap")
        assert refused.returncode != 0 and refused.stderr


# -- remove --------------------------------------------------------------------------------


def all_run_dirs(state_dir) -> list[str]:
    """Every run dir (not the shared chaperone's own files, named with a dot)."""
    return sorted(p.name for p in (state_dir / "runs").iterdir() if not p.name.startswith("."))


def run_dirs(state_dir, process_id: str) -> list[str]:
    """The names of the local run dirs of ``process_id``'s attempts."""
    runs = state_dir / "runs"
    return (
        sorted(p.name for p in runs.iterdir() if p.name.startswith(f"{process_id}."))
        if runs.exists()
        else []
    )


async def test_delete_removes_a_terminal_process_completely(tmp_path):
    state = tmp_path / "state"
    async with serving(state) as served:
        http = served.http
        created = await submit(http, ["sh", "-c", "echo out; echo err >&2; exit 2"], name="gone")
        await wait_for(http, "gone", "failed")
        await http.post("/v1/processes/gone/rerun")
        await wait_for(http, "gone", "failed")
        assert (await http.get("/v1/processes/gone")).status_code == 200  # (cached)
        process_id = created["id"]
        assert run_dirs(state, process_id) == [f"{process_id}.1", f"{process_id}.2"]
        metrics = (await http.get("/metrics")).text
        assert 'corra_processes{phase="failed"} 1' in metrics

        removed = await http.delete("/v1/processes/gone")
        assert removed.status_code == 200, removed.text
        assert removed.json()["id"] == process_id and removed.json()["phase"] == "failed"
        assert run_dirs(state, process_id) == []
        for path in (f"/v1/processes/{process_id}", "/v1/processes/gone"):
            assert (await http.get(path)).status_code == 404
        assert (await http.delete("/v1/processes/gone")).status_code == 404
        assert (await http.get("/v1/processes")).json()["items"] == []
        store = served.runtime.processes.store
        assert store.load(process_id) is None and store.history(process_id) == []
        assert store.id_for_name("gone") is None and store.quarantined() == []
        metrics = (await http.get("/metrics")).text
        assert 'corra_processes{phase="failed"} 0' in metrics
        events = (await http.get("/v1/events")).text.splitlines()
        assert json.loads(events[-1])["event"] == "remove"
        # The name is free again: a new process, a new id.
        again = await submit(http, ["true"], name="gone")
        assert again["id"] != process_id


async def test_delete_refuses_an_active_process_unless_asked_to_kill_it(tmp_path):
    state = tmp_path / "state"
    async with serving(state) as served:
        http = served.http
        created = await submit(http, ["sleep", "30"], name="busy", kill_grace=0.5)
        await wait_for(http, "busy", "running")
        refused = await http.delete("/v1/processes/busy")
        assert refused.status_code == 409 and refused.json()["phase"] == "running"
        assert "remove" in refused.json()["message"]
        assert (await wait_for(http, "busy", "running"))["phase"] == "running"
        removed = await http.delete("/v1/processes/busy", params={"kill": "true"})
        assert removed.status_code == 200 and removed.json()["phase"] == "killed"
        assert (await http.get("/v1/processes/busy")).status_code == 404
        assert run_dirs(state, created["id"]) == []
        assert (await http.delete("/v1/processes/nope")).status_code == 404


def test_corra_rm_through_the_service_by_name_label_and_end_time(tmp_path):
    with Service(tmp_path / "state") as service:
        state = service.state_dir
        for name, label in (("a", "x"), ("b", "x"), ("c", "y")):
            done = corra(state, "submit", "--name", name, "--label", f"k={label}", "--", "true")
            assert done.returncode == 0, done.stderr
        corra(state, "submit", "--name", "busy", "--label", "k=x", "--", "sleep", "30")
        for name in ("a", "b", "c"):
            wait_phase(state, name, "finished")
        wait_phase(state, "busy", "running")

        by_label = corra(state, "rm", "-l", "k=x")
        assert by_label.returncode == 0, by_label.stderr
        assert sorted(line.split()[0] for line in by_label.stdout.splitlines()) == ["a", "b"]
        assert listed(state) == ["c", "busy"]
        active = corra(state, "rm", "busy")
        assert active.returncode == 1 and "cannot remove in phase 'running'" in active.stderr
        nothing = corra(state, "rm", "--ended-before", "1h")
        assert nothing.returncode == 0 and nothing.stdout == ""  # (c ended just now)
        ended = corra(state, "rm", "--ended-before", "2099-01-01", "--json")
        assert [r["name"] for r in json.loads(ended.stdout)] == ["c"]
        killed = corra(state, "rm", "--kill", "busy")
        assert killed.returncode == 0 and killed.stdout.startswith("busy (p")
        assert listed(state) == []
        assert all_run_dirs(state) == []
        bad = corra(state, "rm", "--ended-before", "yesterday")
        assert bad.returncode == 2 and "--ended-before: got 'yesterday'" in bad.stderr
        service.stop()


def test_corra_rm_without_a_service(tmp_path):
    state = tmp_path / "state"
    assert corra(state, "run", "--name", "once", "--", "true").returncode == 0
    removed = corra(state, "rm", "once", "nope")
    assert removed.returncode == 1 and "nope" in removed.stderr
    assert removed.stdout.startswith("once (p") and removed.stdout.endswith(": removed\n")
    assert listed(state) == []
    assert all_run_dirs(state) == []


def test_rerun_rm_and_prune_select_by_a_name_glob_with_and_without_a_service(tmp_path):
    state = tmp_path / "state"
    job = tmp_path / "job.toml"
    job.write_text(
        '[[process]]\nname = "tmp-1"\nargv = ["true"]\n\n'
        '[[process]]\nname = "tmp-2"\nargv = ["false"]\n\n'
        '[[process]]\nname = "tmp-20"\nargv = ["false"]\n\n'
        '[[process]]\nname = "keep-1"\nargv = ["false"]\n'
    )
    assert corra(state, "run", str(job)).returncode == 1
    # without a service: a glob and --failed select the failed ones it matches, all of them
    again = corra(state, "rerun", "--name", "tmp-?", "--failed", "--json")
    assert again.returncode == 1, again.stderr  # (false fails again)
    assert [(r["name"], r["attempt"]) for r in json.loads(again.stdout)] == [("tmp-2", 2)]
    removed = corra(state, "rm", "--name", "tmp-[12]")
    assert removed.returncode == 0, removed.stderr
    assert sorted(line.split()[0] for line in removed.stdout.splitlines()) == ["tmp-1", "tmp-2"]
    assert listed(state) == ["tmp-20", "keep-1"]
    with Service(state) as service:
        # through the service: a prefix (no wildcard) is a prefix, as in corra ps
        rerun = corra(state, "rerun", "--name", "keep", "--json")
        assert [r["name"] for r in json.loads(rerun.stdout)] == ["keep-1"]
        wait_phase(state, "keep-1", "failed")
        pruned = corra(state, "prune", "--ended-before", "2099-01-01", "--name", "*-20")
        assert pruned.returncode == 0 and pruned.stdout.startswith("tmp-20 (p"), pruned.stderr
        assert listed(state) == ["keep-1"]
        service.stop()


async def test_rm_without_a_service_looks_up_what_it_is_given_and_never_reads_every_record(
    tmp_path, monkeypatch, capsys
):
    async with open_runtime(state_dir=tmp_path) as runtime:
        for index in range(12):
            await (await runtime.spawn_process(["true"], name=f"job{index:02}")).wait()

    def everything(self):
        raise AssertionError("every record was read")

    monkeypatch.setattr(Reads, "scan", everything)
    args = argparse.Namespace(processes=["job03"], label=[], name=None, ended_before=None)
    args.kill = args.json = False
    assert await _manage._rm_here(tmp_path, _manage.rm_selection(args), args) == 0
    args.processes, args.name = [], "job1*"
    assert await _manage._rm_here(tmp_path, _manage.rm_selection(args), args) == 0
    removed = [line.split()[0] for line in capsys.readouterr().out.splitlines()]
    assert removed == ["job03", "job10", "job11"]


async def test_a_removal_cut_short_after_its_tombstone_is_finished_by_recovery(tmp_path):
    from corra._errors import NoSuchProcess
    from corra._runtime import open_runtime
    from corra.processes import _removal
    from corra.processes._spec import ProcessSpec

    state = tmp_path / "state"
    async with open_runtime(state_dir=state, durable=False) as rt:
        manager = rt.processes
        created = (await manager.submit(ProcessSpec(argv=("true",), name="half"))).record
        record = await manager.wait(created.id)
        journal = manager._journal
        assert await _removal.bury(journal.store, record, journal.removed)
        # The crash: what follows the tombstone never runs.
        with pytest.raises(NoSuchProcess):
            manager.get("half")
    assert run_dirs(state, record.id) == [f"{record.id}.1"]
    async with open_runtime(state_dir=state, durable=False) as rt:
        store = rt.processes.store
        assert store.quarantined() == [] and store.history(record.id) == []
        assert store.id_for_name("half") is None
    assert run_dirs(state, record.id) == []


@pytest.mark.parametrize("how", ["rm", "retain"])
def test_a_runtime_killed_with_sigkill_in_the_middle_of_removals_leaves_nothing_half_removed(
    tmp_path, how
):
    import signal
    import time

    from corra.persistence import open_store_readonly

    count = 60
    state = tmp_path / "state"
    job = tmp_path / "job.toml"
    job.write_text(
        "".join(
            f'[[process]]\nname = "p{i}"\nargv = ["sh", "-c", "echo {i}"]\nlabels = {{k = "x"}}\n'
            for i in range(count)
        )
    )
    assert corra(state, "run", str(job)).returncode == 0
    ids = {record["id"]: record["name"] for record in listed(state, records=True)}
    assert len(ids) == count

    time.sleep(1.1)  # (all ended more than a second ago)
    options = ("--retain-finished", "1s") if how == "retain" else ()
    with Service(state, *options) as service:
        # `corra rm` through the service; or the service's own prune, in its batches.
        remover = None
        if how == "rm":
            remover = subprocess.Popen(
                [*CORRA, "--state-dir", str(state), "rm", "-l", "k=x"],
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
        deadline = time.monotonic() + 60
        while len(all_run_dirs(state)) > count - 3:  # (a few removed: the rest under way)
            assert time.monotonic() < deadline
            assert remover is None or remover.poll() is None
            time.sleep(0.001)
        service.stop(signal.SIGKILL)
        if remover is not None:
            remover.wait(timeout=30)

    # As the kill left it: a process with a record is whole (its tombstone was not written).
    with open_store_readonly(state) as store:
        whole = {pid for pid in ids if store.load(pid) is not None}
        for process_id in whole:
            assert run_dirs(state, process_id) == [f"{process_id}.1"]
            assert store.history(process_id) != []
            assert store.id_for_name(ids[process_id]) == process_id
    assert 0 < len(whole) < count, "the kill came before or after every removal"

    # The next runtime finishes what the tombstones say; the others are untouched.
    with Service(state) as service:  # (without --retain-finished: it would prune the rest)
        with service.client() as http:
            for process_id, name in ids.items():
                response = http.get(f"/v1/processes/{process_id}")
                if process_id in whole:
                    assert response.status_code == 200 and response.json()["name"] == name
                    logs = http.get(f"/v1/processes/{process_id}/logs").text
                    assert json.loads(logs.splitlines()[0])["text"] == f"{name[1:]}\n"
                else:
                    assert response.status_code == 404
                    assert http.get(f"/v1/processes/{name}").status_code == 404
                    assert run_dirs(state, process_id) == []
        service.stop()
    with open_store_readonly(state) as store:
        assert store.quarantined() == []
        for process_id in set(ids) - whole:
            assert store.history(process_id) == [] and store.id_for_name(ids[process_id]) is None


def test_corra_prune_with_and_without_a_service(tmp_path):
    import datetime
    import time

    state = tmp_path / "state"
    job = tmp_path / "job.toml"
    job.write_text(
        '[[process]]\nname = "old"\nargv = ["true"]\nlabels = {k = "x"}\n\n'
        '[[process]]\nname = "other"\nargv = ["true"]\n'
    )
    assert corra(state, "run", str(job)).returncode == 0
    time.sleep(0.2)
    between = datetime.datetime.fromtimestamp(time.time()).isoformat()  # (local time)
    time.sleep(0.2)
    assert corra(state, "run", "--name", "new", "--", "true").returncode == 0

    # Without a service: the runtime's own prune.
    kept = corra(state, "prune", "--ended-before", "1h")
    assert kept.returncode == 0 and kept.stdout == "removed 0 process(es)\n"
    labelled = corra(state, "prune", "--ended-before", between, "-l", "k=x")
    assert labelled.returncode == 0 and labelled.stdout.startswith("old (p")
    pruned = corra(state, "prune", "--ended-before", between, "--json")
    assert pruned.returncode == 0 and json.loads(pruned.stdout) == {"removed": 1}
    assert listed(state) == ["new"]
    usage = corra(state, "prune")
    assert usage.returncode == 2 and "--ended-before" in usage.stderr

    # Through a service.
    with Service(state) as service:
        done = corra(state, "prune", "--ended-before", "2099-01-01T00:00")
        assert done.returncode == 0 and done.stdout == "removed 1 process(es)\n"
        with service.client() as http:
            bad = http.post("/v1/processes:prune", params={"ended_before": "soon"})
            assert bad.status_code == 400 and "ended_before" in bad.json()["message"]
        assert listed(state) == []
        service.stop()
    assert all_run_dirs(state) == []


def test_a_service_with_retain_finished_removes_what_ended_long_enough_ago(tmp_path):
    import time

    with Service(tmp_path / "state", "--retain-finished", "2s") as service:
        state = service.state_dir
        assert corra(state, "submit", "--name", "long", "--", "sleep", "30").returncode == 0
        assert corra(state, "submit", "--name", "brief", "--", "true").returncode == 0
        # (at once, over HTTP: a command in between, or a `corra show` per look, may take
        # longer under load than the 2 s it stays finished)
        wait_phase(service, "brief", "finished")
        deadline = time.monotonic() + 30
        while corra(state, "show", "brief").returncode == 0:
            assert time.monotonic() < deadline
            time.sleep(0.2)
        assert listed(state) == ["long"]
        assert corra(state, "kill", "long").returncode == 0
        service.stop()
    bad = corra(tmp_path / "state", "serve", "--retain-finished", "soon")
    assert bad.returncode == 2 and "--retain-finished: got 'soon'" in bad.stderr


def test_corra_prune_keep_leaves_the_processes_that_ended_last(tmp_path):
    import time

    state = tmp_path / "state"
    for number, labelled in ((1, True), (2, True), (3, True), (4, False)):
        job = tmp_path / f"p{number}.toml"
        labels = 'labels = {k = "x"}\n' if labelled else ""
        job.write_text(f'[[process]]\nname = "p{number}"\nargv = ["true"]\n{labels}')
        assert corra(state, "run", str(job)).returncode == 0  # (one after the other)

    # Without a service: among the selected ones, then among all.
    labelled = corra(state, "prune", "--keep", "2", "-l", "k=x")
    assert labelled.returncode == 0 and labelled.stdout.startswith("p1 (p"), labelled.stderr
    assert sorted(listed(state)) == ["p2", "p3", "p4"]
    pruned = corra(state, "prune", "--keep", "2")
    assert pruned.returncode == 0 and pruned.stdout == "removed 1 process(es)\n"
    assert sorted(listed(state)) == ["p3", "p4"]
    # with an end time too, either rule removes a process
    both = corra(state, "prune", "--keep", "2", "--ended-before", "2099-01-01", "--json")
    assert both.returncode == 0 and json.loads(both.stdout) == {"removed": 2}
    for bad, said in (((), "give --ended-before"), (("--keep", "-1"), "--keep: got -1")):
        refused = corra(state, "prune", *bad)
        assert refused.returncode == 2 and said in refused.stderr, refused.stderr

    for number in (5, 6, 7):
        assert corra(state, "run", "--name", f"p{number}", "--", "true").returncode == 0
    # Through a service: the same; and one that keeps 1 prunes as it starts.
    with Service(state) as service:
        done = corra(state, "prune", "--keep", "2")
        assert done.returncode == 0 and done.stdout == "removed 1 process(es)\n"
        assert sorted(listed(state)) == ["p6", "p7"]
        with service.client() as http:
            for params, said in (({"keep": "all"}, "keep"), ({}, "give ended_before")):
                bad = http.post("/v1/processes:prune", params=params)
                assert bad.status_code == 400 and said in bad.json()["message"]
        service.stop()
    with Service(state, "--retain-count", "1") as service:
        deadline = time.monotonic() + 30  # (its first round is as it starts)
        while listed(state) != ["p7"]:
            assert time.monotonic() < deadline, listed(state)
            time.sleep(0.2)
        service.stop()
    bad = corra(state, "serve", "--retain-count", "-2")
    assert bad.returncode == 2 and "--retain-count: got -2" in bad.stderr

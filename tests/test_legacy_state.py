"""A state dir written by an older corra keeps working: the contract of any change of format.

``tests/fixtures/legacy-state-2026-12`` was made by ``tests/fixtures/make_legacy_state.py`` with
corra at main bebff87 (see ``tests/fixtures/README.md``), before issue 12 restructured the spec,
the records and the codec. These tests read a copy of it (never the fixture itself) the ways
users read state: ``corra ps --json``, ``corra show --json``, ``corra logs``, and the Python API
(`corra.open_runtime`), and pin what each process looks like. A later corra may migrate the
records (on read, or when a runtime opens the state dir); what users see of them must stay as
asserted here. The raw layout is pinned too, with lmdb alone: the version a migration starts
from.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import lmdb
import pytest

import corra
import corra.persistence

FIXTURE = Path(__file__).parent / "fixtures" / "legacy-state-2026-12"
IDS: dict[str, str] = json.loads((FIXTURE / "PROCESSES.json").read_text())
#: What every program of the fixture wrote to the ledger, in order (``<name> <attempt>``).
LEDGER = "finished 1\nfailed 1\nretried 1\ntimed-out 1\nkilled 1\nretried 2\npaused-running 1\n"
LEDGER_PREFIX = 'echo "$CORRA_PROCESS_NAME $CORRA_ATTEMPT" >> ../../../ledger; '
SSH_REASON = (
    "host unavailable: gpu1: gpu1: unavailable after 5 failed connects (last: connection refused)"
)
SLURM_REASON = (
    "host unavailable: cluster: cluster: unavailable after 5 failed connects "
    "(last: connection refused)"
)

# name: phase, attempt, backend, returncode, signal, reason, paused_from
PROCESSES: dict[str, tuple[str, int, str, int | None, int | None, str | None, str | None]] = {
    "finished": ("finished", 1, "local", 0, None, None, None),
    "failed": ("failed", 1, "local", 3, None, "exited with 3", None),
    "retried": ("failed", 2, "local", 7, None, "exited with 7", None),
    "timed-out": ("failed", 1, "local", None, 15, "timed out", None),
    "configured": ("finished", 1, "local", 0, None, None, None),
    "ssh-finished": ("finished", 1, "ssh", 0, None, None, None),
    "slurm-finished": ("finished", 1, "slurm", 0, None, None, None),
    "killed": ("killed", 1, "local", None, 15, None, None),
    "paused-running": ("paused", 1, "local", None, None, "paused on request", "running"),
    "paused-launching": ("paused", 1, "local", None, None, "paused on request", "launching"),
    "ssh-paused-for-host": ("paused", 1, "ssh", None, None, SSH_REASON, "launching"),
    "slurm-paused-for-host": ("paused", 1, "slurm", None, None, SLURM_REASON, "launching"),
}
#: The order `corra ps` lists them in (oldest first).
ORDER = [
    "finished",
    "failed",
    "retried",
    "timed-out",
    "configured",
    "ssh-finished",
    "slurm-finished",
    "killed",
    "paused-running",
    "paused-launching",
    "ssh-paused-for-host",
    "slurm-paused-for-host",
]

_RUN = [("submit", "created", "created", 1, None), ("launch", "created", "launching", 1, None)]
_STARTED = [*_RUN, ("started", "launching", "running", 1, None)]
_SUCCEEDED = [*_STARTED, ("succeed", "running", "finished", 1, None)]
# name: (event, source, target, attempt, reason) of every transition, oldest first
HISTORY: dict[str, list[tuple[str, str, str, int, str | None]]] = {
    "finished": _SUCCEEDED,
    "failed": [*_STARTED, ("fail", "running", "failed", 1, "exited with 3")],
    "retried": [
        *_STARTED,
        ("retry", "running", "created", 2, "attempt 1: exited with 7"),
        ("launch", "created", "launching", 2, None),
        ("started", "launching", "running", 2, None),
        ("fail", "running", "failed", 2, "exited with 7"),
    ],
    "timed-out": [*_STARTED, ("fail", "running", "failed", 1, "timed out")],
    "configured": _SUCCEEDED,
    "ssh-finished": _SUCCEEDED,
    "slurm-finished": _SUCCEEDED,
    "killed": [
        *_STARTED,
        ("kill", "running", "killing", 1, "killed on request"),
        ("killed", "killing", "killed", 1, None),
    ],
    "paused-running": [*_STARTED, ("pause", "running", "paused", 1, "paused on request")],
    "paused-launching": [*_RUN, ("pause", "launching", "paused", 1, "paused on request")],
    "ssh-paused-for-host": [*_RUN, ("pause", "launching", "paused", 1, SSH_REASON)],
    "slurm-paused-for-host": [*_RUN, ("pause", "launching", "paused", 1, SLURM_REASON)],
}
# name: (stdout, stderr) of the current attempt, as `corra logs` prints them
LOGS = {
    "finished": ("hello out\n", "hello err\n"),
    "failed": ("about to fail\n", ""),
    "retried": ("attempt 2\n", ""),
    "timed-out": ("waiting\n", ""),
    "configured": ("/\ngreeting=hello-secret\nconfigured\n", ""),
    "killed": ("before kill\n", ""),
    "paused-running": ("paused but ran\n", ""),
    "paused-launching": ("", ""),
    "ssh-finished": ("remote hello\n", "remote warning\n"),
}
# name: flags and sizes of the result (the rest is times and usage, compared across readers)
RESULTS: dict[str, dict[str, Any]] = {
    "finished": {"timed_out": False, "killed": False, "error": None, "out": 10, "err": 10},
    "failed": {"timed_out": False, "killed": False, "error": None, "out": 14, "err": 0},
    "retried": {"timed_out": False, "killed": False, "error": None, "out": 10, "err": 0},
    "timed-out": {"timed_out": True, "killed": False, "error": None, "out": 8, "err": 0},
    "configured": {"timed_out": False, "killed": False, "error": None, "out": 35, "err": 0},
    "ssh-finished": {"timed_out": False, "killed": False, "error": None, "out": 13, "err": 15},
    "slurm-finished": {"timed_out": False, "killed": False, "error": None, "out": 13, "err": 15},
    "killed": {"timed_out": False, "killed": True, "error": None, "out": 12, "err": 0},
}
#: What a spec says when the fixture sets nothing (`corra show --json`'s ``spec``).
DEFAULT_SPEC: dict[str, Any] = {
    "cwd": None,
    "env": {},
    "timeout": None,
    "restart": "temporary",
    "max_attempts": 3,
    "kill_grace": 10.0,
    "memory_limit": None,
    "pids_limit": None,
    "output_limit": None,
    "labels": {},
    "backend": "local",
    "host": None,
    "inputs": {},
    "outputs": [],
    "outputs_dir": None,
    "slurm": {},
}
SPECS: dict[str, dict[str, Any]] = {
    "retried": {"restart": "transient", "max_attempts": 2},
    "timed-out": {"timeout": 0.5, "kill_grace": 0.5},
    "killed": {"kill_grace": 0.5},
    "paused-launching": {"max_attempts": 1},
    "configured": {
        "argv": ["sh", "-c", 'pwd; echo "greeting=$GREETING"; echo configured'],
        "cwd": "/",
        "env": {"GREETING": "***", "MODE": "***"},  # hidden unless --show-env
        "labels": {"team": "infra", "tier": "gold"},
        "timeout": 60.0,
        "kill_grace": 2.5,
        "output_limit": 4096,
        "memory_limit": 268435456,
    },
    "ssh-finished": {
        "argv": ["python3", "train.py", "--epochs", "1"],
        "backend": "ssh",
        "host": "gpu1",
        "inputs": {"train.py": "/home/corra/project/train.py"},
        "outputs": ["model/*.bin", "log.txt"],
        "outputs_dir": "/home/corra/results",
        "labels": {"kind": "remote"},
    },
    "slurm-finished": {
        "argv": ["srun", "hostname"],
        "backend": "slurm",
        "host": "cluster",
        "slurm": {
            "partition": "debug",
            "time": "00:05:00",
            "cpus_per_task": 2,
            "mem": "512M",
            "extra": ["--exclusive"],
            "hold_on_pause": True,
        },
    },
    "ssh-paused-for-host": {"argv": ["sleep", "1"], "backend": "ssh", "host": "gpu1"},
    "slurm-paused-for-host": {
        "argv": ["sleep", "1"],
        "backend": "slurm",
        "host": "cluster",
        "slurm": {"partition": "long", "nodes": 1},
    },
}
_SCRIPTS = {
    "finished": "echo hello out; echo hello err >&2",
    "failed": "echo about to fail; exit 3",
    "retried": 'echo "attempt $CORRA_ATTEMPT"; exit 7',
    "timed-out": "echo waiting; exec sleep 30",
    "killed": "echo before kill; exec sleep 30",
    "paused-running": "sleep 1; echo paused but ran",
    "paused-launching": "echo never ran",
}


def expected_spec(name: str) -> dict[str, Any]:
    spec = {"name": name, **DEFAULT_SPEC, **SPECS.get(name, {})}
    if name in _SCRIPTS:
        spec["argv"] = ["sh", "-c", LEDGER_PREFIX + _SCRIPTS[name]]
    return spec


@pytest.fixture
def state(tmp_path: Path) -> Path:
    """A private copy of the fixture (git keeps no modes: made 0700/0600, as corra's own)."""
    copy = tmp_path / "state"
    shutil.copytree(FIXTURE, copy)
    for path in [copy, *copy.rglob("*")]:
        os.chmod(path, 0o700 if path.is_dir() else 0o600)
    return copy


def corra_cli(state: Path, *args: str) -> str:
    """``corra --state-dir STATE ARGS...`` as a user runs it (no service: it reads the files)."""
    env = {key: value for key, value in os.environ.items() if not key.startswith("CORRA_")}
    done = subprocess.run(
        [sys.executable, "-m", "corra.cli", "--state-dir", str(state), *args],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        env=env,
    )
    assert done.returncode == 0, done.stderr
    return done.stdout


def raw_records(state: Path) -> dict[str, dict[str, Any]]:
    """The snapshots as stored, by id: read with lmdb and json alone."""
    env = lmdb.open(str(state / "state.lmdb"), readonly=True, lock=False, max_dbs=6)
    try:
        with env.begin() as txn:
            snapshots = env.open_db(b"snapshots", txn=txn, create=False)
            return {
                key.decode(): json.loads(value)
                for key, value in txn.cursor(db=snapshots).iternext()
            }
    finally:
        env.close()


def test_the_fixture_is_a_state_dir_made_by_today_s_corra():
    # (what the tests below stand on: a fixture regenerated by a later corra would not do)
    assert sorted(IDS) == sorted(PROCESSES)
    assert (FIXTURE / "ledger").read_text() == LEDGER
    assert not (FIXTURE / "runtime.lock").exists()
    assert (FIXTURE / "state.lmdb" / "data.mdb").stat().st_size <= 256 << 10


def test_raw_layout_of_the_legacy_store(state):
    env = lmdb.open(str(state / "state.lmdb"), readonly=True, lock=False, max_dbs=6)
    try:
        with env.begin() as txn:

            def items(name: str) -> list[tuple[bytes, bytes]]:
                db = env.open_db(name.encode(), txn=txn, create=False)
                return list(txn.cursor(db=db).iternext())

            assert items("meta") == [(b"format", b"2")]
            assert items("quarantine") == []
            assert dict(items("names")) == {
                name.encode(): process.encode() for name, process in IDS.items()
            }
            # Only the processes paused for their host stay in the active index.
            assert items("active") == sorted(
                [
                    (IDS["ssh-paused-for-host"].encode(), b""),
                    (IDS["slurm-paused-for-host"].encode(), b""),
                ]
            )
            history = items("history")
    finally:
        env.close()
    assert len(history) == sum(len(entries) for entries in HISTORY.values())
    for key, value in history:
        process, sequence = key[:-9], key[-9:]
        assert process.decode() in IDS.values() and sequence[:1] == b"\x00"
        entry = json.loads(value)
        assert list(entry) == ["schema", "type", "data"]
        assert (entry["schema"], entry["type"]) == (1, "Transition")
        assert list(entry["data"]) == ["at", "event", "source", "target", "attempt", "reason"]

    records = raw_records(state)
    assert sorted(records) == sorted(IDS.values())
    for name, process in IDS.items():
        record = records[process]
        assert list(record) == ["schema", "type", "data"]
        assert (record["schema"], record["type"]) == (1, "ProcessRecord")
        data = record["data"]
        assert list(data) == ["id", "spec", "state", "created_at"]
        assert data["id"] == process
        assert list(data["spec"]) == ["argv", "name", *DEFAULT_SPEC]
        # (the env's values are stored as given: the store is 0600, not encrypted)
        assert data["spec"] == {**expected_spec(name), **_raw_env(name)}
        assert list(data["state"]) == [
            "phase",
            "attempt",
            "paused_from",
            "handle",
            "reason",
            "result",
            "updated_at",
            "started_at",
        ]
        phase, attempt, _, _, _, reason, paused_from = PROCESSES[name]
        assert (data["state"]["phase"], data["state"]["attempt"]) == (phase, attempt)
        assert (data["state"]["reason"], data["state"]["paused_from"]) == (reason, paused_from)


def test_a_legacy_store_read_as_it_is_has_no_notes(state):
    # (its store predates the notes' and statuses' databases: a reader finds none, and
    # creates none)
    with corra.persistence.open_store_readonly(state) as reader:
        assert reader.note(IDS["paused-running"]) is None and reader.notes() == []
        assert reader.status(IDS["paused-running"]) is None
        assert reader.statuses_of([IDS["finished"], IDS["failed"]]) == [None, None]
    env = lmdb.open(str(state / "state.lmdb"), readonly=True, lock=False, max_dbs=10)
    try:
        for name in (b"notes", b"statuses"):
            with env.begin() as txn, pytest.raises(lmdb.NotFoundError):
                env.open_db(name, txn=txn, create=False)
    finally:
        env.close()


def _raw_env(name: str) -> dict[str, Any]:
    return {"env": {"GREETING": "hello-secret", "MODE": "fixture"}} if name == "configured" else {}


def test_legacy_handles_as_stored(state):
    records = {name: raw_records(state)[IDS[name]]["data"]["state"] for name in IDS}
    # Local programs: the chaperone's handle, with an absolute run dir where the fixture was
    # made (not where it is now: read it by key under the state dir's runs/).
    local = records["finished"]["handle"]
    assert list(local) == [
        "key",
        "run_dir",
        "chaperone_pid",
        "chaperone_start",
        "pid",
        "cgroup",
        "cgroup_note",
        "started_at",
        "shared",
    ]
    assert local["key"] == f"{IDS['finished']}.1"
    assert local["run_dir"] == f"/tmp/corra-legacy-state-2026-12/runs/{IDS['finished']}.1"
    assert local["shared"] is True
    assert records["retried"]["handle"]["key"] == f"{IDS['retried']}.2"
    key = f"{IDS['ssh-finished']}.1"
    assert records["ssh-finished"]["handle"] == {
        "host": "gpu1",
        "key": key,
        "run_dir": f"/srv/corra/runs/{key}",
        "chaperone_pid": 31337,
        "chaperone_start": 123456789,
        "pid": 31338,
        "program_start": 123456790,
        "started_at": 1796371200.25,
        "outputs": ["model/*.bin", "log.txt"],
        "outputs_to": "/home/corra/results",
        "work_dir": f"/srv/corra/runs/{key}/work",
        "output_limit": 1 << 30,
    }
    key = f"{IDS['slurm-finished']}.1"
    assert records["slurm-finished"]["handle"] == {
        "host": "cluster",
        "key": key,
        "run_dir": f"/srv/corra/runs/{key}",
        "job_id": "4242",
        "array": False,
        "hold_on_pause": True,
    }
    for name in ("paused-launching", "ssh-paused-for-host", "slurm-paused-for-host"):
        assert records[name]["handle"] is None


def test_legacy_handles_decode_into_their_backends_handle_classes(state):
    # No migration: the dicts the old code stored are the handle classes' stored form, and
    # written again they are the same JSON.
    from corra._runtime import record_codec
    from corra.backends.batch import JobHandle
    from corra.backends.local import Handle
    from corra.backends.ssh import RemoteHandle
    from corra.processes._registry import installed

    codec = record_codec({name: plugin.handle for name, plugin in installed.plugins.items()})
    classes = {"local": Handle, "ssh": RemoteHandle, "slurm": JobHandle}
    for process_id, document in raw_records(state).items():
        record = codec.decode(json.dumps(document).encode())
        stored = document["data"]["state"]["handle"]
        if stored is None:
            assert record.state.handle is None
            continue
        assert type(record.state.handle) is classes[record.spec.backend], process_id
        written = json.loads(codec.encode(record))["data"]["state"]["handle"]
        assert list(written.items()) == list(stored.items()), process_id


def with_no_value(stored: dict[str, Any] | None) -> dict[str, Any] | None:
    """A result stored before issue 16 as the API shows it: with no value."""
    no_value = {"value": None, "has_value": False, "value_file": None, "value_error": None}
    return None if stored is None else {**stored, **no_value}


def test_corra_ps_lists_every_legacy_process(state):
    # (`ps` lists the active processes unless -a; --json in the API's shape)
    listing = json.loads(corra_cli(state, "ps", "-a", "--json"))
    assert listing["next_cursor"] is None
    items = listing["items"]
    assert [item["name"] for item in items] == ORDER
    raw = raw_records(state)
    # (`ps --json` does not say the backend: `show` does, below)
    for item in items:
        name = item["name"]
        phase, attempt, _, returncode, signal, reason, paused_from = PROCESSES[name]
        assert item["id"] == IDS[name]
        assert (item["phase"], item["attempt"]) == (phase, attempt)
        assert (item["returncode"], item["signal"]) == (returncode, signal)
        assert (item["reason"], item["paused_from"]) == (reason, paused_from)
        assert item["argv"] == expected_spec(name)["argv"]
        assert item["labels"] == expected_spec(name)["labels"]
        stored = raw[IDS[name]]["data"]
        assert item["created_at"] == stored["created_at"]
        assert item["updated_at"] == stored["state"]["updated_at"]
        assert item["started_at"] == stored["state"]["started_at"]
        assert item["result"] == with_no_value(stored["state"]["result"])
        assert item["status"] is None  # (no program said how far it was, then)
        if name in RESULTS:
            expected = RESULTS[name]
            result = item["result"]
            assert (result["timed_out"], result["killed"], result["error"]) == (
                expected["timed_out"],
                expected["killed"],
                expected["error"],
            )
            assert (result["stdout_bytes"], result["stderr_bytes"]) == (
                expected["out"],
                expected["err"],
            )
            assert (result["stdout_dropped"], result["stderr_dropped"]) == (0, 0)
            assert item["ended_at"] == result["ended_at"]
        else:
            assert item["result"] is None and item["ended_at"] is None
    recorded = {item["name"]: item["recorded"] for item in items}
    # A remote program paused before its launch: nothing known without its runtime.
    unknown = {
        "state": "unknown",
        "collected": False,
        "returncode": None,
        "signal": None,
        "ended_at": None,
        "summary": "not known without its runtime",
    }
    assert recorded["ssh-paused-for-host"] == unknown
    assert recorded["slurm-paused-for-host"] == unknown
    assert recorded["paused-launching"] is None
    # (paused-running's program exited 0 after its pause; today's reader looks for its exit
    # record at the handle's absolute run dir, which a moved state dir no longer has)
    assert recorded["paused-running"]["collected"] is False
    assert recorded["paused-running"]["state"] in ("exited", "lost")
    for name in ORDER[:8]:
        assert recorded[name] is None
    by_label = json.loads(corra_cli(state, "ps", "-a", "--json", "--label", "team=infra"))["items"]
    assert [item["name"] for item in by_label] == ["configured"]
    paused = json.loads(corra_cli(state, "ps", "--json", "--phase", "paused"))["items"]
    assert [item["name"] for item in paused] == ORDER[8:]


@pytest.mark.parametrize("name", ORDER)
def test_corra_show_of_a_legacy_process(state, name):
    shown = json.loads(corra_cli(state, "show", name, "--json"))
    phase, attempt, backend, returncode, signal, reason, paused_from = PROCESSES[name]
    assert (shown["id"], shown["name"], shown["phase"]) == (IDS[name], name, phase)
    assert (shown["attempt"], shown["reason"], shown["paused_from"]) == (
        attempt,
        reason,
        paused_from,
    )
    # (shown with an empty table of every installed backend with options, as always)
    assert shown["spec"] == {**expected_spec(name), "hyperqueue": {}, "kubernetes": {}}
    assert shown["spec"]["backend"] == backend
    history = [
        (t["event"], t["source"], t["target"], t["attempt"], t["reason"]) for t in shown["history"]
    ]
    assert history == HISTORY[name]
    stored = raw_records(state)[IDS[name]]["data"]["state"]
    assert shown["handle"] == stored["handle"]
    assert shown["result"] == with_no_value(stored["result"])
    if name in RESULTS:
        assert (shown["result"]["returncode"], shown["result"]["signal"]) == (returncode, signal)
    # The history's times are the records': the last transition is the last update.
    assert shown["history"][-1]["at"] == stored["updated_at"]
    assert shown["note"] is None  # (a store from before notes has none)


def test_corra_show_env_of_a_legacy_process(state):
    shown = json.loads(corra_cli(state, "show", "configured", "--json", "--show-env"))
    assert shown["spec"]["env"] == {"GREETING": "hello-secret", "MODE": "fixture"}
    text = corra_cli(state, "show", "configured")
    assert "hello-secret" not in text
    assert "env:     GREETING=*** MODE=***" in text


@pytest.mark.parametrize("name", sorted(LOGS))
def test_corra_logs_of_a_legacy_process(state, name):
    stdout, stderr = LOGS[name]
    assert corra_cli(state, "logs", name) == stdout
    assert corra_cli(state, "logs", name, "--stderr") == stderr


async def test_a_runtime_recovers_the_legacy_state_and_runs_nothing_again(state):
    from corra.backends.local import LocalBackend

    seen_before = corra_cli(state, "ps", "-a", "--json")
    # The local backend alone: the remote hosts of the fixture do not answer, and a runtime
    # with their backends would try again to launch what waits for them.
    local = LocalBackend(state / "runs")
    async with local, corra.open_runtime(state_dir=state, backends={"local": local}) as rt:
        report = rt.recovery
        assert report is not None
        assert report.resumed == ()
        assert report.set_aside == ()
        assert report.inactive == 10
        assert sorted(report.waiting_for_host) == sorted(
            [IDS["ssh-paused-for-host"], IDS["slurm-paused-for-host"]]
        )
        records = rt.processes.list()
        assert [record.name for record in records] == ORDER
        for record in records:
            name = record.name
            phase, attempt, backend, returncode, signal, reason, paused_from = PROCESSES[name]
            assert (record.id, record.spec.backend) == (IDS[name], backend)
            assert (record.phase, record.state.attempt) == (phase, attempt)
            assert (record.state.reason, record.state.paused_from) == (reason, paused_from)
            assert record.spec == corra.parse_process_spec(_raw_spec(name))
            result = record.state.result
            if name in RESULTS:
                assert result is not None
                assert (result.returncode, result.signal) == (returncode, signal)
                assert (result.stdout_bytes, result.stderr_bytes) == (
                    RESULTS[name]["out"],
                    RESULTS[name]["err"],
                )
                assert result.ok is (phase == "finished")
            else:
                assert result is None
            history = rt.processes.history(record)
            assert [(t.event, t.source, t.target, t.attempt, t.reason) for t in history] == HISTORY[
                name
            ]
        assert rt.processes.active == 0  # (no actor: nothing was resumed)
        retried = rt.processes.get("retried")
        assert await rt.processes.read_log(retried, "stdout", 0, 100, attempt=1) == (b"attempt 1\n")
        assert await rt.processes.read_log(retried, "stdout", 0, 100) == b"attempt 2\n"
    # Nothing ran again, and nothing users see changed (the records may have been migrated).
    assert (state / "ledger").read_text() == LEDGER
    assert json.loads(corra_cli(state, "ps", "-a", "--json")) == json.loads(seen_before)
    # The runtime built the store's indexes (format 3): listings read them from now on, and
    # list what the full read of the format-2 store listed, filtered and paged alike.
    with corra.persistence.open_store_readonly(state) as reader:
        assert reader.notes() == []  # (the runtime made the notes' database: empty)
        assert reader.has_indexes()
        assert reader.index_counts("phase") == {
            b"finished": 4,
            b"failed": 3,
            b"killed": 1,
            b"paused": 4,
        }
    paused = json.loads(corra_cli(state, "ps", "--json", "--phase", "paused", "--limit", "3"))
    assert [item["name"] for item in paused["items"]] == ORDER[8:11]
    rest = corra_cli(state, "ps", "--json", "--phase", "paused", "--cursor", paused["next_cursor"])
    assert [item["name"] for item in json.loads(rest)["items"]] == ORDER[11:]
    assert corra_cli(state, "ps", "-q", "-l", "team=infra") == ""  # (not active)
    assert corra_cli(state, "ps", "-aq", "-l", "team=infra") == IDS["configured"] + "\n"
    assert sorted(path.name for path in (state / "runs").glob("[!.]*")) == sorted(
        [f"{IDS[name]}.1" for name in LOGS if name not in ("ssh-finished", "paused-launching")]
        + [f"{IDS['retried']}.2"]
    )


async def test_a_runtime_with_the_remembered_hosts_opens_the_legacy_state(state):
    # The hosts remembered in hosts.json are read; the processes paused for them wait.
    async with corra.open_runtime(state_dir=state, recover=False) as rt:
        assert rt.remote is not None
        assert sorted(rt.remote.hosts) == ["cluster", "gpu1"]
        gpu1 = rt.remote.hosts["gpu1"]
        assert (gpu1.hostname, gpu1.port, gpu1.user, gpu1.work_root) == (
            "127.0.0.1",
            1,
            "corra",
            "/srv/corra",
        )
        assert gpu1.env == {"CUDA_VISIBLE_DEVICES": "0"}
        assert rt.remote.hosts["cluster"].options_for("slurm").poll_interval == 30.0
        assert rt.processes.get("ssh-paused-for-host").phase == "paused"
    assert (state / "ledger").read_text() == LEDGER


def _raw_spec(name: str) -> dict[str, Any]:
    return {**expected_spec(name), **_raw_env(name)}

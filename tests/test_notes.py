"""Notes: a backend says, in words, where a launched program is (`BackendContext.notes`), and
``corra show``, ``corra show --json`` and ``GET /v1/processes/{id}`` show it while that attempt
runs; it is never a transition, and goes when the attempt ends or the process is removed.

The programs are real and so is the plug-in (`tests/_noting.py`: local programs whose
``NOTE_FILE`` is their note), found by the runtime through the registry here and through an
entry point in the ``corra`` subprocesses.
"""

from __future__ import annotations

import inspect
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import _noting
import attrs
import httpx
import pytest
import schemathesis
import trio
from schemathesis.specs.openapi.checks import response_schema_conformance
from test_api_service import Service

from corra._readonly import open_state_query
from corra._runtime import open_runtime
from corra.persistence import Store, open_store, open_store_readonly
from corra.processes._backend import (
    NOTE_LENGTH,
    BackendContext,
    EffectKey,
    MemoryNotes,
    note_text,
)
from corra.processes._notes import Note, StoredNotes
from corra.processes._query import ProcessQuery
from corra.processes._registry import installed
from corra.testing import open_plugin

CORRA = [sys.executable, "-m", "corra.cli"]
UNSCHEDULABLE = "unschedulable: 0/1 nodes are available: 1 node(s) didn't match node selector"


def script(gates: Path) -> list[str]:
    """A program that notes UNSCHEDULABLE (atomically), waits for ``gates/go``, clears its
    note, waits for ``gates/end`` and ends."""
    return [
        "sh",
        "-c",
        f'printf "%s\\n" "{UNSCHEDULABLE}" > "$NOTE_FILE.tmp" && mv "$NOTE_FILE.tmp" "$NOTE_FILE"; '
        f'while [ ! -e "{gates}/go" ]; do sleep 0.05; done; rm -f "$NOTE_FILE"; '
        f'while [ ! -e "{gates}/end" ]; do sleep 0.05; done; echo done',
    ]


async def until(condition: Callable[[], Any], what: str, seconds: float = 20) -> Any:
    """``condition()``'s value once it is true (polled every 0.05 s); ``condition`` may be
    async."""
    with trio.move_on_after(seconds):
        while True:
            value = condition()
            if inspect.isawaitable(value):
                value = await value
            if value:
                return value
            await trio.sleep(0.05)
    raise AssertionError(f"{what}: not within {seconds} s")


def until_sync(condition: Callable[[], Any], what: str, seconds: float = 30) -> Any:
    deadline = time.monotonic() + seconds
    while not (value := condition()):
        assert time.monotonic() < deadline, f"{what}: not within {seconds} s"
        time.sleep(0.05)
    return value


@pytest.fixture
def noting(monkeypatch: pytest.MonkeyPatch) -> list[BackendContext]:
    """The ``noting`` plug-in installed beside the built-in ones, in this interpreter; the
    contexts it is opened with, in order."""
    contexts: list[BackendContext] = []

    def open_noting(context: BackendContext) -> Any:
        contexts.append(context)
        return _noting.open_noting(context)

    plugin = attrs.evolve(_noting.PLUGIN, open=open_noting)
    monkeypatch.setattr(installed, "_plugins", {**installed.plugins, "noting": plugin})
    return contexts


def live_query(rt: Any) -> ProcessQuery:
    return ProcessQuery.of_manager(rt.processes, lambda record: None)


def stored_note(state: Path, process_id: str) -> bytes | None:
    with open_store_readonly(state) as reader:
        return reader.note(process_id)


# -- the seam -------------------------------------------------------------------------------


def test_a_note_is_one_line_of_at_most_its_length_and_is_checked() -> None:
    key = EffectKey("p1", 1)
    assert note_text(key, "  pending:\n  Resources \n") == "pending: Resources"
    assert note_text(key, " \n ") is None and note_text(key, None) is None
    long = note_text(key, "x" * (NOTE_LENGTH + 50))
    assert long is not None and len(long) == NOTE_LENGTH and long.endswith("\u2026")
    with pytest.raises(TypeError):
        note_text(key, b"bytes")  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        note_text("p1.1", "text")  # type: ignore[arg-type]


async def test_open_plugin_gives_a_backend_notes_kept_in_memory(tmp_path: Path) -> None:
    async with open_plugin(_noting.PLUGIN, tmp_path) as backend:
        notes = backend.context.notes
        assert isinstance(notes, MemoryNotes)
        key = EffectKey("p1", 1)
        notes.set(key, "pending: Resources")
        assert notes.notes == {key: "pending: Resources"}
        notes.set(key, None)
        assert notes.notes == {}


# -- the store ------------------------------------------------------------------------------


async def test_the_store_keeps_notes_apart_from_records_and_a_removal_takes_them(
    tmp_path: Path,
) -> None:
    async with open_store(tmp_path, durable=False) as store:
        for process in ("a", "b", "c"):
            await store.save(process, b"{}", transition=b"t")
        await store.put_notes({"a": b"note a", "b": b"note b", "c": b"note c"})
        assert (store.note("a"), store.note("zz")) == (b"note a", None)
        assert store.history("a") == [b"t"]  # (no history entry, no snapshot change)
        assert store.load("a") == b"{}"
        await store.put_notes({"a": None, "b": b"note b again"})
        assert store.notes() == [("b", b"note b again"), ("c", b"note c")]
        await store.delete("b")
        await store.set_aside("c", b"{}", "corrupt")
        assert store.notes() == []
    with open_store_readonly(tmp_path) as reader:
        assert reader.notes() == [] and reader.note("a") is None


# -- through a runtime ----------------------------------------------------------------------


async def shown_note(query: ProcessQuery, process_id: str) -> Note | None:
    return (await query.show(process_id)).note


async def test_a_note_shows_while_its_attempt_runs_and_goes_when_it_ends(
    tmp_path: Path, noting: list[BackendContext]
) -> None:
    gates = tmp_path / "gates"
    gates.mkdir()
    state = tmp_path / "state"
    async with open_runtime(state_dir=state) as rt:
        ref = await rt.spawn_process(script(gates), backend="noting", name="noted")
        manager = rt.processes
        query = live_query(rt)
        note = await until(lambda: shown_note(query, ref.id), "the note shown")
        view = await query.show(ref.id)
        assert view.note == note and note.text == UNSCHEDULABLE and view.note.attempt == 1
        assert view.record.phase == "running"
        # Not a transition: the history has none for it.
        assert [t.event for t in manager.history(ref.id)] == ["submit", "launch", "started"]
        (gates / "go").touch()
        await until(lambda: rt.processes.store.note(ref.id) is None, "the note cleared")
        assert (await query.show(ref.id)).note is None
        assert ref.record().phase == "running"
        (gates / "end").touch()
        with trio.fail_after(20):
            record = await ref.wait()
        assert record.phase == "finished"
        assert (await query.show(ref.id)).note is None


async def test_a_note_of_another_attempt_or_of_a_paused_process_is_dropped(
    tmp_path: Path, noting: list[BackendContext]
) -> None:
    state = tmp_path / "state"
    async with open_runtime(state_dir=state) as rt:
        [context] = noting
        notes = context.notes
        assert isinstance(notes, StoredNotes)
        # Attempt 1 fails at once; attempt 2 notes where it is, and runs until it is paused.
        ref = await rt.spawn_process(
            [
                "sh",
                "-c",
                '[ "$CORRA_ATTEMPT" = 1 ] && exit 3; echo waiting > "$NOTE_FILE"; sleep 30',
            ],
            backend="noting",
            restart="transient",
            max_attempts=2,
        )
        store = rt.processes.store
        stored = await until(lambda: Note.decode(store.note(ref.id) or b"{}"), "attempt 2's note")
        assert (stored.attempt, stored.text) == (2, "waiting")
        assert ref.record().state.attempt == 2
        notes.set(EffectKey(ref.id, 1), "pending: of attempt 1")
        await notes.flush()
        notes.set(EffectKey(ref.id, 3), "pending: of an attempt to come")
        await notes.flush()
        assert Note.decode(store.note(ref.id) or b"") == stored  # (neither replaced it)
        with trio.fail_after(20):
            await ref.pause()
        await until(lambda: store.note(ref.id) is None, "the paused one's note removed")
        notes.set(EffectKey(ref.id, 2), "pending: while paused")
        await notes.flush()
        assert store.note(ref.id) is None
        assert (await live_query(rt).show(ref.id)).note is None
        with trio.fail_after(20):
            await ref.kill()


async def test_lifecycles_whose_backend_says_nothing_write_no_notes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Notes stay off the lifecycle's path: no write of them, unless a backend sets one.
    writes: list[dict[str, bytes | None]] = []
    put_notes = Store.put_notes

    async def counted(self: Store, notes: dict[str, bytes | None]) -> None:
        writes.append(dict(notes))
        await put_notes(self, notes)

    monkeypatch.setattr(Store, "put_notes", counted)
    async with open_runtime(state_dir=tmp_path / "state") as rt:
        refs = [await rt.spawn_process(["true"]) for _ in range(10)]
        with trio.fail_after(30):
            for ref in refs:
                assert (await ref.wait()).phase == "finished"
    assert writes == []


async def test_a_note_survives_a_restart_of_the_runtime_while_its_attempt_runs(
    tmp_path: Path, noting: list[BackendContext]
) -> None:
    gates = tmp_path / "gates"
    gates.mkdir()
    state = tmp_path / "state"
    async with open_runtime(state_dir=state) as rt:
        ref = await rt.spawn_process(script(gates), backend="noting")
        before = await until(lambda: shown_note(live_query(rt), ref.id), "the note shown")
    # No runtime: the program runs on, and the state dir read as it is shows its note.
    async with open_state_query(state) as query:
        view = await query.show(ref.id)
        assert view.record.phase == "running" and view.note == before
    async with open_runtime(state_dir=state) as rt:
        assert rt.recovery is not None and rt.recovery.resumed == (ref.id,)
        query = live_query(rt)
        await trio.sleep(0.5)  # (the backend says it again: the same note, not rewritten)
        assert await shown_note(query, ref.id) == before
        (gates / "go").touch()
        await until(lambda: rt.processes.store.note(ref.id) is None, "the note cleared")
        (gates / "end").touch()
        with trio.fail_after(20):
            assert (await rt.processes.wait(ref.id)).phase == "finished"
        assert await shown_note(query, ref.id) is None


async def test_a_runtime_removes_notes_left_behind_as_it_starts(
    tmp_path: Path, noting: list[BackendContext]
) -> None:
    # A crash between an attempt's end and its note's removal, or a corra that knew no notes
    # removing the process, leaves a note behind: the next runtime removes it, and keeps the
    # note of an attempt that still runs.
    gates = tmp_path / "gates"
    gates.mkdir()
    state = tmp_path / "state"
    async with open_runtime(state_dir=state) as rt:
        ended = await rt.spawn_process(["true"], backend="noting")
        running = await rt.spawn_process(script(gates), backend="noting")
        with trio.fail_after(20):
            await ended.wait()
        kept = await until(lambda: shown_note(live_query(rt), running.id), "the note shown")
    async with open_store(state) as store:
        await store.put_notes(
            {
                ended.id: Note("pending: left behind", 1, 1.0).encode(),
                "pgone000000000": Note("pending: of a process removed", 1, 1.0).encode(),
            }
        )
    async with open_runtime(state_dir=state) as rt:
        store = rt.processes.store
        await until(lambda: len(store.notes()) == 1, "the notes left behind removed")
        assert Note.decode(store.note(running.id) or b"") == kept
        (gates / "go").touch()
        (gates / "end").touch()
        with trio.fail_after(20):
            await rt.processes.wait(running.id)
        await until(lambda: store.notes() == [], "the last note removed")


# -- through the command line and the API ---------------------------------------------------


def cli(state: Path, env: dict[str, str], *args: str) -> str:
    done = subprocess.run(
        [*CORRA, args[0], "--state-dir", str(state), *args[1:]],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        env=env,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    return done.stdout


def note_line(shown: str) -> str:
    [line] = [line for line in shown.splitlines() if line.startswith("  note:")]
    return line


@pytest.mark.slow
def test_corra_show_and_the_api_show_a_note_and_corra_rm_removes_one_left_behind(
    tmp_path: Path,
) -> None:
    site = _noting.site_with_noting(tmp_path / "site")
    env = {key: value for key, value in os.environ.items() if not key.startswith("CORRA_")}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(site), env.get("PYTHONPATH")]))
    gates = tmp_path / "gates"
    gates.mkdir()
    state = tmp_path / "state"

    def detail(http: httpx.Client) -> dict[str, Any]:
        response = http.get("/v1/processes/noted")
        assert response.status_code == 200, response.text
        return dict(response.json())

    with Service(state, env=env) as service, service.client() as http:
        created = http.post(
            "/v1/processes", json={"argv": script(gates), "name": "noted", "backend": "noting"}
        )
        assert created.status_code == 201, created.text
        process_id = created.json()["id"]
        shown = until_sync(lambda: detail(http)["note"], "the note in GET /v1/processes/{id}")
        assert shown["text"] == UNSCHEDULABLE and shown["attempt"] == 1
        assert abs(shown["at"] - time.time()) < 60
        conforms(service, "noted")  # (the answer with a note, as the OpenAPI document says)
        # Through the service, found by its socket and at --url.
        text = cli(state, env, "show", "noted")
        assert note_line(text).startswith(f"  note:    {UNSCHEDULABLE} (since ")
        assert text.splitlines()[1] == note_line(text)  # (right under the phase)
        url = ["--url", service.url, "--token", service.token]
        assert json.loads(cli(state, env, "show", "noted", "--json", *url))["note"] == shown
        assert note_line(cli(state, env, "show", "noted", *url)) == note_line(text)
        service.stop(signal.SIGKILL)  # (its program runs on)
    # No service: `corra show` reads the state dir, where the note is kept.
    assert json.loads(cli(state, env, "show", "noted", "--json"))["note"] == shown
    assert note_line(cli(state, env, "show", "noted")) == note_line(text)
    with Service(state, env=env) as service, service.client() as http:
        assert detail(http)["phase"] == "running" and detail(http)["note"] == shown
        (gates / "go").touch()
        until_sync(lambda: detail(http)["note"] is None, "the note cleared")
        assert detail(http)["phase"] == "running"
        assert "note:" not in cli(state, env, "show", "noted")
        (gates / "end").touch()
        until_sync(lambda: detail(http)["phase"] == "finished", "the process finished")
        assert detail(http)["note"] is None
        conforms(service, "noted")
        history = [entry["event"] for entry in detail(http)["history"]]
        assert history == ["submit", "launch", "started", "succeed"]
        assert service.stop() == 0
    # A note that a crash left behind is never shown beside a record that is over, and
    # `corra rm` removes it with the record.
    trio.run(put_note, state, process_id, Note("pending: left behind", 1, time.time()))
    assert json.loads(cli(state, env, "show", "noted", "--json"))["note"] is None
    cli(state, env, "rm", "noted")
    with open_store_readonly(state) as reader:
        assert reader.notes() == [] and reader.load(process_id) is None


def conforms(service: Service, process: str) -> None:
    """GET /v1/processes/{id}'s answer keeps to the service's OpenAPI document
    (schemathesis)."""
    auth = {"Authorization": f"Bearer {service.token}"}
    with service.client() as http:
        document = schemathesis.openapi.from_dict(http.get("/openapi.json").json())
    case = document["/v1/processes/{id}"]["GET"].Case(path_parameters={"id": process})
    response = case.call(base_url=service.url, headers=auth, timeout=30)
    assert response.status_code == 200
    case.validate_response(response, checks=[response_schema_conformance], headers=auth)


async def put_note(state: Path, process_id: str, note: Note) -> None:
    async with open_store(state) as store:
        await store.put_notes({process_id: note.encode()})

"""The conformance suite every backend passes against itself: `BackendConformance`.

The suite speaks to a backend only through `corra.processes._backend.Backend`, with the
programs real: ``sh -c`` scripts (override `BackendConformance.program` for a backend that
runs something else), on the real component the backend drives (this machine, an sshd, a
Slurm cluster, a Kubernetes API server...). Each test takes a few seconds of real time plus
what the component needs to start a program; nothing here runs on virtual time, because a
real program does not.

A backend's test module subclasses `BackendConformance` and provides its fixtures::

    class TestEchoConformance(BackendConformance):
        @pytest.fixture
        def plugin(self) -> BackendPlugin:
            return PLUGIN

        @pytest.fixture
        def open_backend(self, plugin, tmp_path) -> Opener:
            return lambda: open_plugin(plugin, tmp_path)

        @pytest.fixture
        def lose_program(self) -> Loser:
            async def lose(backend, handle):
                os.killpg(handle.pid, signal.SIGKILL)
            return lose

pytest then collects the inherited ``test_*`` methods under the subclass's name (the base
class itself is not collected: its name does not start with ``Test``).
"""

from __future__ import annotations

import json
from typing import Any, NoReturn

import attrs
import pytest
import trio

from corra._errors import LaunchFailed, ProgramLost
from corra.processes._backend import (
    RESULT_STREAM,
    BackendBase,
    BackendPlugin,
    EffectKey,
    Limits,
    MemoryStatuses,
    describe_plugin,
)
from corra.processes._values import with_value
from corra.testing._kit import STATUSES, Kit, Loser, Opener


def _override(fixture: str, what: str) -> NoReturn:
    pytest.fail(f"the conformance kit needs the fixture {fixture!r}: {what}", pytrace=False)


class BackendConformance:
    """The tests every backend passes; subclass it in the backend's test module.

    Fixtures to provide (the defaults of the optional ones are given):

    - ``plugin``: the backend's `BackendPlugin` (its capabilities, options and handle class).
    - ``open_backend``: an `Opener`, a function that opens the backend on the test's state
      (state dir, hosts, root on a host) each time it is called; the tests close it and open
      it again to simulate a crash. `open_plugin` does what the runtime does.
    - ``lose_program``: ``async (backend, handle) -> None`` makes the launched program lost as
      it can be in production (its chaperone killed, its job forgotten); the backend must
      then say so: ``wait`` raises `ProgramLost`. Where the component cannot lose a program
      in a test, the fixture calls ``pytest.skip(reason)`` (only that test is skipped).
    - ``host`` (None): the ``[hosts.NAME]`` the programs run on, for a backend with hosts.
    - ``options`` (the plug-in's options class with its defaults, or None): the options
      object every request carries.

    Class attributes a subclass may change:

    Attributes:
        patience: seconds any one step may take beyond what its program does (a queue, a
            poll interval, a connection): the bound of every wait of the suite.
        kill_grace: the grace of the kill of a program that ignores SIGTERM, so the least
            time that kill takes. A backend whose component imposes its own grace (Slurm's
            ``KillWait``) sets it to that.
    """

    patience: float = 20.0
    kill_grace: float = 1.0

    def program(self, script: str) -> tuple[str, ...]:
        """The argv that runs the shell ``script`` on this backend."""
        return ("sh", "-c", script)

    @pytest.fixture
    def plugin(self) -> BackendPlugin:
        _override("plugin", "the backend's BackendPlugin")

    @pytest.fixture
    def open_backend(self) -> Opener:
        _override("open_backend", "a function that opens the backend on the test's state")

    @pytest.fixture
    def lose_program(self) -> Loser:
        _override("lose_program", "async (backend, handle) -> None, making the program lost")

    @pytest.fixture
    def host(self) -> str | None:
        return None

    @pytest.fixture
    def options(self, plugin: BackendPlugin) -> Any:
        return None if plugin.options is None else plugin.options()

    @pytest.fixture
    def kit(
        self,
        plugin: BackendPlugin,
        open_backend: Opener,
        host: str | None,
        options: Any,
    ) -> Kit:
        return Kit(plugin, open_backend, host, options, self.program, self.patience)

    @pytest.fixture
    def handle_class(self, plugin: BackendPlugin) -> type:
        if plugin.handle is None:
            pytest.skip(f"backend {plugin.name!r} declares no handle class")
        return plugin.handle

    # -- the plug-in, as data ------------------------------------------------------------

    def test_the_plugin_describes_itself_as_json(self, plugin: BackendPlugin) -> None:
        described = json.loads(json.dumps(describe_plugin(plugin)))
        assert described["name"] == plugin.name and described["description"]
        if plugin.options is not None:
            plugin.options()  # a process may leave the table out: every field has a default

    # -- launch, once per key ------------------------------------------------------------

    @pytest.mark.trio
    async def test_a_second_launch_with_the_same_key_returns_the_first_handle(
        self, kit: Kit
    ) -> None:
        request = kit.request("echo started; sleep 1; echo done")
        async with kit.open() as backend:
            backend.check(request)
            first = await backend.launch(request)
            assert await backend.launch(request) == first  # while it runs
            result = await kit.wait(backend, first)
            assert result.returncode == 0 and result.ok, result
            again = await backend.launch(request)  # after it ended: not run a second time
            assert again == first
            replayed = await kit.wait(backend, again)
            assert replayed.returncode == 0
            if result.started_at is not None:
                assert replayed.started_at == result.started_at, "it ran again"
            assert await kit.log(backend, request.key) == b"started\ndone\n"

    @pytest.mark.trio
    async def test_handles_are_frozen_values_of_the_plugins_handle_class(
        self, kit: Kit, handle_class: type
    ) -> None:
        request = kit.request("true")
        async with kit.open() as backend:
            handle = await backend.launch(request)
            await kit.wait(backend, handle)
        assert isinstance(handle, handle_class)
        assert attrs.has(type(handle))
        with pytest.raises(attrs.exceptions.FrozenInstanceError):
            setattr(handle, attrs.fields(type(handle))[0].name, None)
        assert hash(handle) == hash(attrs.evolve(handle))

    # -- wait ------------------------------------------------------------------------------

    @pytest.mark.trio
    async def test_wait_gives_the_return_code_and_the_output_sizes(self, kit: Kit) -> None:
        request = kit.request("echo out; echo error >&2; exit 3")
        async with kit.open() as backend:
            result = await kit.wait(backend, await backend.launch(request))
        assert result.returncode == 3 and not result.ok and result.signal is None, result
        sizes = (10, 0) if kit.plugin.capabilities.merged_output else (4, 6)
        assert (result.stdout_bytes, result.stderr_bytes) == sizes, result
        if result.started_at is not None and result.ended_at is not None:
            assert result.started_at <= result.ended_at

    @pytest.mark.trio
    async def test_the_program_gets_its_environment_and_who_it_is(self, kit: Kit) -> None:
        request = kit.request(
            'printf "%s|%s|%s|%s\\n" "$CORRA_PROCESS_ID" "$CORRA_ATTEMPT" '
            '"$CORRA_PROCESS_NAME" "$CONFORMANCE_VALUE"',
            attempt=2,
            name="conformance-name",
            env={"CONFORMANCE_VALUE": "a 'b' \"c\" $d"},
        )
        async with kit.open() as backend:
            result = await kit.wait(backend, await backend.launch(request))
            assert result.ok, result
            expected = f"{request.key.process_id}|2|conformance-name|a 'b' \"c\" $d\n"
            assert (await kit.log(backend, request.key)).decode() == expected

    @pytest.mark.trio
    async def test_the_program_runs_in_its_cwd(self, kit: Kit) -> None:
        request = kit.request("pwd", cwd="/")
        async with kit.open() as backend:
            assert (await kit.wait(backend, await backend.launch(request))).ok
            assert await kit.log(backend, request.key) == b"/\n"

    @pytest.mark.trio
    async def test_a_program_that_cannot_start_fails_and_stays_failed(self, kit: Kit) -> None:
        request = kit.request("", argv=("corra-conformance-no-such-program",))
        async with kit.open() as backend:
            try:
                handle = await backend.launch(request)
            except LaunchFailed:
                # the backend's way: the launch fails, and a replay of it fails again
                with pytest.raises(LaunchFailed):
                    await backend.launch(request)
                return
            # the other way (a queue that starts it later): it ends as not found
            result = await kit.wait(backend, handle)
            assert result.returncode == 127 or result.error is not None, result

    @pytest.mark.trio
    async def test_a_timeout_kills_the_program_and_says_so(self, kit: Kit) -> None:
        request = kit.request("echo ready; sleep 30", limits=Limits(timeout=1.0, kill_grace=1.0))
        async with kit.open() as backend:
            result = await kit.wait(backend, await backend.launch(request))
        assert result.timed_out and not result.ok and result.returncode != 0, result

    # -- statuses ---------------------------------------------------------------------------

    @pytest.mark.trio
    async def test_a_backend_hands_on_statuses_as_its_capabilities_say(self, kit: Kit) -> None:
        """A backend whose capabilities say ``status`` hands the latest line a program
        appended to ``$CORRA_STATUS`` to `BackendContext.statuses` by the time its wait
        returns, and why a later line was refused; one whose capabilities do not hands
        none (`open_plugin` opens it with the sink that `STATUSES` holds)."""
        statuses = MemoryStatuses()
        said = '{"progress": 0.5, "message": "half"}'
        request = kit.request(
            f'test -n "$CORRA_STATUS" && echo \'{said}\' >> "$CORRA_STATUS"; '
            'sleep 1; test -n "$CORRA_STATUS" && echo oops >> "$CORRA_STATUS"; true'
        )
        token = STATUSES.set(statuses)
        try:
            async with kit.open() as backend:
                result = await kit.wait(backend, await backend.launch(request))
        finally:
            STATUSES.reset(token)
        assert result.ok, result
        if not kit.plugin.capabilities.status:
            assert statuses.statuses == {}, "statuses handed on without the capability"
            return
        assert statuses.statuses.get(request.key) == (
            {"progress": 0.5, "message": "half"},
            "not JSON: 'oops'",
        ), statuses.statuses

    # -- find after a crash ----------------------------------------------------------------

    @pytest.mark.trio
    async def test_find_by_key_after_a_crash(self, kit: Kit) -> None:
        request = kit.request("echo started; sleep 2; echo done")
        async with kit.open() as backend:
            launched = await backend.launch(request)
            await kit.output(backend, request.key, b"started\n")
        # The backend is gone (as in a crash of the runtime), the program runs on.
        async with kit.open() as backend:
            found = await backend.find(request.key, kit.host)
            assert found is not None
            assert await backend.find(EffectKey("conformance-never", 1), kit.host) is None
            result = await kit.wait(backend, found)
            assert result.returncode == 0, result
            assert await kit.log(backend, request.key) == b"started\ndone\n"
            # What was launched before, found now, and launched again (a replay) is one
            # program. (A found handle may lack what only the request knew, e.g. outputs to
            # fetch, so it need not equal the launched one.)
            for handle in (launched, await backend.launch(request)):
                same = await kit.wait(backend, handle)
                assert same.returncode == 0 and same.started_at == result.started_at

    @pytest.mark.trio
    async def test_remove_leaves_nothing_of_an_ended_program_and_can_be_repeated(
        self, kit: Kit
    ) -> None:
        request = kit.request("echo gone; echo too >&2")
        async with kit.open() as backend:
            if type(backend).remove is BackendBase.remove:
                pytest.skip("the backend keeps nothing of its own to remove (BackendBase's)")
            await kit.wait(backend, await backend.launch(request))
            merged = kit.plugin.capabilities.merged_output
            assert await kit.log(backend, request.key) == (b"gone\ntoo\n" if merged else b"gone\n")
            await backend.remove(request.key, kit.host)
            assert await backend.find(request.key, kit.host) is None
            assert await kit.log(backend, request.key) == b""
            assert await kit.log(backend, request.key, "stderr") == b""
            await backend.remove(request.key, kit.host)  # (again: nothing to do)
            await backend.remove(EffectKey("conformance-never", 1), kit.host)

    # -- kill with grace -------------------------------------------------------------------

    @pytest.mark.trio
    async def test_kill_sends_term_first_and_a_program_that_honours_it_ends(self, kit: Kit) -> None:
        request = kit.request(
            "trap 'echo term; exit 7' TERM; echo ready; while :; do sleep 0.1; done"
        )
        grace = 2 * kit.patience  # far beyond how long the program takes to honour it
        async with kit.open() as backend:
            handle = await backend.launch(request)
            await kit.output(backend, request.key, b"ready\n")
            started = trio.current_time()
            with trio.fail_after(grace):
                killed = await backend.kill(handle, grace)
            assert trio.current_time() - started < kit.patience, "it waited for SIGKILL"
            result = killed if killed is not None else await kit.wait(backend, handle)
            assert not result.ok and result.signal != 9, result
            log = await kit.log(backend, request.key)
            assert log == b"ready\nterm\n", log

    @pytest.mark.trio
    async def test_kill_ends_a_program_that_ignores_term_after_the_grace(self, kit: Kit) -> None:
        request = kit.request("trap '' TERM; echo ready; sleep 30")
        grace = self.kill_grace
        async with kit.open() as backend:
            handle = await backend.launch(request)
            await kit.output(backend, request.key, b"ready\n")
            started = trio.current_time()
            with trio.fail_after(grace + kit.patience):
                killed = await backend.kill(handle, grace)
            assert trio.current_time() - started >= 0.9 * grace, "no grace before SIGKILL"
            result = killed if killed is not None else await kit.wait(backend, handle)
            assert not result.ok and result.returncode is None, result
            # and a wait after the kill returns what it left
            assert not (await kit.wait(backend, handle)).ok

    # -- logs ------------------------------------------------------------------------------

    @pytest.mark.trio
    async def test_logs_are_read_from_an_offset(self, kit: Kit) -> None:
        merged = kit.plugin.capabilities.merged_output
        request = kit.request('printf 0123456789; printf "ab\\nc" >&2')
        async with kit.open() as backend:
            await kit.wait(backend, await backend.launch(request))
            key, host = request.key, kit.host
            # (merged: stderr's bytes follow stdout's in stdout, as they were written)
            out, err = (b"0123456789ab\nc", b"") if merged else (b"0123456789", b"ab\nc")
            assert await backend.read_log(key, "stdout", 0, 4, host) == b"0123"
            assert await backend.read_log(key, "stdout", 4, 100, host) == out[4:]
            assert await backend.read_log(key, "stdout", len(out), 100, host) == b""
            assert await backend.read_log(key, "stderr", 1, 2, host) == err[1:3]
            never = EffectKey("conformance-never", 1)
            assert await backend.read_log(never, "stdout", 0, 100, host) == b""
            if kit.plugin.capabilities.log_size:
                assert await backend.log_size(key, "stdout", host) == len(out)
                assert await backend.log_size(key, "stderr", host) == len(err)

    @pytest.mark.trio
    async def test_logs_grow_while_the_program_runs(self, kit: Kit) -> None:
        request = kit.request("echo first; sleep 1; echo second; sleep 30")
        async with kit.open() as backend:
            handle = await backend.launch(request)
            await kit.output(backend, request.key, b"first\n")
            rest = await kit.poll(
                lambda: backend.read_log(request.key, "stdout", 6, 100, kit.host), bool
            )
            assert b"second\n".startswith(rest)
            await kit.output(backend, request.key, b"first\nsecond\n")
            if kit.plugin.capabilities.log_size:
                size = await backend.log_size(request.key, "stdout", kit.host)
                assert size == len(b"first\nsecond\n")
            await backend.kill(handle, 0.5)

    # -- the program's value ($CORRA_RESULT) ------------------------------------------------

    @pytest.mark.trio
    async def test_a_program_writes_its_value_to_corra_result(self, kit: Kit) -> None:
        written = {"items": [1, 2, "three"], "nested": {"ok": True, "none": None}}
        request = kit.request(f"printf '%s' '{json.dumps(written)}' > \"$CORRA_RESULT\"")
        silent = kit.request("true")
        async with kit.open() as backend:
            result = await kit.wait(backend, await backend.launch(request))
            assert result.ok, result
            data = await backend.read_log(request.key, RESULT_STREAM, 0, 1 << 16, kit.host)
            assert json.loads(data) == written
            valued = await with_value(result, backend, request.key, kit.host, None)
            assert (valued.value, valued.has_value, valued.value_error) == (written, True, None)
            none = await kit.wait(backend, await backend.launch(silent))
            assert await backend.read_log(silent.key, RESULT_STREAM, 0, 100, kit.host) == b""
            nothing = await with_value(none, backend, silent.key, kit.host, None)
            assert (nothing.has_value, nothing.value_error) == (False, None)
            never = EffectKey("conformance-never", 1)
            assert await backend.read_log(never, RESULT_STREAM, 0, 100, kit.host) == b""

    # -- a lost program --------------------------------------------------------------------

    @pytest.mark.trio
    async def test_a_lost_program_is_reported_as_lost(self, kit: Kit, lose_program: Loser) -> None:
        request = kit.request("echo ready; sleep 30")
        async with kit.open() as backend:
            handle = await backend.launch(request)
            await kit.output(backend, request.key, b"ready\n")
            await lose_program(backend, handle)
            with pytest.raises(ProgramLost):
                await kit.wait(backend, handle)

    @pytest.mark.trio
    async def test_a_kill_after_a_loss_cleans_up_without_an_error(
        self, kit: Kit, lose_program: Loser
    ) -> None:
        # (a process actor kills what is left of a lost program before it retries it)
        request = kit.request("echo ready; sleep 30")
        async with kit.open() as backend:
            handle = await backend.launch(request)
            await kit.output(backend, request.key, b"ready\n")
            await lose_program(backend, handle)
            with trio.fail_after(kit.patience):
                await backend.kill(handle, 0.5)

    # -- the rest of the protocol ----------------------------------------------------------

    @pytest.mark.trio
    async def test_slots_can_be_taken_and_given_back_on_an_idle_backend(self, kit: Kit) -> None:
        one, two = kit.request("true").key, kit.request("true").key
        async with kit.open() as backend:
            assert backend.try_acquire_slot(one)
            backend.release_slot(one)
            backend.release_slot(one)  # a no-op: it holds none
            with trio.fail_after(kit.patience):
                await backend.acquire_slot(two)
            backend.release_slot(two)
            backend.adopt_slot(one)
            backend.release_slot(one)

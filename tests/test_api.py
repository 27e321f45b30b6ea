"""The HTTP API in process: a runtime, its API and hypercorn on a free port, in the test's own
trio loop, driven with httpx."""

from __future__ import annotations

import contextlib
import itertools
import json
import ssl
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import attrs
import httpx
import pytest
import trio

from corra._runtime import open_runtime
from corra.api import MAX_BODY, OPENAPI, Listen, open_api, serve_api
from corra.api._files import load_token, parse_listen, socket_address
from corra.processes._query import Utf8Chunks

TOKEN = "test-token"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
PY = sys.executable


@attrs.frozen
class Served:
    runtime: Any
    api: Any
    http: httpx.AsyncClient
    urls: list[str]
    state_dir: Path


@contextlib.asynccontextmanager
async def serving(
    state_dir: Path, runtime_options: dict[str, Any] | None = None, **listen: Any
) -> AsyncIterator[Served]:
    """A runtime on ``state_dir`` with its API on a free port (and a Unix socket)."""
    options = {"host": "127.0.0.1", "port": 0, "socket": state_dir / "api.sock", **listen}
    async with (
        open_runtime(state_dir=state_dir, durable=False, **(runtime_options or {})) as runtime,
        open_api(runtime, token=TOKEN) as api,
        trio.open_nursery() as nursery,
    ):
        urls = await nursery.start(
            lambda task_status: serve_api(api.app, Listen(**options), task_status=task_status)
        )
        async with httpx.AsyncClient(base_url=urls[0], headers=AUTH, timeout=30) as http:
            yield Served(runtime, api, http, urls, state_dir)
        api.stop()
        nursery.cancel_scope.cancel()


async def submit(http: httpx.AsyncClient, argv: list[str], **fields: Any) -> dict[str, Any]:
    response = await http.post("/v1/processes", json={"argv": argv, **fields})
    assert response.status_code == 201, response.text
    return response.json()


async def wait_for(http: httpx.AsyncClient, process: str, *phases: str) -> dict[str, Any]:
    with trio.fail_after(30):
        while True:
            record = (await http.get(f"/v1/processes/{process}")).json()
            if record["phase"] in phases:
                return record
            await trio.sleep(0.05)


async def log_lines(http: httpx.AsyncClient, process: str, **params: Any) -> list[dict[str, Any]]:
    entries = []
    async with http.stream("GET", f"/v1/processes/{process}/logs", params=params) as response:
        assert response.status_code == 200, await response.aread()
        assert response.headers["content-type"].startswith("application/x-ndjson")
        async for line in response.aiter_lines():
            if line:
                entries.append(json.loads(line))
    return entries


def read_stream(
    base_url: str,
    path: str,
    params: Any = None,
    until: Any = None,
) -> list[dict[str, Any]]:
    """The NDJSON entries of a stream, in a thread: a sync client, which may leave a stream
    in the middle (``until(entries)`` is true) without leaving a generator unclosed."""
    entries: list[dict[str, Any]] = []
    with (
        httpx.Client(base_url=base_url, headers=AUTH, timeout=30) as client,
        client.stream("GET", path, params=params) as response,
    ):
        assert response.status_code == 200, response.read()
        for line in response.iter_lines():
            if line:
                entries.append(json.loads(line))
                if until is not None and until(entries):
                    break
    return entries


async def stream(served: Served, path: str, params: Any = None, until: Any = None) -> list:
    return await trio.to_thread.run_sync(read_stream, served.urls[0], path, params, until)


def python(code: str) -> list[str]:
    return [PY, "-c", code]


# -- auth ------------------------------------------------------------------------------------


async def test_every_endpoint_but_health_wants_the_token(tmp_path):
    async with serving(tmp_path) as served:
        bare = httpx.AsyncClient(base_url=served.urls[0])
        async with bare:
            health = await bare.get("/v1/health")
            assert health.status_code == 200 and health.json()["status"] == "ok"
            for method, path in [
                ("GET", "/v1/processes"),
                ("POST", "/v1/processes"),
                ("POST", "/v1/processes:batch"),
                ("GET", "/v1/processes/x"),
                ("POST", "/v1/processes/x/pause"),
                ("POST", "/v1/processes/x/resume"),
                ("POST", "/v1/processes/x/kill"),
                ("GET", "/v1/processes/x/logs"),
                ("GET", "/v1/events"),
                ("GET", "/metrics"),
                ("GET", "/openapi.json"),
                ("GET", "/nowhere"),
            ]:
                for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": TOKEN}):
                    response = await bare.request(method, path, headers=headers)
                    assert response.status_code == 401, (method, path, headers)
                    assert response.json()["error"] == "unauthorized"
                    assert response.headers["www-authenticate"].startswith("Bearer")
            lowercase = await bare.get(
                "/v1/processes", headers={"Authorization": f"bearer {TOKEN}"}
            )
            assert lowercase.status_code == 200


async def test_the_unix_socket_is_private_and_wants_the_token_too(tmp_path):
    async with serving(tmp_path) as served:
        sock = tmp_path / "api.sock"
        assert sock.stat().st_mode & 0o777 == 0o600
        assert served.urls[1] == f"unix:{sock}"
        transport = httpx.AsyncHTTPTransport(uds=str(sock))
        async with httpx.AsyncClient(transport=transport, base_url="http://corra") as local:
            assert (await local.get("/v1/processes")).status_code == 401
            response = await local.get("/v1/processes", headers=AUTH)
            assert response.status_code == 200 and response.json()["items"] == []
    assert not sock.exists()  # removed when the service stops


async def test_a_socket_path_too_long_for_an_address_still_works(tmp_path):
    deep = tmp_path / ("d" * 60) / ("e" * 60)
    deep.mkdir(parents=True)
    async with serving(deep) as served:
        assert len(str(deep / "api.sock")) > 108
        with socket_address(deep / "api.sock") as address:
            transport = httpx.AsyncHTTPTransport(uds=address)
            async with httpx.AsyncClient(transport=transport, base_url="http://corra") as local:
                assert (await local.get("/v1/health")).status_code == 200
        assert served.urls[1] == f"unix:{deep / 'api.sock'}"


def test_tokens_are_created_private_and_read_back(tmp_path):
    path = tmp_path / "dir" / "api-token"
    token = load_token(path)
    assert len(token) >= 32 and path.stat().st_mode & 0o777 == 0o600
    assert load_token(path) == token
    path.write_text("  spaced token \n")
    with pytest.raises(ValueError, match="one token"):
        load_token(path)


def test_listen_addresses():
    assert parse_listen("127.0.0.1:7878") == ("127.0.0.1", 7878)
    assert parse_listen("[::1]:80") == ("::1", 80)
    assert parse_listen("9000") == ("127.0.0.1", 9000)
    for bad in ("host:", "host:port", "host:70000", ""):
        with pytest.raises(ValueError, match="--listen"):
            parse_listen(bad)


# -- processes -------------------------------------------------------------------------------


async def test_submit_get_and_submit_again_by_name(tmp_path):
    async with serving(tmp_path) as served:
        http = served.http
        response = await http.post(
            "/v1/processes",
            json={"argv": ["sh", "-c", "echo hi; exit 3"], "name": "three", "labels": {"k": "v"}},
        )
        assert response.status_code == 201, response.text
        created = response.json()
        assert response.headers["location"] == f"/v1/processes/{created['id']}"
        assert created["name"] == "three" and created["phase"] in ("created", "launching")
        spec = {"argv": ["sh", "-c", "echo hi; exit 3"], "name": "three", "labels": {"k": "v"}}
        again = await http.post("/v1/processes", json=spec)
        assert again.status_code == 200 and again.json()["id"] == created["id"]
        # (another spec under the name: 409, tests/test_resubmit.py)
        other = await http.post("/v1/processes", json={"argv": ["other"], "name": "three"})
        assert other.status_code == 409 and other.json()["fields"] == ["argv", "labels"]

        record = await wait_for(http, "three", "failed")
        assert record["returncode"] == 3 and record["reason"] == "exited with 3"
        assert record["attempt"] == 1 and record["labels"] == {"k": "v"}
        for field in ("created_at", "updated_at", "started_at", "ended_at"):
            assert isinstance(record[field], float), field
        assert record["spec"]["argv"] == ["sh", "-c", "echo hi; exit 3"]
        assert [t["event"] for t in record["history"]] == ["submit", "launch", "started", "fail"]
        assert (await http.get(f"/v1/processes/{created['id']}")).json() == record

        anonymous = await submit(http, ["true"])
        assert anonymous["name"] == anonymous["id"]


async def test_concurrent_submissions_of_one_name_make_one_process(tmp_path):
    async with serving(tmp_path) as served:
        answers = []

        async def post() -> None:
            response = await served.http.post(
                "/v1/processes", json={"argv": ["true"], "name": "once"}
            )
            answers.append((response.status_code, response.json()["id"]))

        async with trio.open_nursery() as nursery:
            for _ in range(5):
                nursery.start_soon(post)
        assert sorted(status for status, _ in answers) == [200, 200, 200, 200, 201]
        assert len({process_id for _, process_id in answers}) == 1


async def test_invalid_bodies_name_the_field(tmp_path):
    async with serving(tmp_path) as served:
        http = served.http
        cases = [
            (b"", 400, "empty"),
            (b"{not json", 400, "not JSON"),
            (b"[1, 2]", 422, "expected a table of fields"),
            (b'{"argv": ["x"], "timeout": NaN}', 400, "NaN"),
            (b"{}", 422, "process.argv: missing"),
            (b'{"argv": "ls -l"}', 422, "process.argv"),
            (b'{"argv": ["x"], "timeout": "ten"}', 422, "process.timeout"),
            (b'{"argv": ["x"], "restart": "sometimes"}', 422, "process.restart"),
            (b'{"argv": ["x"], "bogus": 1}', 422, "bogus"),
            (b'{"argv": ["x"], "name": "no spaces"}', 422, "process.name"),
            (b'{"argv": ["x"], "cwd": "relative/dir"}', 422, "process.cwd"),
            (b'{"argv": ["x"], "backend": "ssh", "host": "nowhere"}', 422, "backend"),
            (b"\xff\xfe\x00", 400, "not JSON"),
            (b"[" * 100_000 + b"]" * 100_000, 400, "not JSON"),
        ]
        for body, status, words in cases:
            response = await http.post("/v1/processes", content=body)
            assert response.status_code == status, (body[:40], response.text)
            assert words in response.json()["message"], (body[:40], response.text)
        assert (await http.get("/v1/processes")).json()["items"] == []  # nothing written


async def test_oversize_bodies_are_refused_with_413(tmp_path):
    # (a sync client, in a thread: the service answers before it read the body, and an async
    # client would leave its body's generator unfinished)
    def post(content: Any) -> httpx.Response:
        with httpx.Client(base_url=served.urls[0], headers=AUTH) as client:
            return client.post("/v1/processes", content=content)

    def chunks() -> Any:  # no content-length: counted as it comes
        for _ in range(20):
            yield b" " * (100 << 10)

    async with serving(tmp_path) as served:
        big = json.dumps({"argv": ["x" * (MAX_BODY + 10)]}).encode()
        response = await trio.to_thread.run_sync(post, big)
        assert response.status_code == 413 and response.json()["error"] == "too_large"
        assert (await trio.to_thread.run_sync(post, chunks())).status_code == 413


async def test_unknown_ids_are_404_and_methods_405(tmp_path):
    async with serving(tmp_path) as served:
        http = served.http
        for method, path in [
            ("GET", "/v1/processes/nope"),
            ("POST", "/v1/processes/nope/pause"),
            ("POST", "/v1/processes/nope/resume"),
            ("POST", "/v1/processes/nope/kill"),
            ("GET", "/v1/processes/nope/logs"),
            ("GET", "/v1/nothing/here"),
            ("GET", "/v1/processes/" + "x" * 600),  # no process could have it: 404 too
            ("POST", "/v1/processes/" + "x" * 600 + "/kill"),
            ("GET", "/v1/processes/a%00b"),
        ]:
            response = await http.request(method, path)
            assert response.status_code == 404, (method, path)
            assert response.json()["error"] == "not_found"
        response = await http.delete("/v1/processes")
        assert response.status_code == 405 and "GET" in response.headers["allow"]
        assert response.json()["error"] == "method_not_allowed"


async def test_pause_resume_kill_and_409_with_the_phase(tmp_path):
    async with serving(tmp_path) as served:
        http = served.http
        created = await submit(http, ["sleep", "30"], name="sleeper")
        await wait_for(http, "sleeper", "running")
        paused = await http.post("/v1/processes/sleeper/pause")
        assert paused.status_code == 200 and paused.json()["phase"] == "paused"
        twice = await http.post("/v1/processes/sleeper/pause")
        assert twice.status_code == 409
        assert twice.json() | {"message": ""} == {
            "error": "invalid_transition",
            "message": "",
            "phase": "paused",
        }
        resumed = await http.post(f"/v1/processes/{created['id']}/resume")
        assert resumed.status_code == 200 and resumed.json()["phase"] == "running"
        conflict = await http.post("/v1/processes/sleeper/resume")
        assert conflict.status_code == 409 and conflict.json()["phase"] == "running"
        killed = await http.post("/v1/processes/sleeper/kill")
        assert killed.status_code == 200 and killed.json()["phase"] == "killed"
        assert killed.json()["signal"] == 15
        again = await http.post("/v1/processes/sleeper/kill")
        assert again.status_code == 409 and again.json()["phase"] == "killed"

        await submit(http, ["sleep", "30"], name="quick", kill_grace=0.5)
        await wait_for(http, "quick", "running")
        response = await http.post("/v1/processes/quick/kill", params={"wait": "false"})
        assert response.status_code in (200, 202)
        assert (await wait_for(http, "quick", "killed"))["phase"] == "killed"


async def test_list_filters_and_pages(tmp_path):
    async with serving(tmp_path) as served:
        http = served.http
        for index in range(7):
            await submit(
                http,
                ["sh", "-c", f"exit {index % 2}"],
                name=f"job-{index}",
                labels={"parity": "odd" if index % 2 else "even", "all": "yes"},
            )
        for index in range(7):
            await wait_for(http, f"job-{index}", "finished", "failed")

        seen: list[str] = []
        cursor = None
        pages = 0
        while True:
            params: dict[str, Any] = {"limit": 3}
            if cursor:
                params["cursor"] = cursor
            page = (await http.get("/v1/processes", params=params)).json()
            seen += [item["name"] for item in page["items"]]
            pages += 1
            cursor = page["next_cursor"]
            if cursor is None:
                break
        assert seen == [f"job-{index}" for index in range(7)] and pages == 3

        failed = (await http.get("/v1/processes", params={"phase": "failed"})).json()["items"]
        assert [item["name"] for item in failed] == ["job-1", "job-3", "job-5"]
        even = await http.get(
            "/v1/processes", params=[("label", "parity=even"), ("label", "all=yes")]
        )
        assert [item["name"] for item in even.json()["items"]] == [
            "job-0",
            "job-2",
            "job-4",
            "job-6",
        ]
        named = (await http.get("/v1/processes", params={"name": "job-4"})).json()["items"]
        assert [item["name"] for item in named] == ["job-4"]
        for params in (
            {"limit": "0"},
            {"limit": "1001"},
            {"limit": "ten"},
            {"phase": "asleep"},
            {"label": "novalue"},
            {"cursor": "unknown"},
            {"bogus": "1"},
        ):
            response = await http.get("/v1/processes", params=params)
            assert response.status_code == 400, params
            assert next(iter(params)) in response.json()["message"]


async def test_list_any_of_phases_a_name_prefix_or_glob_counts_and_a_cursor_while_writing(
    tmp_path,
):
    async with serving(tmp_path) as served:
        http = served.http
        for index in range(6):
            await submit(http, ["sh", "-c", f"exit {index % 2}"], name=f"job-{index}")
        await submit(http, ["sleep", "60"], name="sleeper")
        for index in range(6):
            await wait_for(http, f"job-{index}", "finished", "failed")
        await wait_for(http, "sleeper", "running")

        def names(response: httpx.Response) -> list[str]:
            assert response.status_code == 200, response.text
            return [item["name"] for item in response.json()["items"]]

        # phases: any of them, in creation order
        either = await http.get("/v1/processes", params=[("phase", "failed"), ("phase", "running")])
        assert names(either) == ["job-1", "job-3", "job-5", "sleeper"]
        # a name prefix, in name order
        await submit(http, ["true"], name="job-10")
        await wait_for(http, "job-10", "finished")
        prefixed = await http.get("/v1/processes", params={"name": "job-1"})
        assert names(prefixed) == ["job-1", "job-10"]
        # a name glob (*, ?, [...]): the whole name matches it, in name order
        globbed = await http.get("/v1/processes", params={"name": "job-?"})
        assert names(globbed) == [f"job-{index}" for index in range(6)]
        assert names(await http.get("/v1/processes", params={"name": "*1*"})) == ["job-1", "job-10"]
        ranged = await http.get("/v1/processes", params={"name": "job-[2-4]", "phase": "failed"})
        assert names(ranged) == ["job-3"]
        # counts per phase, kept by the store
        counts = (await http.get("/v1/processes:counts")).json()
        assert counts == {
            "phases": {
                "created": 0,
                "launching": 0,
                "running": 1,
                "paused": 0,
                "killing": 0,
                "finished": 4,
                "failed": 3,
                "killed": 0,
            }
        }
        # a cursor names a place in the order: processes written meanwhile do not shift it
        first = (await http.get("/v1/processes", params={"limit": 3})).json()
        assert [item["name"] for item in first["items"]] == ["job-0", "job-1", "job-2"]
        await http.post("/v1/processes/sleeper/kill")
        await submit(http, ["true"], name="late")
        rest = await http.get(
            "/v1/processes", params={"limit": 100, "cursor": first["next_cursor"]}
        )
        assert names(rest) == ["job-3", "job-4", "job-5", "sleeper", "job-10", "late"]
        # times: created or ended at or after, before (epoch seconds); ended: by their end
        await wait_for(http, "late", "finished")
        await wait_for(http, "sleeper", "killed")
        now = time.time()
        ended = await http.get("/v1/processes", params={"ended_after": now - 3600})
        assert sorted(names(ended)) == sorted(
            ["job-0", "job-1", "job-2", "job-3", "job-4", "job-5", "job-10", "sleeper", "late"]
        )
        late = await http.get(
            "/v1/processes", params={"created_after": now - 3600, "created_before": 1e10}
        )
        assert len(names(late)) == 9
        assert names(await http.get("/v1/processes", params={"created_before": 1})) == []
        for bad in ("-1", "nan", "soon", "1e12"):
            response = await http.get("/v1/processes", params={"ended_before": bad})
            assert response.status_code == 400 and "ended_before" in response.json()["message"]
        # a cursor of one order is refused by a listing of the other
        by_name = (await http.get("/v1/processes", params={"name": "job", "limit": 1})).json()
        wrong = await http.get("/v1/processes", params={"cursor": by_name["next_cursor"]})
        assert wrong.status_code == 400 and "cursor" in wrong.json()["message"]


# -- logs --------------------------------------------------------------------------------------


async def test_logs_without_follow_and_of_stderr(tmp_path):
    async with serving(tmp_path) as served:
        http = served.http
        await submit(http, ["sh", "-c", "echo out; echo err >&2"], name="both")
        await wait_for(http, "both", "finished")
        [entry] = await log_lines(http, "both")
        assert entry | {"time": 0} == {
            "attempt": 1,
            "offset": 0,
            "next_offset": 4,
            "time": 0,
            "stream": "stdout",
            "text": "out\n",
        }
        [entry] = await log_lines(http, "both", stream="stderr")
        assert entry["text"] == "err\n" and entry["stream"] == "stderr"
        assert await log_lines(http, "both", offset=4) == []
        assert (await log_lines(http, "both", offset=2))[0]["text"] == "t\n"
        for params in (
            {"stream": "stdin"},
            {"offset": "-1"},
            {"follow": "yes"},
            {"attempt": "2"},
            {"attempt": "0"},
        ):
            response = await http.get("/v1/processes/both/logs", params=params)
            assert response.status_code == 400, params


async def test_following_across_a_reconnect_misses_nothing_and_repeats_nothing(tmp_path):
    code = (
        "import sys, time\n"
        "for i in range(40):\n"
        "    sys.stdout.write(f'line {i} \\u00e9\\u6f22\\U0001f600\\n'); sys.stdout.flush()\n"
        "    time.sleep(0.03)\n"
    )
    expected = "".join(f"line {i} \u00e9\u6f22\U0001f600\n" for i in range(40))
    async with serving(tmp_path) as served:
        http = served.http
        await submit(http, python(code), name="talker")
        got: list[dict[str, Any]] = []
        params = {"follow": "true"}
        for stop in (5, 10, None):  # two disconnects in the middle, then to the end
            got += await stream(
                served,
                "/v1/processes/talker/logs",
                params,
                until=None if stop is None else (lambda entries, stop=stop: len(entries) == stop),
            )
            last = got[-1]
            params = {
                "follow": "true",
                "attempt": str(last["attempt"]),
                "offset": str(last["next_offset"]),
            }
        assert "".join(entry["text"] for entry in got) == expected
        for before, after in itertools.pairwise(got):
            assert after["offset"] == before["next_offset"]
        for entry in got:
            assert len(entry["text"].encode()) == entry["next_offset"] - entry["offset"]
        record = (await http.get("/v1/processes/talker")).json()
        assert record["phase"] == "finished"  # the stream ended once it was, and drained


async def test_a_character_split_between_writes_is_never_split_between_entries(tmp_path):
    code = (
        "import sys, time\n"
        "out = sys.stdout.buffer\n"
        "out.write(b'caf\\xc3'); out.flush(); time.sleep(1.0)\n"
        "out.write(b'\\xa9 \\xff end\\n'); out.flush()\n"
    )
    async with serving(tmp_path) as served:
        http = served.http
        await submit(http, python(code), name="split")
        with trio.fail_after(10):
            while not (early := await log_lines(http, "split")):
                await trio.sleep(0.05)
        assert [(e["text"], e["offset"], e["next_offset"]) for e in early] == [("caf", 0, 3)]
        follow = await log_lines(http, "split", follow="true", offset="3")
        assert "".join(e["text"] for e in follow) == "\u00e9 \ufffd end\n"
        assert follow[0]["offset"] == 3 and follow[-1]["next_offset"] == 12


async def test_an_unfinished_character_at_the_end_of_a_terminal_log_is_replaced(tmp_path):
    async with serving(tmp_path) as served:
        http = served.http
        await submit(
            http, python("import sys; sys.stdout.buffer.write(b'ok \\xe6\\xbc')"), name="cut"
        )
        await wait_for(http, "cut", "finished")
        entries = await log_lines(http, "cut")
        assert "".join(e["text"] for e in entries) == "ok \ufffd"
        assert entries[-1]["next_offset"] == 5


async def test_following_goes_through_every_attempt(tmp_path):
    script = 'echo "attempt $CORRA_ATTEMPT"; sleep 0.2; [ "$CORRA_ATTEMPT" = 2 ]'
    async with serving(tmp_path) as served:
        http = served.http
        await submit(http, ["sh", "-c", script], name="flaky", restart="transient", max_attempts=2)
        entries = await log_lines(http, "flaky", follow="true", attempt="1")
        assert [(e["attempt"], e["text"]) for e in entries] == [
            (1, "attempt 1\n"),
            (2, "attempt 2\n"),
        ]
        record = await wait_for(http, "flaky", "finished")
        assert record["attempt"] == 2
        [first] = await log_lines(http, "flaky", attempt="1")
        assert first["text"] == "attempt 1\n"


async def test_log_entries_arrive_within_a_second(tmp_path):
    code = "import time\nfor i in range(10):\n    print(time.time(), flush=True); time.sleep(0.1)\n"
    async with serving(tmp_path) as served:
        http = served.http
        await submit(http, python(code), name="clock")
        delays = []
        for entry in await stream(served, "/v1/processes/clock/logs", {"follow": "true"}):
            for written in entry["text"].split():
                delays.append(entry["time"] - float(written))
        assert len(delays) == 10
        assert max(delays) < 1.0, delays


def test_utf8_chunks_count_bytes_behind_the_text():
    chunks = Utf8Chunks(10)
    assert chunks.feed(b"a\xe2\x82") == (10, "a", 11)
    assert chunks.feed(b"\xac") == (11, "\u20ac", 14)
    assert chunks.feed(b"\xf0\x9f") == (14, "", 14)
    assert chunks.feed(b"", final=True) == (14, "\ufffd", 16)


# -- events, metrics, openapi ---------------------------------------------------------------


async def test_events_replay_then_follow(tmp_path):
    async with serving(tmp_path) as served:
        http = served.http
        await submit(http, ["true"], name="first")
        await wait_for(http, "first", "finished")
        replay = await stream(served, "/v1/events")
        assert [(e["name"], e["event"]) for e in replay] == [
            ("first", "submit"),
            ("first", "launch"),
            ("first", "started"),
            ("first", "succeed"),
        ]
        assert [e["seq"] for e in replay] == [1, 2, 3, 4]
        assert replay[-1]["target"] == "finished"
        assert await stream(served, "/v1/events", {"since": "2"}) == replay[2:]
        # a seq this state dir never gave: said first, then all that the service has
        gap, *rest = await stream(served, "/v1/events", {"since": "999"})
        assert gap["gap"] is True and gap["next_seq"] == 1 and rest == replay

        followed: list[dict[str, Any]] = []

        async def follow() -> None:
            followed.extend(
                await stream(
                    served,
                    "/v1/events",
                    {"follow": "true", "since": "4"},
                    until=lambda entries: entries[-1]["target"] in ("finished", "failed"),
                )
            )

        async with trio.open_nursery() as nursery:
            nursery.start_soon(follow)
            await trio.sleep(0.3)
            await submit(http, ["sh", "-c", "exit 1"], name="second")
        assert [e["event"] for e in followed] == ["submit", "launch", "started", "fail"]
        assert followed[0]["seq"] == 5 and followed[-1]["reason"] == "exited with 1"
        for params in ({"since": "-1"}, {"follow": "1"}):
            assert (await http.get("/v1/events", params=params)).status_code == 400


async def test_streams_end_when_the_service_stops(tmp_path):
    async with serving(tmp_path) as served:
        http = served.http
        await submit(http, ["sleep", "30"], name="long", kill_grace=0.5)
        await wait_for(http, "long", "running")
        ended = []

        async def follow(path: str, params: dict[str, str]) -> None:
            async with http.stream("GET", path, params=params) as response:
                async for _ in response.aiter_lines():
                    pass
            ended.append(path)

        async with trio.open_nursery() as nursery:
            nursery.start_soon(follow, "/v1/events", {"follow": "true"})
            nursery.start_soon(follow, "/v1/processes/long/logs", {"follow": "true"})
            await trio.sleep(0.3)
            served.api.stop()
        assert sorted(ended) == ["/v1/events", "/v1/processes/long/logs"]
        await served.runtime.processes.kill("long")


async def test_metrics_in_prometheus_text(tmp_path):
    async with serving(tmp_path) as served:
        http = served.http
        await submit(http, ["true"], name="ok")
        await submit(http, ["sh", "-c", "exit 2"], name="bad")
        await submit(http, ["sleep", "30"], name="paused-one")
        await wait_for(http, "ok", "finished")
        await wait_for(http, "bad", "failed")
        await wait_for(http, "paused-one", "running")
        await http.post("/v1/processes/paused-one/pause")
        response = await http.get("/metrics")
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/plain")
        samples = {}
        for line in response.text.splitlines():
            if line and not line.startswith("#"):
                name, _, value = line.rpartition(" ")
                samples[name] = float(value)
        assert samples['corra_processes{phase="finished"}'] == 1
        assert samples['corra_processes{phase="failed"}'] == 1
        assert samples['corra_processes{phase="paused"}'] == 1
        assert samples['corra_processes{phase="running"}'] == 0
        assert samples['corra_transitions_total{event="submit"}'] == 3
        assert samples['corra_transitions_total{event="pause"}'] == 1
        assert samples["corra_snapshot_commits_total"] >= 1
        assert samples["corra_process_actors"] == samples["corra_processes_queued"] == 0
        assert samples["corra_snapshot_commit_latency_seconds_count"] >= 1
        assert 'corra_mailbox_depth{supervisor="/processes"}' not in samples  # none active
        assert all(name.startswith("corra_") for name in samples)
        await http.post("/v1/processes/paused-one/kill")


async def test_the_openapi_document_is_served_and_names_every_route(tmp_path):
    async with serving(tmp_path) as served:
        response = await served.http.get("/openapi.json")
        assert response.status_code == 200 and response.json() == OPENAPI
        operations = {
            (method.upper(), path) for path, item in OPENAPI["paths"].items() for method in item
        }
        routes = {
            (method, route.path)
            for route in served.api.app.app.routes
            for method in route.methods - {"HEAD"}
        }
        assert operations == routes


# -- TLS ---------------------------------------------------------------------------------------


def _certificate(directory: Path) -> tuple[Path, Path]:
    cert, key = directory / "cert.pem", directory / "key.pem"
    subprocess.run(
        [
            "openssl",
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-days",
            "1",
            "-subj",
            "/CN=localhost",
            "-addext",
            "subjectAltName=IP:127.0.0.1,DNS:localhost",
            "-keyout",
            str(key),
            "-out",
            str(cert),
        ],
        check=True,
        capture_output=True,
    )
    return cert, key


async def test_tls(tmp_path):
    cert, key = _certificate(tmp_path)
    async with serving(tmp_path, certfile=str(cert), keyfile=str(key)) as served:
        url = served.urls[0]
        assert url.startswith("https://127.0.0.1:")
        context = ssl.create_default_context(cafile=str(cert))
        async with httpx.AsyncClient(base_url=url, verify=context, headers=AUTH) as https:
            assert (await https.get("/v1/processes")).status_code == 200
        async with httpx.AsyncClient(base_url=url.replace("https", "http")) as plain:
            with pytest.raises(httpx.HTTPError):
                await plain.get("/v1/health")

"""A process's history, a page at a time: ``GET /v1/processes/{id}/history`` and ``corra
history`` (from the state dir and through the service), with real programs; a page decodes
its entries and no other, and a cursor names the last entry given, so that a history that
grows between pages is read without a miss or a repeat."""

from __future__ import annotations

import json
from typing import Any

import httpx
import pytest
import trio
from test_api import serving, submit
from test_api_service import Service, corra
from test_cli_control import wait_phase

from corra._errors import ConfigError
from corra._runtime import open_runtime
from corra.processes._query import ProcessQuery


async def finished_attempt(http: httpx.AsyncClient, name: str, attempt: int) -> None:
    with trio.fail_after(30):
        while True:
            record = (await http.get(f"/v1/processes/{name}")).json()
            if record["phase"] == "finished" and record["attempt"] == attempt:
                return
            await trio.sleep(0.05)


async def rerun(http: httpx.AsyncClient, name: str, attempt: int) -> None:
    response = await http.post(f"/v1/processes/{name}/rerun")
    assert response.status_code in (200, 202), response.text
    await finished_attempt(http, name, attempt)


async def every_page(http: httpx.AsyncClient, name: str, limit: int) -> list[dict[str, Any]]:
    items: list[dict[str, Any]] = []
    cursor = None
    while True:
        params: dict[str, Any] = {"limit": limit, **({"cursor": cursor} if cursor else {})}
        response = await http.get(f"/v1/processes/{name}/history", params=params)
        assert response.status_code == 200, response.text
        page = response.json()
        assert list(page) == ["items", "next_cursor"] and len(page["items"]) <= limit
        items += page["items"]
        cursor = page["next_cursor"]
        if cursor is None:
            return items


async def test_the_history_endpoint_pages_with_a_cursor_that_misses_and_repeats_nothing(tmp_path):
    async with serving(tmp_path) as served:
        http = served.http
        await submit(http, ["true"], name="again")
        await finished_attempt(http, "again", 1)
        for attempt in (2, 3, 4):
            await rerun(http, "again", attempt)
        whole = (await http.get("/v1/processes/again")).json()["history"]
        assert len(whole) >= 12 and whole[0]["event"] == "submit"
        for limit in (1, 5, 1000):
            assert await every_page(http, "again", limit) == whole
        assert (await http.get("/v1/processes/again/history")).json() == {
            "items": whole,
            "next_cursor": None,
        }
        # the history grows between two pages: the next page goes on where the first ended
        first = (await http.get("/v1/processes/again/history", params={"limit": 5})).json()
        await rerun(http, "again", 5)
        rest = await http.get(
            "/v1/processes/again/history", params={"cursor": first["next_cursor"]}
        )
        grown = (await http.get("/v1/processes/again")).json()["history"]
        assert len(grown) > len(whole)
        assert first["items"] + rest.json()["items"] == grown

        assert (await http.get("/v1/processes/nope/history")).status_code == 404
        listing_cursor = (await http.get("/v1/processes", params={"limit": 1})).json()
        for params in (
            {"limit": 0},
            {"limit": 1001},
            {"cursor": "garbage"},
            {"cursor": "hAAA"},  # (a history's order, not a sequence number)
            {"cursor": listing_cursor["next_cursor"] or "c"},
            {"since": 1},
        ):
            response = await http.get("/v1/processes/again/history", params=params)
            assert response.status_code == 400, (params, response.text)
            assert next(iter(params)) in response.json()["message"]


async def test_a_history_page_decodes_its_entries_and_no_other(tmp_path, monkeypatch):
    async with open_runtime(state_dir=tmp_path, durable=False) as runtime:
        manager = runtime.processes
        await (await runtime.spawn_process(["true"], name="again")).wait()
        for _ in range(10):
            await manager.rerun("again")
            await manager.wait("again")
        query = ProcessQuery.of_manager(manager, lambda record: None)
        record = manager.get("again")
        whole = manager.history(record)
        assert len(whole) >= 40
        decoded: list[bytes] = []
        codec = manager.history_codec
        monkeypatch.setattr(
            codec, "decode", lambda raw, decode=codec.decode: decoded.append(raw) or decode(raw)
        )
        seen = []
        cursor = None
        while True:
            decoded.clear()
            page = query.history_page(record, cursor=cursor, limit=7)
            assert len(decoded) == len(page.items) <= 7
            seen += page.items
            cursor = page.next_cursor
            if cursor is None:
                break
        assert seen == whole
        with pytest.raises(ConfigError, match="limit"):
            query.history_page(record, limit=0)


@pytest.mark.slow
def test_corra_history_from_the_state_dir_and_through_the_service(tmp_path):
    state = tmp_path / "state"
    assert corra(state, "run", "--name", "twice", "--", "true").returncode == 0
    assert corra(state, "rerun", "twice").returncode == 0

    def check() -> None:
        everything = json.loads(corra(state, "history", "twice", "--json").stdout)
        events = [item["event"] for item in everything["items"]]
        assert events[0] == "submit" and events.count("rerun") == 1
        assert everything["next_cursor"] is None
        first = json.loads(corra(state, "history", "twice", "--limit", "3", "--json").stdout)
        assert first["items"] == everything["items"][:3] and first["next_cursor"]
        rest = json.loads(
            corra(state, "history", "twice", "--cursor", first["next_cursor"], "--json").stdout
        )
        assert first["items"] + rest["items"] == everything["items"]
        table = corra(state, "history", "twice", "--limit", "2").stdout.splitlines()
        assert len(table) == 3 and "submit" in table[0]
        assert table[-1].startswith("(more: --cursor ")
        missing = corra(state, "history", "nope")
        assert missing.returncode != 0 and "nope" in missing.stderr

    check()
    with Service(state) as service:
        wait_phase(state, "twice", "finished")
        check()
        service.stop()

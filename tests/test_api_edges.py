"""The HTTP API at its edges: what a careless or hostile client can send it (huge numbers,
slow or broken bodies, races) and what it holds on to (its cache, its streams)."""

from __future__ import annotations

import hypothesis.strategies as st
import pytest
from hypothesis import given
from test_api import serving, submit, wait_for

import corra
from corra.actors._process import MAX_LOG_OFFSET
from corra.api._cache import TERMINAL_CACHE_BYTES, TerminalCache

# -- the cache of terminal processes -----------------------------------------------------------


@given(st.lists(st.tuples(st.sampled_from("abcdefgh"), st.integers(0, 400)), max_size=60))
def test_the_terminal_cache_never_holds_more_than_its_bound(puts):
    cache = TerminalCache(max_bytes=1000, max_entry=300)
    for key, size in puts:
        cache.put(key, b"x" * size)
        kept = {k: cache._bodies[k] for k in cache._bodies}
        assert cache.size == sum(map(len, kept.values())) <= 1000
        if size <= 300:
            assert cache.get(key) == b"x" * size  # the newest is kept


async def test_the_api_keeps_at_most_its_bytes_of_terminal_processes(tmp_path):
    # 24 finished processes whose answers are about 1.5 MB each (a long argv, which the
    # answer carries twice): 35 MB in all, above the 32 MiB bound.
    words = ["x" * 120_000] * 6
    async with serving(tmp_path) as served:
        http = served.http
        ids = [(await submit(http, ["true", *words]))["id"] for _ in range(24)]
        for process in ids:
            await wait_for(http, process, "finished")
        sizes = []
        for process in ids:
            first = await http.get(f"/v1/processes/{process}")
            again = await http.get(f"/v1/processes/{process}")  # from the cache
            assert first.status_code == again.status_code == 200
            assert first.content == again.content
            sizes.append(len(first.content))
            cache = served.api._terminal
            assert cache.size <= TERMINAL_CACHE_BYTES
        assert sum(sizes) > TERMINAL_CACHE_BYTES
        assert cache.get(ids[-1]) is not None  # still useful: the recent ones are kept
        assert len(cache) >= TERMINAL_CACHE_BYTES // max(sizes) - 1


# -- integers in the query -----------------------------------------------------------------------


async def test_huge_integers_in_the_query_are_refused_naming_the_parameter_and_limit(tmp_path):
    async with serving(tmp_path) as served:
        http = served.http
        await submit(http, ["echo", "hi"], name="hi")
        await wait_for(http, "hi", "finished")
        cases = [
            ("/v1/processes/hi/logs", "offset", str(2**63), str(MAX_LOG_OFFSET)),
            ("/v1/processes/hi/logs", "offset", str(2**64 + 5), str(MAX_LOG_OFFSET)),
            ("/v1/processes/hi/logs", "offset", str(MAX_LOG_OFFSET + 1), str(MAX_LOG_OFFSET)),
            ("/v1/processes/hi/logs", "offset", "9" * 5000, str(MAX_LOG_OFFSET)),
            ("/v1/processes/hi/logs", "offset", "-" + "9" * 30, str(MAX_LOG_OFFSET)),
            ("/v1/processes/hi/logs", "attempt", str(2**63), "<= 1"),
            ("/v1/events", "since", str(2**63), str(MAX_LOG_OFFSET)),
            ("/v1/processes", "limit", str(2**63), "<= 1000"),
        ]
        for path, name, value, limit in cases:
            response = await http.get(path, params={name: value})
            assert response.status_code == 400, (name, value, response.text)
            message = response.json()["message"]
            assert message.startswith(f"{name}: got ") and value[:20] in message, message
            assert limit in message and len(message) < 300, message
        # at the limit: an empty stream, not an error
        edge = await http.get("/v1/processes/hi/logs", params={"offset": str(MAX_LOG_OFFSET)})
        assert edge.status_code == 200 and edge.text == ""
        padded = await http.get("/v1/processes/hi/logs", params={"offset": "0" * 30 + "1"})
        assert padded.status_code == 200 and padded.json()["offset"] == 1
        # the Python API's edge too
        with pytest.raises(corra.ConfigError, match=f"offset: got {2**63}, expected at most"):
            await served.runtime.processes.read_log("hi", "stdout", 2**63, 10)

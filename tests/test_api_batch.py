"""``POST /v1/processes:batch`` and ``corra submit`` of a job file through it: many processes
in one request, every spec checked before any is written, submitted in order."""

from __future__ import annotations

import json
import subprocess
import sys

import httpx
from test_api import serving, wait_for

from corra.api._limits import MAX_BATCH


async def test_a_batch_is_submitted_in_order_and_a_known_name_is_that_process(tmp_path):
    async with serving(tmp_path) as served:
        first = await served.http.post("/v1/processes", json={"argv": ["true"], "name": "b"})
        assert first.status_code == 201
        specs = [{"argv": ["true"], "name": name, "labels": {"k": name}} for name in "abc"]
        response = await served.http.post("/v1/processes:batch", json={"processes": specs})
        assert response.status_code == 200, response.text
        items = response.json()["items"]
        assert [(item["name"], item["created"]) for item in items] == [
            ("a", True),
            ("b", False),
            ("c", True),
        ]
        assert items[1]["id"] == first.json()["id"]
        assert items[0]["labels"] == {"k": "a"}  # (each item is its process, as GET gives it)
        assert items[0]["id"] < items[2]["id"]  # (ids sort by creation: in order)
        for item in items:
            assert (await wait_for(served.http, item["id"], "finished"))["phase"] == "finished"


async def test_one_bad_spec_refuses_the_batch_naming_each_and_writes_nothing(tmp_path):
    async with serving(tmp_path) as served:
        specs = [
            {"argv": ["true"], "name": "fine"},
            {"argv": ["true"], "timeout": -1},
            {"argv": [], "name": "x"},
            {"argv": ["true"], "cwd": "relative"},
        ]
        response = await served.http.post("/v1/processes:batch", json={"processes": specs})
        assert response.status_code == 422, response.text
        message = response.json()["message"]
        assert "processes[1].timeout: got -1" in message
        assert "processes[2].argv" in message
        assert "processes[3].cwd: got 'relative', expected an absolute path" in message
        assert "processes[0]" not in message
        listed = await served.http.get("/v1/processes")
        assert listed.json()["items"] == []  # (not even the good one)


async def test_a_name_twice_in_one_batch_is_refused(tmp_path):
    async with serving(tmp_path) as served:
        specs = [{"argv": ["true"], "name": "twice"}, {"argv": ["false"], "name": "twice"}]
        response = await served.http.post("/v1/processes:batch", json={"processes": specs})
        assert response.status_code == 422, response.text
        assert (
            "processes[1].name: 'twice' is given by processes[0] already"
            in (response.json()["message"])
        )
        assert (await served.http.get("/v1/processes")).json()["items"] == []


async def test_a_batch_body_must_hold_one_to_the_most_specs(tmp_path):
    async with serving(tmp_path) as served:
        for body, expected in [
            ({"processes": []}, f"processes: got 0 specs, expected 1 to {MAX_BATCH}"),
            (
                {"processes": [{"argv": ["true"]}] * (MAX_BATCH + 1)},
                f"processes: got {MAX_BATCH + 1} specs, expected 1 to {MAX_BATCH}",
            ),
            ([{"argv": ["true"]}], 'expected {"processes": [spec, ...]}'),
            ({"processes": [], "extra": 1}, 'expected {"processes": [spec, ...]}'),
        ]:
            response = await served.http.post("/v1/processes:batch", json=body)
            assert response.status_code == 422, response.text
            assert expected in response.json()["message"]


def test_corra_submit_sends_a_job_file_in_batches(tmp_path):
    # A real service (corra serve) and the real command line: 2,500 processes are three
    # requests (MAX_BATCH each at most), every one of them submitted once, in order.
    state = tmp_path / "state"
    count = 2 * MAX_BATCH + 500
    job = tmp_path / "many.toml"
    job.write_text(
        "".join(f'[[process]]\nname = "n{number:05}"\nargv = ["true"]\n' for number in range(count))
    )
    serve = subprocess.Popen(
        [sys.executable, "-m", "corra.cli", "--state-dir", str(state), "serve", "--listen",
         "127.0.0.1:0"],
        stdout=subprocess.PIPE,
        text=True,
    )  # fmt: skip
    try:
        assert serve.stdout is not None
        line = serve.stdout.readline()
        while "listening on" not in line:
            assert line, "corra serve ended before it listened"
            line = serve.stdout.readline()
        submit = [sys.executable, "-m", "corra.cli", "--state-dir", str(state), "submit"]
        done = subprocess.run(
            [*submit, "--json", str(job)], capture_output=True, text=True, timeout=300
        )
        assert done.returncode == 0, done.stderr
        records = json.loads(done.stdout)
        assert [record["name"] for record in records] == [f"n{n:05}" for n in range(count)]
        assert "created" not in records[0]  # (records, as GET /v1/processes/{id} gives them)
        again = subprocess.run([*submit, str(job)], capture_output=True, text=True, timeout=300)
        assert again.returncode == 0, again.stderr
        assert again.stdout.count("exists already") == count
        url = line.split("listening on", 1)[1].split()[0]
        token = (state / "api-token").read_text().strip()
        with httpx.Client(base_url=url, headers={"Authorization": f"Bearer {token}"}) as http:
            listed = http.get("/v1/processes", params={"limit": 1000}).json()
        assert len(listed["items"]) == 1000 and listed["next_cursor"]
    finally:
        serve.terminate()
        serve.wait(timeout=60)
        if serve.stdout is not None:
            serve.stdout.close()

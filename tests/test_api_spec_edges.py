"""The spec's edges through the HTTP API and the command line: a string UTF-8 cannot encode or
an oversize spec is a 422 that creates nothing; env values are hidden in every answer and
every command's output unless asked for (``?show_env=true``, ``corra show --show-env``)."""

from __future__ import annotations

import json
import time

import pytest
from test_api import serving, submit, wait_for
from test_api_service import Service, corra

from corra.api import MAX_BODY, OPENAPI
from corra.processes._spec_content import MAX_SPEC_BYTES

SECRET = "s3cr3t-Value"


async def test_a_lone_surrogate_is_a_422_naming_the_field_and_creates_nothing(tmp_path):
    async with serving(tmp_path / "state") as served:
        for body, field in (
            ('{"argv": ["true"], "labels": {"k": "\\ud800"}}', "process.labels.k"),
            ('{"argv": ["echo", "\\udfff"], "name": "s"}', "process.argv[1]"),
            ('{"argv": ["true"], "env": {"A": "\\ud800"}}', "process.env.A"),
        ):
            response = await served.http.post(
                "/v1/processes", content=body, headers={"content-type": "application/json"}
            )
            assert response.status_code == 422, response.text
            message = response.json()["message"]
            assert message.startswith(f"{field}: got "), message
            assert "UTF-8" in message
        # Nothing was made, so every list, and the process it would have been, answer.
        listing = await served.http.get("/v1/processes")
        assert listing.status_code == 200 and listing.json()["items"] == []
        assert (await served.http.get("/v1/processes/s")).status_code == 404
        assert served.runtime.processes.list() == []
    # ... also after a restart (the state holds nothing that breaks a read).
    async with serving(tmp_path / "state") as served:
        assert (await served.http.get("/v1/processes")).json()["items"] == []


async def test_an_oversize_spec_is_a_422_naming_the_field_value_and_limit(tmp_path):
    async with serving(tmp_path / "state") as served:
        labels = {str(number): "" for number in range(65)}
        response = await served.http.post("/v1/processes", json={"argv": ["x"], "labels": labels})
        assert response.status_code == 422
        assert response.json()["message"] == "process.labels: got 65 labels, expected at most 64"
        # A body within the API's limit, whose spec (with its defaults) is over its own.
        body = json.dumps({"argv": ["x", "a" * (MAX_SPEC_BYTES - 100)]}, separators=(",", ":"))
        assert len(body) <= MAX_BODY
        response = await served.http.post(
            "/v1/processes", content=body, headers={"content-type": "application/json"}
        )
        assert response.status_code == 422
        message = response.json()["message"]
        assert message.startswith("process.argv: got ('x', 'aaaa")
        assert message.endswith(f"expected a whole spec of at most {MAX_SPEC_BYTES} bytes (1 MiB)")
        assert len(response.content) < 1000  # the value abbreviated
        assert served.runtime.processes.list() == []


async def test_env_values_are_hidden_in_every_answer_unless_asked_for(tmp_path):
    async with serving(tmp_path / "state") as served:
        http = served.http
        created = await submit(
            http, ["sh", "-c", 'echo "$TOKEN"'], name="secretive", env={"TOKEN": SECRET}
        )
        assert SECRET not in json.dumps(created)
        record = await wait_for(http, "secretive", "finished")  # twice: the cache too
        for _ in range(2):
            response = await http.get("/v1/processes/secretive")
            assert SECRET not in response.text
            assert response.json()["spec"]["env"] == {"TOKEN": "***"}
        assert record["spec"]["env"] == {"TOKEN": "***"}
        shown = await http.get("/v1/processes/secretive", params={"show_env": "true"})
        assert shown.status_code == 200 and shown.json()["spec"]["env"] == {"TOKEN": SECRET}
        # Asking once put nothing in the cache: the next plain answer hides it again.
        assert SECRET not in (await http.get(f"/v1/processes/{record['id']}")).text
        assert SECRET not in (await http.get("/v1/processes/secretive")).text
        hidden = await http.get("/v1/processes/secretive", params={"show_env": "false"})
        assert hidden.json()["spec"]["env"] == {"TOKEN": "***"}
        bad = await http.get("/v1/processes/secretive", params={"show_env": "yes"})
        assert bad.status_code == 400
        assert bad.json()["message"] == "show_env: got 'yes', expected true or false"
        for path in ("/v1/processes", "/v1/events"):
            assert SECRET not in (await http.get(path)).text, path
        # The program had it, of course.
        logs = await http.get("/v1/processes/secretive/logs")
        assert SECRET in logs.text
        await http.post("/v1/processes", json={"argv": ["true"], "env": {"T": f"{SECRET}\0"}})
        refused = await http.post(
            "/v1/processes", json={"argv": ["true"], "env": {"T": SECRET}, "timeout": -1}
        )
        assert refused.status_code == 422 and SECRET not in refused.text
    parameters = OPENAPI["paths"]["/v1/processes/{id}"]["get"]["parameters"]
    show_env = next(parameter for parameter in parameters if parameter["name"] == "show_env")
    assert show_env["in"] == "query" and show_env["schema"] == {"type": "boolean", "default": False}


@pytest.mark.slow
def test_corra_show_hides_env_values_unless_asked_for(tmp_path):
    state = tmp_path / "state"
    with Service(state) as service:
        with service.client() as http:
            response = http.post(
                "/v1/processes",
                json={"argv": ["true"], "name": "secretive", "env": {"TOKEN": SECRET, "B": "x y"}},
            )
            assert response.status_code == 201, response.text
            deadline = time.monotonic() + 30
            while http.get("/v1/processes/secretive").json()["phase"] != "finished":
                assert time.monotonic() < deadline
                time.sleep(0.05)
        # Through the service ...
        human = corra(state, "show", "secretive")
        assert human.returncode == 0, human.stderr
        assert "  env:     TOKEN=*** B=***\n" in human.stdout and SECRET not in human.stdout
        assert json.loads(corra(state, "show", "secretive", "--json").stdout)["spec"]["env"] == {
            "TOKEN": "***",
            "B": "***",
        }
        asked = corra(state, "show", "secretive", "--show-env")
        assert f"  env:     TOKEN={SECRET} B='x y'\n" in asked.stdout
        asked_json = corra(state, "show", "secretive", "--json", "--show-env")
        assert json.loads(asked_json.stdout)["spec"]["env"] == {"TOKEN": SECRET, "B": "x y"}
        listing = corra(state, "ps", "--json")
        assert listing.returncode == 0 and SECRET not in listing.stdout
        service.stop()
    # ... and from the state dir, without one.
    human = corra(state, "show", "secretive")
    assert human.returncode == 0, human.stderr
    assert "TOKEN=***" in human.stdout and SECRET not in human.stdout
    assert SECRET not in corra(state, "show", "secretive", "--json").stdout
    assert SECRET not in corra(state, "ps", "--json").stdout
    assert f"TOKEN={SECRET}" in corra(state, "show", "secretive", "--show-env").stdout


@pytest.mark.slow
def test_a_job_file_error_prints_no_env_value(tmp_path):
    job = tmp_path / "jobs.toml"
    job.write_text(
        f'[defaults]\nenv = {{ TOKEN = "{SECRET}", PASSWORD = "{SECRET}2" }}\n\n'
        '[[process]]\nname = "a"\nargv = ["true"]\ntimeout = -1\n\n'
        '[[process]]\nname = "b"\nargv = ["true"]\nenv = { "A=B" = "x" }\n'
    )
    for command in ("run", "submit"):
        done = corra(tmp_path / "state", command, str(job))
        assert done.returncode == 2, done.stderr
        assert "process[0] ('a').timeout: got -1.0" in done.stderr
        assert "process[1] ('b').env: got " in done.stderr
        assert SECRET not in done.stderr + done.stdout
        assert "Traceback" not in done.stderr

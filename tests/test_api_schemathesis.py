"""Fuzz a real `corra serve` from its own OpenAPI document (schemathesis): never a 500, and
every answer as the document says (status, content type, body)."""

from __future__ import annotations

import json
import os
import signal
import time
from typing import Any

import pytest
import schemathesis
from hypothesis import HealthCheck, settings
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    ignored_auth,
    response_schema_conformance,
    status_code_conformance,
    unsupported_method,
)
from test_api_service import Service

from corra.api import OPENAPI

#: Examples per operation: bounded, so that the run stays well under a minute.
MAX_EXAMPLES = 30

#: (Not negative_data_rejection: the token is passed to every call, which undoes the
#: generator's cases without it, and the check then sees "invalid" requests accepted; the
#: answers without a token are ignored_auth's.)
CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_schema_conformance,
    ignored_auth,
    unsupported_method,
]

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def service(tmp_path_factory: pytest.TempPathFactory) -> Any:
    # Valid specs are run for real: with an empty PATH, a generated argv[0] is never found
    # (the process fails at launch), so the fuzzer cannot run a real program by chance.
    empty = tmp_path_factory.mktemp("empty-path")
    env = {**os.environ, "PATH": str(empty)}
    env.pop("CORRA_STATE_DIR", None)
    with Service(tmp_path_factory.mktemp("fuzz") / "state", env=env) as running:
        with running.client() as http:
            assert http.get("/openapi.json").json() == json.loads(json.dumps(OPENAPI))
        yield running
        assert running.stop(signal.SIGTERM) == 0


# The document as the package has it (schemathesis's lazy loading from a fixture does not
# work with this pytest); the service serves the same one, which the fixture checks.
schema = schemathesis.openapi.from_dict(OPENAPI)


@schema.parametrize()
@settings(
    max_examples=MAX_EXAMPLES,
    deadline=None,
    suppress_health_check=list(HealthCheck),
    database=None,
)
def test_the_service_keeps_to_its_openapi_document(case: Any, service: Service) -> None:
    if isinstance(case.query, dict) and case.query.get("follow") in (True, "true"):
        # A stream that follows runs until the process (or the service) ends: the dedicated
        # tests follow; the fuzzer looks at what the endpoint answers without following.
        case.query["follow"] = "false"
    case.call_and_validate(
        base_url=service.url,
        headers={"Authorization": f"Bearer {service.token}"},
        checks=CHECKS,
        timeout=30,
    )


def test_answers_about_real_processes_keep_to_the_document(service: Service) -> None:
    # Submit, then get, pause, resume, kill and read the logs of what was submitted: the
    # answers about real processes (not only 404s for made-up ids), each validated against
    # the document. (Not schemathesis's stateful links: against one long-lived service its
    # runs are not reproducible, and hypothesis stops them as flaky in about half the runs.)
    auth = {"Authorization": f"Bearer {service.token}"}

    def call(path: str, method: str, **parts: Any) -> Any:
        case = schema[path][method].Case(**parts)
        response = case.call(base_url=service.url, headers=auth, timeout=30)
        case.validate_response(response, checks=CHECKS, headers=auth)
        return response

    submitted = call(
        "/v1/processes", "POST", body={"name": "fuzz-real", "argv": ["/bin/sleep", "30"]}
    )
    process = submitted.json()["id"]
    assert (
        call("/v1/processes", "POST", body={"name": "fuzz-real", "argv": ["x"]}).json()["id"]
        == process
    )  # by name: the same process
    ids = {"id": process}
    deadline = time.monotonic() + 30
    while call("/v1/processes/{id}", "GET", path_parameters=ids).json()["phase"] != "running":
        assert time.monotonic() < deadline, "the process did not start"
        time.sleep(0.1)
    for path, method in [
        ("/v1/processes/{id}", "GET"),
        ("/v1/processes/{id}/pause", "POST"),
        ("/v1/processes/{id}/resume", "POST"),
        ("/v1/processes/{id}/kill", "POST"),
        ("/v1/processes/{id}/logs", "GET"),
        ("/v1/processes/{id}", "GET"),
    ]:
        assert call(path, method, path_parameters=ids).status_code in (200, 201), path
    listed = call("/v1/processes", "GET", query={"name": "fuzz-real"}).json()
    assert [item["id"] for item in listed["items"]] == [process]
    call("/v1/events", "GET", query={"follow": "false"})

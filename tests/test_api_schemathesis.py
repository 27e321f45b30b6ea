"""Fuzz a real `corra serve` from its own OpenAPI document (schemathesis): never a 500, and
every answer as the document says (status, content type, body)."""

from __future__ import annotations

import json
import os
import signal
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


def test_workflows_through_the_links_keep_to_the_document(service: Service) -> None:
    # Submit, then get, pause, resume, kill and read the logs of what was submitted (the
    # document's links): the answers about real processes, not only 404s for made-up ids.
    auth = {"Authorization": f"Bearer {service.token}"}

    class Workflow(schema.as_state_machine()):  # type: ignore[misc]
        def before_call(self, case: Any) -> None:
            if isinstance(case.query, dict) and case.query.get("follow") in (True, "true"):
                case.query["follow"] = "false"

        def get_call_kwargs(self, case: Any) -> dict[str, Any]:
            return {"base_url": service.url, "headers": auth, "timeout": 30}

        def validate_response(self, response: Any, case: Any, **kwargs: Any) -> None:
            case.validate_response(response, checks=CHECKS, headers=auth, transport_kwargs=kwargs)

    Workflow.run(
        settings=settings(
            max_examples=MAX_EXAMPLES,
            stateful_step_count=6,
            deadline=None,
            suppress_health_check=list(HealthCheck),
            database=None,
        )
    )

"""Property-based tests of the HTTP API against its own /openapi.json (schemathesis, in-process
over ASGI, with the token): whatever a client sends, valid or not, the API never answers 5xx,
answers only statuses it documents, and its bodies and content types are the documented ones."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from hypothesis.errors import Unsatisfiable
from schemathesis import GenerationMode
from schemathesis.checks import not_a_server_error
from schemathesis.core.result import Ok
from schemathesis.specs.openapi import checks

from engine.api.app import create_app
from engine.settings import Settings
from tests.helpers import API_TOKEN

TOKEN = API_TOKEN
AUTH = {"Authorization": f"Bearer {TOKEN}"}

CHECKS = [
    not_a_server_error,
    checks.status_code_conformance,
    checks.content_type_conformance,
    checks.response_schema_conformance,
    checks.response_headers_conformance,
]
# Per operation and mode: enough to find the classic 500s (odd text, huge numbers, wrong
# types) while the whole run stays within seconds.
EXAMPLES = 20
pytestmark = pytest.mark.home(rulesets=["api-test"])


@pytest.mark.slow
def test_api_honours_its_openapi(home: Path, db_url: str) -> None:
    app = create_app(Settings(home=home, database_url=db_url, api_token=TOKEN))
    schema = schemathesis.openapi.from_asgi("/openapi.json", app)
    operations = []
    for result in schema.get_all_operations():
        assert isinstance(result, Ok), "the API's own schema is invalid"
        operations.append(result.ok())
    assert {op.label for op in operations} >= {"POST /api/events", "GET /api/leads/{email}"}
    for operation in operations:
        for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE):

            @given(case=operation.as_strategy(generation_mode=mode))
            @settings(
                max_examples=EXAMPLES,
                deadline=None,
                database=None,
                suppress_health_check=list(HealthCheck),
            )
            def conforms(case: schemathesis.Case[Any]) -> None:
                case.call_and_validate(headers=AUTH, checks=CHECKS)

            try:
                conforms()
            except Unsatisfiable:
                assert mode is GenerationMode.NEGATIVE  # an operation that takes no input

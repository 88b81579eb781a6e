"""Schemathesis against ``/api/openapi.json`` of an app with a token: no request gives a
5xx, and no answer leaves the schema (status codes, content types, bodies).

Every operation gets a bounded number of generated requests, valid ones and
invalid ones, sent to the app (Celery eager, a real Redis) through WSGI.
"""

from __future__ import annotations

from typing import Any

import pytest
import schemathesis
from flask import Flask
from hypothesis import HealthCheck, given, settings
from schemathesis import GenerationMode
from schemathesis.checks import not_a_server_error
from schemathesis.core.result import Ok
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from tests.conftest import AUTH

CHECKS = [not_a_server_error, status_code_conformance, content_type_conformance,
          response_schema_conformance]
EXAMPLES = 20  # per operation and mode


@schemathesis.serializer("message/rfc822")
def raw_message(context: Any, value: Any) -> bytes:
    """``POST /api/bounces`` takes a whole message: generated text goes as its bytes."""
    return value if isinstance(value, bytes) else str(value).encode("utf-8", "replace")


@pytest.fixture
def config_overrides() -> dict[str, Any]:
    return {"MAIL_SUPPRESS_SEND": True}


@pytest.mark.parametrize("mode", [GenerationMode.POSITIVE, GenerationMode.NEGATIVE])
def test_the_api_keeps_to_its_schema(app: Flask, mode: GenerationMode) -> None:
    schema = schemathesis.openapi.from_wsgi("/api/openapi.json", app)
    results = list(schema.get_all_operations())
    assert all(isinstance(result, Ok) for result in results), results
    operations = [result.ok() for result in results if isinstance(result, Ok)]
    assert len(operations) >= 10
    for operation in operations:
        @given(case=operation.as_strategy(generation_mode=mode))
        @settings(max_examples=EXAMPLES, deadline=None, derandomize=True, database=None,
                  suppress_health_check=list(HealthCheck))
        def keeps_to_schema(case: Any) -> None:
            case.call_and_validate(headers=AUTH, checks=CHECKS)

        keeps_to_schema()

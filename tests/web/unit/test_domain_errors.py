"""Domain errors: services raise them and know nothing of HTTP; the API answers each kind
with its status and the same JSON error body as any other."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest
from flask import Flask

from tasks.shared.errors import Conflict, DomainError, Invalid, NotFound, TooLarge
from tests.support.paths import ROOT
from web.api.errors import domain_status, handle_domain_error


@pytest.mark.parametrize(("error", "status"), [
    (NotFound("no campaign with id 'x'"), 404),
    (Conflict("cannot pause a campaign that is draft"), 409),
    (TooLarge("attachment 'a' is over 1 bytes", code="attachment_too_large"), 413),
    (Invalid.of("file", "empty", "the CSV file is empty", code="empty_file"), 422),
])
def test_each_kind_is_answered_with_its_status(error: DomainError, status: int) -> None:
    assert domain_status(error) == status


def test_the_json_body_carries_code_message_and_fields() -> None:
    with Flask(__name__).app_context():
        response, status = handle_domain_error(
            Invalid.of("to.0", "not a string", "each address must be a string"))
        assert status == 422
        assert response.get_json() == {"error": {
            "code": "invalid", "message": "each address must be a string",
            "fields": {"to.0": "not a string"}}}
        response, status = handle_domain_error(Conflict("the campaign has no recipients"))
        assert (status, response.get_json()) == (409, {"error": {
            "code": "conflict", "message": "the campaign has no recipients"}})


def _imports(path: Path) -> set[str]:
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module)
            names.update(f"{node.module}.{alias.name}" for alias in node.names)
    return names


SERVICES = ["tasks/campaigns/creation.py", "tasks/campaigns/recipients.py",
            "tasks/campaigns/control.py", "tasks/campaigns/drafts.py",
            "tasks/messages/service.py", "tasks/codes/service.py", "tasks/shared/errors.py"]


@pytest.mark.parametrize("module", SERVICES)
def test_services_import_nothing_of_the_web_layer(module: str) -> None:
    imported = _imports(ROOT / module)
    assert not [name for name in imported if name == "web" or name.startswith("web.")]
    assert "flask.request" not in imported and "flask.abort" not in imported


def test_no_api_error_or_abort_outside_web() -> None:
    found = []
    for folder in ("tasks", "cli", "worker"):
        for path in (ROOT / folder).rglob("*.py"):
            for name in _imports(path):
                if name.endswith((".APIError", ".abort")) or name == "web.api.errors.APIError":
                    found.append(f"{path.relative_to(ROOT)}: {name}")
    assert found == []

"""The client cannot drift from ``GET /api/openapi.json``: its table of operations
(:data:`postroom_client.operations.OPERATIONS`) holds every (method, path) of the document
and nothing else, each is called by the client method it names, every field the client
sends is in the operation's schema (and every required one is sent), and every result
type reads the fields the response schema has."""

from __future__ import annotations

import dataclasses
import inspect
import typing
from typing import Any

import pytest
from flask.testing import FlaskClient

from postroom_client import Postroom, models
from postroom_client.operations import OPERATIONS

RESULTS: dict[str, type[Any]] = {
    "createMessage": models.Accepted, "getMessage": models.Message,
    "requestCode": models.Accepted, "getCodeRequest": models.CodeRequest,
    "createCampaign": models.CampaignAccepted, "listCampaigns": models.CampaignPage,
    "getCampaign": models.Campaign, "listCampaignRecipients": models.CampaignRecipientPage,
    "testCampaign": models.CampaignTest, "startCampaign": models.CampaignState,
    "pauseCampaign": models.CampaignState, "resumeCampaign": models.CampaignState,
    "cancelCampaign": models.CampaignState, "retryFailedCampaign": models.CampaignState,
    "listSuppressions": models.SuppressionPage, "showSuppression": models.Suppression,
    "putSuppression": models.Suppression, "createWebhook": models.WebhookCreated,
    "listWebhooks": models.Webhook, "listWebhookDeliveries": models.DeliveryPage,
}
CLIENT_ONLY = {"status_url", "replayed"}  # from the answer's headers, not its body


@pytest.fixture
def document(client: FlaskClient) -> dict[str, Any]:
    response = client.get("/api/openapi.json")
    assert response.status_code == 200
    found: dict[str, Any] = response.get_json()
    return found


def operations_of(document: dict[str, Any]) -> dict[str, tuple[str, str, dict[str, Any]]]:
    return {operation["operationId"]: (method.upper(), path, operation)
            for path, methods in document["paths"].items()
            for method, operation in methods.items()}


def resolve(document: dict[str, Any], schema: dict[str, Any]) -> dict[str, Any]:
    while "$ref" in schema:
        schema = document["components"]["schemas"][schema["$ref"].rsplit("/", 1)[1]]
    return schema


def response_schema(document: dict[str, Any], operation: dict[str, Any]) -> dict[str, Any]:
    [ok] = [answer for status, answer in operation["responses"].items()
            if status.startswith("2")]
    return resolve(document, ok["content"]["application/json"]["schema"])


def test_every_operation_of_the_document_is_in_the_clients_table(
        document: dict[str, Any]) -> None:
    described = {op_id: (method, path) for op_id, (method, path, _) in
                 operations_of(document).items()}
    table = {op_id: (op.method, op.path) for op_id, op in OPERATIONS.items()}
    assert table == described


def test_each_operation_is_called_by_the_method_it_names() -> None:
    for operation_id, operation in OPERATIONS.items():
        method = getattr(Postroom, operation.client_method, None)
        assert callable(method), operation.client_method
        assert f'"{operation_id}"' in inspect.getsource(method), (
            f"Postroom.{operation.client_method} does not call {operation_id}")


def test_fields_the_client_sends_are_in_the_schemas(document: dict[str, Any]) -> None:
    for operation_id, (_, _, described) in operations_of(document).items():
        operation = OPERATIONS[operation_id]
        query = {p["name"] for p in described.get("parameters", []) if p["in"] == "query"}
        assert operation.query <= query, operation_id
        content = described.get("requestBody", {}).get("content", {})
        if "application/json" in content:
            schema = resolve(document, content["application/json"]["schema"])
            assert operation.body <= set(schema["properties"]), operation_id
            assert set(schema.get("required", [])) <= operation.body, operation_id
        else:
            assert not operation.body, f"{operation_id} takes no JSON body"
        form = content.get("multipart/form-data", {}).get("schema", {}).get("properties", {})
        files = {name for name, prop in form.items()
                 if prop.get("items", {}).get("format") == "binary"}
        assert operation.files <= files, operation_id
        assert operation.body - {"attachments", "recipients"} <= set(form) or not form, \
            operation_id


def fields_of(kind: type[Any]) -> set[str]:
    return {f.name for f in dataclasses.fields(kind)} - CLIENT_ONLY


def check_result(document: dict[str, Any], kind: type[Any], schema: dict[str, Any],
                 where: str) -> None:
    properties = schema["properties"]
    assert fields_of(kind) <= set(properties), f"{where}: {kind.__name__} reads unknown fields"
    assert set(schema.get("required", [])) <= fields_of(kind), (
        f"{where}: {kind.__name__} misses required fields")
    hints = typing.get_type_hints(kind)
    for name in fields_of(kind):
        items = properties[name].get("items")
        inner = typing.get_args(hints[name])
        if items is not None and "$ref" in items and inner and isinstance(
                inner[0], type) and dataclasses.is_dataclass(inner[0]):
            check_result(document, inner[0], resolve(document, items), f"{where}.{name}")
        elif items is not None and "$ref" in items:
            pytest.fail(f"{where}.{name}: a list of objects read as {hints[name]}")


def test_result_types_read_the_fields_of_the_response_schemas(
        document: dict[str, Any]) -> None:
    for operation_id, (_, _, described) in operations_of(document).items():
        kind = RESULTS.get(operation_id)
        schema = response_schema(document, described) if kind is not None else None
        if kind is None or schema is None:
            continue
        if operation_id == "listWebhooks":  # {"webhooks": [...]}: the client returns the list
            schema = resolve(document, schema["properties"]["webhooks"]["items"])
        check_result(document, kind, schema, operation_id)

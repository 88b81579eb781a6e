"""``GET /api/openapi.json``: the OpenAPI 3 document, built from the request schemas.

Each API module describes its routes with :func:`describe` next to the route
itself, so the document and the validation come from the same models.
"""

from __future__ import annotations

from typing import Any

from flask import jsonify
from flask.typing import ResponseReturnValue
from pydantic import BaseModel

from web.api.blueprint import bp
from web.api.schemas import ErrorOut
from web.token_scopes import needed_scope

ERRORS = {"400": "malformed body", "401": "missing or wrong token (WWW-Authenticate: Bearer)",
          "403": "the token lacks the scope the operation needs", "404": "no such id",
          "409": "the state forbids it", "413": "too large", "415": "unsupported media type",
          "422": "invalid input (fields say which and why)", "429": "too many requests"}

TAGS = {"messages": "Single messages: queue one, read its status per recipient",
        "otp": "Email verification with one-time codes",
        "campaigns": "Bulk campaigns: create, follow, control",
        "suppressions": "Addresses no campaign mails, with the reason and time",
        "bounces": "Bounces and complaints that come back after a relay accepted mail",
        "webhooks": "Signed events to the client app: endpoints and their delivery logs"}

_models: dict[str, type[BaseModel]] = {"ErrorOut": ErrorOut}
_paths: dict[str, dict[str, Any]] = {}


def _ref(model: type[BaseModel]) -> dict[str, str]:
    _models[model.__name__] = model
    return {"$ref": f"#/components/schemas/{model.__name__}"}


def describe(method: str, path: str, summary: str, *, operation_id: str, tag: str, status: int,
             response: type[BaseModel] | None = None, request: type[BaseModel] | None = None,
             errors: tuple[int, ...] = (401, 422), content_type: str = "application/json",
             query: dict[str, str] | None = None, headers: dict[str, str] | None = None,
             files: dict[str, str] | None = None, raw_body: str | None = None) -> None:
    """Add one operation: ``describe("post", "/api/messages", ..., request=MessageIn)``.

    *operation_id* is the name a generated client gives the call (``createMessage``);
    *tag* one of :data:`TAGS`. A 202 answer carries the new resource's URL in ``Location``.

    *headers* and *query* map parameter names to what they mean; *files* names the
    file fields of a ``multipart/form-data`` alternative to the JSON body, whose
    other fields are the request model's. *raw_body* names the media type of a body
    taken as it is (``message/rfc822``).
    """
    ok: dict[str, Any] = {"description": summary}
    if response is not None:
        ok["content"] = {"application/json": {"schema": _ref(response)}}
    if tag not in TAGS:
        raise ValueError(f"unknown tag {tag!r}")
    if status == 202:
        ok["headers"] = {"Location": {"description": "the URL of the new resource's status",
                                      "schema": {"type": "string"}}}
    operation: dict[str, Any] = {
        "operationId": operation_id,
        "tags": [tag],
        "summary": summary,
        "responses": {str(status): ok, **{
            str(code): {"description": ERRORS[str(code)],
                        "content": {"application/json": {"schema": _ref(ErrorOut)}}}
            for code in errors}},
    }
    if "401" in operation["responses"]:
        operation["responses"]["401"]["headers"] = {"WWW-Authenticate": {
            "description": "Bearer", "schema": {"type": "string"}}}
        scope = needed_scope(method, path)  # web.token_scopes: API_TOKENS=token:scope+scope
        operation["description"] = f"Needs a token with the `{scope}` scope."
        operation["x-postroom-scope"] = scope
        operation["responses"]["403"] = {
            "description": ERRORS["403"],
            "content": {"application/json": {"schema": _ref(ErrorOut)}}}
    operation["responses"]["503"] = {  # web.outages: Redis or the broker out of reach
        "description": "Redis or the broker cannot be reached; nothing was stored",
        "headers": {"Retry-After": {"description": "seconds to wait before retrying",
                                    "schema": {"type": "integer"}}},
        "content": {"application/json": {"schema": _ref(ErrorOut)}}}
    parameters = [{"name": name, "in": "path", "required": True, "schema": _path_schema(name)}
                  for name in _path_names(path)]
    for where, named in (("query", query), ("header", headers)):
        parameters += [{"name": name, "in": where, "required": False, "description": why,
                        "schema": {"type": "string"}} for name, why in (named or {}).items()]
    if parameters:
        operation["parameters"] = parameters
    if request is not None:
        content: dict[str, Any] = {content_type: {"schema": _ref(request)}}
        if files:
            content["multipart/form-data"] = {"schema": _form_schema(request, files)}
        operation["requestBody"] = {"required": True, "content": content}
    if raw_body is not None:  # a body taken as it is (a whole message), not JSON
        operation["requestBody"] = {"required": True, "content": {
            raw_body: {"schema": {"type": "string", "format": "binary"}}}}
    _paths.setdefault(path, {})[method.lower()] = operation


def _form_schema(model: type[BaseModel], files: dict[str, str]) -> dict[str, Any]:
    """The multipart form: the model's fields as text, plus the file fields."""
    properties: dict[str, Any] = {name: {"type": "string", "description": field.description or ""}
                                  for name, field in model.model_fields.items()
                                  if name not in files}
    properties.update({name: {"type": "array", "description": why,
                              "items": {"type": "string", "format": "binary"}}
                       for name, why in files.items()})
    return {"type": "object", "properties": properties}


def _path_schema(name: str) -> dict[str, str]:
    """Ids are 32 lowercase hex digits (anything else is a 404 without a lookup)."""
    if name.endswith("_id"):
        return {"type": "string", "pattern": "^[0-9a-f]{32}$"}
    return {"type": "string"}


def _path_names(path: str) -> list[str]:
    return [part[1:-1] for part in path.split("/") if part.startswith("{")]


def document() -> dict[str, Any]:
    schemas: dict[str, Any] = {}
    for name, model in _models.items():
        schema = model.model_json_schema(ref_template="#/components/schemas/{model}")
        schemas.update(schema.pop("$defs", {}))
        schemas[name] = schema
    return {
        "openapi": "3.1.0",
        "info": {"title": "Postroom", "version": "0.1.0"},
        "components": {"schemas": schemas,
                       "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}}},
        "security": [{"bearer": []}],
        "tags": [{"name": name, "description": what} for name, what in TAGS.items()],
        "paths": _paths,
    }


@bp.get("/openapi.json")
def openapi() -> ResponseReturnValue:
    return jsonify(document())

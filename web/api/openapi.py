"""``GET /api/openapi.json``: the OpenAPI 3 document, built from the request schemas."""

from __future__ import annotations

from typing import Any

from flask import jsonify
from flask.typing import ResponseReturnValue
from pydantic import BaseModel

from web.api import bp
from web.api.schemas import Accepted, ErrorOut, MessageIn, MessageOut

SCHEMAS: list[type[BaseModel]] = [MessageIn, MessageOut, Accepted, ErrorOut]

ERRORS = {"401": "missing or wrong token", "404": "no such id",
          "415": "not JSON", "422": "invalid input (fields say which and why)"}


def _ref(model: type[BaseModel]) -> dict[str, str]:
    return {"$ref": f"#/components/schemas/{model.__name__}"}


def _operation(summary: str, *, request: type[BaseModel] | None, status: str,
               response: type[BaseModel]) -> dict[str, Any]:
    op: dict[str, Any] = {
        "summary": summary,
        "responses": {status: {"description": summary,
                               "content": {"application/json": {"schema": _ref(response)}}},
                      **{code: {"description": why,
                                "content": {"application/json": {"schema": _ref(ErrorOut)}}}
                         for code, why in ERRORS.items()}},
    }
    if request is not None:
        op["requestBody"] = {"required": True,
                             "content": {"application/json": {"schema": _ref(request)}}}
    return op


PATHS: dict[str, dict[str, Any]] = {
    "/api/messages": {"post": _operation("Queue a message", request=MessageIn, status="202",
                                         response=Accepted)},
    "/api/messages/{id}": {"get": _operation("A message's status per recipient", request=None,
                                             status="200", response=MessageOut)},
}


def document() -> dict[str, Any]:
    schemas: dict[str, Any] = {}
    for model in SCHEMAS:
        schema = model.model_json_schema(ref_template="#/components/schemas/{model}")
        schemas.update(schema.pop("$defs", {}))
        schemas[model.__name__] = schema
    return {
        "openapi": "3.1.0",
        "info": {"title": "Postroom", "version": "0.1.0"},
        "components": {"schemas": schemas,
                       "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}}},
        "security": [{"bearer": []}],
        "paths": PATHS,
    }


@bp.get("/openapi.json")
def openapi() -> ResponseReturnValue:
    return jsonify(document())

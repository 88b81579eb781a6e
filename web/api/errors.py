"""JSON errors for ``/api``: ``{"error": {"code", "message", "fields"?}}``."""

from __future__ import annotations

from typing import Any

from flask import Response, jsonify
from pydantic import ValidationError
from werkzeug.exceptions import HTTPException


class APIError(Exception):
    """An error the client can act on, with its HTTP status."""

    def __init__(self, status: int, code: str, message: str,
                 fields: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.fields = fields


def error_response(status: int, code: str, message: str,
                   fields: dict[str, str] | None = None) -> tuple[Response, int]:
    body: dict[str, Any] = {"code": code, "message": message}
    if fields:
        body["fields"] = fields
    return jsonify({"error": body}), status


def fields_of(err: ValidationError) -> dict[str, str]:
    """``{"to.0": "reason", ...}`` from a pydantic error."""
    fields: dict[str, str] = {}
    for problem in err.errors(include_url=False):
        name = ".".join(str(part) for part in problem["loc"]) or "body"
        reason = problem["msg"].removeprefix("Value error, ")
        fields.setdefault(name, reason)
    return fields


def handle_api_error(err: APIError) -> tuple[Response, int]:
    return error_response(err.status, err.code, err.message, err.fields)


def handle_validation_error(err: ValidationError) -> tuple[Response, int]:
    return error_response(422, "invalid", "the request is not valid", fields_of(err))


def handle_http_error(err: HTTPException) -> tuple[Response, int]:
    status = err.code or 500
    code = (err.name or "error").lower().replace(" ", "_")
    return error_response(status, code, err.description or err.name)

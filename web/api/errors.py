"""JSON errors for ``/api``: ``{"error": {"code", "message", "fields"?}}``."""

from __future__ import annotations

from typing import Any

from flask import Response, current_app, jsonify, request
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


NO_SENDER = "give a sender, or set MAIL_DEFAULT_SENDER"


def require_sender(sender: str | None) -> None:
    """A 422 naming ``sender`` when a message would have no ``From`` at all."""
    if not sender and not current_app.config.get("MAIL_DEFAULT_SENDER"):
        raise APIError(422, "invalid", "the message has no sender", {"sender": NO_SENDER})


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
    response, status = error_response(err.status, err.code, err.message, err.fields)
    if status == 401:  # RFC 6750: the scheme the client must use
        response.headers["WWW-Authenticate"] = 'Bearer realm="postroom"'
    return response, status


def handle_validation_error(err: ValidationError) -> tuple[Response, int]:
    return error_response(422, "invalid", "the request is not valid", fields_of(err))


def handle_http_error(err: HTTPException) -> tuple[Response, int]:
    status = err.code or 500
    code = (err.name or "error").lower().replace(" ", "_")
    response, status = error_response(status, code, err.description or err.name)
    allowed = err.get_headers().copy()
    for name, value in allowed:
        if name.lower() == "allow":  # 405 says which methods the resource takes
            response.headers["Allow"] = value
    return response, status


def is_api_path(path: str) -> bool:
    return path == "/api" or path.startswith("/api/")


def handle_routing_error(err: HTTPException) -> Any:
    """404 and 405 before any route matched: JSON under ``/api``, Flask's own page elsewhere."""
    if is_api_path(request.path):
        return handle_http_error(err)
    return err

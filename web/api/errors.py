"""JSON errors for ``/api``: ``{"error": {"code", "message", "fields"?}}``.

:class:`APIError` is what the HTTP layer itself refuses (a token, a query
parameter); what a service refuses is a :class:`~tasks.shared.errors.DomainError`,
answered here with the status its kind stands for (:data:`DOMAIN_STATUS`).
"""

from __future__ import annotations

from typing import Any

from flask import Response, jsonify, render_template, request
from pydantic import ValidationError
from werkzeug.exceptions import HTTPException

from tasks.shared.errors import Conflict, DomainError, Invalid, NotFound, TooLarge


class APIError(Exception):
    """An error the client can act on, with its HTTP status."""

    def __init__(self, status: int, code: str, message: str,
                 fields: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.fields = fields


DOMAIN_STATUS: dict[type[DomainError], int] = {
    NotFound: 404, Conflict: 409, TooLarge: 413, Invalid: 422}


def domain_status(err: DomainError) -> int:
    """The HTTP status a domain error stands for (422 for a kind not listed)."""
    for kind in type(err).__mro__:
        if kind in DOMAIN_STATUS:
            return DOMAIN_STATUS[kind]
    return 422


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


def handle_domain_error(err: DomainError) -> tuple[Response, int]:
    return error_response(domain_status(err), err.code, err.message, err.fields)


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
    """404 and 405: JSON under ``/api``; elsewhere a page in the product's style with a way
    back to the start (a 405 keeps its ``Allow`` header)."""
    if is_api_path(request.path):
        return handle_http_error(err)
    allowed = {name: value for name, value in err.get_headers() if name.lower() == "allow"}
    return render_template("no_page.html", status=err.code), err.code or 404, allowed

"""Reading request bodies into schemas, with clear errors."""

from __future__ import annotations

from typing import TypeVar

from flask import request
from pydantic import BaseModel
from werkzeug.exceptions import BadRequest

from web.api.errors import APIError

Model = TypeVar("Model", bound=BaseModel)


def json_body() -> dict[str, object]:
    """The request's JSON object, or a 415/400 that says what is wrong."""
    if not request.is_json:
        raise APIError(415, "unsupported_media_type",
                       "send JSON with Content-Type: application/json")
    try:
        body = request.get_json()
    except BadRequest as err:  # not JSON, not UTF-8, a lone surrogate, nested too deeply
        reason = str(err.description or "").removeprefix("Failed to decode JSON object: ")
        raise APIError(400, "bad_json", f"the body is not valid JSON: {reason[:200]}") from None
    if body is None:
        raise APIError(400, "bad_json", "the body is not valid JSON (or nested too deeply)")
    if not isinstance(body, dict):
        raise APIError(422, "invalid", "the body must be a JSON object")
    return body


def parse(model: type[Model], data: object) -> Model:
    """Validate *data*; a :class:`pydantic.ValidationError` becomes a 422."""
    return model.model_validate(data)

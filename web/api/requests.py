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
        reason = _parser_reason(err)
        raise APIError(400, "bad_json", f"the body is not valid JSON: {reason[:200]}") from None
    if body is None:
        raise APIError(400, "bad_json", "the body is not valid JSON (or nested too deeply)")
    if not isinstance(body, dict):
        raise APIError(422, "invalid", "the body must be a JSON object")
    return body


def _parser_reason(err: BaseException) -> str:
    """The JSON parser's own words, kept in the exception chain (Flask hides them)."""
    found: BaseException | None = err
    while found is not None:
        if isinstance(found, ValueError):
            return str(found)
        if isinstance(found, BadRequest) and "Failed to decode JSON object: " in str(
                found.description):
            return str(found.description).split("Failed to decode JSON object: ", 1)[1]
        found = found.__cause__ or found.__context__
    return "it could not be parsed"


def parse(model: type[Model], data: object) -> Model:
    """Validate *data*; a :class:`pydantic.ValidationError` becomes a 422."""
    return model.model_validate(data)

"""The suppression list: ``GET /api/suppressions`` and ``GET/PUT/DELETE
/api/suppressions/<email>``. Every campaign message checks the list when it is sent."""

from __future__ import annotations

from typing import Literal

from email_validator import EmailNotValidError
from flask import current_app, jsonify, request
from flask.typing import ResponseReturnValue
from pydantic import BaseModel, ConfigDict, Field

from tasks.bounces.store import Suppression, SuppressionList
from tasks.shared.mailbox import checked_address
from web.addresses import special_use_allowed
from web.api.blueprint import bp
from web.api.errors import APIError
from web.api.openapi import describe
from web.api.requests import json_body, parse

MAX_CURSOR = 2 ** 53


class SuppressionIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    # tasks.vocabulary.SuppressionReason's values, spelled out: the OpenAPI document shows
    # them inline (an enum type would be a schema of its own) and errors name them as before
    reason: Literal["unsubscribed", "bounced", "complained", "manual"] = Field(
        "manual", description="why the address must not be mailed")


class SuppressionOut(BaseModel):
    email: str
    reason: str
    created_at: float | None = Field(description="when it was added (null: before times "
                                                 "were kept)")
    campaign_id: str | None = None


class SuppressionPage(BaseModel):
    suppressions: list[SuppressionOut]
    next_cursor: int | None = Field(description="pass as ?cursor= for the next page; "
                                                "null on the last")


def _list() -> SuppressionList:
    return SuppressionList(current_app.extensions["redis"])


def _address(email: str) -> str:
    """The address in the path, checked for its form (never a lookup for junk)."""
    try:
        return checked_address(email, special_use=special_use_allowed()).normalized
    except EmailNotValidError as err:
        raise APIError(404, "not_found", f"not an email address: {err}") from None


def _shown(entry: Suppression) -> dict[str, object]:
    shown = SuppressionOut(**entry.public()).model_dump()
    if shown["campaign_id"] is None:
        del shown["campaign_id"]
    return shown


@bp.get("/suppressions")
def list_suppressions() -> ResponseReturnValue:
    raw_cursor = request.args.get("cursor", "0")
    if not raw_cursor.isdigit() or int(raw_cursor) > MAX_CURSOR:
        raise APIError(422, "invalid", "cursor: a whole number from a previous page",
                       fields={"cursor": "a whole number from a previous page"})
    contains = request.args.get("q", "").strip()[:254] or None
    entries, following = _list().page(cursor=int(raw_cursor), contains=contains)
    return jsonify({"suppressions": [_shown(entry) for entry in entries],
                    "next_cursor": following})


describe("get", "/api/suppressions", "The suppression list, a page at a time (a page may be "
         "empty while next_cursor is not null)", operation_id="listSuppressions",
         tag="suppressions", status=200, response=SuppressionPage,
         errors=(401, 422), query={"cursor": "next_cursor of the previous page",
                                   "q": "only addresses containing this text"})


@bp.get("/suppressions/<path:email>")
def show_suppression(email: str) -> ResponseReturnValue:
    entry = _list().get(_address(email))
    if entry is None:
        raise APIError(404, "not_found", "the address is not on the suppression list")
    return jsonify(_shown(entry))


describe("get", "/api/suppressions/{email}", "One suppressed address, its reason and time",
         operation_id="showSuppression", tag="suppressions", status=200,
         response=SuppressionOut, errors=(401, 404))


@bp.put("/suppressions/<path:email>")
def put_suppression(email: str) -> ResponseReturnValue:
    address = _address(email)
    body = parse(SuppressionIn, json_body() if request.content_length else {})
    entry, _ = _list().put(address, body.reason)
    return jsonify(_shown(entry)), 200


describe("put", "/api/suppressions/{email}", "Suppress an address (or change its reason); "
         "campaigns already running skip it from their next message",
         operation_id="putSuppression", tag="suppressions", status=200,
         request=SuppressionIn, response=SuppressionOut, errors=(400, 401, 404, 415, 422))


@bp.delete("/suppressions/<path:email>")
def delete_suppression(email: str) -> ResponseReturnValue:
    if not _list().remove(_address(email)):
        raise APIError(404, "not_found", "the address is not on the suppression list")
    return "", 204


describe("delete", "/api/suppressions/{email}", "Take an address off the suppression list",
         operation_id="deleteSuppression", tag="suppressions", status=204, errors=(401, 404))

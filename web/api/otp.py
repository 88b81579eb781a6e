"""``POST /api/otp``, ``GET /api/otp/<id>`` and ``POST /api/otp/<id>/verify``."""

from __future__ import annotations

from flask import current_app, jsonify, url_for
from flask.typing import ResponseReturnValue

from tasks.codes.service import request_code, verify_code
from tasks.codes.store import OTPStore
from web.api.blueprint import bp
from web.api.errors import APIError
from web.api.openapi import describe
from web.api.requests import json_body, parse
from web.api.schemas import Accepted
from web.api.schemas_otp import OTPCodeIn, OTPRequestIn, OTPStatusOut, OTPVerifiedOut
from web.otp.throttle import per_address, per_token, verify_per_token


def _store() -> OTPStore:
    return OTPStore.from_config(current_app.extensions["redis"], current_app.config)


@bp.post("/otp")
@per_token
@per_address
def create_otp() -> ResponseReturnValue:
    """Queue a code for an address; the same answer for every address.

    Budgeted per token and per mailbox, never per client IP: the caller is a
    backend, and one abusive end user must not block all of its users.
    """
    body = parse(OTPRequestIn, json_body())
    otp_request = request_code(_store(), body.email)
    response = jsonify(Accepted(id=otp_request.id, status=otp_request.status).model_dump())
    response.headers["Location"] = url_for("api.show_otp", request_id=otp_request.id)
    return response, 202


describe("post", "/api/otp", "Mail a one-time code to an address",
         operation_id="requestCode", tag="otp", status=202,
         request=OTPRequestIn, response=Accepted, errors=(400, 401, 415, 422, 429))


@bp.get("/otp/<request_id>")
def show_otp(request_id: str) -> ResponseReturnValue:
    store = _store()
    otp_request = store.get(request_id)
    if otp_request is None:
        raise APIError(404, "not_found", f"no OTP request with id {request_id[:64]!r}")
    shown = OTPStatusOut.model_validate(otp_request.public(store.now()))
    return jsonify(shown.model_dump(exclude_none=True))


describe("get", "/api/otp/{request_id}", "An OTP request's delivery and verification status",
         operation_id="getCodeRequest", tag="otp", status=200, response=OTPStatusOut,
         errors=(401, 404))


@bp.post("/otp/<request_id>/verify")
@verify_per_token
def verify_otp(request_id: str) -> ResponseReturnValue:
    store = _store()
    body = OTPCodeIn.model_validate(json_body(), context={"length": store.policy.length})
    verify_code(store, request_id, body.code)
    return jsonify(OTPVerifiedOut(verified=True).model_dump())


describe("post", "/api/otp/{request_id}/verify", "Check a code; it works once",
         operation_id="verifyCode", tag="otp", status=200,
         request=OTPCodeIn, response=OTPVerifiedOut, errors=(400, 401, 404, 415, 422, 429))

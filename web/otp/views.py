"""``/verify``, ``/validate`` and the status poll ``/verify/status/<id>``.

``POST /verify`` stores the request and queues the mail, then redirects at
once; the same response whether or not the address was seen before.
"""

from __future__ import annotations

import logging

from flask import current_app, jsonify, redirect, render_template, request, url_for
from flask.typing import ResponseReturnValue
from flask_limiter.errors import RateLimitExceeded

from tasks.codes.service import request_code, verify_code
from tasks.codes.store import OTPStore
from tasks.shared.errors import Invalid, NotFound
from tasks.vocabulary import CodeStatus
from web.otp import status
from web.otp.blueprint import bp
from web.otp.forms import AddressForm, CodeForm
from web.otp.throttle import email_problem, per_address, per_ip, verify_per_ip

log = logging.getLogger(__name__)

GENERIC_FAILURE = ("That code did not work. It may be wrong, used or expired: "
                   "check the most recent email, or request a new code.")
THROTTLED = ("Too many codes were requested for this address or from your network. "
             "Wait a few minutes, then try again.")
TOO_MANY_TRIES = "Too many codes were tried from your network. Wait a few minutes, then try again."


def otp_store() -> OTPStore:
    return OTPStore.from_config(current_app.extensions["redis"], current_app.config)


@bp.route("/verify", methods=["GET", "POST"])
@per_ip
@per_address
def verify() -> ResponseReturnValue:
    form = AddressForm()
    problem = email_problem() if request.method == "POST" else None
    if problem is not None:  # a list or a number is not one address, nor its first item
        form.email.data = ""
        form.email.errors = [f"Email address {problem}."]
        return render_template("otp/verify.html", form=form), 422
    if form.validate_on_submit():
        otp_request = request_code(otp_store(), form.email.data)
        return redirect(url_for("otp.validate", request=otp_request.id), code=303)
    return render_template("otp/verify.html", form=form), 422 if form.errors else 200


@bp.errorhandler(RateLimitExceeded)
def throttled(err: RateLimitExceeded) -> ResponseReturnValue:
    log.info("otp request throttled: %s", err.description)
    message = TOO_MANY_TRIES if request.endpoint == "otp.validate" else THROTTLED
    return render_template("otp/verify.html", form=AddressForm(), throttled=message), 429


@bp.route("/validate", methods=["GET", "POST"])
@verify_per_ip
def validate() -> ResponseReturnValue:
    form = CodeForm()
    request_id = form.request_id.data or request.args.get("request", "")
    form.request_id.data = request_id
    store = otp_store()
    otp_request = store.get(request_id) if request_id else None
    failure = None
    if form.validate_on_submit():
        try:
            verify_code(store, request_id, form.code.data)
            return render_template("otp/verified.html")
        except (NotFound, Invalid):
            failure = GENERIC_FAILURE  # the same answer whatever the reason
        form.code.data = ""
        otp_request = store.get(request_id)
    shown = status.describe(otp_request.public(store.now())) if otp_request else None
    if shown is not None and shown["status"] == CodeStatus.VERIFIED and request.method == "GET":
        return render_template("otp/verified.html")  # reopened after success
    code = 200
    if failure or form.errors:
        code = 422
    elif otp_request is None:
        code = 404
    notice = status.closed_notice(shown["status"]) if shown else None
    return render_template("otp/validate.html", form=form, request_id=request_id, shown=shown,
                           failure=failure, notice=notice, length=store.policy.length), code


@bp.get("/verify/status/<request_id>")
def delivery_status(request_id: str) -> ResponseReturnValue:
    """The request's delivery status for the page's live view: no code, no address."""
    store = otp_store()
    otp_request = store.get(request_id)
    if otp_request is None:
        return jsonify({"error": {"code": "not_found", "message": "no such request"}}), 404
    response = jsonify(status.describe(otp_request.public(store.now())))
    response.headers["Cache-Control"] = "no-store"
    return response

"""The operator's campaign pages: sign in, list, upload a CSV, watch progress, control.

Signing in checks ``ADMIN_USERNAME``/``ADMIN_PASSWORD`` (constant time, throttled)
and opens a server-side session (:mod:`web.campaigns.signin`); every other page
needs it open, and signing out closes it. Forms are CSRF-protected.
"""

from __future__ import annotations

import hmac
import logging
import time

from flask import (
    abort,
    current_app,
    flash,
    jsonify,
    redirect,
    render_template,
    request,
    session,
    url_for,
)
from flask.typing import ResponseReturnValue
from flask_limiter.errors import RateLimitExceeded
from pydantic import ValidationError

from tasks.campaigns.control import ACTIONS
from tasks.campaigns.drafts import rendered_first, test_recipient
from tasks.campaigns.recipients import CSVRecipients
from tasks.campaigns.store import CampaignStore
from tasks.shared.errors import Invalid
from tasks.shared.identifiers import is_record_id
from tasks.vocabulary import CAMPAIGN_FINAL, CampaignStatus, Status
from web.api.campaigns import campaign_out, create_campaign, spec_from, uploaded_attachments
from web.api.errors import fields_of
from web.api.schemas_campaigns import CampaignFields, CampaignOut
from web.campaigns.blueprint import REFUSED, SESSION_KEY, _store, admin_required, bp
from web.campaigns.signin import per_ip, per_user_name, sessions
from web.campaigns.timing import campaign_rate, chart_bars, chart_scale, duration_text, elapsed

log = logging.getLogger(__name__)

FAILED_SHOWN = 20


def _credentials_match(username: str, password: str) -> bool:
    config = current_app.config
    known_user, known_password = config.get("ADMIN_USERNAME"), config.get("ADMIN_PASSWORD")
    if not known_user or not known_password:
        return False
    user_ok = hmac.compare_digest(username.encode(), str(known_user).encode())
    password_ok = hmac.compare_digest(password.encode(), str(known_password).encode())
    return user_ok and password_ok


@bp.route("/login", methods=["GET", "POST"])
@per_ip
@per_user_name
def login() -> ResponseReturnValue:
    configured = bool(current_app.config.get("ADMIN_USERNAME")
                      and current_app.config.get("ADMIN_PASSWORD"))
    if request.method == "POST":
        if _credentials_match(request.form.get("username", ""), request.form.get("password", "")):
            sessions().revoke(session.get(SESSION_KEY))
            session.clear()
            session[SESSION_KEY] = sessions().open()
            target = request.args.get("next", "")
            signed_in_to = ("/campaigns", "/outbox/")  # the pages behind this sign-in
            return redirect(target if target.startswith(signed_in_to) else url_for(".index"),
                            code=303)
        log.warning("failed operator sign-in from %s", request.remote_addr)
        flash("Wrong username or password.", "error")
        return render_template("campaigns/login.html", configured=configured), 401
    return render_template("campaigns/login.html", configured=configured)


@bp.errorhandler(RateLimitExceeded)
def throttled(err: RateLimitExceeded) -> ResponseReturnValue:
    log.warning("operator sign-in throttled from %s: %s", request.remote_addr, err.description)
    flash("Too many sign-in attempts. Wait a few minutes, then try again.", "error")
    configured = bool(current_app.config.get("ADMIN_USERNAME"))
    return render_template("campaigns/login.html", configured=configured), 429


@bp.post("/logout")
def logout() -> ResponseReturnValue:
    """Sign out: the session ends on the server, so a copy of the cookie stops working too."""
    sessions().revoke(session.get(SESSION_KEY))
    session.clear()
    return redirect(url_for(".login"), code=303)


@bp.get("/")
@admin_required
def index() -> ResponseReturnValue:
    store = _store()
    campaigns = [campaign_out(store, c) for c in store.recent(limit=100)]
    return render_template("campaigns/index.html", campaigns=campaigns)


@bp.route("/new", methods=["GET", "POST"])
@admin_required
def new() -> ResponseReturnValue:
    if request.method == "GET":
        return render_template("campaigns/new.html", form={}, errors={})
    request.max_content_length = int(current_app.config["CAMPAIGN_MAX_UPLOAD_BYTES"])
    form = {name: value for name, value in request.form.items()
            if value != "" and name not in ("csrf_token", "send")}
    upload = request.files.get("file")
    try:
        fields = CampaignFields.model_validate(form)
        if upload is None or not upload.filename:
            raise Invalid.of("file", "missing", "choose a CSV file")
        campaign_id, status, report = create_campaign(
            spec_from(fields, upload.filename, uploaded_attachments()),
            CSVRecipients(upload.stream))
    except ValidationError as err:
        return _form_again(form, "The campaign is not valid.", fields_of(err))
    except REFUSED as err:
        return _form_again(form, err.message, err.fields or {})
    flash(f"Campaign {status}: {report.accepted} recipient(s), {report.rejected} row(s) "
          f"rejected, {report.duplicates} duplicate(s), {report.suppressed} suppressed.")
    return redirect(url_for(".show", campaign_id=campaign_id), code=303)


def _form_again(form: dict[str, str], message: str,
                errors: dict[str, str]) -> ResponseReturnValue:
    flash(message, "error")
    return render_template("campaigns/new.html", form=form, errors=errors), 422


def _shown(store: CampaignStore, campaign_id: str) -> CampaignOut:
    """The campaign as the API shows it, or a 404 page."""
    campaign = store.get(campaign_id) if is_record_id(campaign_id) else None
    if campaign is None:
        abort(404)
    return campaign_out(store, campaign)


@bp.get("/<campaign_id>")
@admin_required
def show(campaign_id: str) -> ResponseReturnValue:
    store = _store()
    shown = _shown(store, campaign_id)
    failed, more_failed = store.ledger(campaign_id).page(status=Status.FAILED, limit=FAILED_SHOWN)
    now = time.time()
    history = store.send_history(campaign_id)
    draft = None
    if shown.status == CampaignStatus.DRAFT:
        campaign = store.get(campaign_id)
        try:
            draft = rendered_first(store, campaign) if campaign is not None else None
        except REFUSED as err:
            draft = (err.message, None, None)
    return render_template("campaigns/show.html", campaign=shown, failed=failed,
                           more_failed=more_failed is not None, final=CAMPAIGN_FINAL,
                           rate=campaign_rate(shown, now), elapsed=elapsed(shown, now),
                           bars=chart_bars(history), scale=chart_scale(history),
                           draft=draft, test_to=test_recipient())


@bp.get("/<campaign_id>/progress")
@admin_required
def progress(campaign_id: str) -> ResponseReturnValue:
    """What the show page polls to move its progress bars."""
    store = _store()
    shown = _shown(store, campaign_id)
    now = time.time()
    history = store.send_history(campaign_id)
    span = elapsed(shown, now)
    return jsonify({**shown.model_dump(), "sending_rate": campaign_rate(shown, now),
                    "elapsed": span, "elapsed_text": duration_text(span),
                    "chart": chart_bars(history), "scale": chart_scale(history),
                    "final": shown.status in CAMPAIGN_FINAL})


@bp.post("/<campaign_id>/<action>")
@admin_required
def control(campaign_id: str, action: str) -> ResponseReturnValue:
    act = ACTIONS.get(action)
    if act is None or not is_record_id(campaign_id):
        abort(404)
    try:
        act(_store(), campaign_id)
    except REFUSED as err:
        flash(err.message, "error")
    else:
        flash(f"Campaign {action.replace('-', ' ')}: done.")
    return redirect(url_for(".show", campaign_id=campaign_id), code=303)


"""``GET/POST /unsubscribe/<token>``: RFC 8058 one-click unsubscribe from campaigns.

Mail clients ``POST`` the link with ``List-Unsubscribe=One-Click`` and no cookies,
so the POST is exempt from CSRF; the signed token is what authorises it. ``GET``
(a person following the link) shows a confirmation page whose button POSTs.
"""

from __future__ import annotations

import logging

from flask import Blueprint, abort, current_app, make_response, render_template
from flask.typing import ResponseReturnValue

from tasks.bounces.store import SuppressionList, Unsubscribe, read_unsubscribe_token
from tasks.vocabulary import SuppressionReason
from tasks.webhooks.events import unsubscribed_event
from tasks.webhooks.tasks import emit
from web.extensions import csrf

log = logging.getLogger(__name__)

bp = Blueprint("unsubscribe", __name__, url_prefix="/unsubscribe")


def _read(token: str) -> Unsubscribe:
    found = read_unsubscribe_token(current_app.config["SECRET_KEY"], token)
    if found is None:  # cut short when copied, or altered: say so, change nothing
        abort(make_response(render_template("unsubscribe.html", invalid=True), 404))
    return found


@bp.get("/<token>")
def confirm(token: str) -> ResponseReturnValue:
    found = _read(token)
    return render_template("unsubscribe.html", email=found.email, token=token, done=False)


@bp.post("/<token>")
@csrf.exempt
def unsubscribe(token: str) -> ResponseReturnValue:
    found = _read(token)
    if SuppressionList(current_app.extensions["redis"]).add(
            found.email, SuppressionReason.UNSUBSCRIBED, campaign_id=found.campaign_id):
        log.info("an address unsubscribed (campaign %s)", found.campaign_id)
        emit(current_app.extensions["redis"],
             [unsubscribed_event(found.email, found.campaign_id)])
    return render_template("unsubscribe.html", email=found.email, token=token, done=True)

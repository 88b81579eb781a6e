"""The operator's test send of a draft campaign (the page's "Send test" form)."""

from __future__ import annotations

import logging

from flask import abort, flash, redirect, request, url_for
from flask.typing import ResponseReturnValue

from tasks.campaigns.drafts import send_test, test_addresses
from tasks.shared.identifiers import is_record_id
from web.campaigns.blueprint import REFUSED, _store, admin_required, bp

log = logging.getLogger(__name__)


@bp.post("/<campaign_id>/test")
@admin_required
def test_send(campaign_id: str) -> ResponseReturnValue:
    """Send the draft's first message to the comma-separated addresses in ``to``."""
    if not is_record_id(campaign_id):
        abort(404)
    given = [part.strip() for part in request.form.get("to", "").split(",") if part.strip()]
    try:
        to = test_addresses(given)
        send_test(_store(), campaign_id, to)
    except REFUSED as err:  # an unknown campaign is the 404 page
        detail = "; ".join(f"{k}: {v}" for k, v in (err.fields or {}).items())
        flash(f"Test not sent: {err.message}" + (f" ({detail})" if detail else ""), "error")
    else:
        flash(f"Test sent to {', '.join(to)}.")
    return redirect(url_for(".show", campaign_id=campaign_id), code=303)

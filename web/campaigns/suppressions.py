"""The operator's suppression page (``/campaigns/suppressions``): search the list, add an
address by hand, take one off. Same sign-in as the campaign pages; forms are CSRF-protected."""

from __future__ import annotations

from email_validator import EmailNotValidError
from flask import current_app, flash, redirect, render_template, request, url_for
from flask.typing import ResponseReturnValue

from tasks.bounces.store import SuppressionList
from tasks.shared.mailbox import checked_address
from tasks.vocabulary import SuppressionReason
from web.addresses import special_use_allowed
from web.campaigns.blueprint import admin_required, bp

PAGE = 100


def _list() -> SuppressionList:
    return SuppressionList(current_app.extensions["redis"])


@bp.get("/suppressions")
@admin_required
def suppressions() -> ResponseReturnValue:
    query = request.args.get("q", "").strip()[:254]
    raw_cursor = request.args.get("cursor", "0")
    cursor = int(raw_cursor) if raw_cursor.isdigit() and len(raw_cursor) < 16 else 0
    entries, following = _list().page(cursor=cursor, limit=PAGE, contains=query or None)
    return render_template("campaigns/suppressions.html", entries=entries, query=query,
                           following=following, total=len(_list()))


@bp.post("/suppressions")
@admin_required
def change_suppression() -> ResponseReturnValue:
    query = request.form.get("q", "")
    try:
        address = checked_address(request.form.get("email", ""),
                                  special_use=special_use_allowed()).normalized
    except EmailNotValidError as err:
        flash(f"Not an email address: {err}", "error")
        return redirect(url_for(".suppressions", q=query), code=303)
    if request.form.get("action") == "remove":
        removed = _list().remove(address)
        flash(f"{address} was taken off the list." if removed
              else f"{address} was not on the list.", "info")
    else:
        _list().put(address, SuppressionReason.MANUAL)
        flash(f"{address} will not be mailed by any campaign.", "info")
    return redirect(url_for(".suppressions", q=query), code=303)

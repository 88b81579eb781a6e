"""A campaign's recipients on the operator pages: the full list with filters and
paging, a CSV export streamed a page at a time, and a preview of the first message.

Routes live on the campaign blueprint and need the operator's session.
"""

from __future__ import annotations

import csv
import io
import logging
from collections.abc import Iterator

from flask import Response, abort, render_template, request, stream_with_context
from flask.typing import ResponseReturnValue

from tasks.campaigns.store import Campaign, CampaignStore
from tasks.delivery.engine.errors import InvalidMessageError
from tasks.delivery.engine.templating import CampaignTemplates, TemplateProblem
from tasks.delivery.ledger import DeliveryLedger, RecipientRecord
from tasks.shared.identifiers import is_record_id
from tasks.vocabulary import Status
from web.campaigns.blueprint import _store, admin_required, bp

log = logging.getLogger(__name__)

PAGE_SIZE = 100
EXPORT_PAGE = 1000
CSV_COLUMNS = ("email", "status", "attempts", "smtp_code", "error", "updated_at")
PREVIEW_POLICY = ("default-src 'none'; img-src data:; style-src 'unsafe-inline'; "
                  "font-src data:; sandbox; base-uri 'none'; form-action 'none'")


def _campaign(store: CampaignStore, campaign_id: str) -> Campaign:
    campaign = store.get(campaign_id) if is_record_id(campaign_id) else None
    if campaign is None:
        abort(404)
    return campaign


def _status_filter() -> str | None:
    status = request.args.get("status", "")
    if status == "":
        return None
    if status not in tuple(Status):
        abort(400, description="unknown status")
    return status


def _cursor() -> int:
    raw = request.args.get("cursor", "0")
    if not (raw.isascii() and raw.isdigit()) or len(raw) > 12:
        abort(400, description="cursor must be a recipient number")
    return int(raw)


@bp.get("/<campaign_id>/recipients")
@admin_required
def recipients(campaign_id: str) -> ResponseReturnValue:
    store = _store()
    campaign = _campaign(store, campaign_id)
    status, cursor = _status_filter(), _cursor()
    ledger = store.ledger(campaign_id)
    records, next_cursor = ledger.page(status=status, cursor=cursor, limit=PAGE_SIZE)
    return render_template("campaigns/recipients.html", campaign=campaign, records=records,
                           status=status, cursor=cursor, next_cursor=next_cursor,
                           counts=ledger.counts(), statuses=tuple(Status))


def _spreadsheet_safe(value: object) -> str:
    """The cell as text; one a spreadsheet would run as a formula gets a leading quote."""
    text = "" if value is None else str(value)
    return "'" + text if text[:1] in ("=", "+", "-", "@", "\t", "\r") else text


def _csv_rows(ledger: DeliveryLedger, status: str | None) -> Iterator[str]:
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    writer.writerow(CSV_COLUMNS)
    cursor: int | None = 0
    while cursor is not None:
        records, cursor = ledger.page(status=status, cursor=cursor, limit=EXPORT_PAGE)
        for record in records:
            writer.writerow(_csv_row(record))
        yield buffer.getvalue()
        buffer.seek(0)
        buffer.truncate()


def _csv_row(record: RecipientRecord) -> list[str]:
    return [_spreadsheet_safe(value) for value in (
        record.email, record.status, record.attempts, record.smtp_code, record.error,
        record.updated_at)]


@bp.get("/<campaign_id>/recipients.csv")
@admin_required
def export(campaign_id: str) -> ResponseReturnValue:
    """Every recipient (or those of one status) as CSV, read and sent a page at a time."""
    store = _store()
    _campaign(store, campaign_id)
    status = _status_filter()
    log.info("campaign %s: recipients exported (status %s)", campaign_id, status or "any")
    name = f"campaign-{campaign_id}-{status or 'all'}.csv"
    return Response(stream_with_context(_csv_rows(store.ledger(campaign_id), status)),
                    mimetype="text/csv",
                    headers={"Content-Disposition": f'attachment; filename="{name}"'})


def _first_message(store: CampaignStore, campaign: Campaign
                   ) -> tuple[RecipientRecord | None, tuple[str, str | None, str | None] | None,
                              str | None]:
    """The first recipient, the message rendered for them, or why it cannot be."""
    records, _ = store.ledger(campaign.id).page(limit=1)
    if not records:
        return None, None, "This campaign has no recipients."
    first = records[0]
    # a harmless stand-in: a real token would unsubscribe the recipient if clicked
    context = {**first.vars, "email": first.email,
               "unsubscribe_url": f"{campaign.base_url.rstrip('/')}/unsubscribe/preview"}
    try:
        return first, CampaignTemplates(campaign.subject, campaign.body,
                                        campaign.html).render(context), None
    except (TemplateProblem, InvalidMessageError) as err:
        return first, None, str(err)


@bp.get("/<campaign_id>/preview")
@admin_required
def preview(campaign_id: str) -> ResponseReturnValue:
    store = _store()
    campaign = _campaign(store, campaign_id)
    first, rendered, problem = _first_message(store, campaign)
    return render_template("campaigns/preview.html", campaign=campaign, first=first,
                           rendered=rendered, problem=problem)


@bp.get("/<campaign_id>/preview.html")
@admin_required
def preview_html(campaign_id: str) -> ResponseReturnValue:
    """The first message's HTML, for the preview's sandboxed frame only."""
    store = _store()
    _, rendered, _ = _first_message(store, _campaign(store, campaign_id))
    if rendered is None or rendered[2] is None:
        abort(404)
    response = Response(rendered[2], mimetype="text/html")
    response.headers["Content-Security-Policy"] = PREVIEW_POLICY
    response.headers["X-Content-Type-Options"] = "nosniff"
    response.headers["Referrer-Policy"] = "no-referrer"
    return response


"""``/api/campaigns``: create (JSON or CSV upload), list, show, page recipients, control."""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from typing import Any

from flask import current_app, jsonify, request, url_for
from flask.typing import ResponseReturnValue

from tasks.campaigns import control as levers
from tasks.campaigns import creation, drafts
from tasks.campaigns.recipients import CSVRecipients, JSONRecipients, RecipientSource
from tasks.campaigns.store import Campaign, CampaignStore
from tasks.shared.errors import Invalid
from tasks.shared.identifiers import is_record_id
from tasks.vocabulary import Status
from web.addresses import special_use_allowed
from web.api.blueprint import bp
from web.api.errors import APIError
from web.api.openapi import describe
from web.api.requests import json_body, parse
from web.api.schemas import MAX_ATTACHMENTS, file_name_checked
from web.api.schemas_campaigns import (
    CampaignAccepted,
    CampaignFields,
    CampaignIn,
    CampaignList,
    CampaignOut,
    CampaignRecipientOut,
    CampaignRecipients,
    CampaignState,
    CampaignTestIn,
    CampaignTestOut,
)

PAGE_LIMIT = 500
MAX_NUMBER = 2**53  # cursors are indices and timestamps; Redis scores are doubles
Upload = tuple[str, str | None, bytes]  # file name, declared type, bytes


def _store() -> CampaignStore:
    return CampaignStore(current_app.extensions["redis"])


def base_url() -> str:
    """Where unsubscribe links point: ``PUBLIC_URL``, never the Host header of a request."""
    return str(current_app.config["PUBLIC_URL"]).rstrip("/")


def spec_from(fields: CampaignFields, default_name: str,
              uploads: Sequence[Upload] = ()) -> creation.CampaignSpec:
    """The campaign as validated; attachment bytes (JSON's or *uploads*) are stored now."""
    send_at = fields.send_at if isinstance(fields.send_at, float) else None
    files = [(a.filename, a.content_type, a.data()) for a in fields.attachments] + list(uploads)
    refs = creation.stored_attachments(current_app.extensions["redis"], files, send_at=send_at,
                                       limit=int(current_app.config["MAX_ATTACHMENT_BYTES"]))
    return creation.CampaignSpec(name=fields.name or default_name, subject=fields.subject,
                                 body=fields.body, html=fields.html, sender=fields.sender,
                                 send_at=send_at, attachments=refs, draft=fields.draft)


def uploaded_attachments() -> list[Upload]:
    """Files sent as ``attachments`` in a multipart request: (name, declared type, bytes)."""
    limit = int(current_app.config["MAX_ATTACHMENT_BYTES"])
    found: list[Upload] = []
    for storage in request.files.getlist("attachments"):
        data = storage.stream.read(limit + 1)
        if storage.filename or data:
            name = file_name_checked(storage.filename or "attachment")
            found.append((name, storage.mimetype or None, data))
    if len(found) > MAX_ATTACHMENTS:
        raise Invalid.of("attachments", f"at most {MAX_ATTACHMENTS}",
                         f"at most {MAX_ATTACHMENTS} attachments")
    return found


def create_campaign(spec: creation.CampaignSpec,
                    source: RecipientSource) -> tuple[str, str, creation.ImportReport]:
    """:func:`tasks.campaigns.creation.create_campaign` with this deployment's settings."""
    return creation.create_campaign(
        _store(), spec, source, base_url=base_url(),
        default_sender=current_app.config.get("MAIL_DEFAULT_SENDER"),
        special_use=special_use_allowed())


def _read_request() -> tuple[creation.CampaignSpec, RecipientSource]:
    default_name = time.strftime("Campaign %Y-%m-%d %H:%M UTC", time.gmtime())
    if request.mimetype == "multipart/form-data":
        request.max_content_length = int(current_app.config["CAMPAIGN_MAX_UPLOAD_BYTES"])
        upload = request.files.get("file")
        if upload is None or not upload.filename:
            raise APIError(422, "invalid", "attach the recipients as a CSV file field 'file'",
                           {"file": "missing"})
        form = {name: value for name, value in request.form.items() if value != ""}
        fields = parse(CampaignFields, form)
        spec = spec_from(fields, upload.filename or default_name, uploaded_attachments())
        return spec, CSVRecipients(upload.stream)
    body = parse(CampaignIn, json_body())
    return spec_from(body, default_name), JSONRecipients(body.recipients)


@bp.post("/campaigns")
def create() -> ResponseReturnValue:
    """Store a campaign and queue (or schedule) it; 202 with how the recipients were read."""
    spec, source = _read_request()
    campaign_id, status, report = create_campaign(spec, source)
    accepted = CampaignAccepted(id=campaign_id, status=status, total=report.accepted,
                                **{k: v for k, v in report.public().items() if k != "accepted"})
    response = jsonify(accepted.model_dump(exclude_none=True))
    response.headers["Location"] = url_for("api.show", campaign_id=campaign_id)
    return response, 202


describe("post", "/api/campaigns", "Create a campaign (JSON, or multipart with a CSV 'file')",
         operation_id="createCampaign", tag="campaigns", status=202, request=CampaignIn,
         response=CampaignAccepted,
         errors=(400, 401, 413, 415, 422),
         files={"file": "the recipients: CSV with an 'email' column plus variable columns",
                "attachments": "files attached to every message"})


def campaign_out(store: CampaignStore, campaign: Campaign) -> CampaignOut:
    return CampaignOut(id=campaign.id, name=campaign.name, status=campaign.status,
                       total=campaign.total, counts=store.ledger(campaign.id).counts(),
                       send_at=campaign.send_at, created_at=campaign.created_at,
                       started_at=campaign.started_at, finished_at=campaign.finished_at,
                       rate=store.current_rate(campaign.id), imported=campaign.report)


def not_found(campaign_id: str) -> APIError:
    return APIError(404, "not_found", f"no campaign with id {campaign_id[:64]!r}")


def _campaign(store: CampaignStore, campaign_id: str) -> Campaign:
    if not is_record_id(campaign_id):
        raise not_found(campaign_id)
    campaign = store.get(campaign_id)
    if campaign is None:
        raise not_found(campaign_id)
    return campaign


def _number(name: str, value: str | None, kind: type[Any]) -> Any:
    if value is None or value == "":
        return None
    try:
        number = kind(value)
    except ValueError:
        raise APIError(422, "invalid", f"{name} must be a number",
                       {name: "must be a number"}) from None
    if not math.isfinite(number):  # nan, inf
        raise APIError(422, "invalid", f"{name} must be a finite number",
                       {name: "must be a finite number"})
    if number < 0:
        raise APIError(422, "invalid", f"{name} must not be negative", {name: "negative"})
    if number > MAX_NUMBER:
        raise APIError(422, "invalid", f"{name} is too large", {name: f"at most {MAX_NUMBER}"})
    return number


@bp.get("/campaigns")
def index() -> ResponseReturnValue:
    store = _store()
    limit = min(_number("limit", request.args.get("limit"), int) or 50, PAGE_LIMIT)
    before = _number("cursor", request.args.get("cursor"), float)
    campaigns = store.recent(before=before, limit=limit)
    shown = CampaignList(campaigns=[campaign_out(store, c) for c in campaigns],
                         next_cursor=campaigns[-1].created_at if len(campaigns) == limit
                         else None)
    return jsonify(shown.model_dump())


describe("get", "/api/campaigns", "Campaigns, newest first", operation_id="listCampaigns",
         tag="campaigns", status=200, response=CampaignList,
         errors=(401, 422), query={"cursor": "next_cursor from the previous page",
                                   "limit": f"at most {PAGE_LIMIT}"})


@bp.get("/campaigns/<campaign_id>")
def show(campaign_id: str) -> ResponseReturnValue:
    store = _store()
    return jsonify(campaign_out(store, _campaign(store, campaign_id)).model_dump())


describe("get", "/api/campaigns/{campaign_id}", "A campaign's status, counts and rate",
         operation_id="getCampaign", tag="campaigns", status=200, response=CampaignOut,
         errors=(401, 404))


@bp.get("/campaigns/<campaign_id>/recipients")
def recipients(campaign_id: str) -> ResponseReturnValue:
    store = _store()
    _campaign(store, campaign_id)
    status = request.args.get("status") or None
    if status is not None and status not in tuple(Status):
        raise APIError(422, "invalid", f"unknown status {status!r}",
                       {"status": f"one of {', '.join(Status)}"})
    cursor = _number("cursor", request.args.get("cursor"), int) or 0
    limit = min(_number("limit", request.args.get("limit"), int) or 100, PAGE_LIMIT)
    records, following = store.ledger(campaign_id).page(status=status, cursor=cursor,
                                                        limit=max(limit, 1))
    page = CampaignRecipients(
        recipients=[CampaignRecipientOut(index=r.index, **r.public()) for r in records],
        next_cursor=following)
    return jsonify(page.model_dump(exclude_none=True))


describe("get", "/api/campaigns/{campaign_id}/recipients", "A campaign's recipients, paged",
         operation_id="listCampaignRecipients", tag="campaigns", status=200,
         response=CampaignRecipients, errors=(401, 404, 422),
         query={"status": "only recipients in this status", "cursor": "next_cursor",
                "limit": f"at most {PAGE_LIMIT}"})


@bp.post("/campaigns/<campaign_id>/test")
def send_test(campaign_id: str) -> ResponseReturnValue:
    """Send a draft's first message to the addresses given, marked as a test."""
    body = json_body()
    to = drafts.test_addresses(body.get("to") if isinstance(body, dict) else None)
    if isinstance(body, dict) and set(body) - {"to"}:
        extra = sorted(set(body) - {"to"})[0]
        raise APIError(422, "invalid", f"unknown field {extra[:40]!r}", {extra[:40]: "unknown"})
    store = _store()
    _campaign(store, campaign_id)
    message_id = drafts.send_test(store, campaign_id, to)
    sent = CampaignTestOut(id=campaign_id, status=store.status(campaign_id) or "",
                           message_id=message_id, to=to)
    return jsonify(sent.model_dump()), 202


describe("post", "/api/campaigns/{campaign_id}/start",
         "Start a draft now, or schedule it if its send_at is ahead",
         operation_id="startCampaign", tag="campaigns", status=200, response=CampaignState,
         errors=(401, 404, 409))
describe("post", "/api/campaigns/{campaign_id}/test",
         "Send a draft's first message to up to 10 addresses as a test (not counted)",
         operation_id="testCampaign", tag="campaigns", status=202, request=CampaignTestIn,
         response=CampaignTestOut, errors=(400, 401, 404, 409, 422))


@bp.post("/campaigns/<campaign_id>/start")
def start(campaign_id: str) -> ResponseReturnValue:
    """A draft starts now (``queued``) or, with a ``send_at`` ahead, is ``scheduled``."""
    return control(campaign_id, "start")


@bp.post("/campaigns/<campaign_id>/<action>")
def control(campaign_id: str, action: str) -> ResponseReturnValue:
    act = levers.ACTIONS.get(action)
    if not is_record_id(campaign_id):
        raise not_found(campaign_id)
    if act is None:
        raise APIError(404, "not_found",
                       f"no action {action!r}; use one of {', '.join(levers.ACTIONS)}")
    store = _store()
    act(store, campaign_id)
    state = CampaignState(id=campaign_id, status=store.status(campaign_id) or "")
    return jsonify(state.model_dump())


for _action, _operation, _summary in (
        ("pause", "pauseCampaign", "Stop starting new batches; pausing, then paused"),
        ("resume", "resumeCampaign", "Continue a paused campaign"),
        ("cancel", "cancelCampaign", "Cancel every unsent recipient"),
        ("retry-failed", "retryFailedCampaign", "Queue the failed recipients again")):
    describe("post", f"/api/campaigns/{{campaign_id}}/{_action}", _summary,
             operation_id=_operation, tag="campaigns", status=200, response=CampaignState,
             errors=(401, 404, 409))

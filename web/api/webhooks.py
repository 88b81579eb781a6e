"""Webhook endpoints: ``POST/GET /api/webhooks``, ``DELETE /api/webhooks/<id>`` and
``GET /api/webhooks/<id>/deliveries``. Events and their signature: :mod:`tasks.webhooks.tasks`."""

from __future__ import annotations

from flask import current_app, jsonify, request
from flask.typing import ResponseReturnValue
from pydantic import BaseModel, ConfigDict, Field, field_validator

from tasks.shared.identifiers import is_record_id
from tasks.webhooks.client import UnsafeURL, check_url
from tasks.webhooks.store import EVENT_TYPES, WebhookEndpoints
from web.api.blueprint import bp
from web.api.errors import APIError
from web.api.openapi import describe
from web.api.requests import json_body, parse

MAX_URL = 2048
MAX_CURSOR = 10_000
PAGE = 50


class WebhookIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    url: str = Field(max_length=MAX_URL, description="an http:// or https:// URL to POST "
                                                     "events to")
    events: list[str] | None = Field(None, max_length=len(EVENT_TYPES), description=(
        "the event types to send (default: every type): " + ", ".join(EVENT_TYPES)))

    @field_validator("events")
    @classmethod
    def known_types(cls, events: list[str] | None) -> list[str] | None:
        if events is None:
            return None
        unknown = [name for name in events if name not in EVENT_TYPES]
        if unknown:
            raise ValueError(f"unknown event type(s) {', '.join(map(repr, unknown[:5]))}; "
                             f"known: {', '.join(EVENT_TYPES)}")
        if not events:
            raise ValueError("name at least one event type, or leave events out for all")
        return list(dict.fromkeys(events))


class WebhookOut(BaseModel):
    id: str
    url: str
    events: list[str]
    created_at: float
    disabled: bool = Field(description="true once the endpoint answered 410 Gone: no further "
                                       "deliveries")
    disabled_at: float | None


class WebhookCreated(BaseModel):
    id: str
    url: str
    events: list[str]
    secret: str = Field(description="signs every event (Postroom-Signature); shown only here")
    created_at: float


class WebhookList(BaseModel):
    webhooks: list[WebhookOut]


class DeliveryAttemptOut(BaseModel):
    event_id: str
    event_type: str
    attempt: int = Field(description="1 for the first POST of this event to this endpoint")
    at: float
    status_code: int | None = Field(description="the endpoint's answer; null when none came")
    error: str | None = Field(description="why there was no answer (timeout, refused, ...)")


class DeliveryPage(BaseModel):
    deliveries: list[DeliveryAttemptOut]
    next_cursor: int | None = Field(description="pass as ?cursor= for the next page; "
                                                "null on the last")


def _endpoints() -> WebhookEndpoints:
    return WebhookEndpoints(current_app.extensions["redis"])


def _known(endpoint_id: str) -> str:
    if not is_record_id(endpoint_id) or _endpoints().get(endpoint_id) is None:
        raise APIError(404, "not_found", f"no webhook with id {endpoint_id!r}")
    return endpoint_id


@bp.post("/webhooks")
def create_webhook() -> ResponseReturnValue:
    body = parse(WebhookIn, json_body())
    try:
        check_url(body.url, allow_private=bool(current_app.config["WEBHOOK_ALLOW_PRIVATE"]))
    except UnsafeURL as refused:
        raise APIError(422, "invalid", "the url cannot be used",
                       fields={"url": str(refused)}) from None
    endpoint = _endpoints().create(body.url, body.events or EVENT_TYPES)
    shown = {"id": endpoint.id, "url": endpoint.url, "events": list(endpoint.events),
             "secret": endpoint.secret, "created_at": endpoint.created_at}
    return jsonify(shown), 201


describe("post", "/api/webhooks", "Register an endpoint for events; its signing secret is "
         "in this answer only", operation_id="createWebhook", tag="webhooks", status=201,
         request=WebhookIn, response=WebhookCreated, errors=(400, 401, 415, 422))


@bp.get("/webhooks")
def list_webhooks() -> ResponseReturnValue:
    return jsonify({"webhooks": [endpoint.public() for endpoint in _endpoints().all()]})


describe("get", "/api/webhooks", "The registered endpoints (without their secrets)",
         operation_id="listWebhooks", tag="webhooks", status=200, response=WebhookList,
         errors=(401,))


@bp.delete("/webhooks/<endpoint_id>")
def delete_webhook(endpoint_id: str) -> ResponseReturnValue:
    if not is_record_id(endpoint_id) or not _endpoints().delete(endpoint_id):
        raise APIError(404, "not_found", f"no webhook with id {endpoint_id!r}")
    return "", 204


describe("delete", "/api/webhooks/{endpoint_id}", "Remove an endpoint: no further events go "
         "to it", operation_id="deleteWebhook", tag="webhooks", status=204, errors=(401, 404))


@bp.get("/webhooks/<endpoint_id>/deliveries")
def list_webhook_deliveries(endpoint_id: str) -> ResponseReturnValue:
    _known(endpoint_id)
    raw_cursor = request.args.get("cursor", "0")
    if not raw_cursor.isdigit() or int(raw_cursor) > MAX_CURSOR:
        raise APIError(422, "invalid", "cursor: a whole number from a previous page",
                       fields={"cursor": "a whole number from a previous page"})
    attempts, following = _endpoints().attempts(endpoint_id, cursor=int(raw_cursor),
                                                limit=PAGE)
    return jsonify({"deliveries": attempts, "next_cursor": following})


describe("get", "/api/webhooks/{endpoint_id}/deliveries", "Recent attempts to deliver events "
         "to the endpoint, newest first, a page at a time", operation_id="listWebhookDeliveries",
         tag="webhooks", status=200, response=DeliveryPage, errors=(401, 404, 422),
         query={"cursor": "next_cursor of the previous page"})

"""The client: one method per API operation (:data:`~postroom_client.operations.OPERATIONS`).

>>> with Postroom("https://postroom.example.com", token) as postroom:
...     accepted = postroom.send_message(to=["ada@example.com"], subject="Hi", body="Hello")
...     postroom.get_message(accepted.id).status
'queued'
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterable, Mapping, Sequence
from typing import Any, Literal

import httpx

from postroom_client.errors import InvalidRequest
from postroom_client.models import (
    Accepted,
    Attachment,
    BounceMatch,
    Campaign,
    CampaignAccepted,
    CampaignPage,
    CampaignRecipientPage,
    CampaignState,
    CampaignTest,
    CodeRequest,
    DeliveryPage,
    Message,
    Suppression,
    SuppressionPage,
    Webhook,
    WebhookCreated,
)
from postroom_client.operations import OPERATIONS
from postroom_client.transport import RetryPolicy, Transport

USER_AGENT = "postroom-client/0.1"
SuppressionReason = Literal["unsubscribed", "bounced", "complained", "manual"]
Addresses = str | Sequence[str]


def _listed(value: Addresses | None) -> list[str]:
    if value is None:
        return []
    return [value] if isinstance(value, str) else list(value)


def _without_empty(fields: Mapping[str, Any]) -> dict[str, Any]:
    return {name: value for name, value in fields.items() if value not in (None, [], {})}


class Postroom:
    """Postroom's API at *base_url*, authenticated with *token*.

    :param timeout: seconds for connecting, and for each read and write
    :param retry: how idempotent calls are retried (GETs, and sends, which carry an
        ``Idempotency-Key``)
    :param http: an ``httpx.Client`` of your own (its base URL, timeout and headers are
        then yours to set; the token is still sent)
    """

    def __init__(self, base_url: str, token: str, *, timeout: float = 10.0,
                 retry: RetryPolicy | None = None, http: httpx.Client | None = None) -> None:
        if not token:
            raise ValueError("a Postroom API token is needed (POSTROOM_TOKEN)")
        self._owns_http = http is None
        self._http = http or httpx.Client(base_url=base_url.rstrip("/"),
                                          timeout=httpx.Timeout(timeout),
                                          headers={"User-Agent": USER_AGENT})
        self._token = token
        self._transport = Transport(self._http, retry or RetryPolicy())

    @property
    def http(self) -> httpx.Client:
        """The ``httpx.Client`` whose kept connections every call uses (for event hooks)."""
        return self._http

    def close(self) -> None:
        """Close the kept connections (only those of a client this object made)."""
        if self._owns_http:
            self._http.close()

    def __enter__(self) -> Postroom:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:  # never the token
        return f"Postroom({str(self._http.base_url)!r})"

    # -- the one way a request is made ---------------------------------------------------

    def _call(self, operation_id: str, *, params: Mapping[str, str] | None = None,
              json_body: Mapping[str, Any] | None = None, query: Mapping[str, Any] | None = None,
              form: Mapping[str, Any] | None = None, files: Sequence[tuple[str, Any]] = (),
              headers: Mapping[str, str] | None = None, content: bytes | None = None,
              ) -> httpx.Response:
        operation = OPERATIONS[operation_id]
        for given, allowed, what in ((json_body, operation.body, "body"),
                                     (form, operation.body, "form"),
                                     (query, operation.query, "query")):
            unknown = set(given or {}) - allowed
            if unknown:  # a programming error in this package: the table is the contract
                raise AssertionError(f"{operation_id} sends no {what} field {sorted(unknown)}")
        unknown_files = {name for name, _ in files} - operation.files
        if unknown_files:
            raise AssertionError(f"{operation_id} sends no file field {sorted(unknown_files)}")
        options: dict[str, Any] = {}
        if json_body is not None:
            options["json"] = dict(json_body)
        if form is not None or files:
            options["data"] = dict(form or {})
            options["files"] = list(files)
        if content is not None:
            options["content"] = content
        if query:
            options["params"] = {k: str(v) for k, v in query.items() if v is not None}
        sent = {"Authorization": f"Bearer {self._token}", **(headers or {})}
        return self._transport.request(operation.method, operation.url(**(params or {})),
                                       headers=sent, **options)

    def _location(self, response: httpx.Response) -> str:
        location = response.headers.get("Location")
        return str(response.url.join(location)) if location else ""

    def _accepted(self, response: httpx.Response) -> Accepted:
        data = response.json()
        return Accepted(id=data["id"], status=data["status"],
                        status_url=self._location(response),
                        replayed=response.headers.get("Idempotent-Replayed") == "true")

    # -- messages ------------------------------------------------------------------------

    def send_message(self, *, to: Addresses, subject: str, body: str | None = None,
                     html: str | None = None, cc: Addresses | None = None,
                     bcc: Addresses | None = None, reply_to: Addresses | None = None,
                     sender: str | None = None, headers: Mapping[str, str] | None = None,
                     attachments: Iterable[Attachment] = (),
                     idempotency_key: str | None = None) -> Accepted:
        """Queue one message; returns once Postroom accepted it (202), never waits for SMTP.

        An ``Idempotency-Key`` (a new UUID unless *idempotency_key* is given) goes with it
        and with each retry, so a retried send is still one message. With attachments the
        request is ``multipart/form-data`` (the files as they are), otherwise JSON.
        """
        fields = _without_empty({
            "to": _listed(to), "cc": _listed(cc), "bcc": _listed(bcc),
            "reply_to": _listed(reply_to), "sender": sender, "subject": subject,
            "body": body, "html": html, "headers": dict(headers or {})})
        key = {"Idempotency-Key": idempotency_key or str(uuid.uuid4())}
        files = [("attachments", (a.filename, a.content, a.media_type())) for a in attachments]
        if files:
            form = {name: json.dumps(value) if name == "headers" else value
                    for name, value in fields.items()}
            response = self._call("createMessage", form=form, files=files, headers=key)
        else:
            response = self._call("createMessage", json_body=fields, headers=key)
        return self._accepted(response)

    def get_message(self, message_id: str) -> Message:
        """A message's status and each recipient's."""
        return Message.from_json(self._call("getMessage", params={"message_id": message_id})
                                 .json())

    # -- one-time codes ------------------------------------------------------------------

    def request_code(self, email: str) -> Accepted:
        """Mail a one-time code to *email* (not retried: each call mails a new code)."""
        return self._accepted(self._call("requestCode", json_body={"email": email}))

    def get_code_request(self, request_id: str) -> CodeRequest:
        return CodeRequest.from_json(
            self._call("getCodeRequest", params={"request_id": request_id}).json())

    def verify_code(self, request_id: str, code: str) -> bool:
        """``True`` once for the right code; ``False`` when it is wrong, used or expired.

        A malformed code (not digits) raises :class:`~postroom_client.errors.InvalidRequest`.
        """
        try:
            self._call("verifyCode", params={"request_id": request_id},
                       json_body={"code": code})
        except InvalidRequest as err:
            if err.code == "invalid_code":
                return False
            raise
        return True

    # -- campaigns -----------------------------------------------------------------------

    def create_campaign(self, *, subject: str, recipients: Sequence[Mapping[str, Any]] = (),
                        csv: bytes | None = None, csv_filename: str = "recipients.csv",
                        body: str | None = None, html: str | None = None, name: str = "",
                        sender: str | None = None, send_at: str | float | None = None,
                        attachments: Iterable[Attachment] = (), draft: bool = False,
                        ) -> CampaignAccepted:
        """Create a campaign from *recipients* (``[{"email": ..., "<variable>": ...}]``, JSON)
        or from *csv* (an ``email`` column plus variable columns, uploaded as a file).

        Not retried: Postroom takes no Idempotency-Key for campaigns.
        """
        fields = _without_empty({"name": name, "subject": subject, "body": body, "html": html,
                                 "sender": sender, "send_at": send_at})
        if draft:
            fields["draft"] = True
        files_given = list(attachments)
        if csv is not None:
            if recipients:
                raise ValueError("give recipients or csv, not both")
            form = {k: "true" if v is True else str(v) for k, v in fields.items()}
            files = [("file", (csv_filename, csv, "text/csv"))]
            files += [("attachments", (a.filename, a.content, a.media_type()))
                      for a in files_given]
            response = self._call("createCampaign", form=form, files=files)
        else:
            if not recipients:
                raise ValueError("a campaign needs recipients (or a csv)")
            fields["recipients"] = [dict(r) for r in recipients]
            if files_given:
                fields["attachments"] = [a.as_json() for a in files_given]
            response = self._call("createCampaign", json_body=fields)
        return CampaignAccepted.from_json(response.json(), self._location(response))

    def list_campaigns(self, *, cursor: float | None = None,
                       limit: int | None = None) -> CampaignPage:
        """Campaigns, newest first; pass ``next_cursor`` back for the next page."""
        response = self._call("listCampaigns", query={"cursor": cursor, "limit": limit})
        return CampaignPage.from_json(response.json())

    def get_campaign(self, campaign_id: str) -> Campaign:
        return Campaign.from_json(self._call("getCampaign",
                                             params={"campaign_id": campaign_id}).json())

    def campaign_recipients(self, campaign_id: str, *, status: str | None = None,
                            cursor: int | None = None,
                            limit: int | None = None) -> CampaignRecipientPage:
        response = self._call("listCampaignRecipients", params={"campaign_id": campaign_id},
                              query={"status": status, "cursor": cursor, "limit": limit})
        return CampaignRecipientPage.from_json(response.json())

    def test_campaign(self, campaign_id: str, to: Sequence[str]) -> CampaignTest:
        """Send a draft's first message to up to 10 addresses, marked as a test."""
        response = self._call("testCampaign", params={"campaign_id": campaign_id},
                              json_body={"to": list(to)})
        return CampaignTest.from_json(response.json())

    def _control(self, operation_id: str, campaign_id: str) -> CampaignState:
        response = self._call(operation_id, params={"campaign_id": campaign_id})
        return CampaignState.from_json(response.json())

    def start_campaign(self, campaign_id: str) -> CampaignState:
        return self._control("startCampaign", campaign_id)

    def pause_campaign(self, campaign_id: str) -> CampaignState:
        return self._control("pauseCampaign", campaign_id)

    def resume_campaign(self, campaign_id: str) -> CampaignState:
        return self._control("resumeCampaign", campaign_id)

    def cancel_campaign(self, campaign_id: str) -> CampaignState:
        return self._control("cancelCampaign", campaign_id)

    def retry_failed(self, campaign_id: str) -> CampaignState:
        """Queue a campaign's failed recipients again."""
        return self._control("retryFailedCampaign", campaign_id)

    # -- suppressions --------------------------------------------------------------------

    def list_suppressions(self, *, cursor: int | None = None,
                          contains: str | None = None) -> SuppressionPage:
        """One page (it may be empty while ``next_cursor`` is not ``None``)."""
        response = self._call("listSuppressions", query={"cursor": cursor, "q": contains})
        return SuppressionPage.from_json(response.json())

    def get_suppression(self, email: str) -> Suppression:
        return Suppression.from_json(self._call("showSuppression",
                                                params={"email": email}).json())

    def suppress(self, email: str, reason: SuppressionReason = "manual") -> Suppression:
        response = self._call("putSuppression", params={"email": email},
                              json_body={"reason": reason})
        return Suppression.from_json(response.json())

    def unsuppress(self, email: str) -> None:
        self._call("deleteSuppression", params={"email": email})

    # -- bounces -------------------------------------------------------------------------

    def report_bounce(self, raw_message: bytes) -> list[BounceMatch]:
        """Hand over a bounce (DSN) or complaint (ARF) as the whole message it came in."""
        response = self._call("takeBounce", content=raw_message,
                              headers={"Content-Type": "message/rfc822"})
        return [BounceMatch.from_json(m) for m in response.json()["matched"]]

    # -- webhooks ------------------------------------------------------------------------

    def create_webhook(self, url: str, events: Sequence[str] | None = None) -> WebhookCreated:
        """Register an endpoint; keep the answer's ``secret`` (shown only now) to verify
        events with :func:`~postroom_client.signatures.verify_signature`."""
        body: dict[str, Any] = {"url": url}
        if events is not None:
            body["events"] = list(events)
        return WebhookCreated.from_json(self._call("createWebhook", json_body=body).json())

    def list_webhooks(self) -> list[Webhook]:
        return [Webhook.from_json(w) for w in self._call("listWebhooks").json()["webhooks"]]

    def delete_webhook(self, endpoint_id: str) -> None:
        self._call("deleteWebhook", params={"endpoint_id": endpoint_id})

    def webhook_deliveries(self, endpoint_id: str, *, cursor: int | None = None
                           ) -> DeliveryPage:
        response = self._call("listWebhookDeliveries", params={"endpoint_id": endpoint_id},
                              query={"cursor": cursor})
        return DeliveryPage.from_json(response.json())

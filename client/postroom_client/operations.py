"""Every operation of Postroom's API, as its OpenAPI document names it, and the client
method that calls it. The client builds each request from this table, and the test suite
checks the table against ``GET /api/openapi.json`` (paths, methods, body and query fields),
so the client cannot drift from the API."""

from __future__ import annotations

from dataclasses import dataclass
from urllib.parse import quote


@dataclass(frozen=True, slots=True)
class Operation:
    """One (method, path) and what the client may send to it.

    :ivar client_method: the :class:`~postroom_client.Postroom` method that calls it
    :ivar body: the JSON body's fields the client may send
    :ivar query: the query parameters the client may send
    :ivar files: the file fields of the multipart form the client may send
    """

    method: str
    path: str
    client_method: str
    body: frozenset[str] = frozenset()
    query: frozenset[str] = frozenset()
    files: frozenset[str] = frozenset()

    def url(self, **params: str) -> str:
        """The path with its ``{name}`` parts filled in, each percent-encoded."""
        return self.path.format(**{name: quote(value, safe="@") for name, value in
                                   params.items()})


MESSAGE_FIELDS = frozenset({"to", "cc", "bcc", "reply_to", "sender", "subject", "body", "html",
                            "headers", "attachments"})
CAMPAIGN_FIELDS = frozenset({"name", "subject", "body", "html", "sender", "send_at",
                             "attachments", "draft"})
CAMPAIGN = "/api/campaigns/{campaign_id}"

OPERATIONS: dict[str, Operation] = {
    "createMessage": Operation("POST", "/api/messages", "send_message", MESSAGE_FIELDS,
                               files=frozenset({"attachments"})),
    "getMessage": Operation("GET", "/api/messages/{message_id}", "get_message"),
    "requestCode": Operation("POST", "/api/otp", "request_code", frozenset({"email"})),
    "getCodeRequest": Operation("GET", "/api/otp/{request_id}", "get_code_request"),
    "verifyCode": Operation("POST", "/api/otp/{request_id}/verify", "verify_code",
                            frozenset({"code"})),
    "createCampaign": Operation("POST", "/api/campaigns", "create_campaign",
                                CAMPAIGN_FIELDS | {"recipients"},
                                files=frozenset({"file", "attachments"})),
    "listCampaigns": Operation("GET", "/api/campaigns", "list_campaigns",
                               query=frozenset({"cursor", "limit"})),
    "getCampaign": Operation("GET", CAMPAIGN, "get_campaign"),
    "listCampaignRecipients": Operation("GET", CAMPAIGN + "/recipients", "campaign_recipients",
                                        query=frozenset({"status", "cursor", "limit"})),
    "testCampaign": Operation("POST", CAMPAIGN + "/test", "test_campaign", frozenset({"to"})),
    "startCampaign": Operation("POST", CAMPAIGN + "/start", "start_campaign"),
    "pauseCampaign": Operation("POST", CAMPAIGN + "/pause", "pause_campaign"),
    "resumeCampaign": Operation("POST", CAMPAIGN + "/resume", "resume_campaign"),
    "cancelCampaign": Operation("POST", CAMPAIGN + "/cancel", "cancel_campaign"),
    "retryFailedCampaign": Operation("POST", CAMPAIGN + "/retry-failed", "retry_failed"),
    "listSuppressions": Operation("GET", "/api/suppressions", "list_suppressions",
                                  query=frozenset({"cursor", "q"})),
    "showSuppression": Operation("GET", "/api/suppressions/{email}", "get_suppression"),
    "putSuppression": Operation("PUT", "/api/suppressions/{email}", "suppress",
                                frozenset({"reason"})),
    "deleteSuppression": Operation("DELETE", "/api/suppressions/{email}", "unsuppress"),
    "takeBounce": Operation("POST", "/api/bounces", "report_bounce"),
    "createWebhook": Operation("POST", "/api/webhooks", "create_webhook",
                               frozenset({"url", "events"})),
    "listWebhooks": Operation("GET", "/api/webhooks", "list_webhooks"),
    "deleteWebhook": Operation("DELETE", "/api/webhooks/{endpoint_id}", "delete_webhook"),
    "listWebhookDeliveries": Operation("GET", "/api/webhooks/{endpoint_id}/deliveries",
                                       "webhook_deliveries", query=frozenset({"cursor"})),
}

"""A typed client for Postroom's JSON API (:class:`Postroom`), the webhook signature check
(:func:`verify_signature`), and Flask-Mail's interface over Postroom
(:mod:`postroom_client.flask`, with the ``flask`` extra)."""

from __future__ import annotations

from postroom_client.client import Postroom
from postroom_client.errors import (
    APIError,
    Conflict,
    Forbidden,
    InvalidRequest,
    NotFound,
    PostroomError,
    RateLimited,
    TransportError,
    Unauthorized,
    Unavailable,
)
from postroom_client.models import (
    Accepted,
    Attachment,
    BounceMatch,
    Campaign,
    CampaignAccepted,
    CampaignPage,
    CampaignRecipient,
    CampaignRecipientPage,
    CampaignState,
    CampaignTest,
    CodeRequest,
    DeliveryAttempt,
    DeliveryPage,
    Message,
    Recipient,
    Suppression,
    SuppressionPage,
    Webhook,
    WebhookCreated,
)
from postroom_client.signatures import SignatureError, sign, verify_signature
from postroom_client.transport import RetryPolicy

__all__ = [
    "APIError", "Accepted", "Attachment", "BounceMatch", "Campaign", "CampaignAccepted",
    "CampaignPage", "CampaignRecipient", "CampaignRecipientPage", "CampaignState",
    "CampaignTest", "CodeRequest", "Conflict", "DeliveryAttempt", "DeliveryPage", "Forbidden",
    "InvalidRequest", "Message", "NotFound", "Postroom", "PostroomError", "RateLimited",
    "Recipient", "RetryPolicy", "SignatureError", "Suppression", "SuppressionPage",
    "TransportError", "Unauthorized", "Unavailable", "Webhook", "WebhookCreated", "sign",
    "verify_signature",
]

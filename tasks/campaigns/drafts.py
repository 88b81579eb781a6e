"""A draft campaign's test send: the first recipient's message, to the operator's addresses.

The test goes out as a single API message (``[Test]`` before its subject), so it is
delivered, retried and recorded like any other message; the campaign's recipients,
counts and status are untouched. Its unsubscribe link is a stand-in, as in the
preview, so clicking it in the test copy unsubscribes no one.
"""

from __future__ import annotations

import logging
import time
from email.utils import getaddresses
from typing import Any

from email_validator import EmailNotValidError
from flask import current_app

from tasks.campaigns.store import Campaign, CampaignStore
from tasks.delivery.engine.errors import InvalidMessageError
from tasks.delivery.engine.templating import CampaignTemplates, TemplateProblem
from tasks.messages import MessageStore
from tasks.messages.tasks import deliver_message
from tasks.shared.attachments import ATTACHMENT_TTL, AttachmentRef
from tasks.shared.errors import Conflict, Invalid, NotFound
from tasks.shared.keys import key
from tasks.shared.mailbox import checked_address
from tasks.vocabulary import CampaignStatus

log = logging.getLogger(__name__)

MAX_TEST_ADDRESSES = 10
TEST_PREFIX = "[Test] "
TESTABLE = (CampaignStatus.DRAFT,)


def test_addresses(values: Any) -> list[str]:
    """The addresses a test goes to, each checked; :class:`Invalid` names the first one
    refused."""
    if not isinstance(values, list) or not values:
        raise Invalid.of("to", "a list of 1 to 10 addresses",
                         "give the test's addresses as a non-empty list")
    if len(values) > MAX_TEST_ADDRESSES:
        raise Invalid.of("to", f"at most {MAX_TEST_ADDRESSES}",
                         f"at most {MAX_TEST_ADDRESSES} test addresses")
    found: list[str] = []
    for n, value in enumerate(values):
        if not isinstance(value, str):
            raise Invalid.of(f"to.{n}", "not a string", "each address must be a string")
        try:
            address = checked_address(value).normalized
        except (EmailNotValidError, UnicodeError, ValueError) as err:
            raise Invalid.of(f"to.{n}", str(err)[:200],
                             f"{value[:80]!r} is not an email address") from None
        if address not in found:
            found.append(address)
    return found


def rendered_first(store: CampaignStore, campaign: Campaign) -> tuple[str, str | None,
                                                                       str | None]:
    """Subject, text and HTML as the first recipient gets them (stand-in unsubscribe link)."""
    records, _ = store.ledger(campaign.id).page(limit=1)
    if not records:
        raise Conflict("the campaign has no recipients to render")
    first = records[0]
    context = {**first.vars, "email": first.email,
               "unsubscribe_url": f"{campaign.base_url.rstrip('/')}/unsubscribe/preview"}
    try:
        return CampaignTemplates(campaign.subject, campaign.body, campaign.html).render(context)
    except (TemplateProblem, InvalidMessageError) as err:
        raise Invalid.of("template", str(err)[:200],
                         "the campaign cannot be rendered for its first recipient",
                         code="invalid_template") from None


def keep_attachments(store: CampaignStore, campaign: Campaign, *, until: float | None) -> None:
    """A draft's attachments are kept :data:`ATTACHMENT_TTL` past now (or past *until*, its
    send time); :class:`Conflict` names one that has already expired, before anything is
    sent."""
    ttl = ATTACHMENT_TTL + int(max(0.0, (until or 0.0) - time.time()))
    for fields in campaign.attachments:
        ref = AttachmentRef.from_fields(fields)
        if not store.redis.expire(key("attachment", ref.sha256), ttl):
            raise Conflict(f"attachment {ref.filename!r} is no longer stored; create the "
                           "campaign again with it", code="attachment_expired")


def test_recipient() -> str:
    """Where the pages' "Send test" goes unless changed: ``ADMIN_EMAIL``, else the
    default sender's address."""
    config = current_app.config
    chosen = config.get("ADMIN_EMAIL") or config.get("MAIL_DEFAULT_SENDER") or ""
    return getaddresses([str(chosen)])[0][1] if chosen else ""


def send_test(store: CampaignStore, campaign_id: str, to: list[str]) -> str:
    """Queue the test message to *to*; return its message id. :class:`Conflict` unless a
    draft."""
    campaign = store.get(campaign_id)
    if campaign is None:
        raise NotFound(f"no campaign with id {campaign_id!r}")
    if campaign.status not in TESTABLE:
        raise Conflict(f"only a draft can be sent as a test; this campaign is {campaign.status}")
    subject, text, html = rendered_first(store, campaign)
    keep_attachments(store, campaign, until=campaign.send_at)
    fields: dict[str, Any] = {"to": to, "subject": TEST_PREFIX + subject,
                              "headers": {"X-Postroom-Test": campaign_id}}
    if text is not None:
        fields["body"] = text
    if html is not None:
        fields["html"] = html
    if campaign.sender:
        fields["sender"] = campaign.sender
    if campaign.attachments:
        fields["attachments"] = list(campaign.attachments)
    config = current_app.config
    ttl = int(float(config["RETENTION_DAYS"]) * 86400 + float(config["DELIVERY_MAX_AGE"]))
    messages = MessageStore(store.redis, ttl=ttl)
    admission = messages.accept(fields, to)
    with messages.enqueueing(admission):
        deliver_message.delay(admission.message.id)
    log.info("campaign %s: test message %s queued to %d address(es)", campaign_id,
             admission.message.id, len(to))
    return admission.message.id

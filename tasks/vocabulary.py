"""Postroom's words, defined once: statuses, their groups, the campaign transitions,
kinds of mail, queues and webhook event types.

Every value is a :class:`~enum.StrEnum`, so it is stored in Redis, written to JSON and
compared with what was read back exactly as the plain string it stands for (``"sent"``):
the data and the HTTP contract do not change. Lua scripts get the values from one
generated table (:func:`lua_table`); templates from one context value
(:func:`template_context`); the pages' scripts stop polling on the ``final`` flag the
server works out from these groups.
"""

from __future__ import annotations

from enum import StrEnum
from typing import Any


class Status(StrEnum):
    """A recipient's delivery status in the ledger (every kind of mail)."""

    QUEUED = "queued"
    SENDING = "sending"
    SENT = "sent"
    DEFERRED = "deferred"
    FAILED = "failed"
    SUPPRESSED = "suppressed"
    CANCELLED = "cancelled"
    BOUNCED = "bounced"


class CodeStatus(StrEnum):
    """An OTP request's status: its email's delivery, then what became of the code."""

    QUEUED = "queued"
    SENDING = "sending"
    SENT = "sent"
    DEFERRED = "deferred"
    FAILED = "failed"
    VERIFIED = "verified"
    EXPIRED = "expired"
    LOCKED = "locked"


class CampaignStatus(StrEnum):
    """Where a campaign is in its life (:data:`CAMPAIGN_TRANSITIONS`)."""

    DRAFT = "draft"
    SCHEDULED = "scheduled"
    QUEUED = "queued"
    RUNNING = "running"
    PAUSING = "pausing"
    PAUSED = "paused"
    COMPLETED = "completed"
    CANCELLED = "cancelled"


class Kind(StrEnum):
    """The kinds of mail Postroom sends."""

    MESSAGE = "message"
    OTP = "otp"
    CAMPAIGN = "campaign"


class Queue(StrEnum):
    """The Celery queues (``celeryconfig.task_queues``)."""

    OTP = "otp"
    MAIL = "mail"
    BULK = "bulk"
    EVENTS = "events"


class EventType(StrEnum):
    """The webhook event types an endpoint can take."""

    MESSAGE_SENT = "message.sent"
    MESSAGE_DEFERRED = "message.deferred"
    MESSAGE_FAILED = "message.failed"
    MESSAGE_BOUNCED = "message.bounced"
    OTP_SENT = "otp.sent"
    OTP_FAILED = "otp.failed"
    CAMPAIGN_STARTED = "campaign.started"
    CAMPAIGN_COMPLETED = "campaign.completed"
    CAMPAIGN_CANCELLED = "campaign.cancelled"
    RECIPIENT_UNSUBSCRIBED = "recipient.unsubscribed"


class SuppressionReason(StrEnum):
    """Why an address is on the suppression list."""

    UNSUBSCRIBED = "unsubscribed"
    BOUNCED = "bounced"
    COMPLAINED = "complained"
    MANUAL = "manual"


# groups of recipient statuses
UNSETTLED = frozenset({Status.QUEUED, Status.SENDING, Status.DEFERRED})  # still to be decided
PENDING = (Status.QUEUED, Status.SENDING)  # not yet tried, or being tried now
FINAL = frozenset(Status) - UNSETTLED  # decided for good
DELIVERY_OUTCOMES = frozenset({Status.SENT, Status.DEFERRED, Status.FAILED})

# groups of code statuses
# no code works any more
CODE_CLOSED = frozenset({CodeStatus.VERIFIED, CodeStatus.EXPIRED, CodeStatus.LOCKED})
CODE_SENDABLE = frozenset({CodeStatus.QUEUED, CodeStatus.SENDING, CodeStatus.DEFERRED})
CODE_FINAL = frozenset({CodeStatus.SENT, CodeStatus.FAILED}) | CODE_CLOSED  # the page stops polling

# groups of campaign statuses
CAMPAIGN_FINAL = (CampaignStatus.COMPLETED, CampaignStatus.CANCELLED)
CAMPAIGN_LIVE = (CampaignStatus.QUEUED, CampaignStatus.RUNNING)  # batches may be sending

# the campaign state machine: action -> (statuses it starts from, status it leads to)
CAMPAIGN_TRANSITIONS: dict[str, tuple[tuple[CampaignStatus, ...], CampaignStatus]] = {
    "schedule": ((CampaignStatus.DRAFT,), CampaignStatus.SCHEDULED),
    "queue": ((CampaignStatus.DRAFT,), CampaignStatus.QUEUED),
    "begin": ((CampaignStatus.QUEUED, CampaignStatus.SCHEDULED), CampaignStatus.RUNNING),
    "complete": ((CampaignStatus.RUNNING,), CampaignStatus.COMPLETED),
    "pause": (CAMPAIGN_LIVE, CampaignStatus.PAUSING),
    "paused": ((CampaignStatus.PAUSING,), CampaignStatus.PAUSED),
    "resume": ((CampaignStatus.PAUSED, CampaignStatus.PAUSING), CampaignStatus.RUNNING),
    "cancel": ((CampaignStatus.DRAFT, CampaignStatus.SCHEDULED, CampaignStatus.QUEUED,
                CampaignStatus.RUNNING, CampaignStatus.PAUSING, CampaignStatus.PAUSED),
               CampaignStatus.CANCELLED),
    "rerun": ((CampaignStatus.COMPLETED,), CampaignStatus.RUNNING),
}
CAMPAIGN_RETRYABLE = (CampaignStatus.COMPLETED, CampaignStatus.RUNNING, CampaignStatus.PAUSED)

# what an operator may do to a campaign, by the statuses it is allowed from
CAMPAIGN_ACTIONS: dict[str, tuple[CampaignStatus, ...]] = {
    "start": CAMPAIGN_TRANSITIONS["queue"][0],
    "pause": CAMPAIGN_TRANSITIONS["pause"][0],
    "resume": CAMPAIGN_TRANSITIONS["resume"][0],
    "cancel": CAMPAIGN_TRANSITIONS["cancel"][0],
    "retry-failed": CAMPAIGN_RETRYABLE,
}

# the event each recipient status announces, by kind of mail
MESSAGE_EVENTS = {Status.SENT: EventType.MESSAGE_SENT, Status.DEFERRED: EventType.MESSAGE_DEFERRED,
                  Status.FAILED: EventType.MESSAGE_FAILED}
OTP_EVENTS = {Status.SENT: EventType.OTP_SENT, Status.SUPPRESSED: EventType.OTP_SENT,
              Status.FAILED: EventType.OTP_FAILED}


def transition(action: str) -> tuple[tuple[CampaignStatus, ...], CampaignStatus]:
    """The statuses *action* starts from and the one it leads to."""
    return CAMPAIGN_TRANSITIONS[action]


def lua_table() -> str:
    """Lua source defining ``STATUS`` (every recipient status by name) and ``CAMPAIGN``
    (every campaign status), prepended to each script when it is loaded."""
    def table(name: str, members: type[StrEnum]) -> str:
        fields = ", ".join(f'{member.name} = "{member.value}"' for member in members)
        return f"local {name} = {{{fields}}}\n"
    return table("STATUS", Status) + table("CAMPAIGN", CampaignStatus)


def template_context() -> dict[str, Any]:
    """The one context value templates read the words from (what they use of them)."""
    return {"vocabulary": {
        "status": {member.name: member.value for member in Status},
        "campaign_status": {member.name: member.value for member in CampaignStatus},
        "campaign_final": list(CAMPAIGN_FINAL),
        "campaign_actions": {action: list(allowed) for action, allowed in CAMPAIGN_ACTIONS.items()},
    }}

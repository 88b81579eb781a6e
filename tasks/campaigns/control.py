"""Start, pause, resume, cancel and retry-failed: the operator's levers, for the API and pages.

Each is one atomic status change (see :class:`~tasks.campaigns.store.CampaignStore`);
a change the current status forbids is a :class:`Conflict`, an unknown campaign
:class:`NotFound`.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager

from tasks.campaigns.drafts import keep_attachments
from tasks.campaigns.store import CampaignStore, TransitionRefused
from tasks.campaigns.tasks import cancel_unsent, queue_batches, start_campaign
from tasks.shared.errors import Conflict, NotFound
from tasks.vocabulary import CAMPAIGN_RETRYABLE, CampaignStatus, Status, transition


@contextmanager
def _transition(campaign_id: str, verb: str) -> Iterator[None]:
    try:
        yield
    except KeyError:
        raise NotFound(f"no campaign with id {campaign_id!r}") from None
    except TransitionRefused as refused:
        raise Conflict(f"cannot {verb} a campaign that is {refused.current}") from None


def start(store: CampaignStore, campaign_id: str) -> None:
    """A draft starts now, or is scheduled if its ``send_at`` is still ahead."""
    with _transition(campaign_id, "start"):
        store.require(campaign_id, (CampaignStatus.DRAFT,))  # where "schedule" and "queue" start
        campaign = store.get(campaign_id)
        if campaign is None:
            raise KeyError(campaign_id)
        keep_attachments(store, campaign, until=campaign.send_at)
        if campaign.send_at is not None and campaign.send_at > time.time():
            store.schedule(campaign_id, campaign.send_at)
            return
        store.queue_draft(campaign_id)
    start_campaign.delay(campaign_id)


def pause(store: CampaignStore, campaign_id: str) -> None:
    """No new batch starts; ``pausing`` until the batches sending stop (each after the
    message it is sending), then ``paused``."""
    with _transition(campaign_id, "pause"):
        store.apply(campaign_id, "pause")
    store.settle_pause(campaign_id)  # nothing was sending: paused at once


def resume(store: CampaignStore, campaign_id: str) -> None:
    """Carry on from where it stopped (deferred recipients are tried again now)."""
    with _transition(campaign_id, "resume"):
        store.require(campaign_id, transition("resume")[0])
        store.move_recipients(campaign_id, Status.DEFERRED, Status.QUEUED)
        store.restart_from_top(campaign_id)
        store.apply(campaign_id, "resume", stamp="started_at")
    queue_batches.delay(campaign_id)


def cancel(store: CampaignStore, campaign_id: str) -> None:
    """Stop for good; every recipient not yet sent becomes ``cancelled``."""
    with _transition(campaign_id, "cancel"):
        store.apply(campaign_id, "cancel", stamp="finished_at")
    cancel_unsent.delay(campaign_id)


def retry_failed(store: CampaignStore, campaign_id: str) -> None:
    """Queue the failed recipients again (and only them)."""
    with _transition(campaign_id, "retry"):
        store.require(campaign_id, CAMPAIGN_RETRYABLE)
        if store.ledger(campaign_id).counts()[Status.FAILED] == 0:
            raise Conflict("the campaign has no failed recipients to retry")
        store.move_recipients(campaign_id, Status.FAILED, Status.QUEUED)
        store.restart_from_top(campaign_id)
        try:  # a campaign that had finished runs again
            store.apply(campaign_id, "rerun")
        except TransitionRefused:
            pass
    if store.status(campaign_id) == CampaignStatus.RUNNING:
        queue_batches.delay(campaign_id)


ACTIONS: dict[str, Callable[[CampaignStore, str], None]] = {
    "start": start, "pause": pause, "resume": resume, "cancel": cancel,
    "retry-failed": retry_failed,
}

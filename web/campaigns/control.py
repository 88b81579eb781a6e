"""Pause, resume, cancel and retry-failed: the operator's levers, for the API and the pages.

Each is one atomic status change (see :class:`~tasks.stores.campaigns.CampaignStore`);
a change the current status forbids is a 409, an unknown campaign a 404.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager

from tasks.campaigns import cancel_unsent, dispatch_batches
from tasks.stores.campaigns import CampaignStore, TransitionRefused
from web.api.errors import APIError


@contextmanager
def _transition(campaign_id: str, verb: str) -> Iterator[None]:
    try:
        yield
    except KeyError:
        raise APIError(404, "not_found", f"no campaign with id {campaign_id!r}") from None
    except TransitionRefused as refused:
        raise APIError(409, "conflict",
                       f"cannot {verb} a campaign that is {refused.current}") from None


def pause(store: CampaignStore, campaign_id: str) -> None:
    """No new batch starts; batches in flight stop after the message they are sending."""
    with _transition(campaign_id, "pause"):
        store.transition(campaign_id, ("queued", "running"), "paused")


def resume(store: CampaignStore, campaign_id: str) -> None:
    """Carry on from where it stopped (deferred recipients are tried again now)."""
    with _transition(campaign_id, "resume"):
        store.require(campaign_id, ("paused",))
        store.move_recipients(campaign_id, "deferred", "queued")
        store.restart_from_top(campaign_id)
        store.transition(campaign_id, ("paused",), "running", stamp="started_at")
    dispatch_batches.delay(campaign_id)


def cancel(store: CampaignStore, campaign_id: str) -> None:
    """Stop for good; every recipient not yet sent becomes ``cancelled``."""
    with _transition(campaign_id, "cancel"):
        store.transition(campaign_id, ("scheduled", "queued", "running", "paused"),
                         "cancelled", stamp="finished_at")
    cancel_unsent.delay(campaign_id)


def retry_failed(store: CampaignStore, campaign_id: str) -> None:
    """Queue the failed recipients again (and only them)."""
    with _transition(campaign_id, "retry"):
        store.require(campaign_id, ("completed", "running", "paused"))
        if store.ledger(campaign_id).counts()["failed"] == 0:
            raise APIError(409, "conflict", "the campaign has no failed recipients to retry")
        store.move_recipients(campaign_id, "failed", "queued")
        store.restart_from_top(campaign_id)
        try:  # a campaign that had finished runs again
            store.transition(campaign_id, ("completed",), "running")
        except TransitionRefused:
            pass
    if store.status(campaign_id) == "running":
        dispatch_batches.delay(campaign_id)


ACTIONS: dict[str, Callable[[CampaignStore, str], None]] = {
    "pause": pause, "resume": resume, "cancel": cancel, "retry-failed": retry_failed,
}

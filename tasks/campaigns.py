"""Campaign tasks on the ``bulk`` queue: start, dispatch batches, send a batch, start due ones.

The dispatcher never enqueues a whole campaign: it reserves at most
``CAMPAIGN_BATCHES_AHEAD`` batches of ``CAMPAIGN_BATCH_SIZE`` queued recipients
(see :meth:`CampaignStore.reserve_batch`), and every batch that ends asks it for
the next. Pausing therefore stops new batches at once; a batch already running
checks the status before each message and stops after the one in flight.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Iterator

from celery import Task, shared_task

from tasks import runtime
from tasks.delivery import Envelope, retry_countdown, run_batch
from tasks.engine.compose import Attachment, Draft
from tasks.engine.errors import InvalidMessageError
from tasks.engine.session import BatchConnection
from tasks.engine.templating import CampaignTemplates
from tasks.stores import key
from tasks.stores.attachments import ATTACHMENT_TTL, AttachmentRef, AttachmentStore
from tasks.stores.campaigns import Campaign, CampaignStore, TransitionRefused
from tasks.stores.ledger import RecipientRecord
from tasks.stores.suppression import unsubscribe_token

log = logging.getLogger(__name__)

ONE_CLICK = "List-Unsubscribe=One-Click"  # RFC 8058


class CampaignMailing:
    """Drafts one campaign's message for each recipient, with its unsubscribe link."""

    def __init__(self, campaign: Campaign, *, secret_key: str, default_sender: str | None,
                 attachments: list[Attachment] | InvalidMessageError | None = None):
        self.campaign = campaign
        self.templates = CampaignTemplates(campaign.subject, campaign.body, campaign.html)
        self.secret_key = secret_key
        self.sender = campaign.sender or default_sender or ""
        self.attachments = attachments or []

    def unsubscribe_url(self, email: str) -> str:
        token = unsubscribe_token(self.secret_key, email, self.campaign.id)
        return f"{self.campaign.base_url.rstrip('/')}/unsubscribe/{token}"

    def draft_for(self, claimed: list[RecipientRecord]) -> Draft:
        """The message for one recipient (each campaign envelope holds exactly one)."""
        [recipient] = claimed
        if isinstance(self.attachments, InvalidMessageError):
            raise self.attachments  # fails this recipient with the reason
        url = self.unsubscribe_url(recipient.email)
        context = {**recipient.vars, "email": recipient.email, "unsubscribe_url": url}
        subject, text, html = self.templates.render(context)
        return Draft(sender=self.sender, to=[recipient.email], subject=subject, text=text,
                     html=html, headers={"List-Unsubscribe": f"<{url}>",
                                         "List-Unsubscribe-Post": ONE_CLICK},
                     attachments=self.attachments)


def load_attachments(campaign: Campaign) -> list[Attachment] | InvalidMessageError:
    """The campaign's attachments, once per batch; their bytes are kept for another week."""
    if not campaign.attachments:
        return []
    redis = runtime.redis_client()
    refs = [AttachmentRef.from_fields(fields) for fields in campaign.attachments]
    try:
        loaded = AttachmentStore(redis).load(refs)
    except InvalidMessageError as err:
        return err
    pipe = redis.pipeline(transaction=False)
    for ref in refs:  # a long or paused campaign keeps its attachments
        pipe.expire(key("attachment", ref.sha256), ATTACHMENT_TTL)
    pipe.execute()
    return loaded


def _store() -> CampaignStore:
    return CampaignStore(runtime.redis_client())


def _cancel_unsent(store: CampaignStore, campaign_id: str) -> int:
    return (store.move_recipients(campaign_id, "queued", "cancelled")
            + store.move_recipients(campaign_id, "deferred", "cancelled"))


@shared_task(name="postroom.campaign.start", ignore_result=True)
def start_campaign(campaign_id: str) -> None:
    """``queued|scheduled -> running``, then hand out the first batches."""
    try:
        _store().transition(campaign_id, ("queued", "scheduled"), "running", stamp="started_at")
    except (TransitionRefused, KeyError):
        log.info("campaign %s was not started: no longer queued", campaign_id)
        return
    log.info("campaign %s started", campaign_id)
    dispatch_batches(campaign_id)


@shared_task(name="postroom.campaign.dispatch", ignore_result=True)
def dispatch_batches(campaign_id: str) -> None:
    """Enqueue batches while the campaign runs and a slot is free; complete it when done."""
    store = _store()
    config = runtime.app_config()
    size = int(config["CAMPAIGN_BATCH_SIZE"])
    ahead = int(config["CAMPAIGN_BATCHES_AHEAD"])
    forget_after = float(config["CAMPAIGN_BATCH_FORGET_AFTER"])
    enqueued = 0
    while (batch := store.reserve_batch(campaign_id, size=size, ahead=ahead,
                                        forget_after=forget_after)) is not None:
        slot, first, last = batch
        send_campaign_batch.delay(campaign_id, first, last, slot)
        enqueued += 1
    if store.complete_if_done(campaign_id):
        log.info("campaign %s completed", campaign_id)
    elif enqueued:
        log.debug("campaign %s: %d batch(es) enqueued", campaign_id, enqueued)


@shared_task(name="postroom.campaign.send_batch", bind=True, max_retries=None,
             ignore_result=True)
def send_campaign_batch(self: Task, campaign_id: str, first: int, last: int, slot: str) -> None:
    """Send the campaign to its unsent recipients numbered *first*..*last*, one connection."""
    store = _store()
    campaign = store.get(campaign_id)
    if campaign is None or campaign.status != "running":
        if campaign is not None and campaign.status == "cancelled":
            _cancel_unsent(store, campaign_id)
        store.release_batch(campaign_id, slot)
        return
    config = runtime.app_config()
    settings = runtime.smtp_settings()
    policy = runtime.retry_policy()
    mailing = CampaignMailing(campaign, secret_key=str(config["SECRET_KEY"]),
                              default_sender=settings.default_sender,
                              attachments=load_attachments(campaign))
    indices = store.batch_indices(campaign_id, first, last, limit=last - first + 1)

    def envelopes() -> Iterator[Envelope]:
        for index in indices:
            if store.status(campaign_id) != "running":
                return  # paused or cancelled: stop before the next message
            yield Envelope([index], mailing.draft_for)

    token = f"{self.request.id or 'local'}:{uuid.uuid4().hex}"
    with BatchConnection(settings, gate=runtime.session_gate(bulk=True)) as connection:
        report = run_batch(store.ledger(campaign_id), envelopes(), connection,
                           runtime.composer(settings), token=token,
                           max_attempts=policy.max_attempts, pace=runtime.pacer(),
                           after_send=lambda n: store.count_sent(campaign_id, n))
    log.info("campaign %s batch %d-%d: %s (%d session(s))", campaign_id, first, last,
             report.counts, connection.sessions_opened)
    store.release_batch(campaign_id, slot)
    status = store.status(campaign_id)
    if status == "cancelled":
        _cancel_unsent(store, campaign_id)
    countdown = retry_countdown(report, policy, self.request.retries + 1)
    if not self.request.is_eager:  # eagerly, the dispatcher's own loop goes on
        dispatch_batches.delay(campaign_id)
    if countdown is not None and status == "running":
        raise self.retry(countdown=countdown)  # deferred recipients; the slot is free meanwhile


@shared_task(name="postroom.campaign.start_due", ignore_result=True)
def start_due_campaigns() -> None:
    """Run by beat: start scheduled campaigns whose time has come; nudge running ones.

    Nudging re-runs the dispatcher, which hands out batches whose task was lost
    (their slot is forgotten after ``CAMPAIGN_BATCH_FORGET_AFTER``).
    """
    store = _store()
    for campaign_id in store.due():
        try:
            store.transition(campaign_id, ("scheduled",), "running", stamp="started_at")
        except (TransitionRefused, KeyError):
            continue
        log.info("scheduled campaign %s is due; starting", campaign_id)
    for campaign_id in store.running():
        dispatch_batches.delay(campaign_id)


@shared_task(name="postroom.campaign.cancel_unsent", ignore_result=True)
def cancel_unsent(campaign_id: str) -> None:
    """Mark every recipient of a cancelled campaign that was not sent ``cancelled``."""
    store = _store()
    if store.status(campaign_id) == "cancelled":
        log.info("campaign %s cancelled: %d recipient(s) will not be sent", campaign_id,
                 _cancel_unsent(store, campaign_id))

"""Campaign tasks on the ``bulk`` queue: start, dispatch batches, send a batch, start due ones.

The dispatcher never enqueues a whole campaign: it keeps as many batches in
flight as there are bulk SMTP sessions to carry them (``CAMPAIGN_BATCHES_AHEAD``,
by default ``MAIL_MAX_CONNECTIONS`` less the one kept for codes), each at most
``CAMPAIGN_BATCH_SIZE`` queued recipients, what is left spread evenly over them in
whole SMTP sessions (``MAIL_MAX_EMAILS``), so n recipients take exactly ceil(n/N)
sessions (see :func:`batch_plan` and :meth:`CampaignStore.reserve_batch`); every
batch that ends asks for the next.
Pausing therefore stops new batches at once; a running batch looks at the status
at least twice a second and stops before its next message.

A run of a batch sends for at most ``CAMPAIGN_BATCH_SECONDS`` and then puts
the rest of its batch back at the end of the queue (same slot, same claim
token), so a thread frees up every few seconds: a batch rescued from a worker
that died waits behind one time slice at most, never behind whole batches.
Batches lost with their worker are found by the reconciler
(:mod:`tasks.reconciler.service`) by their lease alone.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

from celery import Task, shared_task
from redis.exceptions import RedisError

from tasks.bounces import SuppressionList, UnsubscribeTokens
from tasks.campaigns.store import Campaign, CampaignStore, TransitionRefused, batch_token
from tasks.delivery import runtime
from tasks.delivery.engine.compose import Attachment, Composer, Draft, addr_spec
from tasks.delivery.engine.errors import InvalidMessageError
from tasks.delivery.engine.templating import CampaignTemplates
from tasks.delivery.engine.verp import BounceRef, verp_address
from tasks.delivery.ledger import RecipientRecord
from tasks.delivery.runner import Delivery, retry_after_redis_error
from tasks.delivery.service import BatchReport, MessageFate, Outgoing, retry_countdown
from tasks.delivery.watch_list import Watchlist
from tasks.shared.attachments import ATTACHMENT_TTL, AttachmentRef, AttachmentStore
from tasks.shared.keys import key
from tasks.vocabulary import CampaignStatus, EventType, Kind, Status, SuppressionReason
from tasks.webhooks.events import campaign_event
from tasks.webhooks.tasks import emit

log = logging.getLogger(__name__)

ONE_CLICK = "List-Unsubscribe=One-Click"  # RFC 8058


class CampaignMailing:
    """Drafts one campaign's message for each recipient, with its unsubscribe link."""

    def __init__(self, campaign: Campaign, *, secret_key: str, default_sender: str | None,
                 composer: Composer, return_path: str | None = None,
                 attachments: list[Attachment] | InvalidMessageError | None = None):
        self.campaign = campaign
        self.secret_key = secret_key
        self.return_path = return_path
        self.composer = composer
        self.templates = CampaignTemplates(campaign.subject, campaign.body, campaign.html)
        self.tokens = UnsubscribeTokens(secret_key)
        self.sender = campaign.sender or default_sender or ""
        self.sender_address = addr_spec(self.sender)
        self.attachments = attachments or []
        # the same for every recipient: <campaign id.domain> (RFC 2919), the list id, for
        # filters and for spam scores (an unsubscribe header without one reads as a
        # partial list header)
        self.list_id = f"<{campaign.id}.{composer.domain_for(self.sender_address)}>"

    def unsubscribe_url(self, email: str) -> str:
        token = self.tokens.token(email, self.campaign.id)
        return f"{self.campaign.base_url.rstrip('/')}/unsubscribe/{token}"

    def draft_for(self, claimed: list[RecipientRecord]) -> Draft:
        """The message for one recipient (each campaign envelope holds exactly one)."""
        [recipient] = claimed
        if isinstance(self.attachments, InvalidMessageError):
            raise self.attachments  # fails this recipient with the reason
        url = self.unsubscribe_url(recipient.email)
        context = {**recipient.vars, "email": recipient.email, "unsubscribe_url": url}
        subject, text, html = self.templates.render(context)
        message_id = self.composer.message_id_for(f"{self.campaign.id}.{recipient.index}",
                                                  self.sender_address)
        return Draft(sender=self.sender, to=[recipient.email], subject=subject, text=text,
                     html=html, headers={"List-Id": self.list_id,  # RFC 2919
                                         "List-Unsubscribe": f"<{url}>",
                                         "List-Unsubscribe-Post": ONE_CLICK},
                     attachments=self.attachments, message_id=message_id,
                     return_path=self.bounce_address(recipient.index))

    def bounce_address(self, index: int) -> str | None:
        """The VERP envelope sender for recipient *index* (``MAIL_RETURN_PATH``)."""
        if not self.return_path:
            return None
        return verp_address(self.return_path, self.secret_key,
                            BounceRef(Kind.CAMPAIGN, self.campaign.id, index))


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


def announce(store: CampaignStore, campaign_id: str, event_type: EventType) -> None:
    """``campaign.started|completed|cancelled`` with the campaign's counts, to webhooks."""
    emit(store.redis, [campaign_event(event_type, campaign_id,
                                      store.ledger(campaign_id).counts())])


def _cancel_unsent(store: CampaignStore, campaign_id: str) -> int:
    cancelled = (store.move_recipients(campaign_id, Status.QUEUED, Status.CANCELLED)
                 + store.move_recipients(campaign_id, Status.DEFERRED, Status.CANCELLED))
    store.keep_summary_only(campaign_id, runtime.retention_seconds())
    return cancelled


@shared_task(name="postroom.campaign.start", ignore_result=True)
def start_campaign(campaign_id: str) -> None:
    """``queued|scheduled -> running``, then hand out the first batches."""
    Watchlist(runtime.redis_client()).done(Kind.CAMPAIGN, campaign_id)
    try:
        _store().apply(campaign_id, "begin", stamp="started_at")
    except (TransitionRefused, KeyError):
        log.info("campaign %s was not started: no longer queued", campaign_id)
        return
    log.info("campaign %s started", campaign_id)
    announce(_store(), campaign_id, EventType.CAMPAIGN_STARTED)
    queue_batches(campaign_id)


MIN_BATCH = 10  # recipients: fewer per batch cost more in tasks than they gain in spread


def batch_size(queued: int, sessions: int, *, cap: int, per_session: int | None) -> int:
    """How many recipients the next batch gets: *queued* spread over *sessions* batches,
    at most *cap*, at least :data:`MIN_BATCH`.

    With ``MAIL_MAX_EMAILS`` (*per_session*) set, a batch is a whole number of full
    sessions: the sessions the queue needs are spread over the batches instead of the
    recipients, so every batch but the last is a multiple of *per_session* and a
    campaign of n recipients uses exactly ceil(n/N) SMTP sessions. *cap* is then rounded
    down to a multiple of *per_session*, but never below one session's worth.
    """
    sessions = max(1, sessions)
    if not per_session:
        return min(cap, max(MIN_BATCH, -(-queued // sessions)))
    needed = -(-queued // per_session)  # sessions the queue needs
    per_batch = max(-(-needed // sessions), -(-MIN_BATCH // per_session))
    return per_session * max(1, min(per_batch, cap // per_session))


def batch_plan(store: CampaignStore, campaign_id: str) -> tuple[int, int]:
    """``(size, ahead)``: as many batches in flight as bulk sessions, what no batch has
    yet spread evenly over them in whole SMTP sessions (:func:`batch_size`).

    Cutting the tail finer (each batch a share of what is left, smaller and smaller)
    was measured slower at 20 ms (docs/PERFORMANCE.md): each extra batch opens an SMTP
    session of its own, which costs more than the idle end it saves."""
    config = runtime.app_config()
    ahead = runtime.bulk_sessions()
    size = batch_size(store.unreserved(campaign_id), ahead,
                      cap=int(config["CAMPAIGN_BATCH_SIZE"]),
                      per_session=int(config.get("MAIL_MAX_EMAILS") or 0) or None)
    return size, ahead


@shared_task(name="postroom.campaign.dispatch", ignore_result=True)
def queue_batches(campaign_id: str) -> None:
    """Enqueue batches while the campaign runs and a slot is free; complete it when done."""
    store = _store()
    if store.settle_pause(campaign_id):  # backstop: the last batch out normally does it
        log.info("campaign %s paused", campaign_id)
    size, ahead = batch_plan(store, campaign_id)
    enqueued = 0
    while (batch := store.reserve_batch(campaign_id, size=size, ahead=ahead)) is not None:
        slot, first, last = batch
        send_campaign_batch.delay(campaign_id, first, last, slot)
        enqueued += 1
    if store.complete_if_done(campaign_id, retention=runtime.retention_seconds()):
        log.info("campaign %s completed", campaign_id)
        announce(store, campaign_id, EventType.CAMPAIGN_COMPLETED)
    elif enqueued:
        log.debug("campaign %s: %d batch(es) enqueued", campaign_id, enqueued)


class _StatusCheck:
    """Whether this run should stop: the campaign stopped running (read from Redis at most
    every *every* seconds), or the run's time slice (*slice* seconds) is over and the
    connection is between sessions (*between_sessions*), so a slice never ends a session
    short of ``MAIL_MAX_EMAILS``: the rest of the batch starts on a session of its own."""

    def __init__(self, store: CampaignStore, campaign_id: str, every: float = 0.5,
                 slice_seconds: float | None = None,
                 between_sessions: Callable[[], bool] = lambda: True,
                 ends_after_next: Callable[[], bool] = lambda: True) -> None:
        self.store = store
        self.campaign_id = campaign_id
        self.every = every
        started = time.monotonic()
        self.checked = started - every  # the first call reads the status: a pause may be new
        self.ends = None if slice_seconds is None else started + slice_seconds
        self.between_sessions = between_sessions
        self.ends_after_next = ends_after_next
        self.sliced = False

    def __call__(self) -> bool:
        now = time.monotonic()
        if self.ends is not None and now >= self.ends and self.between_sessions():
            self.sliced = True
            return True
        if now - self.checked < self.every:
            return False
        self.checked = now
        return self.store.status(self.campaign_id) != CampaignStatus.RUNNING

    def last_call(self) -> bool:
        """Whether the message about to go is this run's last: the slice is over and the
        session may end after it (*ends_after_next*). Nothing goes ahead of the next
        message then, so the session ends between transactions: it is kept for the rest
        of the batch (see :func:`_send_batch`) instead of being cut off mid-transaction."""
        if self.ends is not None and time.monotonic() >= self.ends and self.ends_after_next():
            self.sliced = True
            return True
        return False


class _SentCounter:
    """Messages handed to the server, added to the campaign's rate about once a second."""

    def __init__(self, store: CampaignStore, campaign_id: str) -> None:
        self.store = store
        self.campaign_id = campaign_id
        self.pending = 0
        self.second = int(time.time())

    def __call__(self, sent: MessageFate) -> None:
        self.pending += len(sent.recipients) if sent.message is not None else 0
        if int(time.time()) != self.second:
            self.flush()

    def flush(self) -> None:
        if self.pending:
            self.store.count_sent(self.campaign_id, self.pending)
        self.pending, self.second = 0, int(time.time())


class _UnknownUsers:
    """A relay's synchronous "no such user" (5.1.1) suppresses the address, as a bounce would."""

    def __init__(self, suppressions: SuppressionList, campaign_id: str) -> None:
        self.suppressions = suppressions
        self.campaign_id = campaign_id

    def __call__(self, sent: MessageFate) -> None:
        for record, outcome in zip(sent.recipients, sent.outcomes, strict=True):
            if (outcome.status == Status.FAILED and outcome.smtp_code == 550
                    and (outcome.error or "").startswith("5.1.1")):
                self.suppressions.add(record.email, SuppressionReason.BOUNCED,
                                      campaign_id=self.campaign_id)


@shared_task(name="postroom.campaign.send_batch", bind=True, max_retries=None,
             ignore_result=False)
def send_campaign_batch(self: Task, campaign_id: str, first: int, last: int,
                        slot: str) -> dict[str, int] | None:
    """Send the campaign to its unsent recipients numbered *first*..*last*, one connection;
    the result (Flower shows it) is what this run did: counts by outcome, no addresses."""
    store = _store()
    campaign = store.get(campaign_id)
    if campaign is None or campaign.status != CampaignStatus.RUNNING:
        if campaign is not None and campaign.status == CampaignStatus.CANCELLED:
            _cancel_unsent(store, campaign_id)
        store.release_batch(campaign_id, slot)
        store.settle_pause(campaign_id)
        return None
    try:
        report, sliced = _send_batch(self, store, campaign, first, last, slot)
    except RedisError as err:  # Redis went away mid-batch: what was claimed comes back
        raise retry_after_redis_error(self, f"campaign {campaign_id} batch {first}-{last}",
                                      err, runtime.retry_policy(), log) from err
    if report.fenced or report.lease_busy:
        return report.summary()  # another run of this batch is in charge of it and its slot
    if sliced and not self.request.is_eager and store.status(campaign_id) == CampaignStatus.RUNNING:
        store.mark_queued(campaign_id, slot, first, last)
        send_campaign_batch.delay(campaign_id, first, last, slot)  # the rest, after the queue
        return report.summary()
    store.release_batch(campaign_id, slot)
    if store.settle_pause(campaign_id):  # the last batch out of a pausing campaign
        log.info("campaign %s paused", campaign_id)
    status = store.status(campaign_id)
    if status == CampaignStatus.CANCELLED:
        _cancel_unsent(store, campaign_id)
    if not self.request.is_eager:  # eagerly, the dispatcher's own loop goes on
        queue_batches(campaign_id)
    countdown = retry_countdown(report)
    if countdown is not None and status == CampaignStatus.RUNNING:
        raise self.retry(countdown=countdown)  # deferred recipients; the slot is free meanwhile
    return report.summary()


def _send_batch(task: Task, store: CampaignStore, campaign: Campaign, first: int, last: int,
                slot: str) -> tuple[BatchReport, bool]:
    """One run of the batch; its report, and whether it stopped because its slice was over."""
    settings = runtime.smtp_settings()
    composer = runtime.composer(settings)
    mailing = CampaignMailing(campaign, secret_key=str(runtime.app_config()["SECRET_KEY"]),
                              default_sender=settings.default_sender, composer=composer,
                              return_path=settings.return_path,
                              attachments=load_attachments(campaign))
    indices = store.batch_indices(campaign.id, first, last, limit=last - first + 1)
    counter = _SentCounter(store, campaign.id)
    unknown_users = _UnknownUsers(SuppressionList(store.redis), campaign.id)
    # every reason stops a campaign; without MAIL_MAX_EMAILS a batch starts on a session
    # an earlier batch (or the run before this one's time slice ended) left open in this
    # process, and leaves its own there; with it, every batch is whole sessions of its
    # own (exactly ceil(n/N))
    delivery = Delivery(task, Kind.CAMPAIGN, campaign.id, store.ledger(campaign.id),
                        created_at=campaign.started_at or campaign.created_at,
                        settings=settings, token=batch_token(campaign.id, slot),
                        observers=[counter, unknown_users], bulk=True)
    connection = delivery.connection
    check = _StatusCheck(store, campaign.id, slice_seconds=float(
        runtime.app_config()["CAMPAIGN_BATCH_SECONDS"]),
        between_sessions=connection.between_sessions,
        ends_after_next=connection.ends_after_next)
    report = delivery.run((Outgoing([index], mailing.draft_for) for index in indices),
                          composer, f"campaign {campaign.id} batch {first}-{last}",
                          should_stop=check, last_call=check.last_call,
                          note=lambda: "; its time slice is over" if check.sliced else "",
                          logger=log, retry_on_redis_error=False)
    counter.flush()
    return report, check.sliced


@shared_task(name="postroom.campaign.start_due", ignore_result=True)
def start_due_campaigns() -> None:
    """Run by beat: start scheduled campaigns whose time has come."""
    store = _store()
    for campaign_id in store.due():
        try:
            # "begin", from scheduled only: a due campaign is one that was scheduled
            store.transition(campaign_id, (CampaignStatus.SCHEDULED,), CampaignStatus.RUNNING,
                             stamp="started_at")
        except (TransitionRefused, KeyError):
            continue
        log.info("scheduled campaign %s is due; starting", campaign_id)
        announce(store, campaign_id, EventType.CAMPAIGN_STARTED)
        queue_batches.delay(campaign_id)


@shared_task(name="postroom.campaign.cancel_unsent", ignore_result=True)
def cancel_unsent(campaign_id: str) -> None:
    """Mark every recipient of a cancelled campaign that was not sent ``cancelled``."""
    store = _store()
    if store.status(campaign_id) == CampaignStatus.CANCELLED:
        log.info("campaign %s cancelled: %d recipient(s) will not be sent", campaign_id,
                 _cancel_unsent(store, campaign_id))
        announce(store, campaign_id, EventType.CAMPAIGN_CANCELLED)

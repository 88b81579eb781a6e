"""What a delivery task needs from the Flask app it runs in: SMTP settings, policy,
sessions, observers (and Redis and the settings, from :mod:`tasks.shared.context`).

Tasks run inside ``app.app_context()`` (see ``web.celery``); this module and
:mod:`tasks.shared.context` are where they read the app, so the engine and the
stores never do.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Sequence

from flask import current_app

from tasks.delivery.counters import DeliveryMetrics
from tasks.delivery.email_dispatched import DispatchSignal
from tasks.delivery.engine.compose import Composer
from tasks.delivery.engine.pool import SessionPool
from tasks.delivery.engine.session import SessionGate, SMTPSettings
from tasks.delivery.observers import DeliveryObservers, Observer
from tasks.delivery.pacing import RelayPacer
from tasks.delivery.relay_state import RelayBoard
from tasks.delivery.service import RetryPolicy
from tasks.delivery.throttle import SessionSlots
from tasks.shared.context import app_config as app_config
from tasks.shared.context import redis_client as redis_client
from tasks.webhooks.events import DeliveryEvents
from tasks.webhooks.tasks import emit
from tasks.workers.heartbeats import BULK_QUEUE, advertised_sessions

DEFAULT_BULK_SESSIONS = 32  # campaign batches in flight when no bulk worker has reported
SESSION_POOL = "postroom.session_pool"  # the app's extension holding it
_POOL_LOCK = threading.Lock()


def smtp_settings() -> SMTPSettings:
    relays = RelayBoard.from_config(redis_client(), current_app.config)
    return SMTPSettings.from_config(current_app.config, relay_state=relays,
                                    pacer=relay_pacer())


def composer(settings: SMTPSettings) -> Composer:
    return Composer(message_id_domain=settings.message_id_domain,
                    ascii_attachments=settings.ascii_attachments)


def retry_policy() -> RetryPolicy:
    config = current_app.config
    return RetryPolicy(max_attempts=int(config["DELIVERY_MAX_ATTEMPTS"]),
                       base=float(config["DELIVERY_BACKOFF_BASE"]),
                       cap=float(config["DELIVERY_BACKOFF_CAP"]),
                       max_age=float(config["DELIVERY_MAX_AGE"]))


def relay_pacer() -> RelayPacer:
    """Each relay's shared send rate: ``MAIL_RATE_LIMIT`` transactions a second across
    every worker at most, lowered when a relay throttles (unlimited until then when
    ``MAIL_RATE_LIMIT`` is unset). The engine paces each ``MAIL FROM`` with it. One per
    process and ceiling, shared by its threads, so a relay with no limit costs a Redis
    call at most once a second, not once a message."""
    per_second = current_app.config.get("MAIL_RATE_LIMIT")
    ceiling = float(per_second) if per_second else None
    with _POOL_LOCK:  # one per process: its once-a-second look at an unlimited relay holds
        pacers = current_app.extensions.setdefault("postroom.relay_pacers", {})
        pacer: RelayPacer | None = pacers.get(ceiling)
        if pacer is None:
            pacer = pacers[ceiling] = RelayPacer(redis_client(), ceiling)
    return pacer


def session_gate(*, bulk: bool = False) -> SessionGate | None:
    """The ``BatchConnection(gate=...)`` that holds ``MAIL_MAX_CONNECTIONS`` across every
    worker, or ``None`` when unlimited. A batch waits up to four times ``MAIL_TIMEOUT``
    for a free session, then defers what is left. *bulk* batches leave one session
    free (when the limit allows) so one-time codes never wait for them."""
    limit = current_app.config.get("MAIL_MAX_CONNECTIONS")
    if not limit:
        return None
    wait = 4 * float(current_app.config["MAIL_TIMEOUT"])
    headroom = 1 if bulk and int(limit) > 1 else 0
    return SessionSlots(redis_client(), int(limit), headroom=headroom, wait_timeout=wait)


def session_pool() -> SessionPool | None:
    """This process's SMTP sessions kept open between single messages and codes, or
    ``None`` when ``MAIL_SESSION_IDLE`` is 0. A kept session is closed after
    ``MAIL_SESSION_IDLE`` seconds without a message, and at once, giving its slot
    back, when some worker waits for a ``MAIL_MAX_CONNECTIONS`` slot."""
    idle = float(current_app.config.get("MAIL_SESSION_IDLE") or 0)
    if idle <= 0:
        return None
    extensions = current_app.extensions
    with _POOL_LOCK:
        pool: SessionPool | None = extensions.get(SESSION_POOL)
        if pool is None:
            gate = session_gate()
            waiting = gate.waiting if isinstance(gate, SessionSlots) else None
            pool = extensions[SESSION_POOL] = SessionPool(idle, waiting=waiting)
    return pool


def claim_lease() -> float:
    """Seconds a batch's claims outlive its last renewal (``CLAIM_LEASE``)."""
    return float(current_app.config["CLAIM_LEASE"])


def retention_seconds() -> int:
    """How long a finished delivery's per-recipient records are kept."""
    return int(float(current_app.config["RETENTION_DAYS"]) * 86400)


def bulk_sessions() -> int:
    """How many campaign batches to keep in flight: one per bulk SMTP session.

    ``CAMPAIGN_BATCHES_AHEAD`` when set; otherwise the sessions the live workers
    consuming ``bulk`` advertise in their heartbeats (threads x processes, summed
    over hosts), at most ``MAIL_MAX_CONNECTIONS - 1`` when that is set; with no
    bulk worker reporting, ``MAIL_MAX_CONNECTIONS - 1`` or
    :data:`DEFAULT_BULK_SESSIONS`. Read at each dispatch, so it follows workers
    that start or stop while a campaign runs.
    """
    config = current_app.config
    if config.get("CAMPAIGN_BATCHES_AHEAD"):
        return int(config["CAMPAIGN_BATCHES_AHEAD"])
    limit = config.get("MAIL_MAX_CONNECTIONS")
    cap = max(1, int(limit) - 1) if limit else None
    advertised = advertised_sessions(redis_client(), BULK_QUEUE)
    if advertised:
        return min(advertised, cap) if cap else advertised
    return cap or DEFAULT_BULK_SESSIONS


def watch_after() -> float:
    """When an enqueued delivery that has not moved is looked at again (seconds)."""
    return 2 * float(current_app.config["RECONCILE_INTERVAL"])


def observer(kind: str, delivery_id: str, extra: Sequence[Observer] = ()) -> DeliveryObservers:
    """What ``BatchOptions(observe=...)`` calls with each message's fate: a log line per
    recipient and the shared counters, then *extra* (the task's own, in order), then
    Flask-Mail's ``email_dispatched`` signal; its ``recorded`` (``BatchOptions(recorded=...)``)
    turns each fate into webhook events with the status the ledger set. Call its
    ``close()`` when the batch is over.

    *kind* is ``otp``, ``message`` or ``campaign``; *delivery_id* the request's,
    message's or campaign's id.
    """
    app = current_app._get_current_object()  # type: ignore[attr-defined]
    events = DeliveryEvents(redis_client(), kind, delivery_id, emit)
    level = logging.getLevelName(str(current_app.config.get("DELIVERY_LOG_LEVEL") or "INFO"))
    return DeliveryObservers(kind, delivery_id, DeliveryMetrics(redis_client()),
                         [*extra, DispatchSignal(app)], recorders=[events],
                         log_level=level if isinstance(level, int) else logging.INFO)

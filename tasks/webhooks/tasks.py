"""Webhook tasks on the ``events`` queue: fan events out, POST each to its endpoint.

- :func:`emit` appends events to the outbox (one pipeline) and queues the
  dispatcher when none is queued; it costs nothing when no endpoint is registered.
- ``postroom.webhooks.dispatch`` takes the waiting events, keeps each event's body,
  and queues ``postroom.webhooks.deliver(endpoint_id, event_id)`` for every endpoint
  that takes its type (ids only: secrets never travel in task arguments).
- ``postroom.webhooks.deliver`` POSTs the event once, to the address checked for it
  and within ``WEBHOOK_TIMEOUT`` for the whole answer. A 2xx delivers it; 410
  disables the endpoint; anything else (or no answer) retries with backoff under the
  same event id for :data:`~tasks.webhooks.store.RETRY_FOR`, each wait capped at
  half the broker's visibility timeout.
"""

from __future__ import annotations

import logging
import random
import time
from collections.abc import Iterable

from celery import Task, shared_task
from kombu.exceptions import OperationalError
from redis import Redis
from redis.exceptions import RedisError

from tasks.shared import context
from tasks.shared.backoff import backoff as shared_backoff
from tasks.shared.backoff import within_visibility
from tasks.webhooks.client import post
from tasks.webhooks.store import RETRY_FOR, Attempt, Event, EventOutbox, WebhookEndpoints

log = logging.getLogger(__name__)

BACKOFF_BASE = 20.0  # seconds before the first retry (with jitter: 10-20 s)
BACKOFF_CAP = 3600.0  # the longest wait between two attempts
# Celery eager (tests) runs a retry at once, inside the call, so 24 hours of retries
# would never end there: eagerly, an event is tried this many times at most.
EAGER_ATTEMPTS = 3


def backoff(attempt: int, rng: random.Random | None = None) -> float:
    """Seconds to wait after failed attempt number *attempt* (1 for the first)."""
    return shared_backoff(attempt, base=BACKOFF_BASE, cap=BACKOFF_CAP, rng=rng)


def emit(redis: Redis, events: Iterable[Event]) -> None:
    """Queue *events* for every endpoint that takes them (nothing when none is registered)."""
    events = list(events)
    if not events or not WebhookEndpoints(redis).any():
        return
    outbox = EventOutbox(redis)
    if not outbox.append(events):
        return  # a dispatcher is queued and will take these too
    try:
        fan_out_events.delay()
    except OperationalError as err:  # the broker is away: the reconciler dispatches them
        outbox.fanning_out()
        log.warning("%d event(s) wait in the outbox; no dispatcher could be queued: %s",
                    len(events), err)


@shared_task(name="postroom.webhooks.dispatch", ignore_result=True)
def fan_out_events() -> None:
    """Fan the waiting events out: one delivery task per endpoint that takes each."""
    redis = context.redis_client()
    outbox = EventOutbox(redis)
    outbox.fanning_out()
    endpoints = WebhookEndpoints(redis).all()
    while events := outbox.take():
        for event in events:
            takers = [endpoint.id for endpoint in endpoints if endpoint.takes(event.type)]
            if not takers:
                continue
            outbox.keep(event)
            for endpoint_id in takers:
                deliver_event.delay(endpoint_id, event.id)


@shared_task(name="postroom.webhooks.deliver", bind=True, max_retries=None,
             ignore_result=True)
def deliver_event(self: Task, endpoint_id: str, event_id: str) -> None:
    """POST event *event_id* to endpoint *endpoint_id*; retry until it is taken or too old."""
    redis = context.redis_client()
    endpoints = WebhookEndpoints(redis)
    try:
        endpoint = endpoints.get(endpoint_id)
        event = EventOutbox(redis).get(event_id)
    except RedisError as err:
        if self.request.is_eager and self.request.retries + 1 >= EAGER_ATTEMPTS:
            raise
        log.warning("webhook delivery of event %s waits for Redis: %s", event_id, err)
        raise self.retry(countdown=backoff(self.request.retries + 1), exc=err) from err
    if endpoint is None or endpoint.disabled_at is not None or event is None:
        log.info("event %s not sent to webhook %s: the endpoint is gone or disabled, or "
                 "the event expired", event_id, endpoint_id)
        return
    attempt = self.request.retries + 1
    config = context.app_config()
    answer = post(endpoint.url, event.body(), event_type=event.type, secret=endpoint.secret,
                  allow_private=bool(config["WEBHOOK_ALLOW_PRIVATE"]),
                  timeout=float(config["WEBHOOK_TIMEOUT"]))
    endpoints.log(endpoint_id, Attempt(event.id, event.type, attempt, time.time(),
                                       answer.status_code, answer.error))
    if answer.delivered:
        log.info("event %s %s delivered to webhook %s (attempt %d, %s)", event.type, event.id,
                 endpoint_id, attempt, answer.status_code)
        return
    if answer.gone:
        endpoints.disable(endpoint_id)
        log.warning("webhook %s answered 410 Gone: disabled", endpoint_id)
        return
    left = event.created_at + RETRY_FOR - time.time()
    if left <= 0 or (self.request.is_eager and attempt >= EAGER_ATTEMPTS):
        log.warning("event %s %s not delivered to webhook %s after %d attempt(s): %s",
                    event.type, event.id, endpoint_id, attempt,
                    answer.error or answer.status_code)
        return
    countdown = within_visibility(min(backoff(attempt), left))
    log.info("event %s %s to webhook %s: attempt %d got %s; retrying in %.0f s", event.type,
             event.id, endpoint_id, attempt, answer.error or answer.status_code, countdown)
    raise self.retry(countdown=countdown)

"""Single messages accepted by the API: what to send, and to whom."""

from __future__ import annotations

import hashlib
import json
import logging
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

from redis import Redis, RedisError
from redis.client import Pipeline

from tasks import vocabulary
from tasks.delivery.ledger import DeliveryLedger, RecipientRecord
from tasks.delivery.watch_list import WATCH_AFTER, WATCH_KEY, Watchlist
from tasks.shared.keys import key
from tasks.shared.replication import replicated
from tasks.vocabulary import Kind, Status

log = logging.getLogger(__name__)

RECORD_TTL = 35 * 24 * 3600  # a message and its statuses: RETENTION_DAYS + DELIVERY_MAX_AGE
IDEMPOTENCY_TTL = 24 * 3600  # how long an Idempotency-Key stands for its first message

# Accept a message under an Idempotency-Key unless the key is taken: the key (marked
# pending) and the message record appear together or not at all. Returns what the key
# already holds, or false when the message was accepted.
_ADMIT = """
-- KEYS: idempotency key, message record; ARGV: key value, key TTL, record, record TTL
local held = redis.call('GET', KEYS[1])
if held then return held end
redis.call('SET', KEYS[1], ARGV[1], 'EX', ARGV[2])
redis.call('SET', KEYS[2], ARGV[3], 'EX', ARGV[4])
return false
"""
PENDING = "pending"  # the key's message is stored; its delivery task is not known to be queued


class IdempotencyConflict(Exception):
    """The Idempotency-Key was used before, for a different request."""

    def __init__(self, message_id: str) -> None:
        super().__init__("the Idempotency-Key was used with a different request")
        self.message_id = message_id


def fingerprint(fields: dict[str, Any]) -> str:
    """A digest of a request's validated fields (attachments by their digests)."""
    canonical = json.dumps(fields, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(canonical.encode()).hexdigest()


@dataclass(frozen=True, slots=True)
class StoredMessage:
    """A message as accepted: its fields (no attachment bytes) and its id."""

    id: str
    fields: dict[str, Any]
    created_at: float


PENDING_STATUSES = vocabulary.PENDING  # a recipient not yet tried, or being tried now
PARTIAL = "partial"  # a message some of whose recipients got it and some not


def message_status(counts: dict[str, int]) -> str:
    """A message's status from its recipients' counts: the one rule, for the API, the
    pages and webhooks.

    A recipient is *pending* while ``queued`` or ``sending``. While any is pending the
    message is ``queued`` (none tried yet) or ``sending``; else ``deferred`` while any
    recipient is deferred; else ``sent`` (every recipient sent or suppressed),
    ``failed`` (none) or ``partial``.
    """
    total = sum(counts.values())
    pending = sum(counts.get(status, 0) for status in PENDING_STATUSES)
    if total == 0 or pending:
        none_tried = pending == counts.get(Status.QUEUED, 0) == total
        return Status.QUEUED if none_tried else Status.SENDING
    if counts.get(Status.DEFERRED, 0):
        return Status.DEFERRED
    delivered = counts.get(Status.SENT, 0) + counts.get(Status.SUPPRESSED, 0)
    if delivered == total:
        return Status.SENT
    return Status.FAILED if delivered == 0 else PARTIAL


@dataclass(frozen=True, slots=True)
class Admission:
    """A message accepted now, or the one an Idempotency-Key already stands for."""

    message: StoredMessage
    created: bool  # False: a replay of the key's first request
    queued: bool  # its delivery task is known to be on the broker
    idempotency_name: str | None = None  # the key's Redis name, if it had one
    digest: str = ""  # the request's fingerprint, kept with the key


class MessageStore:
    """Messages by id, with a delivery ledger per message.

    A message becomes visible in one atomic step — its record, written in one
    transaction with its recipients, or after them together with its
    Idempotency-Key — and is withdrawn again if
    its delivery task cannot be queued (:meth:`enqueueing`), so a request that was
    not answered 202 leaves nothing behind for anyone to send.
    """

    def __init__(self, redis: Redis, *, ttl: int = RECORD_TTL) -> None:
        self.redis = redis
        self.ttl = ttl
        self._admit = redis.register_script(_ADMIT)

    def create_once(self, idempotency_key: str, fields: dict[str, Any],
                    recipients: list[str]) -> Admission:
        """:meth:`create`, unless *idempotency_key* already stands for a message.

        The same key with other *fields* within :data:`IDEMPOTENCY_TTL` raises
        :class:`IdempotencyConflict`. A replay whose first request never got its
        task queued comes back with ``queued=False``, to be queued now. The key
        should already be scoped to the client (e.g. hashed with its token).
        """
        digest = fingerprint(fields)
        name = key("idempotency", hashlib.sha256(idempotency_key.encode()).hexdigest())
        held = self.redis.get(name)
        if held is None:
            message = self._new(fields)
            self._queue_recipients(message.id, recipients).execute()
            held = self._admit(keys=[name, key("message", message.id)],
                               args=[f"{digest}:{message.id}:{PENDING}", IDEMPOTENCY_TTL,
                                     self._record(message), self.ttl])
            if not held:
                replicated(self.redis)  # accepted: on a replica too before the API says so
                return Admission(message, created=True, queued=False, idempotency_name=name,
                                 digest=digest)
            self._forget(message.id)  # another request took the key first
        held_digest, _, rest = _text(held).partition(":")
        held_id, _, state = rest.partition(":")
        if held_digest != digest:
            raise IdempotencyConflict(held_id)
        message = self.get(held_id) or StoredMessage(held_id, fields, time.time())
        return Admission(message, created=False, queued=state != PENDING, idempotency_name=name,
                         digest=digest)

    def accept(self, fields: dict[str, Any], recipients: list[str]) -> Admission:
        """:meth:`create`, for a request without an Idempotency-Key."""
        return Admission(self.create(fields, recipients), created=True, queued=False)

    def create(self, fields: dict[str, Any], recipients: list[str], *,
               message_id: str | None = None) -> StoredMessage:
        """Store *fields* and queue every recipient, the message record with them."""
        message = self._new(fields, message_id)
        pipe = self._queue_recipients(message.id, recipients)
        pipe.set(key("message", message.id), self._record(message), ex=self.ttl)
        pipe.execute()  # one transaction: the recipients and the record appear together
        replicated(self.redis)  # accepted: on a replica too before the API says so
        return message

    @contextmanager
    def enqueueing(self, admission: Admission) -> Iterator[None]:
        """Around publishing the message's delivery task.

        If publishing fails, a message this request created is withdrawn (when
        Redis still answers; otherwise its Idempotency-Key stays pending, so the
        client's retry queues it) and the error goes on. Once published, the key
        is marked queued, so later replays send nothing.
        """
        try:
            yield
        except Exception:
            if admission.created:
                self._withdraw(admission)
            raise
        if admission.idempotency_name is not None:
            try:
                self.redis.set(admission.idempotency_name,
                               f"{admission.digest}:{admission.message.id}",
                               xx=True, keepttl=True)
            except RedisError as err:  # the task is queued; a replay re-queues it harmlessly
                log.warning("message %s queued, its Idempotency-Key left pending: %s",
                            admission.message.id, err)

    def _withdraw(self, admission: Admission) -> None:
        names = [key("message", admission.message.id),
                 *self.ledger(admission.message.id).all_keys()]
        if admission.idempotency_name is not None:
            names.append(admission.idempotency_name)
        try:
            self.redis.unlink(*names)
            Watchlist(self.redis).done(Kind.MESSAGE, admission.message.id)
        except RedisError as err:
            log.warning("message %s could not be withdrawn after its task was not queued "
                        "(a retry with its Idempotency-Key queues it): %s",
                        admission.message.id, err)

    def _new(self, fields: dict[str, Any], message_id: str | None = None) -> StoredMessage:
        return StoredMessage(message_id or uuid.uuid4().hex, fields, time.time())

    def _record(self, message: StoredMessage) -> str:
        return json.dumps({"fields": message.fields, "created_at": message.created_at})

    def _queue_recipients(self, message_id: str, recipients: list[str]) -> Pipeline:
        """A transaction queueing every recipient, for the caller to add to and run."""
        pipe = self.redis.pipeline(transaction=True)
        self.ledger(message_id).add((RecipientRecord(index=0, email=email)
                                     for email in recipients), ttl=self.ttl, pipeline=pipe)
        # the task is a doorbell: if it never rings, the reconciler sends the message
        pipe.zadd(WATCH_KEY, {f"message:{message_id}": time.time() + WATCH_AFTER})
        return pipe

    def _forget(self, message_id: str) -> None:
        self.redis.unlink(*self.ledger(message_id).all_keys())
        Watchlist(self.redis).done(Kind.MESSAGE, message_id)

    def get(self, message_id: str) -> StoredMessage | None:
        return _stored(message_id, self.redis.get(key("message", message_id)))

    def get_with_recipients(self, message_id: str, ledger: DeliveryLedger,
                            ) -> tuple[StoredMessage | None, list[RecipientRecord]]:
        """The message and its recipients' records (*ledger*, its own), in one round trip."""
        pipe = self.redis.pipeline(transaction=False)
        pipe.get(key("message", message_id))
        pipe.hgetall(ledger.records_key)
        raw, records = pipe.execute()
        return _stored(message_id, raw), ledger.every(records)

    def ledger(self, message_id: str) -> DeliveryLedger:
        return DeliveryLedger(self.redis, f"message:{message_id}")


def _stored(message_id: str, raw: bytes | None) -> StoredMessage | None:
    if raw is None:
        return None
    data = json.loads(raw)
    return StoredMessage(message_id, data["fields"], data["created_at"])


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value

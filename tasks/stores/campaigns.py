"""Campaigns: their templates and status, the batches in flight, and their recipients.

A campaign is one Redis hash; its recipients live in a
:class:`~tasks.stores.ledger.DeliveryLedger` (``campaign:<id>``). Status changes
are Lua scripts that check the current status first, so two operators (or an
operator and a worker) can never make a forbidden transition:

    scheduled -> running           queued -> running            running -> completed
    scheduled|queued|running|paused -> cancelled                queued|running <-> paused

Batches are handed out by :meth:`CampaignStore.reserve_batch`: at most *ahead*
at a time, each the next *size* queued recipients after a cursor, so a campaign
of any size has only a few batch tasks on the broker.
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from redis import Redis

from tasks.stores import key
from tasks.stores.ledger import DeliveryLedger, RecipientRecord
from tasks.stores.suppression import SuppressionList, normalise

IMPORT_TTL = 24 * 3600  # a campaign whose import never finished disappears after a day
RATE_WINDOW = 10  # seconds over which the current rate is averaged
SETTLED = ("queued", "sending", "deferred")  # recipients still to be decided

_TRANSITION = """
-- KEYS: campaign, scheduled, running; ARGV: id, to, now, stamp field or '', from...
local status = redis.call('HGET', KEYS[1], 'status')
if not status then return {'missing', ''} end
for i = 5, #ARGV do
  if ARGV[i] == status then
    redis.call('HSET', KEYS[1], 'status', ARGV[2], 'updated_at', ARGV[3])
    if ARGV[4] == 'started_at' then redis.call('HSETNX', KEYS[1], 'started_at', ARGV[3])
    elseif ARGV[4] ~= '' then redis.call('HSET', KEYS[1], ARGV[4], ARGV[3]) end
    if ARGV[2] == 'running' then
      redis.call('SADD', KEYS[3], ARGV[1])
      redis.call('HDEL', KEYS[1], 'finished_at')
    else
      redis.call('SREM', KEYS[3], ARGV[1])
    end
    if ARGV[2] ~= 'scheduled' then redis.call('ZREM', KEYS[2], ARGV[1]) end
    return {'ok', status}
  end
end
return {'refused', status}
"""

_COMPLETE = """
-- KEYS: campaign, ledger counts, running; ARGV: id, now, unsettled statuses...
if redis.call('HGET', KEYS[1], 'status') ~= 'running' then return 0 end
for i = 3, #ARGV do
  if tonumber(redis.call('HGET', KEYS[2], ARGV[i]) or '0') > 0 then return 0 end
end
redis.call('HSET', KEYS[1], 'status', 'completed', 'updated_at', ARGV[2], 'finished_at', ARGV[2])
redis.call('SREM', KEYS[3], ARGV[1])
return 1
"""

_RESERVE = """
-- KEYS: campaign, in-flight batches, queued index
-- ARGV: now, forget slots reserved before, ahead, size, slot, TTL of the in-flight set
if redis.call('HGET', KEYS[1], 'status') ~= 'running' then return {} end
redis.call('ZREMRANGEBYSCORE', KEYS[2], '-inf', ARGV[2])
if redis.call('ZCARD', KEYS[2]) >= tonumber(ARGV[3]) then return {} end
local cursor = redis.call('HGET', KEYS[1], 'cursor') or '0'
local ids = redis.call('ZRANGEBYSCORE', KEYS[3], cursor, '+inf', 'LIMIT', 0, tonumber(ARGV[4]))
if #ids == 0 and cursor ~= '0' and redis.call('ZCARD', KEYS[2]) == 0 then
  -- nothing in flight yet some recipients behind the cursor are queued (a lost batch)
  ids = redis.call('ZRANGEBYSCORE', KEYS[3], 0, '+inf', 'LIMIT', 0, tonumber(ARGV[4]))
end
if #ids == 0 then return {} end
redis.call('HSET', KEYS[1], 'cursor', tonumber(ids[#ids]) + 1)
redis.call('ZADD', KEYS[2], ARGV[1], ARGV[5])
redis.call('EXPIRE', KEYS[2], ARGV[6])
return {ids[1], ids[#ids]}
"""


class TransitionRefused(Exception):
    """The campaign's current status forbids the change asked for."""

    def __init__(self, current: str) -> None:
        super().__init__(current)
        self.current = current


@dataclass(slots=True)
class Campaign:
    """A campaign as stored (its templates are source text)."""

    id: str
    name: str
    status: str
    subject: str
    body: str | None
    html: str | None
    sender: str | None
    total: int = 0
    created_at: float = 0.0
    send_at: float | None = None
    started_at: float | None = None
    finished_at: float | None = None
    base_url: str = ""
    report: dict[str, Any] = field(default_factory=dict)
    attachments: list[dict[str, Any]] = field(default_factory=list)  # AttachmentRef fields

    @classmethod
    def load(cls, campaign_id: str, raw: dict[bytes, bytes]) -> Campaign:
        data = {k.decode(): v.decode() for k, v in raw.items()}

        def number(name: str) -> float | None:
            return float(data[name]) if data.get(name) else None

        return cls(id=campaign_id, name=data.get("name", ""), status=data["status"],
                   subject=data.get("subject", ""), body=data.get("body"),
                   html=data.get("html"), sender=data.get("sender") or None,
                   total=int(data.get("total") or 0), created_at=number("created_at") or 0.0,
                   send_at=number("send_at"), started_at=number("started_at"),
                   finished_at=number("finished_at"), base_url=data.get("base_url", ""),
                   report=json.loads(data.get("report") or "{}"),
                   attachments=json.loads(data.get("attachments") or "[]"))


@dataclass(slots=True)
class ImportCounts:
    """What adding a page of recipients did."""

    added: int = 0
    duplicates: int = 0
    suppressed: int = 0


class CampaignStore:
    """Campaigns by id, the list of them, and the batches they have in flight."""

    def __init__(self, redis: Redis) -> None:
        self.redis = redis
        self.index_key = key("campaigns")
        self.scheduled_key = key("campaigns", "scheduled")
        self.running_key = key("campaigns", "running")

    def _key(self, campaign_id: str, *parts: str) -> str:
        return key("campaign", campaign_id, *parts)

    def ledger(self, campaign_id: str) -> DeliveryLedger:
        return DeliveryLedger(self.redis, f"campaign:{campaign_id}")

    # -- creating -----------------------------------------------------------------------------

    def begin(self, *, name: str, subject: str, body: str | None, html: str | None,
              sender: str | None, base_url: str,
              attachments: Sequence[dict[str, Any]] = ()) -> str:
        """Start importing a new campaign (not listed, expiring) and return its id."""
        campaign_id = uuid.uuid4().hex
        fields = {"name": name, "status": "importing", "subject": subject,
                  "sender": sender or "", "base_url": base_url, "created_at": time.time(),
                  "cursor": 0, "total": 0}
        if body is not None:
            fields["body"] = body
        if html is not None:
            fields["html"] = html
        if attachments:
            fields["attachments"] = json.dumps(list(attachments))
        self.redis.hset(self._key(campaign_id), mapping=fields)
        self.redis.expire(self._key(campaign_id), IMPORT_TTL)
        return campaign_id

    def add_recipients(self, campaign_id: str, recipients: Sequence[tuple[str, dict[str, Any]]],
                       *, start: int) -> tuple[int, ImportCounts]:
        """Add ``(email, vars)`` pairs numbered from *start*, each address once.

        Addresses seen earlier in this import are skipped; suppressed ones are
        recorded ``suppressed``. Returns the next free number and the counts.
        """
        counts = ImportCounts()
        seen_key = self._key(campaign_id, "seen")
        unique: dict[str, tuple[str, dict[str, Any]]] = {}
        for email, variables in recipients:
            unique.setdefault(normalise(email), (email, variables))
        names = list(unique)
        earlier = self.redis.smismember(seen_key, names) if names else []
        fresh_names = [name for name, known in zip(names, earlier, strict=True) if not known]
        fresh = [unique[name] for name in fresh_names]
        if fresh_names:
            pipe = self.redis.pipeline(transaction=False)
            pipe.sadd(seen_key, *fresh_names)
            pipe.expire(seen_key, IMPORT_TTL)
            pipe.execute()
        counts.duplicates = len(recipients) - len(fresh)
        suppressed = SuppressionList(self.redis).which([email for email, _ in fresh])
        records = [RecipientRecord(index=0, email=email, vars=variables,
                                   status="suppressed" if flag else "queued")
                   for (email, variables), flag in zip(fresh, suppressed, strict=True)]
        counts.suppressed = sum(suppressed)
        counts.added = len(records)
        ledger = self.ledger(campaign_id)
        following = ledger.add(records, start=start)
        ledger.expire(IMPORT_TTL)
        return following, counts

    def open(self, campaign_id: str, *, total: int, send_at: float | None,
             report: dict[str, Any]) -> str:
        """Finish the import: list the campaign as ``scheduled`` or ``queued``; return which."""
        status = "scheduled" if send_at is not None else "queued"
        now = time.time()
        fields: dict[str, Any] = {"status": status, "total": total, "updated_at": now,
                                  "report": json.dumps(report)}
        if send_at is not None:
            fields["send_at"] = send_at
        pipe = self.redis.pipeline(transaction=True)
        pipe.hset(self._key(campaign_id), mapping=fields)
        pipe.persist(self._key(campaign_id))
        for name in self.ledger(campaign_id).all_keys():
            pipe.persist(name)
        pipe.delete(self._key(campaign_id, "seen"))
        pipe.zadd(self.index_key, {campaign_id: now})
        if send_at is not None:
            pipe.zadd(self.scheduled_key, {campaign_id: send_at})
        pipe.execute()
        return status

    def discard(self, campaign_id: str) -> None:
        """Forget an import that failed, recipients and all."""
        names = [self._key(campaign_id), self._key(campaign_id, "seen"),
                 *self.ledger(campaign_id).all_keys()]
        self.redis.unlink(*names)

    # -- reading ------------------------------------------------------------------------------

    def get(self, campaign_id: str) -> Campaign | None:
        raw = self.redis.hgetall(self._key(campaign_id))
        if not raw or raw.get(b"status") == b"importing":
            return None
        return Campaign.load(campaign_id, raw)

    def status(self, campaign_id: str) -> str | None:
        raw = self.redis.hget(self._key(campaign_id), "status")
        return raw.decode() if raw is not None else None

    def recent(self, *, before: float | None = None, limit: int = 50) -> list[Campaign]:
        """Campaigns newest first, created before *before*."""
        top = f"({before}" if before is not None else "+inf"
        ids = self.redis.zrange(self.index_key, top, "-inf", desc=True, byscore=True,
                                offset=0, num=limit)
        found = (self.get(raw.decode()) for raw in ids)
        return [campaign for campaign in found if campaign is not None]

    def due(self, now: float | None = None) -> list[str]:
        """Scheduled campaigns whose time has come."""
        ids = self.redis.zrange(self.scheduled_key, "-inf", now or time.time(), byscore=True)
        return [raw.decode() for raw in ids]

    def running(self) -> list[str]:
        return sorted(raw.decode() for raw in self.redis.smembers(self.running_key))

    # -- changing status ----------------------------------------------------------------------

    def transition(self, campaign_id: str, allowed: Iterable[str], to: str,
                   *, stamp: str = "") -> str:
        """Move to *to* if the status is one of *allowed*; return the status it had.

        Raises :class:`TransitionRefused` (or :class:`KeyError` if there is no such
        campaign) otherwise.
        """
        outcome, current = (part.decode() for part in self.redis.eval(
            _TRANSITION, 3, self._key(campaign_id), self.scheduled_key, self.running_key,
            campaign_id, to, time.time(), stamp, *allowed))
        if outcome == "missing":
            raise KeyError(campaign_id)
        if outcome == "refused":
            raise TransitionRefused(current)
        return current

    def require(self, campaign_id: str, allowed: Iterable[str]) -> str:
        """The current status if it is one of *allowed*; else raise as :meth:`transition`."""
        current = self.status(campaign_id)
        if current is None or current == "importing":
            raise KeyError(campaign_id)
        if current not in allowed:
            raise TransitionRefused(current)
        return current

    def move_recipients(self, campaign_id: str, from_status: str, to_status: str) -> int:
        """Move every recipient in *from_status* to *to_status*, a page at a time."""
        return self.ledger(campaign_id).move(from_status, to_status)

    def restart_from_top(self, campaign_id: str) -> None:
        """Make the dispatcher look at every queued recipient again."""
        self.redis.hset(self._key(campaign_id), "cursor", 0)

    def complete_if_done(self, campaign_id: str) -> bool:
        """``running -> completed`` when no recipient is queued, sending or deferred."""
        done = self.redis.eval(_COMPLETE, 3, self._key(campaign_id),
                               self.ledger(campaign_id).counts_key, self.running_key,
                               campaign_id, time.time(), *SETTLED)
        return bool(done)

    # -- batches ------------------------------------------------------------------------------

    def reserve_batch(self, campaign_id: str, *, size: int, ahead: int,
                      forget_after: float) -> tuple[str, int, int] | None:
        """The next batch ``(slot, first, last)`` if the campaign runs and a slot is free."""
        slot = uuid.uuid4().hex[:12]
        now = time.time()
        ledger = self.ledger(campaign_id)
        reply = self.redis.eval(_RESERVE, 3, self._key(campaign_id),
                                self._key(campaign_id, "inflight"),
                                ledger.index_prefix + "queued", now, now - forget_after,
                                ahead, size, slot, int(forget_after * 2))
        if not reply:
            return None
        return slot, int(reply[0]), int(reply[1])

    def release_batch(self, campaign_id: str, slot: str) -> None:
        self.redis.zrem(self._key(campaign_id, "inflight"), slot)

    def batches_in_flight(self, campaign_id: str) -> int:
        return int(self.redis.zcard(self._key(campaign_id, "inflight")))

    def batch_indices(self, campaign_id: str, first: int, last: int, *,
                      limit: int) -> list[int]:
        """Recipients numbered *first*..*last* that are still to be sent."""
        ledger = self.ledger(campaign_id)
        found: set[int] = set()
        for status in ("queued", "deferred", "sending"):
            members = self.redis.zrange(ledger.index_prefix + status, first, last,
                                        byscore=True, offset=0, num=limit)
            found.update(int(m) for m in members)
        return sorted(found)

    # -- rate ---------------------------------------------------------------------------------

    def count_sent(self, campaign_id: str, n: int) -> None:
        """Note *n* messages handed to the server this second (for the current rate)."""
        name = self._key(campaign_id, "rate", str(int(time.time())))
        pipe = self.redis.pipeline(transaction=False)
        pipe.incrby(name, n)
        pipe.expire(name, RATE_WINDOW * 3)
        pipe.execute()

    def current_rate(self, campaign_id: str) -> float:
        """Messages per second over the last complete :data:`RATE_WINDOW` seconds."""
        now = int(time.time())
        names = [self._key(campaign_id, "rate", str(second))
                 for second in range(now - RATE_WINDOW, now)]
        return sum(int(v) for v in self.redis.mget(names) if v is not None) / RATE_WINDOW

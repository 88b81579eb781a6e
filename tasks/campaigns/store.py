"""Campaigns: their templates and status, the batches in flight, and their recipients.

A campaign is one Redis hash; its recipients live in a
:class:`~tasks.delivery.ledger.DeliveryLedger` (``campaign:<id>``). Status changes
are Lua scripts that check the current status first, so two operators (or an
operator and a worker) can never make a forbidden transition:

    draft -> queued|scheduled      scheduled -> running         queued -> running
    running -> completed           queued|running -> pausing -> paused -> running
    draft|scheduled|queued|running|pausing|paused -> cancelled

Each change is named by its action in :data:`~tasks.vocabulary.CAMPAIGN_TRANSITIONS`
(:meth:`CampaignStore.apply`).

``pausing`` lasts while a batch still holds its claim lease (is sending); the
last batch out, or the dispatcher, makes it ``paused`` (:meth:`CampaignStore.settle_pause`).

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

from tasks.bounces import SuppressionList, listed_error, normalise
from tasks.delivery.ledger import LEASE_PREFIX, DeliveryLedger, RecipientRecord, text
from tasks.delivery.watch_list import WATCH_AFTER, WATCH_KEY
from tasks.shared.keys import key
from tasks.vocabulary import UNSETTLED, CampaignStatus, Status, lua_table, transition

IMPORT_TTL = 24 * 3600  # a campaign whose import never finished disappears after a day
RATE_WINDOW = 10  # seconds over which the current rate is averaged
HISTORY_STEP = 10  # seconds per step of a campaign's history of sends
HISTORY_TTL = 400 * 24 * 3600  # the history outlives the recipients' RETENTION_DAYS
SETTLED = tuple(sorted(UNSETTLED))  # recipients still to be decided

_TRANSITION = lua_table() + """
-- KEYS: campaign, scheduled, running; ARGV: id, to, now, stamp field or '', from...
local status = redis.call('HGET', KEYS[1], 'status')
if not status then return {'missing', ''} end
for i = 5, #ARGV do
  if ARGV[i] == status then
    redis.call('HSET', KEYS[1], 'status', ARGV[2], 'updated_at', ARGV[3])
    if ARGV[4] == 'started_at' then redis.call('HSETNX', KEYS[1], 'started_at', ARGV[3])
    elseif ARGV[4] ~= '' then redis.call('HSET', KEYS[1], ARGV[4], ARGV[3]) end
    if ARGV[2] == CAMPAIGN.RUNNING or ARGV[2] == CAMPAIGN.PAUSING then
      redis.call('SADD', KEYS[3], ARGV[1])
      redis.call('HDEL', KEYS[1], 'finished_at')
    else
      redis.call('SREM', KEYS[3], ARGV[1])
    end
    if ARGV[2] ~= CAMPAIGN.SCHEDULED then redis.call('ZREM', KEYS[2], ARGV[1]) end
    return {'ok', status}
  end
end
return {'refused', status}
"""

_COMPLETE = lua_table() + """
-- KEYS: campaign, ledger counts, running; ARGV: id, now, unsettled statuses...
if redis.call('HGET', KEYS[1], 'status') ~= CAMPAIGN.RUNNING then return 0 end
for i = 3, #ARGV do
  if tonumber(redis.call('HGET', KEYS[2], ARGV[i]) or '0') > 0 then return 0 end
end
redis.call('HSET', KEYS[1], 'status', CAMPAIGN.COMPLETED, 'updated_at', ARGV[2],
           'finished_at', ARGV[2])
redis.call('SREM', KEYS[3], ARGV[1])
return 1
"""

_SETTLE_PAUSE = lua_table() + """
-- KEYS: campaign, in-flight batches, running; ARGV: id, now, lease name prefix of its batches
if redis.call('HGET', KEYS[1], 'status') ~= CAMPAIGN.PAUSING then return 0 end
for _, slot in ipairs(redis.call('ZRANGE', KEYS[2], 0, -1)) do
  if redis.call('EXISTS', ARGV[3] .. slot) == 1 then return 0 end
end
redis.call('HSET', KEYS[1], 'status', CAMPAIGN.PAUSED, 'updated_at', ARGV[2])
redis.call('SREM', KEYS[3], ARGV[1])
return 1
"""

_RESERVE = lua_table() + """
-- KEYS: campaign, in-flight batches (slot -> reserved at), batch ranges (slot -> first:last),
--       queued index
-- ARGV: now, ahead, size, slot
if redis.call('HGET', KEYS[1], 'status') ~= CAMPAIGN.RUNNING then return {} end
if redis.call('ZCARD', KEYS[2]) >= tonumber(ARGV[2]) then return {} end
local cursor = redis.call('HGET', KEYS[1], 'cursor') or '0'
local ids = redis.call('ZRANGEBYSCORE', KEYS[4], cursor, '+inf', 'LIMIT', 0, tonumber(ARGV[3]))
if #ids == 0 and cursor ~= '0' and redis.call('ZCARD', KEYS[2]) == 0 then
  -- nothing in flight yet some recipients behind the cursor are queued (given back)
  ids = redis.call('ZRANGEBYSCORE', KEYS[4], 0, '+inf', 'LIMIT', 0, tonumber(ARGV[3]))
end
if #ids == 0 then return {} end
redis.call('HSET', KEYS[1], 'cursor', tonumber(ids[#ids]) + 1)
redis.call('ZADD', KEYS[2], ARGV[1], ARGV[4])
redis.call('HSET', KEYS[3], ARGV[4], ids[1] .. ':' .. ids[#ids])
return {ids[1], ids[#ids]}
"""


def batch_token(campaign_id: str, slot: str) -> str:
    """The claim token of every run of one campaign batch."""
    return f"campaign:{campaign_id}:{slot}"


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
        reasons = SuppressionList(self.redis).reasons([email for email, _ in fresh])
        records = [RecipientRecord(index=0, email=email, vars=variables,
                                   status=Status.SUPPRESSED if why else Status.QUEUED,
                                   error=listed_error(why) if why else None)
                   for (email, variables), why in zip(fresh, reasons, strict=True)]
        counts.suppressed = sum(1 for why in reasons if why)
        counts.added = len(records)
        ledger = self.ledger(campaign_id)
        following = ledger.add(records, start=start, ttl=IMPORT_TTL)
        return following, counts

    def open(self, campaign_id: str, *, total: int, send_at: float | None,
             report: dict[str, Any], draft: bool = False) -> CampaignStatus:
        """Finish the import: list the campaign as ``draft``, ``scheduled`` or ``queued``;
        return which. A draft keeps its *send_at* for when it is started."""
        status = (CampaignStatus.DRAFT if draft else CampaignStatus.SCHEDULED
                  if send_at is not None else CampaignStatus.QUEUED)
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
        if draft:
            pass  # nothing to start until the operator says so
        elif send_at is not None:
            pipe.zadd(self.scheduled_key, {campaign_id: send_at})
        else:  # its start task is a doorbell: if it never rings, the reconciler starts it
            pipe.zadd(WATCH_KEY, {f"campaign:{campaign_id}": now + WATCH_AFTER})
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

    def count_by_status(self, page: int = 1000) -> dict[str, int]:
        """How many listed campaigns are in each status (one pipelined read per *page*)."""
        counts: dict[str, int] = {}
        for start in range(0, int(self.redis.zcard(self.index_key)), page):
            ids = self.redis.zrange(self.index_key, start, start + page - 1)
            pipe = self.redis.pipeline(transaction=False)
            for raw in ids:
                pipe.hget(self._key(raw.decode()), "status")
            for status in pipe.execute():
                if status is not None:
                    counts[status.decode()] = counts.get(status.decode(), 0) + 1
        return counts

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
        return str(current)

    def apply(self, campaign_id: str, action: str, *, stamp: str = "") -> str:
        """Make the change *action* names in :data:`~tasks.vocabulary.CAMPAIGN_TRANSITIONS`
        (raises as :meth:`transition`); return the status it had."""
        allowed, to = transition(action)
        return self.transition(campaign_id, allowed, to, stamp=stamp)

    def schedule(self, campaign_id: str, send_at: float) -> None:
        """``draft -> scheduled`` for *send_at* (raises as :meth:`transition`)."""
        self.apply(campaign_id, "schedule")
        self.redis.zadd(self.scheduled_key, {campaign_id: send_at})

    def queue_draft(self, campaign_id: str) -> None:
        """``draft -> queued`` (raises as :meth:`transition`), watched until it starts."""
        self.apply(campaign_id, "queue")
        self.redis.zadd(WATCH_KEY, {f"campaign:{campaign_id}": time.time() + WATCH_AFTER})

    def settle_pause(self, campaign_id: str) -> bool:
        """``pausing -> paused`` once no batch of the campaign holds its claim lease."""
        return bool(self.redis.eval(_SETTLE_PAUSE, 3, self._key(campaign_id),
                                    self._key(campaign_id, "inflight"), self.running_key,
                                    campaign_id, time.time(),
                                    LEASE_PREFIX + batch_token(campaign_id, "")))

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

    def complete_if_done(self, campaign_id: str, *, retention: int | None = None) -> bool:
        """``running -> completed`` when no recipient is queued, sending or deferred.

        With *retention* (seconds), the per-recipient records then expire after
        that long; the campaign and its counts stay.
        """
        done = bool(self.redis.eval(_COMPLETE, 3, self._key(campaign_id),
                                    self.ledger(campaign_id).counts_key, self.running_key,
                                    campaign_id, time.time(), *SETTLED))
        if done:
            self.keep_summary_only(campaign_id, retention)
        return done

    def keep_summary_only(self, campaign_id: str, retention: int | None) -> None:
        """A finished campaign: its batches are forgotten, its recipients expire."""
        self.redis.unlink(self._key(campaign_id, "inflight"), self._key(campaign_id, "batches"))
        if retention is not None:
            self.ledger(campaign_id).expire(retention, keep_counts=True)

    # -- batches ------------------------------------------------------------------------------

    def reserve_batch(self, campaign_id: str, *, size: int,
                      ahead: int) -> tuple[str, int, int] | None:
        """The next batch ``(slot, first, last)`` if the campaign runs and a slot is free."""
        slot = uuid.uuid4().hex[:12]
        reply = self.redis.eval(_RESERVE, 4, self._key(campaign_id),
                                self._key(campaign_id, "inflight"),
                                self._key(campaign_id, "batches"),
                                self.ledger(campaign_id).index_prefix + Status.QUEUED,
                                time.time(), ahead, size, slot)
        if not reply:
            return None
        return slot, int(reply[0]), int(reply[1])

    def unreserved(self, campaign_id: str) -> int:
        """Queued recipients no batch has been cut for yet: those after the cursor, or, when
        there are none, every queued one (the next batch goes back for those given back)."""
        queued = self.ledger(campaign_id).index_prefix + Status.QUEUED
        cursor = self.redis.hget(self._key(campaign_id), "cursor") or b"0"
        after = int(self.redis.zcount(queued, int(cursor), "+inf"))
        return after or int(self.redis.zcard(queued))

    def rescue_batch(self, campaign_id: str, first: int, last: int) -> str:
        """A batch of its own for recipients *first*..*last* (found stuck); its slot."""
        slot = uuid.uuid4().hex[:12]
        self.mark_queued(campaign_id, slot, first, last)
        return slot

    def mark_queued(self, campaign_id: str, slot: str, first: int, last: int) -> None:
        """The batch in *slot* was (re)published now."""
        pipe = self.redis.pipeline(transaction=True)
        pipe.zadd(self._key(campaign_id, "inflight"), {slot: time.time()})
        pipe.hset(self._key(campaign_id, "batches"), slot, f"{first}:{last}")
        pipe.execute()

    def release_batch(self, campaign_id: str, slot: str) -> None:
        pipe = self.redis.pipeline(transaction=True)
        pipe.zrem(self._key(campaign_id, "inflight"), slot)
        pipe.hdel(self._key(campaign_id, "batches"), slot)
        pipe.execute()

    def batches_in_flight(self, campaign_id: str) -> int:
        return int(self.redis.zcard(self._key(campaign_id, "inflight")))

    def silent_batches(self, campaign_id: str, *,
                       dispatched_before: float) -> list[tuple[str, int, int]]:
        """Batches queued before then whose run holds no lease: lost, or still waiting."""
        slots = [text(s) for s in self.redis.zrange(self._key(campaign_id, "inflight"),
                                                   "-inf", dispatched_before, byscore=True)]
        if not slots:
            return []
        ranges = self.redis.hmget(self._key(campaign_id, "batches"), slots)
        pipe = self.redis.pipeline(transaction=False)
        for slot in slots:
            pipe.exists(LEASE_PREFIX + batch_token(campaign_id, slot))
        silent = []
        for slot, span, alive in zip(slots, ranges, pipe.execute(), strict=True):
            if alive:
                continue
            if span is None:  # no range known: nothing to rerun
                self.release_batch(campaign_id, slot)
                continue
            first, _, last = text(span).partition(":")
            silent.append((slot, int(first), int(last)))
        return silent

    def batch_indices(self, campaign_id: str, first: int, last: int, *,
                      limit: int) -> list[int]:
        """Recipients numbered *first*..*last* that are still to be sent."""
        ledger = self.ledger(campaign_id)
        found: set[int] = set()
        for status in (Status.QUEUED, Status.DEFERRED, Status.SENDING):
            members = self.redis.zrange(ledger.index_prefix + status, first, last,
                                        byscore=True, offset=0, num=limit)
            found.update(int(m) for m in members)
        return sorted(found)

    # -- rate ---------------------------------------------------------------------------------

    def count_sent(self, campaign_id: str, n: int) -> None:
        """Note *n* messages handed to the server this second (for the current rate and the
        history of sends, kept in :data:`HISTORY_STEP` second steps)."""
        now = time.time()
        name = self._key(campaign_id, "rate", str(int(now)))
        history = self._key(campaign_id, "sends")
        pipe = self.redis.pipeline(transaction=False)
        pipe.incrby(name, n)
        pipe.expire(name, RATE_WINDOW * 3)
        pipe.hincrby(history, str(int(now // HISTORY_STEP * HISTORY_STEP)), n)
        pipe.expire(history, HISTORY_TTL)
        pipe.execute()

    def send_history(self, campaign_id: str, *, bars: int = 60) -> list[tuple[float, int]]:
        """``(start, messages)`` over the campaign's sending time, in at most *bars* equal
        steps (each a whole number of :data:`HISTORY_STEP` seconds), oldest first."""
        raw = self.redis.hgetall(self._key(campaign_id, "sends"))
        points = sorted((int(k), int(v)) for k, v in raw.items())
        if not points:
            return []
        first, last = points[0][0], points[-1][0]
        steps = (last - first) // HISTORY_STEP + 1
        width = HISTORY_STEP * -(-steps // bars)  # round up: never more than *bars* bars
        series: dict[int, int] = {}
        for at, count in points:
            start = first + (at - first) // width * width
            series[start] = series.get(start, 0) + count
        return [(float(start), series.get(start, 0))
                for start in range(first, last + 1, width)]

    def current_rate(self, campaign_id: str) -> float:
        """Messages per second over the last complete :data:`RATE_WINDOW` seconds."""
        now = int(time.time())
        names = [self._key(campaign_id, "rate", str(second))
                 for second in range(now - RATE_WINDOW, now)]
        return sum(int(v) for v in self.redis.mget(names) if v is not None) / RATE_WINDOW

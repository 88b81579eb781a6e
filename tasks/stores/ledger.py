"""Per-recipient delivery state of a message or campaign, moved atomically.

A delivery (a message id or a campaign id) has recipients numbered from 0.
Each recipient's record is JSON in one hash; an index per status (a sorted set
scored by recipient number) and a count per status are kept beside it. Every
transition is one Lua script, so the three never disagree and two workers can
never both hold the same recipient:

    queued/deferred --claim--> sending --finish--> sent | deferred | failed

A claim carries a token and a lease; a recipient left ``sending`` by a worker
that died can be claimed again once its lease has run out.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

from redis import Redis

from tasks.stores import key

STATUSES = ("queued", "sending", "sent", "deferred", "failed", "suppressed", "cancelled")

_FUNCTIONS = """
-- KEYS: records, counts, status-index prefix
-- A status index made after the ledger was given a TTL takes the same TTL.
local function index(status, idx)
  local name = KEYS[3] .. status
  redis.call('ZADD', name, idx, idx)
  local ttl = redis.call('PTTL', KEYS[1])
  if ttl > 0 then redis.call('PEXPIRE', name, ttl) end
end

local function claim(idx, token, now, lease_until, out)
  local raw = redis.call('HGET', KEYS[1], idx)
  if not raw then return end
  local rec = cjson.decode(raw)
  local s = rec.status
  local stale = s == 'sending' and tonumber(rec.lease_until) < now
  if s == 'queued' or s == 'deferred' or stale then
    redis.call('ZREM', KEYS[3] .. s, idx)
    redis.call('HINCRBY', KEYS[2], s, -1)
    rec.status = 'sending'
    rec.token = token
    rec.lease_until = lease_until
    rec.attempts = (rec.attempts or 0) + 1
    rec.updated_at = now
    redis.call('HSET', KEYS[1], idx, cjson.encode(rec))
    index('sending', idx)
    redis.call('HINCRBY', KEYS[2], 'sending', 1)
    table.insert(out, idx)
    table.insert(out, raw)
  elseif s == 'sending' then
    table.insert(out, idx)
    table.insert(out, 'busy:' .. tostring(rec.lease_until))
  end
end

local function finish(idx, status, code, err, token, now, max_attempts, final)
  local raw = redis.call('HGET', KEYS[1], idx)
  if not raw then return end
  local rec = cjson.decode(raw)
  if rec.status ~= 'sending' or rec.token ~= token then return end
  if status == 'deferred' and rec.attempts >= max_attempts then
    status = 'failed'
    rec.error = 'retries exhausted after ' .. rec.attempts .. ' attempts: ' .. err
  elseif err ~= '' then
    rec.error = err
  else
    rec.error = nil
  end
  if code ~= '' then rec.smtp_code = tonumber(code) end
  redis.call('ZREM', KEYS[3] .. 'sending', idx)
  redis.call('HINCRBY', KEYS[2], 'sending', -1)
  rec.status = status
  rec.token = nil
  rec.lease_until = nil
  rec.updated_at = now
  redis.call('HSET', KEYS[1], idx, cjson.encode(rec))
  index(status, idx)
  redis.call('HINCRBY', KEYS[2], status, 1)
  table.insert(final, status)
end
"""

_CLAIM = _FUNCTIONS + """
-- ARGV: token, now, lease_until, idx...
local out = {}
local now = tonumber(ARGV[2])
local lease_until = tonumber(ARGV[3])
for i = 4, #ARGV do claim(ARGV[i], ARGV[1], now, lease_until, out) end
return out
"""

_FINISH = _FUNCTIONS + """
-- ARGV: token, now, max_attempts, then (idx, status, smtp_code, error) per recipient
local final = {}
local now = tonumber(ARGV[2])
local max_attempts = tonumber(ARGV[3])
for i = 4, #ARGV, 4 do
  finish(ARGV[i], ARGV[i + 1], ARGV[i + 2], ARGV[i + 3], ARGV[1], now, max_attempts, final)
end
return final
"""

_FINISH_AND_CLAIM = _FUNCTIONS + """
-- ARGV: token, now, max_attempts, lease_until, n, then n * (idx, status, smtp_code, error),
-- then the recipients to claim next
local final, out = {}, {}
local now = tonumber(ARGV[2])
local max_attempts = tonumber(ARGV[3])
local claim_from = 6 + 4 * tonumber(ARGV[5])
for i = 6, claim_from - 1, 4 do
  finish(ARGV[i], ARGV[i + 1], ARGV[i + 2], ARGV[i + 3], ARGV[1], now, max_attempts, final)
end
local lease_until = tonumber(ARGV[4])
for i = claim_from, #ARGV do claim(ARGV[i], ARGV[1], now, lease_until, out) end
return {final, out}
"""

_MOVE = _FUNCTIONS + """
-- ARGV: from, to, now, limit
-- Move up to `limit` recipients from one status to another; return how many.
local ids = redis.call('ZRANGE', KEYS[3] .. ARGV[1], 0, tonumber(ARGV[4]) - 1)
if #ids == 0 then return 0 end
for _, idx in ipairs(ids) do
  local rec = cjson.decode(redis.call('HGET', KEYS[1], idx))
  rec.status = ARGV[2]
  rec.updated_at = tonumber(ARGV[3])
  if ARGV[2] == 'queued' then rec.attempts = 0 end
  redis.call('HSET', KEYS[1], idx, cjson.encode(rec))
  redis.call('ZREM', KEYS[3] .. ARGV[1], idx)
  index(ARGV[2], idx)
end
redis.call('HINCRBY', KEYS[2], ARGV[1], -#ids)
redis.call('HINCRBY', KEYS[2], ARGV[2], #ids)
return #ids
"""


@dataclass(slots=True)
class RecipientRecord:
    """One recipient's delivery state."""

    index: int
    email: str
    status: str = "queued"
    attempts: int = 0
    smtp_code: int | None = None
    error: str | None = None
    updated_at: float | None = None
    vars: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def load(cls, index: int, raw: bytes | str) -> RecipientRecord:
        data = json.loads(raw)
        return cls(index=index, email=data["email"], status=data["status"],
                   attempts=int(data.get("attempts") or 0), smtp_code=data.get("smtp_code"),
                   error=data.get("error"), updated_at=data.get("updated_at"),
                   vars=data.get("vars") or {})

    def dump(self) -> str:
        data: dict[str, Any] = {"email": self.email, "status": self.status,
                                "attempts": self.attempts, "updated_at": self.updated_at}
        if self.vars:
            data["vars"] = self.vars
        return json.dumps(data)

    def public(self) -> dict[str, Any]:
        """The shape the HTTP API shows."""
        shown: dict[str, Any] = {"email": self.email, "status": self.status,
                                 "attempts": self.attempts}
        if self.smtp_code is not None:
            shown["smtp_code"] = self.smtp_code
        if self.error:
            shown["error"] = self.error
        return shown


@dataclass(frozen=True, slots=True)
class ClaimResult:
    """What a claim got: records now ours, and recipients another worker holds."""

    claimed: list[RecipientRecord]
    busy_until: float | None  # the latest lease among recipients held elsewhere


class DeliveryLedger:
    """Recipient state for one delivery (message or campaign)."""

    def __init__(self, redis: Redis, delivery_id: str) -> None:
        self.redis = redis
        self.delivery_id = delivery_id
        self.records_key = key("delivery", delivery_id, "recipients")
        self.counts_key = key("delivery", delivery_id, "counts")
        self.index_prefix = key("delivery", delivery_id, "status") + ":"
        self._keys = [self.records_key, self.counts_key, self.index_prefix]
        self._claim = redis.register_script(_CLAIM)
        self._finish = redis.register_script(_FINISH)
        self._finish_and_claim = redis.register_script(_FINISH_AND_CLAIM)

    def all_keys(self) -> list[str]:
        return [self.records_key, self.counts_key, *(self.index_prefix + s for s in STATUSES)]

    def add(self, records: Iterable[RecipientRecord], *, start: int = 0) -> int:
        """Store new recipients numbered from *start*; return the next free number."""
        number = start
        pipe = self.redis.pipeline(transaction=True)
        added: dict[str, int] = {}
        now = time.time()
        for record in records:
            record.index = number
            record.updated_at = now
            pipe.hset(self.records_key, str(number), record.dump())
            pipe.zadd(self.index_prefix + record.status, {str(number): number})
            added[record.status] = added.get(record.status, 0) + 1
            number += 1
        for status, count in added.items():
            pipe.hincrby(self.counts_key, status, count)
        pipe.execute()
        return number

    def expire(self, seconds: int) -> None:
        pipe = self.redis.pipeline(transaction=True)
        for name in self.all_keys():
            pipe.expire(name, seconds)
        pipe.execute()

    def claim(self, indices: Sequence[int], token: str, lease_seconds: float) -> ClaimResult:
        """Move claimable recipients to ``sending`` under *token*."""
        now = time.time()
        reply = self._claim(self._keys, [token, now, now + lease_seconds, *map(str, indices)])
        return _claim_result(reply)

    def finish(self, token: str, outcomes: Iterable[tuple[int, str, int | None, str | None]],
               *, max_attempts: int) -> list[str]:
        """Record ``(index, status, smtp_code, error)`` for recipients this token holds.

        A deferral past *max_attempts* becomes ``failed``. Returns the statuses set,
        one per recipient changed (a recipient another worker took over is skipped).
        """
        args = _outcome_args(outcomes)
        if not args:
            return []
        reply = self._finish(self._keys, [token, time.time(), max_attempts, *args])
        return [_text(s) for s in reply]

    def finish_and_claim(self, token: str,
                         outcomes: Iterable[tuple[int, str, int | None, str | None]],
                         indices: Sequence[int], lease_seconds: float, *,
                         max_attempts: int) -> tuple[list[str], ClaimResult]:
        """:meth:`finish` one message and :meth:`claim` the next in one round trip."""
        args = _outcome_args(outcomes)
        now = time.time()
        reply = self._finish_and_claim(self._keys, [
            token, now, max_attempts, now + lease_seconds, len(args) // 4, *args,
            *map(str, indices)])
        return [_text(s) for s in reply[0]], _claim_result(reply[1])

    def move(self, from_status: str, to_status: str, *, page: int = 1000) -> int:
        """Move every recipient in *from_status* to *to_status*, a page at a time."""
        total = 0
        while True:
            moved = int(self.redis.eval(_MOVE, 3, *self._keys, from_status, to_status,
                                        time.time(), page))
            total += moved
            if moved < page:
                return total

    def counts(self) -> dict[str, int]:
        raw = self.redis.hgetall(self.counts_key)
        counts = dict.fromkeys(STATUSES, 0)
        for name, value in raw.items():
            counts[name.decode() if isinstance(name, bytes) else name] = int(value)
        return counts

    def get(self, indices: Sequence[int]) -> list[RecipientRecord]:
        if not indices:
            return []
        raws = self.redis.hmget(self.records_key, [str(i) for i in indices])
        return [RecipientRecord.load(i, raw) for i, raw in zip(indices, raws, strict=True)
                if raw is not None]

    def page(self, *, status: str | None = None, cursor: int = 0,
             limit: int = 100) -> tuple[list[RecipientRecord], int | None]:
        """Recipients from number *cursor* on (optionally of one status); and the next cursor."""
        if status is None:
            indices = list(range(cursor, cursor + limit + 1))
            records = self.get(indices)
        else:
            members = self.redis.zrange(self.index_prefix + status, cursor, "+inf",
                                        byscore=True, offset=0, num=limit + 1)
            records = self.get([int(m) for m in members])
        more = len(records) > limit
        records = records[:limit]
        return records, (records[-1].index + 1 if more and records else None)

    def iter_indices(self, status: str, *, page: int = 1000) -> Iterator[int]:
        """Recipient numbers in *status*, read a page at a time."""
        cursor = 0
        while True:
            members = self.redis.zrange(self.index_prefix + status, cursor, "+inf",
                                        byscore=True, offset=0, num=page)
            if not members:
                return
            for member in members:
                yield int(member)
            cursor = int(members[-1]) + 1


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


def _outcome_args(outcomes: Iterable[tuple[int, str, int | None, str | None]]) -> list[str]:
    args: list[str] = []
    for index, status, code, error in outcomes:
        args += [str(index), status, "" if code is None else str(code), error or ""]
    return args


def _claim_result(reply: list[Any]) -> ClaimResult:
    claimed: list[RecipientRecord] = []
    busy_until: float | None = None
    for idx, raw in zip(reply[::2], reply[1::2], strict=True):
        text = _text(raw)
        if text.startswith("busy:"):
            lease = float(text[5:])
            busy_until = lease if busy_until is None else max(busy_until, lease)
            continue
        record = RecipientRecord.load(int(idx), text)
        record.status = "sending"
        record.attempts += 1
        claimed.append(record)
    return ClaimResult(claimed, busy_until)

"""Limits shared by every worker on every host: sending rate and SMTP sessions.

``MAIL_RATE_LIMIT`` and ``MAIL_MAX_CONNECTIONS`` hold across all workers, so the
state lives in Redis and each decision is one Lua script timed by Redis's own
clock (``TIME``), never by the clocks of the hosts asking:

- :class:`SendRate` spaces messages out with GCRA (the generic cell rate
  algorithm): one key holds the theoretical arrival time of the next message;
  each caller reserves the next free slot and sleeps until it comes.
- :class:`SessionSlots` is a counting semaphore for SMTP sessions: a sorted set
  of holders scored by lease expiry. A holder renews its lease while the
  session is open; a worker that dies stops renewing, and its slot comes back
  when the lease runs out (the acquire script drops expired holders first).
  A holder that cannot renew trusts its slot for :data:`SLOT_TRUSTED` of a lease
  from its last confirmed renewal (:meth:`SessionSlots.trusted`); the session
  is closed before then, so the limit holds at the relay too.
- :class:`FailedLogins` counts failed logins per client in fixed windows (the
  ``limits`` package's counters, as Flask-Limiter keeps them for the web's throttles).
"""

from __future__ import annotations

import logging
import random
import threading
import time
import uuid

from limits import parse_many
from limits.storage import RedisStorage
from limits.strategies import FixedWindowRateLimiter
from redis import Redis, RedisError

from tasks.shared.keys import key

log = logging.getLogger(__name__)

SLOT_TRUSTED = 0.6  # of a slot's lease, from the sending of its last confirmed renewal
WANTED_FOR = 1.0  # seconds a process waiting for a session slot is remembered

_RESERVE_SEND = """
-- KEYS[1]: theoretical arrival time (microseconds); ARGV: interval_us, tolerance_us
-- Reserve the next slot; return how many microseconds to wait before using it.
redis.replicate_commands()
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local interval = tonumber(ARGV[1])
local tat = tonumber(redis.call('GET', KEYS[1]) or now)
if tat < now then tat = now end
local wait = tat - tonumber(ARGV[2]) - now
if wait < 0 then wait = 0 end
local next_tat = tat + interval
redis.call('SET', KEYS[1], string.format('%.0f', next_tat),
           'PX', math.ceil((next_tat - now) / 1000) + 1000)
return math.floor(wait)
"""

_ACQUIRE_SLOT = """
-- KEYS[1]: holders scored by lease expiry (ms); ARGV: limit, handle, lease_ms
-- Drop expired holders; take a slot if one is free. Return 1 if taken, else 0.
redis.replicate_commands()
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local lease = tonumber(ARGV[3])
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)
if redis.call('ZCARD', KEYS[1]) >= tonumber(ARGV[1]) then return 0 end
redis.call('ZADD', KEYS[1], now + lease, ARGV[2])
local last = redis.call('ZRANGE', KEYS[1], -1, -1, 'WITHSCORES')
redis.call('PEXPIREAT', KEYS[1], tonumber(last[2]) + 1000)
return 1
"""

_RENEW_SLOTS = """
-- KEYS[1]: holders; ARGV: lease_ms, handle...
-- Extend the leases of handles still held; return the handles that were lost.
redis.replicate_commands()
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local until_ms = now + tonumber(ARGV[1])
local lost = {}
for i = 2, #ARGV do
  if redis.call('ZSCORE', KEYS[1], ARGV[i]) then
    redis.call('ZADD', KEYS[1], until_ms, ARGV[i])
  else
    table.insert(lost, ARGV[i])
  end
end
if redis.call('EXISTS', KEYS[1]) == 1 then
  local last = redis.call('ZRANGE', KEYS[1], -1, -1, 'WITHSCORES')
  redis.call('PEXPIREAT', KEYS[1], tonumber(last[2]) + 1000)
end
return lost
"""

_SLOTS_IN_USE = """
-- KEYS[1]: holders; count the unexpired ones.
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
return redis.call('ZCOUNT', KEYS[1], '(' .. now, '+inf')
"""


class SendRate:
    """At most *per_second* messages a second across every process using *name*.

    :meth:`pace` blocks until the caller may send one message. Slots are reserved
    in order, so waiting callers go out evenly spaced and never faster than the
    limit; *burst* messages may go out back to back after a quiet spell.
    """

    def __init__(self, redis: Redis, per_second: float, *, burst: int = 1,
                 name: str = "send-rate") -> None:
        if per_second <= 0:
            raise ValueError(f"per_second must be greater than 0, got {per_second!r}")
        if burst < 1:
            raise ValueError(f"burst must be at least 1, got {burst!r}")
        self.redis = redis
        self.per_second = per_second
        self.burst = burst
        self.key = key("throttle", name)
        self._interval_us = max(1, round(1_000_000 / per_second))
        self._tolerance_us = self._interval_us * (burst - 1)

    def reserve(self) -> float:
        """Take the next slot; return the seconds to wait before sending in it."""
        waited = self.redis.eval(_RESERVE_SEND, 1, self.key, self._interval_us,
                                 self._tolerance_us)
        return int(waited) / 1_000_000

    def pace(self) -> None:
        """Block until one more message may go out."""
        wait = self.reserve()
        if wait > 0:
            time.sleep(wait)


class SessionSlotTimeout(TimeoutError):
    """No SMTP session slot came free in time (``MAIL_MAX_CONNECTIONS``).

    A :class:`TimeoutError`, so a batch treats it like a relay that did not
    answer: the recipients it touched are deferred and retried later.
    """


class SessionSlots:
    """At most *limit* SMTP sessions open at once across every process using *name*.

    Implements :class:`tasks.delivery.engine.session.SessionGate`. Each slot is a lease of
    *lease* seconds, renewed by a background thread while it is held, so a slot
    whose holder died comes back within *lease* seconds. A holder with *headroom*
    takes a slot only while more than *headroom* are free, leaving those for
    others (bulk mail leaves room for one-time codes and single messages).
    """

    def __init__(self, redis: Redis, limit: int, *, headroom: int = 0, lease: float = 30.0,
                 wait_timeout: float = 60.0, poll: float = 0.05,
                 name: str = "smtp-sessions") -> None:
        if limit < 1:
            raise ValueError(f"limit must be at least 1, got {limit!r}")
        if not 0 <= headroom < limit:
            raise ValueError(f"headroom must be from 0 to limit - 1, got {headroom!r}")
        if lease <= 0:
            raise ValueError(f"lease must be greater than 0, got {lease!r}")
        self.redis = redis
        self.limit = limit
        self.headroom = headroom
        self.lease = lease
        self.wait_timeout = wait_timeout
        self.poll = poll
        self.key = key("throttle", name)
        self.wanted_key = key("throttle", name, "wanted")
        self._lease_ms = max(1, round(lease * 1000))
        self._lock = threading.Lock()
        self._held: dict[str, float] = {}  # handle -> when its last confirmed renewal was sent
        self._renewer: threading.Thread | None = None

    def try_acquire(self) -> str | None:
        """Take a slot if one is free now; return its handle, or ``None``."""
        handle = uuid.uuid4().hex
        sent = time.monotonic()
        taken = self.redis.eval(_ACQUIRE_SLOT, 1, self.key, self.limit - self.headroom, handle,
                                self._lease_ms)
        if not int(taken):
            return None
        with self._lock:
            self._held[handle] = sent
            if self._renewer is None:
                self._renewer = threading.Thread(target=self._renew_while_held, daemon=True,
                                                 name="postroom-session-lease")
                self._renewer.start()
        return handle

    def acquire(self) -> str:
        """Block until a slot is free; raise :class:`SessionSlotTimeout` after *wait_timeout*."""
        deadline = time.monotonic() + self.wait_timeout
        said = 0.0
        while True:
            handle = self.try_acquire()
            if handle is not None:
                return handle
            if time.monotonic() - said > WANTED_FOR / 2:  # kept idle sessions close for it
                self.redis.set(self.wanted_key, 1, px=round(WANTED_FOR * 1000))
                said = time.monotonic()
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise SessionSlotTimeout(
                    f"{self.limit - self.headroom} of {self.limit} SMTP session slots stayed "
                    f"busy for {self.wait_timeout:g} s (MAIL_MAX_CONNECTIONS)")
            time.sleep(min(remaining, self.poll * random.uniform(0.5, 1.5)))

    def release(self, handle: str) -> None:
        """Give the slot back at once."""
        with self._lock:
            self._held.pop(handle, None)
        self.redis.zrem(self.key, handle)

    def trusted(self, handle: str) -> bool:
        """Whether the slot is surely still held: its lease was confirmed recently enough
        that it cannot have run out. A session whose slot is not trusted must close."""
        with self._lock:
            confirmed = self._held.get(handle)
        return confirmed is not None and (
            time.monotonic() < confirmed + self.lease * SLOT_TRUSTED)

    def waiting(self) -> bool:
        """Whether some process waited for a slot in the last :data:`WANTED_FOR` seconds
        (``True`` when Redis cannot tell): a session kept open between messages
        (:class:`tasks.delivery.engine.pool.SessionPool`) closes then, and gives its slot up."""
        try:
            return bool(self.redis.exists(self.wanted_key))
        except RedisError as err:
            log.warning("could not tell whether SMTP session slots are wanted: %s", err)
            return True

    def in_use(self) -> int:
        """Slots held now, by any process."""
        return sessions_open(self.redis, self.key)

    def _renew_while_held(self) -> None:
        while True:
            time.sleep(self.lease / 3)
            with self._lock:
                handles = sorted(self._held)
                if not handles:
                    self._renewer = None
                    return
            sent = time.monotonic()
            try:
                lost = self.redis.eval(_RENEW_SLOTS, 1, self.key, self._lease_ms, *handles)
            except RedisError as err:
                log.warning("could not renew %d SMTP session lease(s): %s", len(handles), err)
                continue
            with self._lock:
                gone = [h for h in map(_text, lost) if h in self._held]
                for handle in handles:
                    if handle in self._held and handle not in gone:
                        self._held[handle] = max(self._held[handle], sent)
                for handle in gone:
                    self._held[handle] = float("-inf")  # no longer ours: not trusted
            if gone:
                log.warning("%d SMTP session lease(s) ran out before renewal; the limit may "
                            "be exceeded until they close", len(gone))


RATE_LIMIT_PREFIX = key("ratelimit")  # every rate limit's counters: the web's and these


class FailedLogins:
    """Failed logins per client, within *limits* (``5/minute;30/hour``), counted in Redis
    under the web throttles' prefix, so every process sees the same counts."""

    def __init__(self, redis: Redis, limits: str, *, scope: str) -> None:
        storage = RedisStorage("redis://", connection_pool=redis.connection_pool,
                               key_prefix=RATE_LIMIT_PREFIX)
        self.limiter = FixedWindowRateLimiter(storage)
        self.items = parse_many(limits)
        self.scope = scope

    def blocked(self, client: str) -> bool:
        """Whether *client* has used up its failed logins in some window."""
        return not all(self.limiter.test(item, self.scope, client) for item in self.items)

    def failed(self, client: str) -> bool:
        """Count a failed login; whether *client* is now blocked."""
        for item in self.items:
            self.limiter.hit(item, self.scope, client)
        return self.blocked(client)


def sessions_open(redis: Redis, slots_key: str = key("throttle", "smtp-sessions")) -> int:
    """SMTP sessions holding an unexpired slot now, across every worker."""
    return int(redis.eval(_SLOTS_IN_USE, 1, slots_key))


def _text(raw: bytes | str) -> str:
    return raw.decode() if isinstance(raw, bytes) else raw

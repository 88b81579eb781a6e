"""Each relay's send rate, learned from its replies and shared by every worker.

One hash per relay, ``postroom:throttle:relay-rate:<host:port>``, holds the rate in
force (``rate``, transactions a second), the GCRA theoretical arrival time of the
next ``MAIL FROM`` (``tat``, microseconds of Redis's clock), the rate set by the
last decrease (``floor``) and when it was made (``cut``):

- a throttling reply (:func:`tasks.delivery.engine.outcome.is_throttle`) halves the rate
  (multiplicative decrease; at most once a second, however many workers saw it);
- each accepted transaction raises it by :data:`INCREASE` of the floor (additive
  increase), never above ``MAIL_RATE_LIMIT``;
- every ``MAIL FROM`` reserves a slot at the rate in force: the pacer counts what
  the relay counts. The successes a worker saw ride along with its next reservation,
  so pacing costs one Redis call per transaction, as ``MAIL_RATE_LIMIT`` did.

Without ``MAIL_RATE_LIMIT`` a relay is not limited until it first throttles: then
the rate starts at :data:`THROTTLED_START` and the state is forgotten
:data:`UNLIMITED_MEMORY` seconds after the last throttling reply. Until then a
worker looks for a state at most once a second per relay.
"""

from __future__ import annotations

import logging
import math
import threading
import time
from collections.abc import Sequence
from typing import Any

from redis import Redis, RedisError

from tasks.shared.keys import key

log = logging.getLogger(__name__)

THROTTLED_START = 1.0  # transactions/s after the first throttle with no MAIL_RATE_LIMIT
MIN_RATE = 1 / 60  # never slower than one transaction a minute
INCREASE = 0.02  # of the last decreased rate, per accepted transaction
UNLIMITED_MEMORY = 600.0  # seconds a learned rate is kept without MAIL_RATE_LIMIT
LIMITED_MEMORY = 3600.0  # seconds a rate under MAIL_RATE_LIMIT is kept after the last use
CUT_GUARD = 1.0  # seconds between two decreases
LOOK_AGAIN = 1.0  # seconds an unlimited worker trusts that a relay has no state
AHEAD_TOLERANCE_US = 5000  # a slot this close counts as free for commands sent ahead

_RESERVE = """
-- KEYS[1]: the relay's hash; ARGV: ceiling (0 = none), successes, only_now (0/1),
--   memory_ms, increase, tolerance_us (how soon counts as now)
-- Returns {wait_us, rate}: wait_us -1 when only_now and the slot is not free now
-- (nothing taken); rate '0' when the relay is not limited (nothing taken).
redis.replicate_commands()
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local ceiling = tonumber(ARGV[1])
local rate = tonumber(redis.call('HGET', KEYS[1], 'rate') or '0')
if rate == 0 then
  if ceiling == 0 then return {0, '0'} end
  rate = ceiling
end
local successes = tonumber(ARGV[2])
if successes > 0 then
  local floor = tonumber(redis.call('HGET', KEYS[1], 'floor') or rate)
  rate = rate + successes * floor * tonumber(ARGV[5])
  if ceiling > 0 and rate > ceiling then rate = ceiling end
end
local tat = tonumber(redis.call('HGET', KEYS[1], 'tat') or now)
if tat < now then tat = now end
local shown = string.format('%.6f', rate)
if ARGV[3] == '1' and tat - now > tonumber(ARGV[6]) then
  redis.call('HSET', KEYS[1], 'rate', shown)
  return {-1, shown}
end
redis.call('HSET', KEYS[1], 'rate', shown, 'tat', string.format('%.0f', tat + 1000000 / rate))
if ceiling > 0 then redis.call('PEXPIRE', KEYS[1], ARGV[4]) end
return {tat - now, shown}
"""

_THROTTLED = """
-- KEYS[1]: the relay's hash; ARGV: ceiling (0 = none), start, min, memory_ms, guard_us
-- Halve the rate (at most once per guard); the next slot is one interval away.
redis.replicate_commands()
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local rate = tonumber(redis.call('HGET', KEYS[1], 'rate') or '0')
local ceiling = tonumber(ARGV[1])
if rate == 0 then
  if ceiling > 0 then rate = ceiling / 2 else rate = tonumber(ARGV[2]) end
else
  local cut = tonumber(redis.call('HGET', KEYS[1], 'cut') or '0')
  if now - cut < tonumber(ARGV[5]) then return string.format('%.6f', rate) end
  rate = rate / 2
end
if rate < tonumber(ARGV[3]) then rate = tonumber(ARGV[3]) end
local tat = tonumber(redis.call('HGET', KEYS[1], 'tat') or now)
if tat < now + 1000000 / rate then tat = now + 1000000 / rate end
local shown = string.format('%.6f', rate)
redis.call('HSET', KEYS[1], 'rate', shown, 'floor', shown, 'cut', string.format('%.0f', now),
           'tat', string.format('%.0f', tat))
redis.call('PEXPIRE', KEYS[1], ARGV[4])
return shown
"""


def rate_key(relay: str) -> str:
    return key("throttle", "relay-rate", relay)


class RelayPacer:
    """The engine's pacer (:class:`tasks.delivery.engine.relays.Pacer`) over Redis.

    *ceiling* is ``MAIL_RATE_LIMIT`` (transactions a second across every worker),
    or ``None``: unlimited until the relay throttles.
    """

    def __init__(self, redis: Redis, ceiling: float | None) -> None:
        if ceiling is not None and ceiling <= 0:
            raise ValueError(f"ceiling must be greater than 0, got {ceiling!r}")
        self.redis = redis
        self.ceiling = ceiling
        self._successes: dict[str, int] = {}  # per relay, told with the next reservation
        self._lock = threading.Lock()  # the threads of a worker share one pacer
        self._quiet_until: dict[str, float] = {}  # unlimited: no state seen, until then

    def _memory_ms(self) -> int:
        return round(1000 * (LIMITED_MEMORY if self.ceiling else UNLIMITED_MEMORY))

    def _reserve(self, relay: str, only_now: bool) -> float | None:
        if self.ceiling is None and self._quiet_until.get(relay, 0.0) > time.monotonic():
            self._successes.pop(relay, None)
            return 0.0
        with self._lock:
            successes = self._successes.pop(relay, 0)
        try:
            reply: Any = self.redis.eval(_RESERVE, 1, rate_key(relay), self.ceiling or 0,
                                         successes, int(only_now), self._memory_ms(), INCREASE,
                                         AHEAD_TOLERANCE_US)
        except RedisError as err:
            log.warning("send rate of relay %s unknown, not pacing: %s", relay, err)
            return 0.0
        wait_us, rate = reply
        if float(rate) == 0:
            self._quiet_until[relay] = time.monotonic() + LOOK_AGAIN
        return None if int(wait_us) < 0 else int(wait_us) / 1_000_000

    def reserve(self, relay: str) -> float:
        """Take the next ``MAIL FROM`` slot on *relay*; the seconds until it comes."""
        return self._reserve(relay, False) or 0.0

    def reserve_now(self, relay: str) -> bool:
        """Take a slot only if it is free now (for commands sent ahead)."""
        return self._reserve(relay, True) is not None

    def succeeded(self, relay: str, transactions: int = 1) -> None:
        """Transactions the relay accepted (told to Redis with the next reservation)."""
        with self._lock:
            self._successes[relay] = self._successes.get(relay, 0) + transactions

    def throttled(self, relay: str) -> None:
        """The relay asked for mail more slowly: halve its rate for every worker."""
        self._quiet_until.pop(relay, None)
        self._successes.pop(relay, None)
        try:
            rate: Any = self.redis.eval(_THROTTLED, 1, rate_key(relay), self.ceiling or 0,
                                   THROTTLED_START, MIN_RATE, self._memory_ms(),
                                   round(CUT_GUARD * 1_000_000))
        except RedisError as err:
            log.warning("could not lower the send rate of relay %s: %s", relay, err)
            return
        log.warning("relay %s is throttling: send rate now %s transactions/s", relay,
                    _text(rate))


def send_rates(redis: Redis, relays: Sequence[str],
               ceiling: float | None) -> dict[str, float]:
    """The rate in force for each relay (transactions a second; ``inf`` when unlimited)."""
    pipe = redis.pipeline(transaction=False)
    for relay in relays:
        pipe.hget(rate_key(relay), "rate")
    found = pipe.execute()
    default = float(ceiling) if ceiling else math.inf
    return {relay: float(raw) if raw else default for relay, raw in zip(relays, found,
                                                                        strict=True)}


def _text(raw: bytes | str) -> str:
    return raw.decode() if isinstance(raw, bytes) else raw

"""What every worker knows about each SMTP relay: its last session and its cooldown.

DESIGN promise 11: a relay on which a session could not be opened is skipped by
every worker for ``MAIL_RELAY_COOLDOWN`` seconds, then tried again. The state is
two keys per relay, shared by all processes on all hosts:

- ``postroom:relay:<host:port>`` — a hash with the last session's ``outcome``
  (``opened`` or ``failed``), its time ``at`` and the ``error``; kept for
  :data:`STATE_TTL` after the last session.
- ``postroom:relay:<host:port>:cooldown`` — present while the relay is skipped;
  its value is the time the cooldown ends, and Redis expires it then.

A relay that refuses the credentials (535/534/454 at AUTH) opens a *breaker*:
the state's ``breaker`` field says why ("authentication refused") and the
cooldown key is set for ``MAIL_RELAY_COOLDOWN`` even with no fallback relay. When
it runs out, the first worker to look takes the cooldown key again as its probe,
so one session per cooldown tries the credentials, across all workers; a session
that opens closes the breaker.

A relay on which a session could not be opened at all (refused, silent, a 4xx
greeting, TLS) opens a breaker too (``relay down``), with or without fallback
relays: the cooldown key then lasts ``MAIL_RELAY_COOLDOWN`` when there is another
relay to move to, else ``MAIL_RELAY_PROBE_INTERVAL``, and the state's
``probe_ms`` says how long each later probe holds the turn. While every relay's
breaker is open, :meth:`RelayBoard.parked_until` tells a task to park its work
(``tasks.delivery.relay_probe``) instead of opening a connection of its own.

The state is advisory: when Redis cannot be reached every relay is tried, and a
session outcome that cannot be recorded is logged, never allowed to stop a batch.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

from redis import Redis, RedisError

from tasks.shared.keys import key

log = logging.getLogger(__name__)

STATE_TTL = 3600  # a relay's last outcome is forgotten an hour after its last session
MAX_ERROR = 300  # characters of a failure kept with the state
AUTH_REFUSED = "authentication refused"
RELAY_DOWN = "relay down"


class SessionOutcome(StrEnum):
    """How a relay's last session went (the state's ``outcome``)."""

    OPENED = "opened"
    FAILED = "failed"

_COOLING_DOWN = """
-- KEYS: n cooldown keys, then the n state keys; ARGV: cooldowns on (0/1), breaker_ms, now,
-- take the probe turn (0/1). 1 for each relay to skip. A relay whose breaker is open and
-- whose cooldown ran out is not skipped by the caller, who takes the cooldown key again
-- (the one probe) unless it only asked.
local n = #KEYS / 2
local skip = {}
for i = 1, n do
  local breaker = redis.call('HGET', KEYS[n + i], 'breaker')
  local cooling = redis.call('EXISTS', KEYS[i]) == 1
  if cooling and (ARGV[1] == '1' or (breaker and breaker ~= '')) then
    skip[i] = 1
  elseif breaker and breaker ~= '' and ARGV[4] == '1' then
    local hold = tonumber(redis.call('HGET', KEYS[n + i], 'probe_ms')) or tonumber(ARGV[2])
    redis.call('SET', KEYS[i], ARGV[3], 'PX', hold)
    skip[i] = 0
  else
    skip[i] = 0
  end
end
return skip
"""

_CLOSE_BREAKER = """
-- KEYS: state, cooldown. A session opened: an open breaker's cooldown (the probe) ends.
local breaker = redis.call('HGET', KEYS[1], 'breaker')
if breaker and breaker ~= '' then redis.call('DEL', KEYS[2]) end
return 0
"""


@dataclass(frozen=True, slots=True)
class RelayStatus:
    """One relay as /healthz and /metrics show it."""

    relay: str
    outcome: str | None  # a SessionOutcome, or None before the first session
    at: float | None
    error: str | None
    cooling_down_until: float | None
    breaker: str | None = None  # why the relay is skipped beyond a failed session

    @property
    def state(self) -> str:
        """``cooling_down``, ``down`` (last session failed), ``up``, or ``unknown``."""
        if self.cooling_down_until is not None:
            return "cooling_down"
        if self.outcome == SessionOutcome.FAILED:
            return "down"
        return "up" if self.outcome == SessionOutcome.OPENED else "unknown"

    def public(self) -> dict[str, Any]:
        return {"relay": self.relay, "state": self.state, "last_outcome": self.outcome,
                "last_at": self.at, "error": self.error,
                "cooling_down_until": self.cooling_down_until, "reason": self.breaker}


class RelayBoard:
    """The shared relay state (:class:`tasks.delivery.engine.relays.RelayState`), in Redis.

    *cooldown* is ``MAIL_RELAY_COOLDOWN`` in seconds; 0 records outcomes but
    never skips a relay that merely failed, unless *probe* (seconds between probes of
    a relay that is down, ``MAIL_RELAY_PROBE_INTERVAL``) is set.
    """

    def __init__(self, redis: Redis, cooldown: float, *, breaker: float | None = None,
                 probe: float = 0.0) -> None:
        self.redis = redis
        self.cooldown = cooldown
        self.breaker = cooldown if breaker is None else breaker  # after refused credentials
        self.probe = probe

    @classmethod
    def from_config(cls, redis: Redis, config: Mapping[str, Any]) -> RelayBoard:
        """Cooldowns apply only when there is another relay to move to."""
        fallbacks = config.get("MAIL_FALLBACK_SERVERS") or ()
        cooldown = float(config["MAIL_RELAY_COOLDOWN"])
        return cls(redis, cooldown if fallbacks else 0.0, breaker=cooldown,
                   probe=float(config.get("MAIL_RELAY_PROBE_INTERVAL") or 0.0))

    def _state_key(self, relay: str) -> str:
        return key("relay", relay)

    def _cooldown_key(self, relay: str) -> str:
        return key("relay", relay, "cooldown")

    def cooling_down(self, relays: Collection[str], *, take_turn: bool = True) -> set[str]:
        """Those of *relays* skipped for now (none when Redis cannot be reached).

        A relay due for its probe is not skipped, and the caller takes the probe turn;
        with *take_turn* false it only asks (the turn stays for whoever opens a session)."""
        names = list(relays)
        if not names or not (self.cooldown or self.breaker or self.probe):
            return set()
        try:
            skipped: Any = self.redis.eval(_COOLING_DOWN, 2 * len(names),
                                      *[self._cooldown_key(relay) for relay in names],
                                      *[self._state_key(relay) for relay in names],
                                      int(bool(self.cooldown)),
                                      max(1, round(self.breaker * 1000)),
                                      repr(time.time() + self.breaker), int(take_turn))
        except RedisError as err:
            log.warning("relay cooldowns unknown, trying every relay: %s", err)
            return set()
        return {relay for relay, flag in zip(names, skipped, strict=True) if int(flag)}

    def opened(self, relay: str) -> None:
        self._record(relay, {"outcome": SessionOutcome.OPENED, "at": time.time(), "error": "",
                             "breaker": ""}, close_breaker=True)

    def auth_refused(self, relay: str, reason: str) -> None:
        """Open the relay's breaker for :attr:`breaker` seconds (one probe after that)."""
        now = time.time()
        self._record(relay, {"outcome": SessionOutcome.FAILED, "at": now,
                             "error": reason[:MAX_ERROR], "breaker": AUTH_REFUSED},
                     cool_until=now + self.breaker if self.breaker else None,
                     cool_for=self.breaker)

    def failed(self, relay: str, reason: str) -> None:
        """No session could be opened on *relay*: skip it for the cooldown (with a relay
        to move to) or until the next probe, one probe per :attr:`probe` seconds after."""
        now = time.time()
        fields: dict[str, Any] = {"outcome": SessionOutcome.FAILED, "at": now,
                                  "error": reason[:MAX_ERROR]}
        if self.probe:
            fields |= {"breaker": RELAY_DOWN, "probe_ms": max(1, round(self.probe * 1000))}
        skip = self.cooldown or self.probe
        self._record(relay, fields, cool_until=now + skip if skip else None, cool_for=skip)

    def parked_until(self, relays: Sequence[str]) -> float | None:
        """When every one of *relays* has an open breaker: the time the first of them is
        probed again (it may have passed: the probe is due). ``None`` while any relay may
        be tried, and when Redis cannot be reached (then every relay is tried)."""
        if not relays or not (self.probe or self.breaker):
            return None
        pipe = self.redis.pipeline(transaction=False)
        for relay in relays:
            pipe.hget(self._state_key(relay), "breaker")
            pipe.pttl(self._cooldown_key(relay))
        try:
            replies = pipe.execute()
        except RedisError as err:
            log.warning("relay breakers unknown, trying every relay: %s", err)
            return None
        now = time.time()
        probes = []
        for breaker, left in zip(replies[::2], replies[1::2], strict=True):
            if not breaker:
                return None
            probes.append(now + max(int(left), 0) / 1000)
        return min(probes)

    def _record(self, relay: str, fields: dict[str, Any], cool_until: float | None = None,
                cool_for: float | None = None, close_breaker: bool = False) -> None:
        pipe = self.redis.pipeline(transaction=True)
        if close_breaker:  # a probe's cooldown key goes with the breaker
            pipe.eval(_CLOSE_BREAKER, 2, self._state_key(relay), self._cooldown_key(relay))
        pipe.hset(self._state_key(relay), mapping=fields)
        pipe.expire(self._state_key(relay), STATE_TTL)
        if cool_until is not None:
            pipe.set(self._cooldown_key(relay), repr(cool_until),
                     px=max(1, round((cool_for or self.cooldown) * 1000)))
        try:
            pipe.execute()
        except RedisError as err:
            log.warning("could not record the %s session on relay %s: %s",
                        fields["outcome"], relay, err)

    def statuses(self, relays: Sequence[str]) -> list[RelayStatus]:
        """Each relay's last session and cooldown, read in one round trip (no SMTP)."""
        pipe = self.redis.pipeline(transaction=False)
        for relay in relays:
            pipe.hgetall(self._state_key(relay))
            pipe.get(self._cooldown_key(relay))
        replies = pipe.execute()
        shown: list[RelayStatus] = []
        for i, relay in enumerate(relays):
            raw: dict[bytes, bytes] = replies[2 * i]
            until: bytes | None = replies[2 * i + 1]
            state = {k.decode(): v.decode() for k, v in raw.items()}
            shown.append(RelayStatus(
                relay=relay, outcome=state.get("outcome"),
                at=float(state["at"]) if state.get("at") else None,
                error=state.get("error") or None,
                cooling_down_until=float(until) if until is not None else None,
                breaker=state.get("breaker") or None))
        return shown

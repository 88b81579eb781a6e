"""Work parked while no relay will take a session, and the one probe that wakes it.

When every relay's breaker is open (:meth:`tasks.delivery.relay_state.RelayBoard.parked_until`),
a delivery task does not open a connection of its own, record a deferral or
republish itself: it parks. Two keys, shared by every worker on every host:

- ``postroom:parked`` — a sorted set of parked tasks, each ``[task name, [args]]``
  as JSON, scored by its delivery deadline (``DELIVERY_MAX_AGE``; ``+inf`` for none).
  A task parked twice is one member.
- ``postroom:parked:wake`` — present while a probe task is scheduled; whoever
  parks and finds it absent schedules the probe (``SET NX``), so one probe task
  is on its way per interval whatever the number of workers.

Members leave the set only after their task has been published again, so a
worker killed while it releases them loses nothing (a task published twice
finds its recipients already claimed or sent: the ledger decides).
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterator
from typing import Any

from redis import Redis

from tasks.delivery.watch_list import WATCH_KEY
from tasks.shared.keys import key

PARKED_KEY = key("parked")
WAKE_KEY = key("parked", "wake")
RELEASE_CHUNK = 500  # parked tasks published per Redis round trip

ParkedTask = tuple[str, list[Any]]  # task name, arguments (JSON values)


class ParkedWork:
    """The parked set and its wake-up."""

    def __init__(self, redis: Redis) -> None:
        self.redis = redis

    def park(self, task: str, args: list[Any], deadline: float | None, *,
             wake_at: float, wake_for: float,
             watched: tuple[str, float] | None = None) -> bool:
        """Park ``task(*args)`` until the relay is back (or *deadline*); ``True`` when
        the caller must schedule the probe for *wake_at* (none was scheduled). The wake
        key lives *wake_for* seconds, so a probe task that was lost is replaced then.
        *watched*: the delivery's watch-list member (``kind:id``) and when the reconciler
        should look at it, written in the same round trip."""
        pipe = self.redis.pipeline(transaction=False)
        pipe.zadd(PARKED_KEY, {_member(task, args): math.inf if deadline is None
                               else deadline})
        pipe.set(WAKE_KEY, repr(wake_at), nx=True, px=max(1, round(wake_for * 1000)))
        if watched is not None:
            pipe.zadd(WATCH_KEY, {watched[0]: watched[1]})
        scheduled = pipe.execute()[1]
        return bool(scheduled)

    def wake_scheduled(self) -> bool:
        return bool(self.redis.exists(WAKE_KEY))

    def schedule(self, wake_at: float, wake_for: float) -> bool:
        """Take the wake-up turn if nothing is scheduled and anything is parked."""
        if not self.redis.zcard(PARKED_KEY):
            return False
        return bool(self.redis.set(WAKE_KEY, repr(wake_at), nx=True,
                                   px=max(1, round(wake_for * 1000))))

    def woken(self) -> None:
        """The scheduled probe task is running: the next park may schedule another."""
        self.redis.delete(WAKE_KEY)

    def release(self, *, due_by: float | None = None) -> Iterator[list[ParkedTask]]:
        """The parked tasks, a chunk at a time, each chunk removed from the set only after
        the caller has handled it (the caller publishes them). With *due_by*, only those
        whose deadline is that time or earlier."""
        high: float | str = "+inf" if due_by is None else due_by
        while True:
            members: Any = self.redis.zrange(PARKED_KEY, "-inf", high, byscore=True,
                                        offset=0, num=RELEASE_CHUNK)
            if not members:
                return
            yield [_task(member) for member in members]
            self.redis.zrem(PARKED_KEY, *members)

    def __len__(self) -> int:
        count: Any = self.redis.zcard(PARKED_KEY)
        return int(count)


def _member(task: str, args: list[Any]) -> str:
    return json.dumps([task, list(args)], separators=(",", ":"))


def _task(member: bytes | str) -> ParkedTask:
    name, args = json.loads(member)
    return str(name), list(args)

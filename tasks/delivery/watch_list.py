"""Deliveries the reconciler keeps an eye on: the broker is a doorbell, this is the ledger's list.

Every message, OTP request and queued campaign is entered here when it is
stored, with the time by which it should have moved. A task that finishes
takes its delivery off the list, or puts it back for when its deferred
recipients fall due. Whatever is still listed when its time has passed lost
its task somewhere (a failed publish, a worker host gone, a Redis restart),
and the reconciler enqueues it again; the ledger makes that safe.
"""

from __future__ import annotations

import time

from redis import Redis

from tasks.delivery.ledger import text
from tasks.shared.keys import key
from tasks.vocabulary import UNSETTLED

WATCH_KEY = key("watch")
WATCH_AFTER = 60.0  # seconds after it is stored that an untouched delivery is looked at

# Off the list only if none of the delivery's recipients is still to be decided.
_DONE_IF_SETTLED = """
-- KEYS: the watch list, the delivery's counts; ARGV: the member, then the unsettled statuses
for i = 2, #ARGV do
  if tonumber(redis.call('HGET', KEYS[2], ARGV[i]) or '0') > 0 then return 0 end
end
redis.call('ZREM', KEYS[1], ARGV[1])
return 1
"""


class Watchlist:
    """``kind:id`` members scored by when to look at them again."""

    def __init__(self, redis: Redis) -> None:
        self.redis = redis
        self._done_if_settled = redis.register_script(_DONE_IF_SETTLED)

    def expect(self, kind: str, item_id: str, by: float) -> None:
        """*item_id* should have moved by *by* (seconds since the epoch)."""
        self.redis.zadd(WATCH_KEY, {f"{kind}:{item_id}": by})

    def done(self, kind: str, item_id: str) -> None:
        self.redis.zrem(WATCH_KEY, f"{kind}:{item_id}")

    def done_if_settled(self, kind: str, item_id: str, counts_key: str) -> bool:
        """:meth:`done`, in the same step as finding none of its recipients unsettled in
        *counts_key* (its ledger's counts); whether it was taken off."""
        return bool(self._done_if_settled(keys=[WATCH_KEY, counts_key],
                                          args=[f"{kind}:{item_id}", *sorted(UNSETTLED)]))

    def overdue(self, now: float | None = None, *, limit: int = 500) -> list[tuple[str, str]]:
        """``(kind, id)`` of what should have moved by now."""
        members = self.redis.zrange(WATCH_KEY, "-inf", now or time.time(), byscore=True,
                                    offset=0, num=limit)
        found = []
        for member in map(text, members):
            kind, _, item_id = member.partition(":")
            found.append((kind, item_id))
        return found

    def __len__(self) -> int:
        return int(self.redis.zcard(WATCH_KEY))

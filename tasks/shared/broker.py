"""kombu's Redis channels keeping one client for the commands they send.

kombu builds a new ``redis.Redis`` for every command it sends outside the worker's event
loop (``Channel.conn_or_acquire``): each publish from the web, and in a worker each
task's unacked entry, acknowledgement and task event. Building one costs about 90 µs
(redis-py fills a table of response callbacks each time), a twentieth of a single
message's whole worker CPU and of an enqueue's. A ``redis.Redis`` is safe to share
between threads (each command takes a connection from the pool), so a channel keeps one
per connection pool: when the channel drops its pools (a reconnect, a Sentinel
failover) the next command builds a client on the new pool.

:func:`keep_one_client_per_channel` puts this in kombu's own Redis channel (the Sentinel
channel is one of its kind), rather than in a transport of Postroom's: the broker URL
keeps its ``redis://`` or ``sentinel://`` scheme, which Celery's banner, Flower's broker
page and its queue lengths read to know the broker.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from kombu.transport import redis as kombu_redis

_KEPT = "_postroom_kept_client"  # the channel's (pool it was built on, client)


@contextmanager
def _conn_or_acquire(self: Any, client: Any = None) -> Iterator[Any]:
    """kombu's ``conn_or_acquire``: the caller's client if it has one, else the
    channel's kept one (built on first use, and again once the pool changed)."""
    if client:
        yield client
        return
    pool, kept = self.pool, getattr(self, _KEPT, None)
    if kept is None or kept[0] is not pool:
        kept = (pool, self._create_client())
        setattr(self, _KEPT, kept)
    yield kept[1]


_conn_or_acquire.postroom = True  # type: ignore[attr-defined]


def keep_one_client_per_channel() -> None:
    """Have kombu's Redis channels keep one client (once per process; idempotent)."""
    if not getattr(kombu_redis.Channel.conn_or_acquire, "postroom", False):
        kombu_redis.Channel.conn_or_acquire = _conn_or_acquire

"""kombu's Redis transports, keeping one client per channel for the commands it sends.

kombu builds a new ``redis.Redis`` for every command it sends outside the worker's event
loop (``Channel.conn_or_acquire``): each publish from the web, and in a worker each
task's unacked entry, acknowledgement and task event. Building one costs about 90 µs
(redis-py fills a table of response callbacks each time), a twentieth of a single
message's whole worker CPU and of an enqueue's. A ``redis.Redis`` is safe to share
between threads (each command takes a connection from the pool), so a channel keeps one
per connection pool: when the channel drops its pools (a reconnect, a Sentinel
failover) the next command builds a client on the new pool.

``celery_init_app`` selects these for ``redis://``, ``rediss://`` and ``sentinel://``
brokers (:func:`transport_for`); they behave as kombu's own in every other respect.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from kombu.transport import redis as kombu_redis

_TRANSPORTS = {
    "redis": "tasks.shared.broker:Transport",
    "rediss": "tasks.shared.broker:Transport",
    "sentinel": "tasks.shared.broker:SentinelTransport",
}


def transport_for(broker_url: str) -> str | None:
    """The transport to use for *broker_url* (kombu's ``;``-joined form included), or
    None to leave kombu's choice alone (another broker)."""
    scheme, found, _ = broker_url.partition("://")
    return _TRANSPORTS.get(scheme) if found else None


class _KeptClient:
    """``conn_or_acquire`` without a client of the caller's: the channel's kept one."""

    _kept: tuple[Any, Any] | None = None  # (the pool it was built on, the client)
    pool: Any
    _create_client: Any

    @contextmanager
    def conn_or_acquire(self, client: Any = None) -> Iterator[Any]:
        if client:
            yield client
            return
        pool, kept = self.pool, self._kept
        if kept is None or kept[0] is not pool:
            kept = self._kept = (pool, self._create_client())
        yield kept[1]


class Channel(_KeptClient, kombu_redis.Channel):  # type: ignore[misc]
    pass


class Transport(kombu_redis.Transport):  # type: ignore[misc]
    Channel = Channel


class SentinelChannel(_KeptClient, kombu_redis.SentinelChannel):  # type: ignore[misc]
    pass


class SentinelTransport(kombu_redis.SentinelTransport):  # type: ignore[misc]
    Channel = SentinelChannel

"""A web process made ready before its first request: what the first requests of each
thread would otherwise pay for (Celery's task registry, broker and Redis connections)."""

from __future__ import annotations

import logging
from contextlib import ExitStack

from flask import Flask
from kombu.exceptions import OperationalError
from redis.exceptions import RedisError

log = logging.getLogger(__name__)


def warm_up(app: Flask, threads: int) -> None:
    """Finalize Celery and open *threads* broker and Redis connections, then give them back
    to their pools. Nothing is written; a server that does not answer is left for the first
    request to report (it is logged here, not raised)."""
    celery = app.extensions["celery"]
    celery.finalize(auto=True)  # the task registry, built on first use otherwise
    try:
        with ExitStack() as held:
            for _ in range(max(1, threads)):
                producer = held.enter_context(celery.producer_pool.acquire(block=True))
                producer.connection.ensure_connection(max_retries=1)
                producer.channel.client.ping()  # the channel's own Redis connection
        pool = app.extensions["redis"].connection_pool
        connections = [pool.get_connection() for _ in range(max(1, threads))]
        for connection in connections:
            pool.release(connection)
    except (OSError, RedisError, OperationalError) as err:
        log.warning("web: could not open connections before the first request: %s", err)

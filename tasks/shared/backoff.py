"""The one backoff every retry of Postroom waits by, and the broker's cap on any wait.

:func:`backoff` is exponential with equal jitter: after attempt *n*, a wait drawn
evenly between half and all of ``min(cap, base * 2 ** (n - 1))``. Deliveries use it
with ``DELIVERY_BACKOFF_BASE``/``DELIVERY_BACKOFF_CAP``, webhooks with their own base
and cap. Celery's ``retry_backoff``/``retry_jitter``/``retry_backoff_max`` do not
fit here: they take whole seconds fixed when the task is declared (the settings are
read at run time, and may be fractions of a second), and their jitter is full
(anywhere from 0), which would change every wait.

:func:`within_visibility` caps a countdown at half the broker's visibility timeout:
on Redis, a task whose ETA is further away than that is delivered again while it
waits.
"""

from __future__ import annotations

import random

import celery


def backoff(attempt: int, *, base: float, cap: float, rng: random.Random | None = None
            ) -> float:
    """Seconds to wait after failed attempt number *attempt* (1 for the first)."""
    ceiling = min(cap, base * 2 ** max(attempt - 1, 0))
    return (rng or random).uniform(ceiling / 2, ceiling)


def visibility_timeout() -> float | None:
    """The broker's visibility timeout (Redis), from the current Celery app's settings."""
    options = celery.current_app.conf.broker_transport_options or {}
    value = options.get("visibility_timeout")
    return float(value) if value else None


def within_visibility(countdown: float, ceiling: float | None = None) -> float:
    """*countdown*, at most half the broker's visibility timeout (or *ceiling*)."""
    if ceiling is None:
        timeout = visibility_timeout()
        ceiling = timeout / 2 if timeout else None
    return min(countdown, ceiling) if ceiling else countdown

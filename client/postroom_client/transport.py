"""One HTTP exchange with Postroom, retried when that is safe.

1. Every request carries the token, a timeout, and (for a send) its ``Idempotency-Key``.
2. A GET, or a POST with an ``Idempotency-Key``, is retried on 429, 502, 503, 504 and on
   connection errors and timeouts: the same request, the same key, so the server sends at
   most once whatever was lost on the way back.
3. The wait before retry *n* is a "full jitter" draw from ``[0, min(cap, base * 2**n)]``,
   or the server's ``Retry-After`` when it gave one (capped at ``max_retry_after``).
4. Any other error answer raises :class:`~postroom_client.errors.APIError` at once.
"""

from __future__ import annotations

import email.utils
import logging
import random
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import httpx

from postroom_client.errors import TransportError, error_from

log = logging.getLogger(__name__)

RETRY_STATUSES = frozenset({429, 502, 503, 504})
SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    """How often and how long to retry: *attempts* counts the first try."""

    attempts: int = 4
    base: float = 0.5
    cap: float = 8.0
    max_retry_after: float = 30.0

    def delay(self, retry: int, retry_after: float | None,
              draw: Callable[[float, float], float] = random.uniform) -> float:
        if retry_after is not None:
            return min(max(retry_after, 0.0), self.max_retry_after)
        return draw(0.0, min(self.cap, self.base * 2 ** retry))


def retry_after_seconds(value: str | None, now: float | None = None) -> float | None:
    """``Retry-After`` as seconds: a number of seconds or an HTTP date (RFC 9110 10.2.3)."""
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        moment = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, moment.timestamp() - (time.time() if now is None else now))


def retryable(method: str, headers: Mapping[str, str]) -> bool:
    """Whether repeating the request cannot do a thing twice."""
    return method.upper() in SAFE_METHODS or "Idempotency-Key" in headers


class Transport:
    """Sends requests on one kept ``httpx.Client`` (one pool of keep-alive connections)."""

    def __init__(self, http: httpx.Client, retry: RetryPolicy,
                 sleep: Callable[[float], None] = time.sleep) -> None:
        self.http = http
        self.retry = retry
        self.sleep = sleep

    def request(self, method: str, path: str, *, headers: Mapping[str, str] | None = None,
                **options: Any) -> httpx.Response:
        """The answer to a successful request; raises ``APIError`` or ``TransportError``."""
        sent = dict(headers or {})
        attempts = self.retry.attempts if retryable(method, sent) else 1
        for attempt in range(attempts):
            last = attempt == attempts - 1
            try:
                response = self.http.request(method, path, headers=sent, **options)
            except httpx.TransportError as err:  # connect, read, write, timeouts, protocol
                if last:
                    raise TransportError(f"{method} {path}: {type(err).__name__}: {err}") \
                        from err
                wait = self.retry.delay(attempt, None)
                log.info("%s %s: %s; retrying in %.2f s", method, path,
                         type(err).__name__, wait)
                self.sleep(wait)
                continue
            if response.is_success:
                return response
            retry_after = retry_after_seconds(response.headers.get("Retry-After"))
            if response.status_code in RETRY_STATUSES and not last:
                wait = self.retry.delay(attempt, retry_after)
                log.info("%s %s: %s; retrying in %.2f s", method, path,
                         response.status_code, wait)
                response.close()
                self.sleep(wait)
                continue
            raise error_from(response.status_code, _json_or_none(response), retry_after)
        raise AssertionError("unreachable: the last attempt returns or raises")


def _json_or_none(response: httpx.Response) -> Any:
    try:
        return response.json()
    except ValueError:
        return None

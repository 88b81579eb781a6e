"""Ledger scripts on a connection of their own, requests written at once, replies read later.

:func:`tasks.delivery.service.run_batch` writes each message's outcomes as soon as the
server has answered and goes on to the next message without waiting for
Redis: the replies are read when a claim needs its answer, or when too many
are outstanding. The request is on the wire before the next message is sent,
so a worker that dies has recorded every message the server accepted except
the one in flight.
"""

from __future__ import annotations

import logging
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from types import TracebackType
from typing import Any

from redis import Redis
from redis.commands.core import Script
from redis.exceptions import ConnectionError, NoScriptError, RedisError, ResponseError

from tasks.delivery.ledger import ClaimResult, DeliveryLedger, Outcome, claim_result, text

OUTSTANDING = 64  # replies that may wait unread

log = logging.getLogger(__name__)


_LOADED: set[tuple[int, str]] = set()  # (connection pool, script SHA) known to be loaded


def _loaded(redis: Redis, script: Script) -> str:
    """The script's SHA, loaded into Redis once per process (again after a restart)."""
    entry = (id(redis.connection_pool), script.sha)
    if entry not in _LOADED:
        redis.script_load(script.script)
        _LOADED.add(entry)
    return str(script.sha)


@dataclass(frozen=True, slots=True)
class _Request:
    script: str
    args: list[Any]
    on_reply: Callable[[Any], None]


class LedgerStream:
    """Claims (answered at once) and finishes (answered later) for one batch."""

    def __init__(self, ledger: DeliveryLedger) -> None:
        self.ledger = ledger
        redis = ledger.redis
        self._sha = {name: _loaded(redis, ledger.scripts[name]) for name in ("claim", "finish")}
        self._connection: Any = redis.connection_pool.get_connection()
        self._pending: deque[_Request] = deque()
        self._broken: BaseException | None = None

    def __enter__(self) -> LedgerStream:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close(drain=exc is None)

    def claim(self, indices: Sequence[int], token: str, run: str) -> ClaimResult:
        """Claim *indices* for *run* (after every outstanding finish is read)."""
        result: list[ClaimResult] = []
        self._write("claim", self.ledger.claim_args(indices, token, run),
                    lambda reply: result.append(claim_result(reply)))
        self.drain()
        return result[0]

    def finish(self, token: str, run: str, outcomes: Sequence[Outcome], *, max_attempts: int,
               deadline: float | None, then: Callable[[list[str]], None]) -> None:
        """Write the outcomes; *then* gets the statuses set once the reply is read."""
        args = DeliveryLedger.finish_args(token, run, outcomes, max_attempts=max_attempts,
                                          deadline=deadline)
        self._write("finish", args, lambda reply: then([text(s) for s in reply]))
        while len(self._pending) > OUTSTANDING:
            self._read_one()

    def drain(self) -> None:
        while self._pending:
            self._read_one()

    def settle(self, outstanding: int = 1) -> None:
        """Read every reply that has arrived, and wait for all but the last *outstanding*."""
        while len(self._pending) > outstanding:
            self._read_one()
        try:
            while self._pending and self._connection.can_read(timeout=0):
                self._read_one()
        except (RedisError, OSError) as err:
            self._reconnect(err)

    def _write(self, script: str, args: list[Any], on_reply: Callable[[Any], None]) -> None:
        self._usable()
        request = _Request(script, args, on_reply)
        self._pending.append(request)
        try:
            self._send(request)
        except (RedisError, OSError) as err:
            self._reconnect(err)

    def _read_one(self) -> None:
        self._usable()
        try:
            reply = self._connection.read_response()
        except ResponseError as err:  # Redis answered with an error: the batch stops
            self._pending.popleft()
            if isinstance(err, NoScriptError):  # Redis restarted: load the scripts again
                _LOADED.clear()
            raise
        except (RedisError, OSError) as err:
            self._reconnect(err)
            return
        self._pending.popleft().on_reply(reply)

    def _send(self, request: _Request) -> None:
        command = self._connection.pack_command(
            "EVALSHA", self._sha[request.script], len(self.ledger.keys), *self.ledger.keys,
            *request.args)
        self._connection.send_packed_command(command, check_health=False)

    def _reconnect(self, err: BaseException) -> None:
        """The connection failed with replies owed: send those requests again, once.

        Every script is safe to run twice (a finish for a recipient already
        recorded changes nothing; a claim by the same token takes back its own),
        so a dropped connection loses no outcome. If Redis itself is gone, the
        batch stops with a :class:`ConnectionError`.
        """
        log.warning("ledger connection lost (%s); sending %d request(s) again", err,
                    len(self._pending))
        try:
            self._connection.disconnect()
            self._connection.connect()
            # the server may be another one now (a Sentinel failover) or a restarted one:
            # neither has the scripts, and Redis does not replicate its script cache
            for name in self._sha:
                self._connection.send_command("SCRIPT", "LOAD", self.ledger.scripts[name].script)
                self._connection.read_response()
            for request in self._pending:
                self._send(request)
        except (RedisError, OSError) as again:
            self._broken = again
            self._pending.clear()
            raise ConnectionError(f"the ledger connection was lost: {again}") from again

    def _usable(self) -> None:
        if self._broken is not None:
            raise ConnectionError(f"the ledger connection was lost: {self._broken}")

    def close(self, *, drain: bool = True) -> None:
        if self._connection is None:
            return
        try:
            if drain:
                self.drain()
        except (RedisError, OSError):
            self._connection.disconnect()
            raise
        finally:
            connection, self._connection = self._connection, None
            if self._pending or self._broken:  # replies never read: it cannot be reused
                self._pending.clear()
                connection.disconnect()
            self.ledger.redis.connection_pool.release(connection)

"""The ledger's record-and-claim script on a connection of its own, request and reply apart.

:func:`tasks.delivery.run_batch` writes "record message k-1, claim message k+1"
as soon as message k-1 is answered, and reads the reply after message k has
gone out, so Redis does its work while the SMTP server does its own. The
request is on the wire before message k is sent: a worker that dies has
recorded every message the server accepted except the one in flight.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Sequence
from types import TracebackType
from typing import Any

from redis.exceptions import RedisError

from tasks.stores.ledger import (
    _FINISH_AND_CLAIM,
    ClaimResult,
    DeliveryLedger,
    _claim_result,
    _outcome_args,
    _text,
)

Row = tuple[int, str, int | None, str | None]


class LedgerPipeline:
    """At most one :meth:`DeliveryLedger.finish_and_claim` request outstanding."""

    def __init__(self, ledger: DeliveryLedger) -> None:
        self.ledger = ledger
        self._sha = ledger.redis.script_load(_FINISH_AND_CLAIM)
        self._connection: Any = ledger.redis.connection_pool.get_connection()
        self._prefix = ["EVALSHA", self._sha, "3", *ledger._keys]
        self.outstanding = False

    def __enter__(self) -> LedgerPipeline:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()

    def send(self, token: str, outcomes: Iterable[Row], indices: Sequence[int],
             lease_seconds: float, *, max_attempts: int) -> None:
        """Write the request; :meth:`receive` reads its reply."""
        assert not self.outstanding, "read the last reply first"
        args = _outcome_args(outcomes)
        now = time.time()
        command = _pack([*self._prefix, token, repr(now), str(max_attempts),
                         repr(now + lease_seconds), str(len(args) // 4), *args,
                         *map(str, indices)])
        self._connection.send_packed_command([command], check_health=False)
        self.outstanding = True

    def receive(self) -> tuple[list[str], ClaimResult]:
        """The statuses recorded and the recipients claimed by the last request."""
        assert self.outstanding, "nothing was sent"
        self.outstanding = False
        reply = self._connection.read_response()
        return [_text(s) for s in reply[0]], _claim_result(reply[1])

    def close(self) -> None:
        connection, self._connection = self._connection, None
        if connection is None:
            return
        try:
            if self.outstanding:
                self.outstanding = False
                connection.read_response()  # what it claimed stays leased; a retry sends it
        except (RedisError, OSError):
            connection.disconnect()  # only after another error, which is the one raised
        finally:
            self.ledger.redis.connection_pool.release(connection)


def _pack(args: list[str]) -> bytes:
    """A command in RESP (what redis-py's packer makes, without its generality)."""
    parts = [b"*%d\r\n" % len(args)]
    for arg in args:
        data = arg.encode()
        parts.append(b"$%d\r\n%s\r\n" % (len(data), data))
    return b"".join(parts)

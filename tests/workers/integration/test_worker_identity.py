"""Many hosts: each worker has an identity of its own, /healthz wants a live consumer on
every routed queue, ``postroom_workers_alive{queue}`` counts them, an anonymous /healthz
answers status only, and campaign batches follow the bulk sessions workers advertise."""

from __future__ import annotations

import socket
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from types import SimpleNamespace
from typing import Any

import pytest
import redis
from celery import Celery
from celery.contrib.testing.worker import start_worker
from flask import Flask
from flask.testing import FlaskClient
from kombu import Queue
from prometheus_client.parser import text_string_to_metric_families

from tasks.delivery import runtime
from tasks.workers.heartbeats import Heartbeats, WorkerCard, worker_identity
from tests.campaigns.integration.test_campaign_pages import csrf_token, sign_in
from tests.conftest import AUTH, app_config
from tests.support.smtp_server import SMTPTestServer
from web import create_app
from web.health import routed_queues

METRICS_TOKEN = "scrape-7c1d"
BEARER = {"Authorization": f"Bearer {METRICS_TOKEN}"}


def celeryconfig_conf() -> Any:
    """The deployment's Celery settings, as every process loads them."""
    celery_app = Celery("routes", set_as_current=False)
    celery_app.config_from_object("celeryconfig")
    return celery_app.conf


ROUTED = routed_queues(celeryconfig_conf())  # otp, mail, bulk, events (and any added later)
LANES = [queue for queue in ROUTED if queue != "bulk"]


def wait_for(what: str, check: Callable[[], bool], timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, f"{what} within {timeout:.0f} s"
        time.sleep(0.1)


def health(client: FlaskClient, headers: dict[str, str] | None = None
           ) -> tuple[int, dict[str, Any]]:
    response = client.get("/healthz", headers=headers or {})
    body: dict[str, Any] = response.get_json()
    return response.status_code, body


def alive(client: FlaskClient, headers: dict[str, str] | None = None) -> dict[str, float]:
    """``postroom_workers_alive`` by queue, as scraped."""
    response = client.get("/metrics", headers=headers or {})
    assert response.status_code == 200
    found: dict[str, float] = {}
    for family in text_string_to_metric_families(response.get_data(as_text=True)):
        for sample in family.samples:
            if sample.name == "postroom_workers_alive":
                found[sample.labels["queue"]] = sample.value
    return found


def worker_info(client: FlaskClient) -> list[tuple[str, str, str, str]]:
    """``postroom_worker_info``: (identity, node, host, queues) of each live worker."""
    text = client.get("/metrics").get_data(as_text=True)
    return [(s.labels["worker"], s.labels["node"], s.labels["host"], s.labels["queues"])
            for family in text_string_to_metric_families(text) for s in family.samples
            if s.name == "postroom_worker_info"]


@contextmanager
def real_worker(celery_app: Celery, queues: list[str], concurrency: int = 1,
                hostname: str | None = None) -> Iterator[Any]:
    options: dict[str, Any] = {"hostname": hostname} if hostname else {}
    with start_worker(celery_app, pool="threads", concurrency=concurrency,
                      perform_ping_check=False, queues=queues, shutdown_timeout=30,
                      loglevel="WARNING", **options) as worker:
        yield worker


def card(node: str, queues: tuple[str, ...], sessions: int = 4) -> WorkerCard:
    """A worker on a host like this one: same host name, celery as PID 1 in a container."""
    return WorkerCard(worker_identity(node), node=node, host=socket.gethostname(),
                      queues=queues, sessions=sessions, pool="thread")


def test_identities_are_unique_even_with_the_same_node_name() -> None:
    first, second = worker_identity("celery@box"), worker_identity("celery@box")
    assert first != second
    assert first.startswith("celery@box#") and second.startswith("celery@box#")
    suffix = first.partition("#")[2]
    assert len(suffix) == 12 and int(suffix, 16) >= 0  # 48 random bits, drawn per process


def test_two_workers_with_the_same_host_name_and_pid_are_two_workers(
        worker_app: Flask, redis_client: redis.Redis) -> None:
    client = worker_app.test_client()
    node = f"celery@{socket.gethostname()}"  # what every container's worker calls itself
    twin = card(node, ("bulk",), sessions=7)  # same node name, host and pid as the real one
    Heartbeats(redis_client).worker(twin)
    with real_worker(worker_app.extensions["celery"], ["bulk"], concurrency=3,
                     hostname=node) as worker:
        assert worker.hostname == twin.node
        wait_for("the real worker reported",
                 lambda: len(Heartbeats(redis_client).live_workers(time.time() - 30)) == 2)
        live = Heartbeats(redis_client).live_workers(time.time() - 30)
        assert {w.node for w in live} == {node} and {w.host for w in live} == {twin.host}
        real = next(w for w in live if w.identity != twin.identity)
        assert real.identity.startswith(node + "#") and real.queues == ("bulk",)
        assert (real.sessions, real.pool) == (3, "thread")
        assert alive(client)["bulk"] == 2
        assert sorted(worker_info(client)) == sorted(
            [(twin.identity, node, twin.host, "bulk"), (real.identity, node, twin.host, "bulk")])
        status, body = health(client)
        assert status == 503 and body["checks"]["workers"]["queues"]["bulk"] == sorted(
            [twin.identity, real.identity])
        with worker_app.app_context():
            assert runtime.bulk_sessions() == 3 + 7  # both hosts' sessions
    # a worker that stops cleanly is gone at once, its twin is not
    assert [w.identity for w in Heartbeats(redis_client).live_workers(time.time() - 30)] \
        == [twin.identity]


def test_healthz_wants_a_live_consumer_on_every_routed_queue(worker_app: Flask) -> None:
    client = worker_app.test_client()
    celery_app: Celery = worker_app.extensions["celery"]
    assert alive(client) == dict.fromkeys(ROUTED, 0.0)
    with real_worker(celery_app, ["bulk"], concurrency=2):
        wait_for("the bulk worker reported",
                 lambda: health(client)[1]["checks"]["workers"].get("seen"))
        status, body = health(client)
        workers = body["checks"]["workers"]
        assert status == 503 and "workers" in body["down"], body
        assert {"otp", "mail", "events"} <= set(LANES)
        assert workers["queues_without_consumer"] == LANES
        assert workers["error"] == "no live worker consumes " + ", ".join(LANES)
        assert alive(client) == {**dict.fromkeys(LANES, 0), "bulk": 1}
        with real_worker(celery_app, LANES):
            wait_for("the lane worker reported",
                     lambda: health(client)[1]["checks"]["workers"]["ok"])
            status, body = health(client)
            assert "workers" not in body["down"], body
            assert body["checks"]["workers"]["queues"]["events"] == [
                w["id"] for w in body["checks"]["workers"]["workers"]
                if w["queues"] == sorted(LANES)]
            assert alive(client) == dict.fromkeys(ROUTED, 1)
        wait_for("the lane worker's absence noticed",
                 lambda: not health(client)[1]["checks"]["workers"]["ok"])
        assert alive(client)["otp"] == 0


@pytest.fixture
def guarded(redis_client: redis.Redis, redis_url: str, smtp_server: SMTPTestServer) -> Flask:
    """A deployed app: the metrics token and the operator's sign-in are set."""
    return create_app(app_config(redis_url, smtp_server.port, METRICS_TOKEN=METRICS_TOKEN,
                                 ADMIN_USERNAME="operator",
                                 ADMIN_PASSWORD="correct horse battery",
                                 CELERY={"task_always_eager": False}))


def test_anonymous_healthz_answers_status_only(guarded: Flask,
                                               redis_client: redis.Redis) -> None:
    Heartbeats(redis_client).worker(card("celery@lane-host-7", tuple(LANES)))
    client = guarded.test_client()
    for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": METRICS_TOKEN}):
        response = client.get("/healthz", headers=headers)
        assert response.status_code == 503
        assert response.get_json() == {"status": "unhealthy"}
        assert b"lane-host-7" not in response.data and b"127.0.0.1" not in response.data
    status, body = health(client, BEARER)
    assert status == 503 and body["status"] == "unhealthy"
    assert body["down"] == ["workers", "beat"]
    assert body["checks"]["workers"]["queues_without_consumer"] == ["bulk"]
    assert body["checks"]["workers"]["workers"][0]["node"] == "celery@lane-host-7"
    assert body["checks"]["smtp"]["relays"]  # relay host names: the operator's only
    assert client.get("/metrics").status_code == 401
    assert alive(client, BEARER) == {**dict.fromkeys(LANES, 1), "bulk": 0}

    assert sign_in(client).status_code == 303  # the campaign pages' operator sign-in
    status, body = health(client)
    assert body["checks"]["workers"]["workers"][0]["node"] == "celery@lane-host-7"
    token = csrf_token(client, "/campaigns/")
    assert client.post("/campaigns/logout", data={"csrf_token": token}).status_code == 303
    assert health(client)[1] == {"status": "unhealthy"}


def test_probes_answer_status_only(guarded: Flask) -> None:
    client = guarded.test_client()
    assert (client.get("/livez").status_code, client.get("/livez").get_json()) == (
        200, {"status": "ok"})
    assert (client.get("/readyz").status_code, client.get("/readyz").get_json()) == (
        200, {"status": "ok"})


def test_a_campaign_uses_every_bulk_session_the_workers_advertise(
        worker_app: Flask, smtp_server: SMTPTestServer) -> None:
    sessions = 40  # more than the old cap of 32 batches in flight
    smtp_server.handler.data_delay = 0.25
    client = worker_app.test_client()
    with real_worker(worker_app.extensions["celery"], ["bulk"], concurrency=sessions):
        wait_for("the bulk worker reported", lambda: alive(client)["bulk"] == 1)
        with worker_app.app_context():
            assert runtime.bulk_sessions() == sessions
        response = client.post("/api/campaigns", headers=AUTH, json={
            "subject": "Hi", "body": "Hello",
            "recipients": [{"email": f"r{i}@example.net"} for i in range(10 * sessions)]})
        assert response.status_code == 202, response.get_json()
        campaign = response.get_json()["id"]
        wait_for("the campaign completed", lambda: client.get(
            f"/api/campaigns/{campaign}", headers=AUTH).get_json()["status"] == "completed",
            timeout=40)
    assert len(smtp_server.received) == 10 * sessions
    assert smtp_server.peak_sessions > 32, smtp_server.peak_sessions
    assert smtp_server.peak_sessions <= sessions


def test_batches_ahead_and_the_connection_limit_come_first(
        redis_client: redis.Redis, redis_url: str, smtp_server: SMTPTestServer) -> None:
    def planned(**overrides: Any) -> int:
        with create_app(app_config(redis_url, smtp_server.port, **overrides)).app_context():
            return runtime.bulk_sessions()

    assert planned() == runtime.DEFAULT_BULK_SESSIONS  # no bulk worker has reported
    assert planned(MAIL_MAX_CONNECTIONS=12) == 11
    beats = Heartbeats(redis_client)
    for host in ("a", "b", "c"):  # three bulk hosts, 16 threads each, and a lane worker
        beats.worker(card(f"celery@{host}", ("bulk",), sessions=16))
    beats.worker(card("celery@lane", tuple(LANES), sessions=8))
    beats.worker(card("celery@gone", ("bulk",), sessions=99), now=time.time() - 60)
    assert planned() == 48
    assert planned(MAIL_MAX_CONNECTIONS=12) == 11
    assert planned(MAIL_MAX_CONNECTIONS=200) == 48
    assert planned(CAMPAIGN_BATCHES_AHEAD=5, MAIL_MAX_CONNECTIONS=12) == 5


def test_routed_queues_are_the_declared_the_routed_and_the_default() -> None:
    conf = SimpleNamespace(task_queues=(Queue("otp"), Queue("bulk")), task_default_queue="mail",
                           task_routes={"postroom.webhooks.*": {"queue": "hooks"},
                                        "postroom.otp.*": {"queue": "otp"}})
    assert routed_queues(conf) == ["otp", "bulk", "hooks", "mail"]
    assert {"otp", "mail", "bulk", "events"} <= set(ROUTED)

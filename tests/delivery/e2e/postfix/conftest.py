"""Fixtures for the suite against a real Postfix: the private instance, the counter behind it
(an aiosmtpd server Postfix forwards the test domains to) and Postroom aimed at Postfix."""

from __future__ import annotations

import contextlib
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import redis
from celery.contrib.testing.worker import start_worker
from flask import Flask
from flask.testing import FlaskClient

from tasks.delivery.ledger import UNSETTLED
from tests.conftest import AUTH, app_config
from tests.delivery.e2e.postfix.harness import Postfix, missing, wait_for
from tests.support.campaign_helpers import recipients
from tests.support.smtp_server import SMTPTestServer

SINK_DOMAINS = ("example.com", "example.net")  # forwarded by Postfix to the counter
RETURN_PATH = "bounces@bounces.example.org"  # routed by Postfix to the bounce listener
SECRET = "test-secret-key"


@pytest.fixture(autouse=True)
def _postfix_can_run() -> None:
    why = missing()
    if why is not None:
        pytest.skip(f"no private Postfix here: {why}")


@pytest.fixture
def sink() -> Iterator[SMTPTestServer]:
    """What Postfix forwards: every test domain goes here (SMTPUTF8 offered)."""
    server = SMTPTestServer(enable_SMTPUTF8=True).start()
    yield server
    server.stop()


StartPostfix = Callable[..., Postfix]


@pytest.fixture
def start_postfix(sink: SMTPTestServer) -> Iterator[StartPostfix]:
    """``start_postfix(settings={...}, users={...}, tls=True, routes={...})``: a running
    private Postfix whose test domains go to :func:`sink`; stopped (processes gone) after
    the test, whatever happened."""
    started: list[Postfix] = []

    def start(**options: Any) -> Postfix:
        routes = {domain: sink.port for domain in SINK_DOMAINS}
        routes.update(options.pop("routes", {}))
        instance = Postfix(routes=routes, **options)
        started.append(instance)
        return instance.start()

    yield start
    for instance in started:
        leftover = instance.processes() if instance.started else []
        instance.stop()
        assert not instance.processes(), f"Postfix processes left: {leftover}"


StartApp = Callable[..., Flask]


@pytest.fixture
def postroom(redis_client: redis.Redis, redis_url: str) -> StartApp:
    """``postroom(instance, **config)``: the app (Celery eager) sending through *instance*."""

    def make(instance: Postfix, **overrides: Any) -> Flask:
        from web import create_app

        overrides.setdefault("MAIL_DEFAULT_SENDER", "Postroom <noreply@example.org>")
        # each test reads the sessions Postfix logged: none is kept open after its mail
        overrides.setdefault("MAIL_SESSION_IDLE", 0)
        return create_app(app_config(redis_url, instance.port, SECRET_KEY=SECRET,
                                     **overrides))

    return make


@pytest.fixture
def postroom_worker(redis_client: redis.Redis, redis_url: str,
                    tmp_path: Path) -> Iterator[StartApp]:
    """``postroom_worker(instance, **config)``: the app with a real Celery worker (threads,
    two at once) sending through *instance*, for tests where the relay defers and a retry
    must wait its countdown (eagerly it would run at once, again and again)."""
    from web import create_app

    with contextlib.ExitStack() as stack:
        def make(instance: Postfix, **overrides: Any) -> Flask:
            overrides.setdefault("MAIL_DEFAULT_SENDER", "Postroom <noreply@example.org>")
            overrides.setdefault("MAIL_SESSION_IDLE", 0)
            config = app_config(redis_url, instance.port, SECRET_KEY=SECRET, **overrides)
            config["CELERY"] = {"task_always_eager": False, "broker_transport_options": {
                "visibility_timeout": 60,
                "global_keyprefix": f"postroom:celery:{tmp_path.name}:"}}
            app = create_app(config)
            stack.enter_context(start_worker(
                app.extensions["celery"], pool="threads", concurrency=2,
                perform_ping_check=False, queues=["otp", "mail", "bulk"],
                shutdown_timeout=30, loglevel="WARNING"))
            return app

        yield make


def settled_message(client: FlaskClient, message_id: str, timeout: float = 30) -> dict[str, str]:
    """The message's recipients once none is queued, sending or deferred."""
    found: dict[str, str] = {}

    def done() -> bool:
        found.update(statuses(client, message_id))
        return bool(found) and not UNSETTLED.intersection(found.values())

    wait_for(done, timeout, f"message {message_id} to settle (now {found})")
    return found


def settled_campaign(client: FlaskClient, campaign_id: str,
                     timeout: float = 30) -> dict[str, str]:
    """The campaign's recipients once none is queued, sending or deferred."""
    found: dict[str, str] = {}

    def done() -> bool:
        found.update({r["email"]: r["status"] for r in recipients(client, campaign_id)})
        return bool(found) and not UNSETTLED.intersection(found.values())

    wait_for(done, timeout, f"campaign {campaign_id} to settle (now {Counter(found.values())})")
    return found


def send(client: FlaskClient, to: list[str], **fields: Any) -> dict[str, Any]:
    """``POST /api/messages``; the accepted message."""
    body = {"to": to, "subject": "Hello", "body": "Hello from Postroom"}
    body.update(fields)
    answer = client.post("/api/messages", headers=AUTH, json=body)
    assert answer.status_code == 202, answer.get_json()
    accepted: dict[str, Any] = answer.get_json()
    return accepted


def statuses(client: FlaskClient, message_id: str) -> dict[str, str]:
    """Postroom's record: recipient -> status."""
    return {r["email"]: r["status"] for r in shown_recipients(client, message_id)}


def shown_recipients(client: FlaskClient, message_id: str) -> list[dict[str, Any]]:
    """``GET /api/messages/<id>``'s recipients (email, status, smtp_code, error)."""
    shown = client.get(f"/api/messages/{message_id}", headers=AUTH).get_json()
    found: list[dict[str, Any]] = shown["recipients"]
    return found


def bounced_total(client: FlaskClient, kind: str) -> float:
    """``postroom_deliveries_total{kind=<kind>, outcome="bounced"}`` from ``/metrics``."""
    from prometheus_client.parser import text_string_to_metric_families

    text = client.get("/metrics").get_data(as_text=True)
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if (sample.name == "postroom_deliveries_total"
                    and sample.labels == {"kind": kind, "outcome": "bounced"}):
                return float(sample.value)
    raise AssertionError("postroom_deliveries_total{outcome=bounced} is missing")


def forwarded(sink: SMTPTestServer) -> Counter[str]:
    """How many times Postfix forwarded each recipient to the counter."""
    return Counter(address for received in sink.received for address in received.recipients)


def wait_forwarded(sink: SMTPTestServer, expected: int, timeout: float = 20) -> None:
    """Until Postfix has forwarded *expected* recipients (it delivers from its queue)."""
    wait_for(lambda: sum(forwarded(sink).values()) >= expected, timeout,
             f"Postfix to forward {expected} recipients (so far {sum(forwarded(sink).values())})")

"""Delivering events: retries under the same id, 410 disables, redirects are not
followed, an endpoint that is down does not hold up mail, and private addresses are
refused outside development (real HTTP receiver, Celery eager, real Redis and SMTP)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
import redis
from flask import Flask
from flask.testing import FlaskClient

from tasks.campaigns.store import CampaignStore
from tasks.reconciler.service import Reconciler
from tasks.webhooks.client import UnsafeURL, check_url, public
from tasks.webhooks.store import DISPATCH_PENDING, Event, EventOutbox, WebhookEndpoints
from tasks.webhooks.tasks import BACKOFF_CAP, backoff, emit
from tests.conftest import AUTH, app_config
from tests.support.campaign_helpers import create, csv_bytes, people, show
from tests.support.smtp_server import SMTPTestServer
from tests.support.webhook_receiver import Receiver, receiving
from web import create_app
from web.testing import free_port

MESSAGE = {"to": ["ada@example.com"], "subject": "Hi", "body": "Hello"}


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    with receiving() as receiver:
        yield receiver


def register(client: FlaskClient, url: str, **fields: Any) -> dict[str, Any]:
    response = client.post("/api/webhooks", headers=AUTH, json={"url": url, **fields})
    assert response.status_code == 201, response.get_json()
    created: dict[str, Any] = response.get_json()
    return created


def deliveries(client: FlaskClient, endpoint_id: str) -> list[dict[str, Any]]:
    response = client.get(f"/api/webhooks/{endpoint_id}/deliveries", headers=AUTH)
    assert response.status_code == 200, response.get_json()
    found: list[dict[str, Any]] = response.get_json()["deliveries"]
    return found


def test_an_endpoint_answering_503_then_200_gets_the_same_event_twice(
        client: FlaskClient, receiver: Receiver, smtp_server: SMTPTestServer) -> None:
    endpoint = register(client, f"{receiver.url}/hook")
    receiver.answers = [503]
    client.post("/api/messages", headers=AUTH, json=MESSAGE)
    first, second = receiver.calls
    assert first.body == second.body and first.event["id"] == second.event["id"]
    assert first.signed_with(endpoint["secret"]) and second.signed_with(endpoint["secret"])
    log = deliveries(client, endpoint["id"])  # newest first
    assert [(a["attempt"], a["status_code"]) for a in log] == [(2, 200), (1, 503)]
    assert {a["event_id"] for a in log} == {first.event["id"]}
    assert {a["event_type"] for a in log} == {"message.sent"}


def test_410_disables_the_endpoint(client: FlaskClient, receiver: Receiver,
                                   smtp_server: SMTPTestServer) -> None:
    endpoint = register(client, f"{receiver.url}/hook")
    receiver.default = 410
    client.post("/api/messages", headers=AUTH, json=MESSAGE)
    assert len(receiver.calls) == 1  # not retried
    [shown] = client.get("/api/webhooks", headers=AUTH).get_json()["webhooks"]
    assert shown["id"] == endpoint["id"] and shown["disabled"] is True
    assert shown["disabled_at"] is not None
    client.post("/api/messages", headers=AUTH, json=MESSAGE)
    assert len(receiver.calls) == 1  # nothing more goes to it
    assert len(smtp_server.received) == 2


def test_redirects_are_not_followed(client: FlaskClient, receiver: Receiver,
                                    smtp_server: SMTPTestServer) -> None:
    endpoint = register(client, f"{receiver.url}/hook")
    receiver.answers = [302]
    client.post("/api/messages", headers=AUTH, json=MESSAGE)
    assert [call.path for call in receiver.calls] == ["/hook", "/hook"]  # retried, not moved
    assert [a["status_code"] for a in deliveries(client, endpoint["id"])] == [200, 302]


def test_an_endpoint_that_is_down_does_not_hold_up_a_campaign(
        client: FlaskClient, smtp_server: SMTPTestServer, redis_client: redis.Redis) -> None:
    endpoint = register(client, f"http://127.0.0.1:{free_port()}/hook")  # nothing listens
    campaign = create(client, csv_bytes(people(5)))
    assert show(client, campaign["id"])["status"] == "completed"
    counts = CampaignStore(redis_client).ledger(campaign["id"]).counts()
    assert counts["sent"] == 5 and counts["queued"] == counts["sending"] == 0
    assert len(smtp_server.received) == 5
    log = deliveries(client, endpoint["id"])
    assert log and all(a["status_code"] is None and a["error"] for a in log)


def test_the_delivery_log_is_paged(client: FlaskClient, receiver: Receiver,
                                   smtp_server: SMTPTestServer) -> None:
    endpoint = register(client, f"{receiver.url}/hook")
    create(client, csv_bytes(people(60)))
    first = client.get(f"/api/webhooks/{endpoint['id']}/deliveries", headers=AUTH).get_json()
    assert len(first["deliveries"]) == 50 and first["next_cursor"] == 50
    rest = client.get(f"/api/webhooks/{endpoint['id']}/deliveries?cursor=50",
                      headers=AUTH).get_json()
    assert len(rest["deliveries"]) == 12 and rest["next_cursor"] is None  # 60 sent, 2 more


def test_retries_back_off_from_under_a_minute_and_stay_capped() -> None:
    assert 0 < backoff(1) <= 60
    assert backoff(4) > 60
    assert all(backoff(n) <= BACKOFF_CAP for n in range(1, 60))


def production_app(redis_url: str, smtp_port: int, **overrides: Any) -> Any:
    config = app_config(redis_url, smtp_port, TESTING=False, POSTROOM_ENV="production",
                        PUBLIC_URL="https://mail.example.com", METRICS_TOKEN="m-t", **overrides)
    return create_app(config)


@pytest.mark.parametrize("url", [
    "http://127.0.0.1:8080/hook", "http://localhost/hook", "http://10.1.2.3/hook",
    "http://192.168.0.10/hook", "http://169.254.169.254/latest/meta-data",
    "http://[::1]/hook", "http://[::ffff:127.0.0.1]/hook", "http://224.0.0.1/hook",
    "http://0.0.0.0/hook", "http://240.0.0.1/hook",
])
def test_private_addresses_are_refused_outside_development(
        redis_client: redis.Redis, redis_url: str, smtp_server: SMTPTestServer,
        url: str) -> None:
    client = production_app(redis_url, smtp_server.port).test_client()
    response = client.post("/api/webhooks", headers=AUTH, json={"url": url})
    assert response.status_code == 422, response.get_json()
    assert "url" in response.get_json()["error"]["fields"]
    assert client.get("/api/webhooks", headers=AUTH).get_json()["webhooks"] == []


def test_private_addresses_are_allowed_when_configured_and_in_development(
        redis_client: redis.Redis, redis_url: str, smtp_server: SMTPTestServer,
        client: FlaskClient) -> None:
    allowed = production_app(redis_url, smtp_server.port,
                             WEBHOOK_ALLOW_PRIVATE="true").test_client()
    assert allowed.post("/api/webhooks", headers=AUTH,
                        json={"url": "http://127.0.0.1:8080/hook"}).status_code == 201
    assert client.post("/api/webhooks", headers=AUTH,  # TESTING: allowed by default
                       json={"url": "http://10.0.0.1/hook"}).status_code == 201


def test_an_endpoint_whose_address_turned_private_is_not_called(
        redis_client: redis.Redis, redis_url: str, smtp_server: SMTPTestServer,
        receiver: Receiver) -> None:
    app = production_app(redis_url, smtp_server.port, WEBHOOK_ALLOW_PRIVATE=True)
    client = app.test_client()
    endpoint = register(client, f"{receiver.url}/hook")
    app.config["WEBHOOK_ALLOW_PRIVATE"] = False  # as if its name now resolved to 127.0.0.1
    client.post("/api/messages", headers=AUTH, json=MESSAGE)
    assert receiver.calls == []
    log = deliveries(client, endpoint["id"])
    assert log and all("non-public address" in a["error"] for a in log)


@pytest.mark.parametrize("url", ["ftp://example.com/hook", "file:///etc/passwd",
                                 "javascript:alert(1)", "http:///nohost",
                                 "http://user:pw@example.com/", "http://[::1/"])
def test_only_http_urls_to_a_host_are_taken(url: str) -> None:
    with pytest.raises(UnsafeURL):
        check_url(url, allow_private=True)


def test_public_addresses_pass() -> None:
    assert public("93.184.216.34") and public("2606:2800:220:1::1")
    assert not public("fd00::1") and not public("fe80::1") and not public("100.64.0.1")


def test_a_name_that_does_not_resolve_is_refused() -> None:
    with pytest.raises(UnsafeURL, match="does not resolve"):
        check_url("https://no-such-host.invalid/hook", allow_private=False)


def test_events_whose_dispatcher_was_lost_are_sent_by_the_reconciler(
        app: Flask, client: FlaskClient, receiver: Receiver, redis_client: redis.Redis) -> None:
    register(client, f"{receiver.url}/hook")
    event = Event("recipient.unsubscribed", {"email": "ada@example.com", "campaign_id": None})
    EventOutbox(redis_client).append([event])  # queued, as if its dispatcher never ran
    assert receiver.calls == []
    with app.app_context():
        assert not Reconciler(redis_client, grace=30).run()  # a dispatcher is still expected
        redis_client.delete(DISPATCH_PENDING)  # ... and it is lost
        assert Reconciler(redis_client, grace=30).run().deliveries == {"events": 1}
    assert [call.event["id"] for call in receiver.calls] == [event.id]
    assert EventOutbox(redis_client).waiting() == 0


def test_events_wait_in_the_outbox_when_the_broker_is_away(
        redis_client: redis.Redis, redis_url: str, smtp_server: SMTPTestServer) -> None:
    away = f"redis://127.0.0.1:{free_port()}/0"  # nothing listens there
    app = create_app(app_config(redis_url, smtp_server.port, CELERY_BROKER_URL=away,
                                CELERY={"broker_connection_max_retries": 1}))
    WebhookEndpoints(redis_client).create("https://hooks.example.com/postroom", ["otp.sent"])
    event = Event("otp.sent", {"request_id": "a" * 32, "status": "sent", "error": None})
    with app.app_context():
        emit(redis_client, [event])  # does not raise: the reconciler dispatches it later
    assert EventOutbox(redis_client).waiting() == 1
    assert not redis_client.exists(DISPATCH_PENDING)

"""``/api/webhooks``: register, list (no secrets), delete, and the delivery log's errors."""

from __future__ import annotations

import re

from flask.testing import FlaskClient

from tasks.webhooks.store import EVENT_TYPES
from tests.conftest import AUTH

HOOK = "https://hooks.example.com/postroom"


def test_an_endpoint_takes_every_type_by_default_and_its_secret_is_shown_once(
        client: FlaskClient) -> None:
    response = client.post("/api/webhooks", headers=AUTH, json={"url": HOOK})
    assert response.status_code == 201
    created = response.get_json()
    assert set(created) == {"id", "url", "events", "secret", "created_at"}
    assert re.fullmatch(r"[0-9a-f]{32}", created["id"]) and created["url"] == HOOK
    assert created["events"] == list(EVENT_TYPES) and len(EVENT_TYPES) == 10
    assert len(created["secret"]) >= 32
    listed = client.get("/api/webhooks", headers=AUTH)
    assert listed.status_code == 200
    [shown] = listed.get_json()["webhooks"]
    assert shown["id"] == created["id"] and shown["disabled"] is False
    assert "secret" not in shown and created["secret"] not in listed.get_data(as_text=True)


def test_chosen_types_are_kept(client: FlaskClient) -> None:
    created = client.post("/api/webhooks", headers=AUTH, json={
        "url": HOOK, "events": ["message.bounced", "otp.failed", "message.bounced"]}).get_json()
    assert created["events"] == ["message.bounced", "otp.failed"]


def test_unknown_or_no_event_types_are_a_422_naming_events(client: FlaskClient) -> None:
    for events in (["message.opened"], [], ["message.sent", 7]):
        response = client.post("/api/webhooks", headers=AUTH,
                               json={"url": HOOK, "events": events})
        assert response.status_code == 422, (events, response.get_json())
        assert any(name.startswith("events") for name in response.get_json()["error"]["fields"])
    assert client.get("/api/webhooks", headers=AUTH).get_json()["webhooks"] == []


def test_bad_urls_are_a_422_naming_url(client: FlaskClient) -> None:
    for url in ("ftp://example.com/x", "not a url", "http://", 42, "https://" + "a" * 3000):
        response = client.post("/api/webhooks", headers=AUTH, json={"url": url})
        assert response.status_code == 422, (url, response.get_json())
        assert "url" in response.get_json()["error"]["fields"]


def test_delete_removes_an_endpoint_once(client: FlaskClient) -> None:
    created = client.post("/api/webhooks", headers=AUTH, json={"url": HOOK}).get_json()
    assert client.delete(f"/api/webhooks/{created['id']}", headers=AUTH).status_code == 204
    assert client.get("/api/webhooks", headers=AUTH).get_json()["webhooks"] == []
    again = client.delete(f"/api/webhooks/{created['id']}", headers=AUTH)
    assert again.status_code == 404 and again.get_json()["error"]["code"] == "not_found"
    assert client.get(f"/api/webhooks/{created['id']}/deliveries",
                      headers=AUTH).status_code == 404


def test_the_delivery_log_of_a_new_endpoint_is_empty_and_its_cursor_checked(
        client: FlaskClient) -> None:
    created = client.post("/api/webhooks", headers=AUTH, json={"url": HOOK}).get_json()
    path = f"/api/webhooks/{created['id']}/deliveries"
    assert client.get(path, headers=AUTH).get_json() == {"deliveries": [], "next_cursor": None}
    for cursor in ("-1", "x", "99999999999"):
        response = client.get(f"{path}?cursor={cursor}", headers=AUTH)
        assert response.status_code == 422 and "cursor" in response.get_json()["error"]["fields"]
    assert client.get("/api/webhooks/not-an-id/deliveries", headers=AUTH).status_code == 404


def test_webhooks_need_the_token(client: FlaskClient) -> None:
    assert client.get("/api/webhooks").status_code == 401
    assert client.post("/api/webhooks", json={"url": HOOK}).status_code == 401

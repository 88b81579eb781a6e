"""The suppression list over the API: reasons and times, paging, search, removal, and a
PUT that reaches a campaign already scheduled (real Redis and SMTP, Celery eager)."""

from __future__ import annotations

import time
from typing import Any

import pytest
import redis
from flask import Flask
from flask.testing import FlaskClient

from tasks.bounces.store import SuppressionList
from tasks.campaigns.store import CampaignStore
from tasks.campaigns.tasks import start_due_campaigns
from tests.conftest import AUTH
from tests.support.campaign_helpers import create, csv_bytes, people
from tests.support.smtp_server import SMTPTestServer


@pytest.fixture
def config_overrides() -> dict[str, Any]:
    return {"PUBLIC_URL": "https://news.example.org"}


def test_put_show_list_and_delete_an_address(client: FlaskClient) -> None:
    before = time.time()
    put = client.put("/api/suppressions/Ada@Example.com", json={"reason": "manual"},
                     headers=AUTH)
    assert put.status_code == 200, put.get_json()
    shown = client.get("/api/suppressions/ada@example.com", headers=AUTH).get_json()
    assert shown["email"] == "ada@example.com" and shown["reason"] == "manual"
    assert before <= shown["created_at"] <= time.time()

    again = client.put("/api/suppressions/ada@example.com", json={"reason": "complained"},
                       headers=AUTH).get_json()
    assert again["reason"] == "complained"  # a PUT sets the reason it names
    listed = client.get("/api/suppressions?q=ada", headers=AUTH).get_json()
    assert [s["email"] for s in listed["suppressions"]] == ["ada@example.com"]

    assert client.delete("/api/suppressions/ada@example.com", headers=AUTH).status_code == 204
    assert client.get("/api/suppressions/ada@example.com", headers=AUTH).status_code == 404
    assert client.delete("/api/suppressions/ada@example.com", headers=AUTH).status_code == 404


def test_bad_input_is_a_clear_4xx(client: FlaskClient) -> None:
    bad_reason = client.put("/api/suppressions/ada@example.com", json={"reason": "because"},
                            headers=AUTH)
    assert bad_reason.status_code == 422
    assert client.get("/api/suppressions/not-an-address", headers=AUTH).status_code == 404
    assert client.get("/api/suppressions?cursor=nan", headers=AUTH).status_code == 422
    assert client.get("/api/suppressions").status_code == 401


def test_the_whole_list_comes_page_by_page(client: FlaskClient,
                                           redis_client: redis.Redis) -> None:
    suppressions = SuppressionList(redis_client)
    for i in range(250):
        suppressions.add(f"p{i}@example.com", "bounced")
    redis_client.sadd("postroom:suppression", "old@example.com")  # kept before reasons were
    seen: list[dict[str, Any]] = []
    cursor: int | None = 0
    while cursor is not None:
        page = client.get(f"/api/suppressions?cursor={cursor}", headers=AUTH).get_json()
        seen += page["suppressions"]
        cursor = page["next_cursor"]
    emails = [s["email"] for s in seen]
    assert len(emails) == len(set(emails)) == 251
    [old] = [s for s in seen if s["email"] == "old@example.com"]
    assert (old["reason"], old["created_at"]) == ("unsubscribed", None)


def test_an_unsubscribe_is_listed_with_its_campaign(client: FlaskClient,
                                                    smtp_server: SMTPTestServer) -> None:
    rows = people(2)
    accepted = create(client, csv_bytes(rows), body="Leave: {{ unsubscribe_url }}")
    [received] = smtp_server.to(rows[0]["email"])
    link = str(received.message["List-Unsubscribe"]).strip("<>")
    assert client.post(link.removeprefix("https://news.example.org")).status_code == 200
    shown = client.get(f"/api/suppressions/{rows[0]['email']}", headers=AUTH).get_json()
    assert (shown["reason"], shown["campaign_id"]) == ("unsubscribed", accepted["id"])


def test_a_put_reaches_a_campaign_already_scheduled(
        app: Flask, client: FlaskClient, redis_client: redis.Redis,
        smtp_server: SMTPTestServer) -> None:
    rows = people(3)
    accepted = create(client, csv_bytes(rows), send_at=str(time.time() + 1))
    assert accepted["status"] == "scheduled"
    client.put(f"/api/suppressions/{rows[1]['email']}", json={"reason": "manual"},
               headers=AUTH)
    time.sleep(1.1)
    with app.app_context():
        start_due_campaigns.apply()
    ledger = CampaignStore(redis_client).ledger(accepted["id"])
    assert [r.status for r in ledger.get([0, 1, 2])] == ["sent", "suppressed", "sent"]
    assert sorted(a for r in smtp_server.received for a in r.recipients) == sorted(
        [rows[0]["email"], rows[2]["email"]])


def test_a_synchronous_no_such_user_suppresses_the_address(
        client: FlaskClient, smtp_server: SMTPTestServer) -> None:
    rows = people(3)
    gone = rows[1]["email"]
    smtp_server.handler.rcpt_reply = lambda a: "550 5.1.1 no such user" if a == gone else None
    accepted = create(client, csv_bytes(rows))
    shown = client.get(f"/api/suppressions/{gone}", headers=AUTH).get_json()
    assert (shown["reason"], shown["campaign_id"]) == ("bounced", accepted["id"])
    assert client.get(f"/api/suppressions/{rows[0]['email']}", headers=AUTH).status_code == 404

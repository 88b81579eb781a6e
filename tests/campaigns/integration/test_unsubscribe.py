"""RFC 8058 one-click unsubscribe: the link in the mail, the suppression list, later campaigns."""

from __future__ import annotations

from typing import Any
from urllib.parse import urlsplit

import pytest
from flask import Flask
from flask.testing import FlaskClient
from itsdangerous import URLSafeSerializer

from tasks.bounces.store import (
    SALT,
    SuppressionList,
    UnsubscribeTokens,
    read_unsubscribe_token,
    unsubscribe_token,
)
from tests.support.campaign_helpers import create, csv_bytes, people, recipients
from tests.support.smtp_server import SMTPTestServer


@pytest.fixture
def config_overrides() -> dict[str, Any]:
    return {"PUBLIC_URL": "https://news.example.org"}


def unsubscribe_path(smtp_server: SMTPTestServer, address: str) -> str:
    [received] = smtp_server.to(address)
    message = received.message
    assert message["List-Unsubscribe-Post"] == "List-Unsubscribe=One-Click"
    link = str(message["List-Unsubscribe"]).strip("<>")
    assert link.startswith("https://news.example.org/unsubscribe/")
    assert link in message.get_content()  # {{ unsubscribe_url }} in the body is the same link
    return urlsplit(link).path


def test_one_click_unsubscribe_is_honoured_by_later_campaigns(
        client: FlaskClient, app: Flask, smtp_server: SMTPTestServer) -> None:
    rows = people(3)
    first = create(client, csv_bytes(rows), body="Hi {{ name }}. Leave: {{ unsubscribe_url }}")
    leaving = rows[1]["email"]
    path = unsubscribe_path(smtp_server, leaving)
    lists = {str(r.message["List-Id"]) for r in smtp_server.received}
    messages = {str(r.message["Message-ID"]) for r in smtp_server.received}
    assert len(lists) == 1 and lists.pop().startswith(f"<{first['id']}.")  # one list (RFC 2919)
    assert len(messages) == 3 and all(m.startswith(f"<{first['id']}.") for m in messages)

    page = client.get(path)
    assert page.status_code == 200
    assert leaving in page.get_data(as_text=True)
    assert "<button" in page.get_data(as_text=True)
    assert leaving not in SuppressionList(app.extensions["redis"])  # GET changes nothing

    # what a mail client sends (RFC 8058): a POST with no cookie and no CSRF token
    done = client.post(path, data={"List-Unsubscribe": "One-Click"})
    assert done.status_code == 200
    assert "You are unsubscribed" in done.get_data(as_text=True)
    assert leaving in SuppressionList(app.extensions["redis"])
    assert client.post(path, data={"List-Unsubscribe": "One-Click"}).status_code == 200

    smtp_server.reset()
    second = create(client, csv_bytes(rows), body="Again, {{ name }}")
    assert second["suppressed"] == 1 and second["total"] == 3
    assert sorted(r.recipients[0] for r in smtp_server.received) == sorted(
        row["email"] for row in rows if row["email"] != leaving)
    statuses = {r["email"]: r["status"] for r in recipients(client, second["id"])}
    assert statuses[leaving] == "suppressed"
    assert first["id"] != second["id"]


def test_a_link_cut_short_says_so_and_changes_nothing(
        client: FlaskClient, app: Flask, smtp_server: SMTPTestServer) -> None:
    rows = people(1)
    create(client, csv_bytes(rows), body="Leave: {{ unsubscribe_url }}")
    cut_short = unsubscribe_path(smtp_server, rows[0]["email"])[:-6]
    for answer in (client.get(cut_short), client.post(cut_short)):
        assert answer.status_code == 404
        assert "This unsubscribe link does not work" in answer.get_data(as_text=True)
    assert len(SuppressionList(app.extensions["redis"])) == 0


@pytest.mark.parametrize("token", [
    "not-a-token",
    unsubscribe_token("another-secret", "ada@example.com", "c1"),
])
def test_forged_tokens_are_refused(client: FlaskClient, app: Flask, token: str) -> None:
    assert client.get(f"/unsubscribe/{token}").status_code == 404
    assert client.post(f"/unsubscribe/{token}").status_code == 404
    assert len(SuppressionList(app.extensions["redis"])) == 0


def test_token_round_trip_and_tampering() -> None:
    token = unsubscribe_token("k", " Ada@Example.com ", "c1")
    found = read_unsubscribe_token("k", token)
    assert found is not None and (found.email, found.campaign_id) == ("ada@example.com", "c1")
    assert read_unsubscribe_token("k", token[:-2] + ("A" if token[-1] != "A" else "B")) is None
    assert read_unsubscribe_token("other", token) is None


@pytest.mark.parametrize("email", ["ada@example.com", " Ada@Example.com ", "zoë@exämple.de",
                                   "x" * 120 + "@example.com",  # compressed
                                   "ab" * 40 + "@" + "cd" * 40 + ".com"])
def test_tokens_signed_once_per_batch_are_itsdangerous_tokens(email: str) -> None:
    """The batch's signer (key derived once) writes exactly what itsdangerous writes, so
    links already in inboxes and links sent now are read the same way."""
    tokens = UnsubscribeTokens("batch-secret")
    expected = URLSafeSerializer("batch-secret", salt=SALT).dumps([email.strip().lower(), "c9"])
    assert tokens.token(email, "c9") == expected
    assert tokens.token(email, "c9") == expected  # the keyed HMAC is copied, never reused
    found = read_unsubscribe_token("batch-secret", tokens.token(email, "c10"))
    assert found is not None and found.campaign_id == "c10"

"""The operator's draft flow without a browser: save as draft, review, test, start."""

from __future__ import annotations

import io
import re
from typing import Any

import pytest
from flask.testing import FlaskClient

from tests.campaigns.integration.test_campaign_pages import csrf_token, sign_in
from tests.support.campaign_helpers import csv_bytes, people, show
from tests.support.smtp_server import SMTPTestServer


@pytest.fixture
def config_overrides() -> dict[str, Any]:
    return {"ADMIN_USERNAME": "operator", "ADMIN_PASSWORD": "correct horse battery",
            "ADMIN_EMAIL": "Operator <ops@example.org>"}


def visible_actions(page: str) -> list[str]:
    forms = re.findall(r'<form method="post" action="[^"]+/(\w[\w-]*)" class="inline"\s+'
                       r'data-when="[^"]*"[^>]*?(hidden)?>', page)
    return [action for action, hidden in forms if not hidden]


def test_save_as_draft_review_test_and_start(client: FlaskClient,
                                             smtp_server: SMTPTestServer) -> None:
    sign_in(client)
    token = csrf_token(client, "/campaigns/new")
    new_page = client.get("/campaigns/new").get_data(as_text=True)
    assert 'name="draft" value="true">Save as draft' in new_page
    assert 'data-confirm="Send this campaign' in new_page
    response = client.post("/campaigns/new", content_type="multipart/form-data", data={
        "csrf_token": token, "name": "Drafted", "subject": "Hi {{ name }}",
        "body": "Hello {{ name }}", "draft": "true",
        "file": (io.BytesIO(csv_bytes(people(4))), "drafted.csv")})
    assert response.status_code == 303, response.get_data(as_text=True)
    campaign_id = response.location.rstrip("/").rsplit("/", 1)[-1]
    assert smtp_server.received == []

    page = client.get(f"/campaigns/{campaign_id}").get_data(as_text=True)
    assert '<span class="status" data-part="status">draft</span>' in page
    assert '<dd class="preview-subject">Hi Person 0</dd>' in page
    assert 'name="to" value="ops@example.org"' in page  # the operator's own address
    assert visible_actions(page) == ["start", "cancel"]
    assert 'data-confirm="Start this campaign now?' in page

    token = csrf_token(client, f"/campaigns/{campaign_id}")
    sent = client.post(f"/campaigns/{campaign_id}/test",
                       data={"csrf_token": token, "to": "ops@example.org"})
    assert sent.status_code == 303
    [test] = smtp_server.received
    assert test.recipients == ["ops@example.org"]
    assert test.message["Subject"] == "[Test] Hi Person 0"
    assert show(client, campaign_id)["status"] == "draft"

    bad = client.post(f"/campaigns/{campaign_id}/test",
                      data={"csrf_token": token, "to": "not an address"})
    assert bad.status_code == 303
    assert "Test not sent" in client.get(f"/campaigns/{campaign_id}").get_data(as_text=True)
    assert len(smtp_server.received) == 1
    assert client.post(f"/campaigns/{campaign_id}/test",
                       data={"to": "ops@example.org"}).status_code == 400  # no CSRF token

    started = client.post(f"/campaigns/{campaign_id}/start", data={"csrf_token": token})
    assert started.status_code == 303
    assert show(client, campaign_id)["status"] == "completed"
    assert len(smtp_server.received) == 5
    page = client.get(f"/campaigns/{campaign_id}").get_data(as_text=True)
    assert "Review the draft" not in page and visible_actions(page) == []

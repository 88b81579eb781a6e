"""The API's answers beyond its bodies: JSON for every /api error (unknown paths and wrong
methods included), WWW-Authenticate on 401, Location on 202, named and tagged operations,
and a message or campaign with no sender anywhere refused at request time."""

from __future__ import annotations

from typing import Any

import pytest
import redis
from flask.testing import FlaskClient

from tests.conftest import AUTH, app_config
from tests.support.smtp_server import SMTPTestServer
from web import create_app


def error_of(response: Any, status: int) -> dict[str, Any]:
    assert response.status_code == status, response.get_data(as_text=True)
    assert response.mimetype == "application/json"
    error: dict[str, Any] = response.get_json()["error"]
    assert error["code"] and error["message"]
    return error


@pytest.mark.parametrize("path", ["/api", "/api/", "/api/nothing/here", "/api/messages/x/y"])
def test_unknown_api_paths_answer_json_404(client: FlaskClient, path: str) -> None:
    assert error_of(client.get(path, headers=AUTH), 404)["code"] == "not_found"
    error_of(client.post(path, json={}), 404)


@pytest.mark.parametrize(("method", "path", "allowed"), [
    ("get", "/api/messages", {"POST"}),
    ("delete", "/api/otp", {"POST"}),
    ("put", "/api/campaigns", {"GET", "POST"}),
    ("get", f"/api/campaigns/{'a' * 32}/retry-failed", {"POST"}),
])
def test_wrong_methods_answer_json_405_with_allow(client: FlaskClient, method: str, path: str,
                                                  allowed: set[str]) -> None:
    response = getattr(client, method)(path, headers=AUTH)
    assert error_of(response, 405)["code"] == "method_not_allowed"
    assert allowed <= {m.strip() for m in response.headers["Allow"].split(",")}


def test_pages_keep_html_errors(client: FlaskClient) -> None:
    response = client.get("/no-such-page")
    assert response.status_code == 404 and response.mimetype == "text/html"


@pytest.mark.parametrize("headers", [{}, {"Authorization": "Bearer wrong"},
                                     {"Authorization": "Basic dXNlcjpwYXNz"}])
def test_401_names_the_bearer_scheme(client: FlaskClient, headers: dict[str, str]) -> None:
    response = client.get(f"/api/messages/{'a' * 32}", headers=headers)
    assert error_of(response, 401)["code"] == "unauthorized"
    assert response.headers["WWW-Authenticate"].startswith("Bearer")


def test_202_answers_carry_the_resource_location(client: FlaskClient,
                                                 smtp_server: SMTPTestServer) -> None:
    posts = [("/api/messages", {"to": "ada@example.com", "subject": "Hi", "body": "Hello"}),
             ("/api/otp", {"email": "ada@example.com"}),
             ("/api/campaigns", {"subject": "Hi {{ name }}", "body": "Hello",
                                 "recipients": [{"email": "bob@example.com", "name": "Bob"}]})]
    for path, body in posts:
        response = client.post(path, json=body, headers=AUTH)
        assert response.status_code == 202, response.get_json()
        created = response.get_json()["id"]
        location = response.headers["Location"]
        assert location == f"{path}/{created}"
        shown = client.get(location, headers=AUTH)
        assert shown.status_code == 200 and shown.get_json()["id"] == created


def test_every_operation_has_a_readable_name_and_a_tag(client: FlaskClient) -> None:
    document = client.get("/api/openapi.json").get_json()
    tags = {tag["name"] for tag in document["tags"]}
    names: dict[str, tuple[str, str]] = {}
    for path, operations in document["paths"].items():
        for method, operation in operations.items():
            name = operation["operationId"]
            assert name.isidentifier() and name[0].islower() and "_" not in name, name
            assert name not in names, f"{name} names {names[name]} and {(method, path)}"
            names[name] = (method, path)
            assert len(operation["tags"]) == 1 and operation["tags"][0] in tags
            if "202" in operation["responses"]:
                assert "Location" in operation["responses"]["202"]["headers"]
            if "401" in operation["responses"]:
                assert "WWW-Authenticate" in operation["responses"]["401"]["headers"]
    assert names["createMessage"] == ("post", "/api/messages")
    assert names["retryFailedCampaign"] == ("post", "/api/campaigns/{campaign_id}/retry-failed")
    assert names["requestCode"] == ("post", "/api/otp")
    assert names["takeBounce"] == ("post", "/api/bounces")
    assert names["createWebhook"] == ("post", "/api/webhooks")
    assert len(names) == 24  # with startCampaign and testCampaign


def test_no_sender_anywhere_is_a_422_naming_sender(redis_client: redis.Redis, redis_url: str,
                                                   smtp_server: SMTPTestServer) -> None:
    app = create_app(app_config(redis_url, smtp_server.port, MAIL_DEFAULT_SENDER=None))
    client = app.test_client()
    message = {"to": "ada@example.com", "subject": "Hi", "body": "Hello"}
    error = error_of(client.post("/api/messages", json=message, headers=AUTH), 422)
    assert "sender" in error["fields"]
    form = client.post("/api/messages", headers=AUTH, content_type="multipart/form-data",
                       data={"to": "ada@example.com", "subject": "Hi", "body": "Hello"})
    assert "sender" in error_of(form, 422)["fields"]
    campaign = {"subject": "Hi", "body": "Hello", "recipients": [{"email": "bob@example.com"}]}
    error = error_of(client.post("/api/campaigns", json=campaign, headers=AUTH), 422)
    assert "sender" in error["fields"]
    assert client.get("/api/campaigns", headers=AUTH).get_json()["campaigns"] == []
    assert smtp_server.session_count == 0

    sent = client.post("/api/messages", json=message | {"sender": "desk@example.com"},
                       headers=AUTH)
    assert sent.status_code == 202
    [received] = smtp_server.to("ada@example.com")
    assert received.message["From"] == "desk@example.com"
    started = client.post("/api/campaigns", json=campaign | {"sender": "desk@example.com"},
                          headers=AUTH)
    assert started.status_code == 202
    assert len(smtp_server.to("bob@example.com")) == 1

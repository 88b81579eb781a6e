"""``postroom_client.Postroom`` against the app over real HTTP (werkzeug in a thread,
Celery eager, real Redis and SMTP): each operation, retries with one Idempotency-Key,
errors as exceptions, and the webhook signature check on a real event."""

from __future__ import annotations

import time
from collections.abc import Iterator

import pytest
from flask import Flask

from postroom_client import (
    Attachment,
    Conflict,
    InvalidRequest,
    NotFound,
    Postroom,
    RetryPolicy,
    SignatureError,
    TransportError,
    Unauthorized,
    Unavailable,
    sign,
    verify_signature,
)
from tasks.webhooks.client import signature as server_signature
from tests.conftest import API_TOKEN
from tests.support.client_support import Front, serving
from tests.support.otp_support import latest_code
from tests.support.smtp_server import SMTPTestServer
from tests.support.webhook_receiver import receiving
from web.testing import free_port

FAST = RetryPolicy(attempts=3, base=0.01, cap=0.05)


@pytest.fixture
def front(app: Flask) -> Front:
    return Front(app.wsgi_app)


@pytest.fixture
def base_url(front: Front) -> Iterator[str]:
    with serving(front) as url:
        yield url


@pytest.fixture
def postroom(base_url: str) -> Iterator[Postroom]:
    with Postroom(base_url, API_TOKEN, timeout=10, retry=FAST) as client:
        yield client


def test_send_message_queues_it_and_get_message_shows_each_recipient(
        postroom: Postroom, base_url: str, smtp_server: SMTPTestServer, front: Front) -> None:
    accepted = postroom.send_message(to="ada@example.com", cc=["Carol <carol@example.com>"],
                                     bcc=["bob@example.com"], subject="Hello",
                                     body="Plain", html="<p>Rich</p>",
                                     headers={"X-Order": "1234"})
    assert accepted.status == "queued" and not accepted.replayed
    assert accepted.status_url == f"{base_url}/api/messages/{accepted.id}"
    [sent] = front.requests_to("POST", "/api/messages")
    assert len(sent.headers["Idempotency-Key"]) == 36  # a UUID for every send
    shown = postroom.get_message(accepted.id)
    assert shown.id == accepted.id and shown.status == "sent"
    assert sorted((r.email, r.status) for r in shown.recipients) == [
        ("ada@example.com", "sent"), ("bob@example.com", "sent"), ("carol@example.com", "sent")]
    [received] = smtp_server.received
    assert received.message["X-Order"] == "1234"
    assert received.message["Cc"] == "Carol <carol@example.com>"


def test_attachments_go_as_multipart_and_arrive_byte_for_byte(
        postroom: Postroom, smtp_server: SMTPTestServer) -> None:
    data = bytes(range(256)) * 8
    postroom.send_message(to=["ada@example.com", '"Lovelace, Ada" <ada2@example.com>'],
                          subject="Files", body="See attached",
                          reply_to="help@example.com", headers={"X-Ref": "a"},
                          attachments=[Attachment("data.bin", data),
                                       Attachment("Bericht ü.txt", "Grüße".encode(),
                                                  "text/plain")])
    [received] = smtp_server.received
    files = {part.get_filename(): part for part in received.message.iter_attachments()}
    assert files["data.bin"].get_content() == data
    assert files["Bericht ü.txt"].get_payload(decode=True) == "Grüße".encode()
    assert received.message["Reply-To"] == "help@example.com"
    assert received.message["X-Ref"] == "a"
    assert received.message["To"] == 'ada@example.com, "Lovelace, Ada" <ada2@example.com>'
    assert sorted(received.recipients) == ["ada2@example.com", "ada@example.com"]


def test_a_send_refused_once_is_retried_with_the_same_idempotency_key(
        postroom: Postroom, front: Front, smtp_server: SMTPTestServer) -> None:
    front.failures.append(("POST", "/api/messages", "refuse"))
    accepted = postroom.send_message(to="ada@example.com", subject="Once", body="x")
    first, second = front.requests_to("POST", "/api/messages")
    assert first.headers["Idempotency-Key"] == second.headers["Idempotency-Key"]
    assert accepted.status == "queued"
    assert len(smtp_server.received) == 1


def test_a_send_whose_answer_was_lost_is_sent_once(
        postroom: Postroom, front: Front, smtp_server: SMTPTestServer) -> None:
    """The app queued the message, the caller saw a 502: the retry is a replay."""
    front.failures.append(("POST", "/api/messages", "lose"))
    accepted = postroom.send_message(to="ada@example.com", subject="Lost answer", body="x")
    assert accepted.replayed
    first, second = front.requests_to("POST", "/api/messages")
    assert first.headers["Idempotency-Key"] == second.headers["Idempotency-Key"]
    assert [r.message["Subject"] for r in smtp_server.received] == ["Lost answer"]
    assert postroom.get_message(accepted.id).status == "sent"


def test_a_given_idempotency_key_is_used_and_a_different_body_is_a_conflict(
        postroom: Postroom, smtp_server: SMTPTestServer) -> None:
    first = postroom.send_message(to="ada@example.com", subject="A", body="x",
                                  idempotency_key="order-1")
    again = postroom.send_message(to="ada@example.com", subject="A", body="x",
                                  idempotency_key="order-1")
    assert (again.id, again.replayed) == (first.id, True)
    with pytest.raises(Conflict) as raised:
        postroom.send_message(to="ada@example.com", subject="B", body="x",
                              idempotency_key="order-1")
    assert raised.value.status == 409 and raised.value.code == "idempotency_conflict"
    assert len(smtp_server.received) == 1


def test_a_post_without_a_key_is_not_retried(postroom: Postroom, front: Front) -> None:
    front.failures.append(("POST", "/api/otp", "refuse"))
    with pytest.raises(Unavailable) as raised:
        postroom.request_code("ada@example.com")
    assert raised.value.status == 503 and raised.value.retry_after == 0
    assert len(front.requests_to("POST", "/api/otp")) == 1


def test_gets_are_retried_until_attempts_run_out(postroom: Postroom, front: Front) -> None:
    accepted = postroom.send_message(to="ada@example.com", subject="S", body="x")
    path = f"/api/messages/{accepted.id}"
    front.failures.extend([("GET", path, "refuse")] * 3)
    with pytest.raises(Unavailable):
        postroom.get_message(accepted.id)
    assert len(front.requests_to("GET", path)) == FAST.attempts
    assert postroom.get_message(accepted.id).id == accepted.id  # failures used up


def test_no_server_is_a_transport_error_after_retries() -> None:
    with Postroom(f"http://127.0.0.1:{free_port()}", API_TOKEN, retry=FAST) as postroom:
        with pytest.raises(TransportError, match="ConnectError"):
            postroom.get_message("0" * 32)


def test_errors_carry_the_apis_code_message_and_fields(postroom: Postroom,
                                                       base_url: str) -> None:
    with pytest.raises(InvalidRequest) as invalid:
        postroom.send_message(to=["not an address"], subject="x", body="x")
    assert (invalid.value.status, invalid.value.code) == (422, "invalid")
    assert set(invalid.value.fields) == {"to.0"}
    with pytest.raises(NotFound) as missing:
        postroom.get_message("0" * 32)
    assert missing.value.code == "not_found" and "no message" in missing.value.message
    with Postroom(base_url, "wrong-token", retry=FAST) as stranger:
        with pytest.raises(Unauthorized) as refused:
            stranger.get_message("0" * 32)
    assert refused.value.code == "unauthorized"
    assert "wrong-token" not in repr(stranger) and API_TOKEN not in repr(postroom)


def test_codes_request_status_and_verify(postroom: Postroom,
                                         smtp_server: SMTPTestServer) -> None:
    accepted = postroom.request_code("ada@example.com")
    assert accepted.status == "queued" and accepted.status_url.endswith(accepted.id)
    shown = postroom.get_code_request(accepted.id)
    assert shown.id == accepted.id and shown.attempts_left == 5
    code = latest_code(smtp_server, "ada@example.com")
    wrong = "000000" if code != "000000" else "111111"
    assert postroom.verify_code(accepted.id, wrong) is False
    assert postroom.get_code_request(accepted.id).attempts_left == 4
    assert postroom.verify_code(accepted.id, code) is True
    assert postroom.verify_code(accepted.id, code) is False  # single use
    with pytest.raises(InvalidRequest) as malformed:
        postroom.verify_code(accepted.id, "abc")
    assert set(malformed.value.fields) == {"code"}


def test_campaigns_create_follow_and_control(postroom: Postroom,
                                             smtp_server: SMTPTestServer) -> None:
    created = postroom.create_campaign(
        name="Spring", subject="Hi {{ name }}", body="Hello {{ name }}",
        recipients=[{"email": "ada@example.com", "name": "Ada"},
                    {"email": "ada@example.com", "name": "Ada again"},
                    {"email": "bob@example.com", "name": "Bob"}])
    assert (created.total, created.duplicates, created.rejected) == (2, 1, 0)
    assert created.status_url.endswith(f"/api/campaigns/{created.id}")
    campaign = postroom.get_campaign(created.id)
    assert campaign.name == "Spring" and campaign.total == 2
    assert created.id in [c.id for c in postroom.list_campaigns(limit=10).campaigns]
    page = postroom.campaign_recipients(created.id, limit=1)
    assert len(page.recipients) == 1 and page.next_cursor is not None
    rest = postroom.campaign_recipients(created.id, cursor=page.next_cursor)
    assert {r.email for r in page.recipients + rest.recipients} == {
        "ada@example.com", "bob@example.com"}

    draft = postroom.create_campaign(subject="Draft", body="Later", draft=True,
                                     csv=b"email\ncarol@example.com\n")
    assert draft.status == "draft" and draft.total == 1
    tested = postroom.test_campaign(draft.id, ["eve@example.com"])
    assert tested.status == "draft" and tested.to == ["eve@example.com"]
    assert postroom.get_message(tested.message_id).recipients[0].email == "eve@example.com"
    assert postroom.cancel_campaign(draft.id).status == "cancelled"
    with pytest.raises(Conflict):
        postroom.resume_campaign(draft.id)
    with pytest.raises(Conflict):
        postroom.retry_failed(created.id)  # nothing failed
    with pytest.raises(NotFound):
        postroom.pause_campaign("f" * 32)


def test_a_draft_starts_scheduled_and_refuses_a_pause(postroom: Postroom) -> None:
    draft = postroom.create_campaign(subject="S", body="B", draft=True,
                                     send_at=time.time() + 3600,
                                     recipients=[{"email": "ada@example.com"}])
    assert postroom.start_campaign(draft.id).status == "scheduled"
    with pytest.raises(Conflict, match="scheduled"):
        postroom.pause_campaign(draft.id)
    assert postroom.cancel_campaign(draft.id).status == "cancelled"
    assert postroom.get_campaign(draft.id).status == "cancelled"


def test_suppressions_put_show_list_delete(postroom: Postroom) -> None:
    added = postroom.suppress("Ada@Example.com", "complained")
    assert (added.email, added.reason) == ("ada@example.com", "complained")
    assert postroom.get_suppression("Ada@example.com").reason == "complained"
    listed = postroom.list_suppressions(contains="example")
    assert [s.email for s in listed.suppressions] == ["ada@example.com"]
    postroom.unsuppress("Ada@example.com")
    with pytest.raises(NotFound):
        postroom.get_suppression("Ada@example.com")


def test_a_bounce_nobody_matches_is_an_error_with_its_code(postroom: Postroom) -> None:
    with pytest.raises(InvalidRequest) as raised:
        postroom.report_bounce(b"From: mailer-daemon@example.com\r\nSubject: x\r\n\r\nhi\r\n")
    assert raised.value.code in ("unmatched", "malformed_report")


def test_webhooks_and_a_real_event_verified_with_its_secret(
        postroom: Postroom, smtp_server: SMTPTestServer) -> None:
    with receiving() as receiver:
        created = postroom.create_webhook(f"{receiver.url}/hook", ["message.sent"])
        assert created.events == ["message.sent"] and created.secret
        assert created.secret not in repr(created)
        assert [w.id for w in postroom.list_webhooks()] == [created.id]
        postroom.send_message(to="ada@example.com", subject="Evented", body="x")
        [call] = receiver.calls
    timestamp = verify_signature(call.body, call.headers["Postroom-Signature"],
                                 created.secret)
    assert abs(timestamp - time.time()) < 60
    with pytest.raises(SignatureError, match="does not match"):
        verify_signature(call.body + b" ", call.headers["Postroom-Signature"], created.secret)
    with pytest.raises(SignatureError):
        verify_signature(call.body, call.headers["Postroom-Signature"], "another-secret")
    [attempt] = postroom.webhook_deliveries(created.id).deliveries
    assert (attempt.event_type, attempt.status_code, attempt.attempt) == (
        "message.sent", 200, 1)
    postroom.delete_webhook(created.id)
    assert postroom.list_webhooks() == []
    with pytest.raises(NotFound):
        postroom.webhook_deliveries(created.id)


def test_signatures_match_the_servers_signer_within_the_tolerance() -> None:
    body, secret, at = b'{"type": "message.sent"}', "s3cret", 1_700_000_000
    header = server_signature(secret, body, at)
    assert sign(secret, body, at) == header
    assert verify_signature(body, header, secret, now=at + 299) == at
    with pytest.raises(SignatureError, match="from now"):
        verify_signature(body, header, secret, now=at + 301)
    with pytest.raises(SignatureError, match="from now"):
        verify_signature(body, header, secret, now=at - 301)
    assert verify_signature(body, f"t={at},v1=00ff,v1={header.split('v1=')[1]}", secret,
                            now=at) == at  # several v1 values: any may match
    for bad in (None, "", "v1=abc", f"t={at}", "t=soon,v1=abc"):
        with pytest.raises(SignatureError):
            verify_signature(body, bad, secret, now=at)

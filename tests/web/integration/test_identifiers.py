"""Ids are checked for their form before they reach Redis: no 500, and no oracle.

The attack: ``address:<first 32 hex of sha256(email)>`` used to read the
per-address pointer, answering 500 for an address that asked for a code and 404
for one that did not. Campaign ids with ``:inflight`` or ``:seen`` appended, and
``cursor=nan``, answered 500.
"""

from __future__ import annotations

import hashlib
import re

import pytest
from flask.testing import FlaskClient

from tasks.shared.mailbox import mailbox_digest
from tests.conftest import AUTH
from tests.support.otp_support import request_code
from tests.support.smtp_server import SMTPTestServer

ASKED, NEVER = "ada@example.com", "nobody@example.com"


def probes(email: str) -> list[str]:
    legacy = hashlib.sha256(email.encode()).hexdigest()[:32]
    return [f"address:{legacy}", f"address:{mailbox_digest(email)}", mailbox_digest(email),
            f"otp-mailbox:{mailbox_digest(email)}", "../" * 3, "x" * 5000, "*", "0" * 31,
            "A" * 32]


CSRF_VALUE = re.compile(rb'name="csrf_token" type="hidden" value="[^"]*"')


def answers(client: FlaskClient, probe: str) -> list[tuple[int, bytes]]:
    replies = [client.get(f"/verify/status/{probe}"),
               client.get("/validate", query_string={"request": probe}),
               client.get(f"/api/otp/{probe}", headers=AUTH),
               client.post(f"/api/otp/{probe}/verify", json={"code": "123456"}, headers=AUTH)]
    # the form's CSRF token carries the second it was signed in: the same for every probe
    # but for the clock, so it is shown as <csrf>
    return [(reply.status_code, CSRF_VALUE.sub(b'name="csrf_token" type="hidden" value="<csrf>"',
                                               reply.get_data().replace(probe.encode(), b"<id>")))
            for reply in replies]


def test_otp_ids_reveal_nothing_about_addresses(client: FlaskClient,
                                                smtp_server: SMTPTestServer) -> None:
    request_code(client, ASKED)
    for asked, never in zip(probes(ASKED), probes(NEVER), strict=True):
        seen = answers(client, asked)
        assert [status for status, _ in seen] == [404, 404, 404, 404], asked
        unseen = answers(client, never)
        assert [status for status, _ in unseen] == [404, 404, 404, 404], never
        # byte for byte the same answers (ids of equal length shown the same way)
        if len(asked) == len(never):
            assert [body for _, body in seen] == [body for _, body in unseen]


@pytest.mark.parametrize("suffix", [":inflight", ":seen", ":rate:1", ""])
def test_campaign_ids_that_name_other_keys_are_404(client: FlaskClient, suffix: str) -> None:
    response = client.post("/api/campaigns", headers=AUTH, json={
        "subject": "Hi", "body": "Hello", "recipients": [{"email": "ada@example.com"}]})
    assert response.status_code == 202
    campaign_id = response.get_json()["id"] + suffix if suffix else "campaigns"
    for path in (f"/api/campaigns/{campaign_id}", f"/api/campaigns/{campaign_id}/recipients"):
        reply = client.get(path, headers=AUTH)
        assert reply.status_code == 404, path
        assert reply.get_json()["error"]["code"] == "not_found"
    for action in ("pause", "resume", "cancel", "retry-failed"):
        reply = client.post(f"/api/campaigns/{campaign_id}/{action}", headers=AUTH)
        assert reply.status_code == 404


@pytest.mark.parametrize("cursor", ["nan", "NaN", "inf", "-inf", "1e400", "9" * 30])
def test_cursors_that_are_not_finite_numbers_are_422(client: FlaskClient, cursor: str) -> None:
    reply = client.get("/api/campaigns", query_string={"cursor": cursor}, headers=AUTH)
    assert reply.status_code == 422
    assert "cursor" in reply.get_json()["error"]["fields"]


def test_message_ids_that_name_other_keys_are_404(client: FlaskClient) -> None:
    for probe in ("idempotency", "x:y", "0" * 33, "%00"):
        reply = client.get(f"/api/messages/{probe}", headers=AUTH)
        assert reply.status_code == 404

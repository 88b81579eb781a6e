"""Deliverability guard: one message of each kind Postroom sends, as the relay received it,
scored by SpamAssassin's local rules (Debian's ``spamassassin -L -t``; ``make test``
installs it). Each must score at most 0.5 with no MIME-structure rule firing — Flask-Mail's
own HTML-only message scores 2.3 (MPART_ALT_DIFF, MIME_HTML_MOSTLY)."""

from __future__ import annotations

import base64
import re
import shutil
import subprocess
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest
from flask.testing import FlaskClient

from tests.conftest import AUTH
from tests.support.campaign_helpers import create, csv_bytes, people
from tests.support.smtp_server import SMTPTestServer

SPAMASSASSIN = shutil.which("spamassassin")
MIME_RULES = re.compile(r"^(MIME_|MPART_|HTML_MIME|CTYPE_|MISSING_MIME)")
RULE_LINE = re.compile(r"^\s*(-?\d+(?:\.\d+)?)\s+([A-Z0-9_]+)\s", re.MULTILINE)


@pytest.fixture
def config_overrides() -> dict[str, Any]:
    return {"PUBLIC_URL": "https://news.example.org",
            "MAIL_DEFAULT_SENDER": "Example News <news@example.org>"}


def score(raw: bytes) -> tuple[float, list[str]]:
    """SpamAssassin's score for *raw* and the rules that fired (local tests only)."""
    assert SPAMASSASSIN, "spamassassin is missing: make test installs it (apt-get)"
    report = subprocess.run([SPAMASSASSIN, "-L", "-t"], input=raw, capture_output=True,
                            timeout=120, check=True).stdout.decode("utf-8", "replace")
    found = re.search(r"X-Spam-Status: \w+, score=(-?\d+(?:\.\d+)?)", report)
    assert found, report[-2000:]
    details = report.split("Content analysis details", 1)[-1]
    return float(found.group(1)), [name for _, name in RULE_LINE.findall(details)]


def test_every_kind_of_message_scores_clean(client: FlaskClient,
                                            smtp_server: SMTPTestServer) -> None:
    paragraph = ("Your order has shipped and will arrive on Thursday. You can follow it from "
                 "your account page, where the invoice is also kept. ")
    kinds: dict[str, str] = {
        "text only": "text@example.com", "text and html": "html@example.com",
        "attachments": "files@example.com", "one-time code": "code@example.com"}
    client.post("/api/messages", headers=AUTH, json={
        "to": [kinds["text only"]], "subject": "Your order has shipped", "body": paragraph * 3})
    client.post("/api/messages", headers=AUTH, json={
        "to": [kinds["text and html"]], "subject": "Your order has shipped",
        "body": paragraph * 3, "html": f"<p>{paragraph * 3}</p>"})
    invoice = base64.b64encode(b"%PDF-1.4\n" + b"0" * 4000).decode()
    client.post("/api/messages", headers=AUTH, json={
        "to": [kinds["attachments"]], "subject": "Your invoice", "body": paragraph * 2,
        "html": f"<p>{paragraph * 2}</p>",
        "attachments": [{"filename": "invoice.pdf", "content_type": "application/pdf",
                         "content": invoice}]})
    client.post("/api/otp", headers=AUTH, json={"email": kinds["one-time code"]})
    rows = people(1, domain="example.net")
    create(client, csv_bytes(rows), subject="News for {{ name }}",
           body=paragraph * 2 + "\nLeave the list: {{ unsubscribe_url }}\n",
           html=f"<p>{paragraph * 2}</p><p><a href='{{{{ unsubscribe_url }}}}'>Leave</a></p>")
    kinds["campaign"] = rows[0]["email"]

    messages = {kind: smtp_server.to(address) for kind, address in kinds.items()}
    assert all(len(found) == 1 for found in messages.values()), messages
    with ThreadPoolExecutor(max_workers=len(messages)) as pool:
        scores = dict(zip(messages, pool.map(lambda found: score(found[0].data),
                                             messages.values()), strict=True))
    for kind, (points, rules) in scores.items():
        mime = [rule for rule in rules if MIME_RULES.match(rule)]
        assert points <= 0.5 and not mime, f"{kind}: {points} points, rules {rules}"

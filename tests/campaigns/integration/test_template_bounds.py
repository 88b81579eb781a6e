"""Hostile templates: refused at creation in well under a second, or fail one recipient.

The attacks from the hardening review, sent to ``POST /api/campaigns`` against a
real Redis and a real SMTP server (Celery eager, so send time runs here too).
"""

from __future__ import annotations

import time
from typing import Any

import pytest
from flask.testing import FlaskClient

from tasks.delivery.engine.errors import InvalidMessageError
from tasks.delivery.engine.sandbox import BoundedSandbox, RenderLimitExceeded
from tasks.delivery.engine.templating import MAX_RENDERED_CHARS, CampaignTemplates
from tests.conftest import AUTH
from tests.support.campaign_helpers import recipients, show
from tests.support.smtp_server import SMTPTestServer

ATTACKS = [
    "{{ 9 ** (9 ** 9) }}",  # Jinja would fold this while compiling, in the request
    "{{ 'a' * 200000000 }}",
    "{{ 200000000 * 'a' }}",
    "{{ 'x'|center(1000000000) }}",
    "{{ 'a'.ljust(10 ** 9) }}",
    "{{ '%999999999d'|format(1) }}",
    "{{ '{:>999999999}'.format(1) }}",
    "{{ '{:{}}'.format(1, 999999999) }}",
    "{% for i in range(100000) %}{% for j in range(100000) %}{% endfor %}{% endfor %}",
    "{% set s = 'a' * 100000 %}{% for a in s %}{% for b in s %}{% endfor %}{% endfor %}",
    "{% macro d(s, n) %}{% if n %}{{ d(s ~ s, n - 1) }}{% else %}{{ s }}{% endif %}"
    "{% endmacro %}{{ d('a', 60) }}",
    "{% set ns = namespace(s='a') %}{% for i in range(60) %}{% set ns.s = ns.s ~ ns.s %}"
    "{% endfor %}{{ ns.s }}",
    "{% set a = 'a' * 1000000 %}{{ a ~ a ~ a }}",
    "{{ ('a' * 100000).replace('a', 'a' * 100000) }}",
    "{{ (['a' * 1000000] * 1000)|join }}",
    "{{ range(10)|batch(1000000000, 'x')|list }}",
    "{% macro f() %}{{ f() }}{% endmacro %}{{ f() }}",
    "{{ " + "(" * 5000 + "1" + ")" * 5000 + " }}",
]


def post(client: FlaskClient, **fields: Any) -> Any:
    body = {"subject": "Hello", "body": "Hi", "recipients": [{"email": "ada@example.com"}]}
    return client.post("/api/campaigns", json={**body, **fields}, headers=AUTH)


@pytest.mark.parametrize("attack", ATTACKS)
@pytest.mark.parametrize("field", ["subject", "body", "html"])
def test_hostile_templates_are_refused_at_creation_fast(client: FlaskClient, attack: str,
                                                        field: str,
                                                        smtp_server: SMTPTestServer) -> None:
    started = time.monotonic()
    response = post(client, **{field: attack})
    elapsed = time.monotonic() - started
    assert response.status_code == 422, response.get_json()
    assert field in response.get_json()["error"]["fields"]
    assert elapsed < 0.6, elapsed
    assert smtp_server.received == []


def test_ordinary_templates_still_work(client: FlaskClient, smtp_server: SMTPTestServer) -> None:
    template = ("{{ 'Hello ' ~ name ~ '!' }} {{ name|upper|center(12) }} "
                "{{ '%.2f'|format(3.14159) }} {{ 2 ** 10 }} {{ '-' * 5 }} {{ 'x{}'.format(1) }}")
    response = post(client, subject="Hi {{ name }}", body=template,
                    recipients=[{"email": "ada@example.com", "name": "Ada"}])
    assert response.status_code == 202, response.get_json()
    text = smtp_server.received[0].message.get_body(("plain",)).get_content()
    assert "Hello Ada!     ADA      3.14 1024 ----- x1" in text


@pytest.mark.parametrize(("template", "hostile"), [
    ("{{ 'x' * (n|int) }}", "200000000"),
    ("{% for i in range(n|int) %}{% for j in range(n|int) %}{% for k in range(n|int) %}"
     "{% endfor %}{% endfor %}{% endfor %}", "5000"),
    ("{{ ('y' * 1000) * (n|int) }}", "1900"),  # within each value's bound, over the message's
])
def test_a_recipient_whose_variables_break_the_bounds_fails_alone(
        client: FlaskClient, smtp_server: SMTPTestServer, template: str, hostile: str) -> None:
    people = [{"email": "ada@example.com", "n": "3"}, {"email": "bob@example.com", "n": hostile},
              {"email": "cy@example.com", "n": "2"}]
    response = post(client, body=template, recipients=people)
    assert response.status_code == 202, response.get_json()
    campaign_id = response.get_json()["id"]
    assert show(client, campaign_id)["status"] == "completed"
    shown = {r["email"]: r for r in recipients(client, campaign_id)}
    assert shown["ada@example.com"]["status"] == "sent"
    assert shown["cy@example.com"]["status"] == "sent"
    assert shown["bob@example.com"]["status"] == "failed"
    assert "body template:" in shown["bob@example.com"]["error"]
    assert sorted(r.recipients[0] for r in smtp_server.received) == [
        "ada@example.com", "cy@example.com"]


def test_the_rendered_message_has_a_size_cap() -> None:
    templates = CampaignTemplates("Hi", "{{ text }}", "{{ text }}")
    half = "z" * (MAX_RENDERED_CHARS // 2 + 1)
    with pytest.raises(InvalidMessageError, match="longer than"):
        templates.render({"text": half})
    subject, text, html = templates.render({"text": "z" * 1000})
    assert (subject, len(text or ""), len(html or "")) == ("Hi", 1000, 1000)


def test_no_unbounded_generators_are_offered() -> None:
    sandbox = BoundedSandbox()
    assert "lipsum" not in sandbox.globals  # lipsum(n=10**9) has no bound of its own
    with pytest.raises(RenderLimitExceeded):
        sandbox.from_string("{{ range(10 ** 6)|list|length }}").render()


def test_control_characters_from_variables_never_reach_the_subject() -> None:
    templates = CampaignTemplates("Hi {{ name }}", "body", None)
    subject, _, _ = templates.render({"name": "Ada\x0bBcc: x\x85\u2028y\x00"})
    assert subject == "Hi Ada Bcc: x  y"

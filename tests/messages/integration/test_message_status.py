"""A message's status is derived from its recipients by one rule (tasks.messages.store)."""

from __future__ import annotations

import pytest
from flask import Flask
from flask.testing import FlaskClient

from tasks.delivery.ledger import STATUSES
from tasks.messages.store import MessageStore, message_status
from tests.conftest import AUTH


def counts(**given: int) -> dict[str, int]:
    return dict.fromkeys(STATUSES, 0) | given


@pytest.mark.parametrize(("given", "expected"), [
    ({}, "queued"),
    ({"queued": 2}, "queued"),
    ({"queued": 1, "sent": 1}, "sending"),
    ({"sending": 1, "deferred": 1}, "sending"),
    ({"queued": 1, "deferred": 1}, "sending"),  # one still pending: not yet "deferred"
    ({"deferred": 1}, "deferred"),
    ({"deferred": 1, "sent": 2}, "deferred"),
    ({"deferred": 1, "failed": 1}, "deferred"),
    ({"sent": 2, "suppressed": 1}, "sent"),
    ({"failed": 2}, "failed"),
    ({"bounced": 1, "cancelled": 1}, "failed"),
    ({"sent": 1, "failed": 1}, "partial"),
])
def test_the_rule(given: dict[str, int], expected: str) -> None:
    assert message_status(counts(**given)) == expected


def test_api_shows_deferred_while_its_recipient_is(client: FlaskClient, app: Flask) -> None:
    store = MessageStore(app.extensions["redis"])
    message = store.create({"to": ["ada@example.com"], "subject": "Hi", "body": "Hello"},
                           ["ada@example.com"])
    ledger = store.ledger(message.id)
    assert client.get(f"/api/messages/{message.id}", headers=AUTH).get_json()[
        "status"] == "queued"
    assert ledger.move("queued", "deferred") == 1
    shown = client.get(f"/api/messages/{message.id}", headers=AUTH).get_json()
    assert shown["status"] == "deferred"
    assert [r["status"] for r in shown["recipients"]] == ["deferred"]


def test_a_message_appears_with_its_recipients_in_one_transaction(app: Flask) -> None:
    redis = app.extensions["redis"]
    store = MessageStore(redis)
    with redis.monitor() as monitor:
        message = store.create({"subject": "hi"}, ["a@example.com", "b@example.com"])
        commands: list[str] = []
        while not commands or commands[-1] != "EXEC":
            commands.append(monitor.next_command()["command"].split(" ", 1)[0].upper())
    record = commands.index("SET")
    assert "MULTI" in commands[:record], commands
    assert commands.index("EXEC") > record, commands
    assert store.get(message.id) is not None

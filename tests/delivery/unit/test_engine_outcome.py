"""How a server's reply becomes a recipient's outcome."""

from __future__ import annotations

import pytest

from tasks.delivery.engine.outcome import DeliveryOutcome


@pytest.mark.parametrize(("code", "status"), [
    (250, "sent"), (251, "sent"),
    (421, "deferred"), (450, "deferred"), (451, "deferred"), (452, "deferred"),
    (550, "failed"), (552, "failed"), (554, "failed"),
    (354, "deferred"), (-1, "deferred"),  # nonsense at that point: try again, never "sent"
])
def test_reply_classes(code: int, status: str) -> None:
    outcome = DeliveryOutcome.from_reply(code, b"5.1.1 the reason")
    assert (outcome.status, outcome.smtp_code) == (status, code)
    assert outcome.error == (None if status == "sent" else "5.1.1 the reason")


def test_transport_failure_is_deferred_without_a_code() -> None:
    outcome = DeliveryOutcome.transport_failure("connection reset")
    assert (outcome.status, outcome.smtp_code, outcome.error) == (
        "deferred", None, "connection reset")

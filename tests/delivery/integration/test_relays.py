"""MAIL_FALLBACK_SERVERS and MAIL_RELAY_COOLDOWN (DESIGN promise 11), with real servers.

The first relay is a listener that never opens a session (it hangs up, or answers
421/554 at the greeting) and counts the connections it is offered; the second is a
real aiosmtpd server that counts every message by Message-ID and recipient.
"""

from __future__ import annotations

import math
import re
import ssl
import subprocess
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis
from aiosmtpd.smtp import AuthResult, LoginPassword
from flask import Flask

from tasks.delivery.engine.compose import Composer, Draft
from tasks.delivery.engine.relays import Relay
from tasks.delivery.engine.session import BatchConnection, SMTPSettings
from tasks.delivery.relay_state import RelayBoard
from tests.conftest import AUTH, app_config
from tests.support.outage_support import DeadRelay, closed_port
from tests.support.smtp_server import DROP, SMTPTestServer
from web import create_app
from web.config import ConfigError, from_environ

SENDER = "noreply@postroom.test"
COOLDOWN = 1.0


def deliveries(server: SMTPTestServer) -> Counter[tuple[str, str]]:
    """(Message-ID, recipient) -> how many times the server accepted it."""
    return Counter((str(r.message["Message-ID"]), rcpt)
                   for r in server.received for rcpt in r.recipients)


def send_messages(app: Flask, tag: str, n: int) -> list[str]:
    client = app.test_client()
    ids = []
    for i in range(n):
        response = client.post("/api/messages", headers=AUTH, json={
            "to": [f"{tag}{i}@example.com"], "subject": f"{tag} {i}", "body": "Hello"})
        assert response.status_code == 202, response.get_json()
        ids.append(response.get_json()["id"])
    return ids


def statuses(app: Flask, ids: list[str]) -> Counter[str]:
    client = app.test_client()
    return Counter(client.get(f"/api/messages/{i}", headers=AUTH).get_json()["status"]
                   for i in ids)


def relay_config(redis_url: str, first_port: int, second: SMTPTestServer,
                 **overrides: Any) -> dict[str, Any]:
    return app_config(redis_url, first_port,
                      MAIL_FALLBACK_SERVERS=f"127.0.0.1:{second.port}",
                      MAIL_RELAY_COOLDOWN=COOLDOWN, **overrides)


@pytest.fixture(params=[None, "421 4.3.2 Service not available", "554 5.3.2 No service here"],
                ids=["hangs-up", "greeting-421", "greeting-554"])
def dead_relay(request: pytest.FixtureRequest) -> Iterator[DeadRelay]:
    relay = DeadRelay(request.param)
    yield relay
    relay.close()


def test_mail_fails_over_and_the_dead_relay_cools_down(
        dead_relay: DeadRelay, redis_client: redis.Redis, redis_url: str,
        smtp_server: SMTPTestServer) -> None:
    config = relay_config(redis_url, dead_relay.port, smtp_server)
    first = create_app(config)
    batch1 = send_messages(first, "first", 4)
    assert dead_relay.accepted == 1, (
        f"the dead relay was offered {dead_relay.accepted} connection(s) by 4 messages; "
        "after the first failure it should be skipped")
    assert statuses(first, batch1) == {"sent": 4}

    health = first.test_client().get("/healthz")
    relays = {r["relay"]: r for r in health.get_json()["checks"]["smtp"]["relays"]}
    dead_name, live_name = f"127.0.0.1:{dead_relay.port}", f"127.0.0.1:{smtp_server.port}"
    assert health.status_code == 200, health.get_json()  # the fallback carries the mail
    assert relays[dead_name]["state"] == "cooling_down", relays
    assert relays[dead_name]["last_outcome"] == "failed" and relays[dead_name]["error"]
    until = relays[dead_name]["cooling_down_until"]
    assert time.time() < until <= time.time() + COOLDOWN
    assert (relays[live_name]["state"], relays[live_name]["last_outcome"]) == ("up", "opened")
    metrics = first.test_client().get("/metrics").get_data(as_text=True)
    assert f'postroom_relay_cooling_down{{relay="{dead_name}"}} 1.0' in metrics
    assert f'postroom_relay_last_session_ok{{relay="{dead_name}"}} 0.0' in metrics
    assert f'postroom_relay_last_session_ok{{relay="{live_name}"}} 1.0' in metrics
    assert f'postroom_relay_cooling_down{{relay="{live_name}"}} 0.0' in metrics

    other = create_app(config)  # another process: it shares only Redis with the first
    batch2 = send_messages(other, "second", 4)
    assert dead_relay.accepted == 1, (
        f"during the cooldown a second batch offered the dead relay "
        f"{dead_relay.accepted - 1} more connection(s) (expected 0)")

    time.sleep(max(0.0, until - time.time()) + 0.05)
    batch3 = send_messages(other, "third", 2)
    assert dead_relay.accepted == 2, (
        f"after the cooldown the dead relay was offered {dead_relay.accepted - 1} more "
        "connection(s) (expected 1: tried again, failed again, skipped again)")

    counts = deliveries(smtp_server)
    assert len(counts) == 10 and set(counts.values()) == {1}, (
        f"10 messages should each reach the second relay once; it received "
        f"{sum(counts.values())} copies of {len(counts)} (Message-ID, recipient) pairs")
    assert statuses(other, batch1 + batch2 + batch3) == {"sent": 10}


def test_refused_connection_fails_over(redis_client: redis.Redis, redis_url: str,
                                       smtp_server: SMTPTestServer) -> None:
    refused = closed_port()
    app = create_app(relay_config(redis_url, refused, smtp_server))
    ids = send_messages(app, "refused", 3)
    counts = deliveries(smtp_server)
    assert len(counts) == 3 and set(counts.values()) == {1}, dict(counts)
    assert statuses(app, ids) == {"sent": 3}
    board = RelayBoard(redis_client, COOLDOWN)
    assert board.cooling_down([f"127.0.0.1:{refused}"]) == {f"127.0.0.1:{refused}"}


def test_campaign_fails_over_with_max_emails(dead_relay: DeadRelay, redis_client: redis.Redis,
                                             redis_url: str,
                                             smtp_server: SMTPTestServer) -> None:
    app = create_app(relay_config(redis_url, dead_relay.port, smtp_server, MAIL_MAX_EMAILS=3))
    client = app.test_client()
    response = client.post("/api/campaigns", headers=AUTH, json={
        "subject": "Hi {{ name }}", "body": "Hello {{ name }}",
        "recipients": [{"email": f"reader{i}@example.com", "name": f"R{i}"} for i in range(7)]})
    assert response.status_code == 202, response.get_json()
    shown = client.get(f"/api/campaigns/{response.get_json()['id']}", headers=AUTH).get_json()
    counts = deliveries(smtp_server)
    assert len(counts) == 7 and set(counts.values()) == {1}, (
        f"7 recipients should each get one message at the second relay: {dict(counts)}")
    assert smtp_server.session_count == math.ceil(7 / 3), smtp_server.session_count
    assert dead_relay.accepted == 1, (
        f"3 sessions offered the dead relay {dead_relay.accepted} connection(s) (expected 1)")
    assert (shown["status"], shown["counts"]["sent"]) == ("completed", 7), shown


def message(n: int) -> bytes:
    return Composer(message_id_domain="postroom.test").compose(
        Draft(sender=SENDER, to=[f"r{n}@example.com"], subject=f"n{n}", text=f"n {n}")).data


def two_relays(first_port: int, second_port: int, board: RelayBoard | None,
               **options: Any) -> SMTPSettings:
    return SMTPSettings(server="127.0.0.1", port=first_port, timeout=5.0,
                        fallbacks=(Relay("127.0.0.1", second_port),), relay_state=board,
                        **options)


def test_a_session_that_reached_mail_from_never_moves_on(redis_client: redis.Redis,
                                                         smtp_server: SMTPTestServer) -> None:
    first = SMTPTestServer().start()
    first.reset()  # forget the connection aiosmtpd's controller makes to check it started
    try:
        first.handler.data_reply = lambda envelope: DROP  # lost in the middle of DATA
        board = RelayBoard(redis_client, COOLDOWN)
        with BatchConnection(two_relays(first.port, smtp_server.port, board)) as connection:
            outcome = connection.send_data(SENDER, ["a@example.com"], message(0))
        assert outcome["a@example.com"].status == "deferred"
        assert (first.session_count, smtp_server.session_count) == (1, 0), (
            f"a message lost after MAIL FROM on the first relay must not be sent through the "
            f"second: sessions {first.session_count} and {smtp_server.session_count}")
        assert smtp_server.received == []
        assert board.cooling_down([f"127.0.0.1:{first.port}"]) == set()
    finally:
        first.stop()


def _authenticator(accept: bool) -> Any:
    def check(server: Any, session: Any, envelope: Any, mechanism: str,
              auth_data: Any) -> AuthResult:
        ok = (accept and isinstance(auth_data, LoginPassword)
              and (auth_data.login, auth_data.password) == (b"postroom", b"s3cret"))
        return AuthResult(success=ok, handled=False)
    return check


def test_auth_refused_moves_on_with_the_same_credentials(redis_client: redis.Redis) -> None:
    refusing = SMTPTestServer(authenticator=_authenticator(False), auth_require_tls=False)
    accepting = SMTPTestServer(authenticator=_authenticator(True), auth_require_tls=False)
    refusing.start()
    accepting.start()
    try:
        board = RelayBoard(redis_client, COOLDOWN)
        settings = two_relays(refusing.port, accepting.port, board, username="postroom",
                              password="s3cret")
        with BatchConnection(settings) as connection:
            outcomes = [connection.send_data(SENDER, [f"r{n}@example.com"], message(n))
                        for n in range(3)]
        assert [o[f"r{n}@example.com"].status for n, o in enumerate(outcomes)] == ["sent"] * 3
        assert (len(refusing.received), len(accepting.received)) == (0, 3), (
            f"received {len(refusing.received)} and {len(accepting.received)}")
        [status, _] = board.statuses([f"127.0.0.1:{refusing.port}",
                                      f"127.0.0.1:{accepting.port}"])
        assert status.state == "cooling_down" and "535" in (status.error or "")
        assert "s3cret" not in (status.error or "")
    finally:
        refusing.stop()
        accepting.stop()


def self_signed(directory: Path, name: str) -> tuple[Path, Path]:
    """A certificate for 127.0.0.1 that is its own CA, and its key."""
    cert, key = directory / f"{name}.pem", directory / f"{name}.key"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt",
                    "ec_paramgen_curve:prime256v1", "-nodes", "-keyout", str(key), "-out",
                    str(cert), "-days", "2", "-subj", f"/CN={name}", "-addext",
                    "subjectAltName=IP:127.0.0.1"], check=True, capture_output=True)
    return cert, key


def test_tls_refused_moves_on_with_the_same_tls_settings(tmp_path: Path,
                                                         redis_client: redis.Redis) -> None:
    servers = []
    for name in ("untrusted", "trusted"):
        cert, key = self_signed(tmp_path, name)
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(cert, key)
        servers.append(SMTPTestServer(tls_context=context, require_starttls=True).start())
    untrusted, trusted = servers
    try:
        board = RelayBoard(redis_client, COOLDOWN)
        settings = two_relays(untrusted.port, trusted.port, board, use_tls=True,
                              tls_ca_file=str(tmp_path / "trusted.pem"))
        with BatchConnection(settings) as connection:
            outcome = connection.send_data(SENDER, ["a@example.com"], message(0))["a@example.com"]
        assert outcome.status == "sent"
        assert (len(untrusted.received), len(trusted.received)) == (0, 1), (
            f"received {len(untrusted.received)} and {len(trusted.received)}: the second "
            "relay requires STARTTLS, so the message crossed it over verified TLS")
        [status, _] = board.statuses([f"127.0.0.1:{untrusted.port}",
                                      f"127.0.0.1:{trusted.port}"])
        assert status.state == "cooling_down" and "CERTIFICATE_VERIFY_FAILED" in (
            status.error or ""), status
    finally:
        for server in servers:
            server.stop()


def test_healthz_opens_no_smtp_connection_and_names_smtp_when_every_relay_failed(
        redis_client: redis.Redis, redis_url: str, smtp_server: SMTPTestServer) -> None:
    dead = DeadRelay()
    try:
        app = create_app(relay_config(redis_url, dead.port, smtp_server))
        client = app.test_client()
        for _ in range(5):
            assert client.get("/healthz").status_code == 200  # no session yet: unknown
        assert (dead.accepted, smtp_server.session_count) == (0, 0), (
            f"5 /healthz calls opened {dead.accepted} and {smtp_server.session_count} "
            "connection(s) to the relays (expected none)")
        board = RelayBoard(redis_client, COOLDOWN)
        for relay in (f"127.0.0.1:{dead.port}", f"127.0.0.1:{smtp_server.port}"):
            board.failed(relay, "421 4.3.2 Service not available")
        health = client.get("/healthz")
        assert health.status_code == 503 and health.get_json()["down"] == ["smtp"]
        assert {r["state"] for r in health.get_json()["checks"]["smtp"]["relays"]} == {
            "cooling_down"}
    finally:
        dead.close()


def test_every_relay_cooling_down_defers_without_connecting(redis_client: redis.Redis,
                                                            smtp_server: SMTPTestServer) -> None:
    dead = DeadRelay()
    try:
        board = RelayBoard(redis_client, 0.3)
        names = [f"127.0.0.1:{dead.port}", f"127.0.0.1:{smtp_server.port}"]
        for name in names:
            board.failed(name, "connection refused")
        with BatchConnection(two_relays(dead.port, smtp_server.port, board)) as connection:
            outcome = connection.send_data(SENDER, ["a@example.com"], message(0))["a@example.com"]
        assert outcome.status == "deferred" and "cooling down" in (outcome.error or "")
        assert (dead.accepted, smtp_server.session_count) == (0, 0)
        time.sleep(0.35)
        with BatchConnection(two_relays(dead.port, smtp_server.port, board)) as connection:
            outcome = connection.send_data(SENDER, ["a@example.com"], message(0))["a@example.com"]
        assert outcome.status == "sent"
        assert (dead.accepted, len(smtp_server.received)) == (1, 1)
    finally:
        dead.close()


@pytest.mark.parametrize("raw", ["mx1.example.com", "mx1.example.com:smtp", "a:25,,b:25",
                                 "mx1.example.com:70000", "::1:25", "mx 1:25"])
def test_malformed_fallback_list_names_the_variable(raw: str) -> None:
    with pytest.raises(ConfigError, match=r"^MAIL_FALLBACK_SERVERS: "):
        from_environ({"MAIL_FALLBACK_SERVERS": raw})


def test_fallback_list_and_cooldown_parse() -> None:
    config = from_environ({"MAIL_FALLBACK_SERVERS": " mx1.example.com:587,[2001:db8::1]:25 "})
    assert config["MAIL_FALLBACK_SERVERS"] == (Relay("mx1.example.com", 587),
                                               Relay("2001:db8::1", 25))
    assert [str(r) for r in config["MAIL_FALLBACK_SERVERS"]] == ["mx1.example.com:587",
                                                                 "[2001:db8::1]:25"]
    assert config["MAIL_RELAY_COOLDOWN"] == 60.0
    assert from_environ({})["MAIL_FALLBACK_SERVERS"] == ()
    with pytest.raises(ConfigError, match=r"^MAIL_RELAY_COOLDOWN: "):
        from_environ({"MAIL_RELAY_COOLDOWN": "0"})


def test_the_primary_relay_cannot_be_its_own_fallback(redis_url: str) -> None:
    with pytest.raises(ConfigError, match=re.escape("MAIL_FALLBACK_SERVERS: lists")):
        create_app(app_config(redis_url, 2525, MAIL_FALLBACK_SERVERS="127.0.0.1:2525"))

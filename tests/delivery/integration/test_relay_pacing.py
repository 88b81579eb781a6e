"""Limits learned from the relay: adaptive pacing per MAIL FROM, the breaker for refused
credentials, and MAIL_DEBUG without secrets; real Redis, real aiosmtpd servers."""

from __future__ import annotations

import base64
import logging
import math
import threading
import time
from collections import Counter
from typing import Any

import pytest
import redis
from aiosmtpd.smtp import AuthResult, LoginPassword

from tasks.delivery.engine.compose import Composer, Draft
from tasks.delivery.engine.session import BatchConnection, SMTPSettings
from tasks.delivery.pacing import INCREASE, THROTTLED_START, RelayPacer, rate_key, send_rates
from tasks.delivery.relay_state import AUTH_REFUSED, RelayBoard
from tests.conftest import AUTH, app_config
from tests.support.smtp_server import SMTPTestServer
from web import create_app

SENDER = "noreply@postroom.test"
TOO_MUCH = "450 4.7.1 Error: too much mail from 127.0.0.1"


def settings_for(server: SMTPTestServer, **options: Any) -> SMTPSettings:
    return SMTPSettings(**{"server": "127.0.0.1", "port": server.port, "timeout": 5.0, **options})


def message(n: int) -> bytes:
    return Composer(message_id_domain="postroom.test").compose(
        Draft(sender=SENDER, to=[f"r{n}@example.com"], subject=f"n{n}", text=f"n {n}")).data


def relay(server: SMTPTestServer) -> str:
    return f"127.0.0.1:{server.port}"


# -- the shared rate


def test_throttle_halves_the_rate_once_and_successes_raise_it_to_the_ceiling(
        redis_client: redis.Redis) -> None:
    pacer, other_worker = RelayPacer(redis_client, 10.0), RelayPacer(redis_client, 10.0)
    assert send_rates(redis_client, ["r:25"], 10.0) == {"r:25": 10.0}
    pacer.throttled("r:25")
    other_worker.throttled("r:25")  # the same refusal seen by two workers: one decrease
    assert send_rates(redis_client, ["r:25"], 10.0) == {"r:25": 5.0}
    assert not other_worker.reserve_now("r:25")  # the next slot is one interval away
    pacer.succeeded("r:25", 10)
    assert 0.15 < pacer.reserve("r:25") <= 0.2
    assert send_rates(redis_client, ["r:25"], 10.0)["r:25"] == pytest.approx(
        5.0 + 10 * 5.0 * INCREASE)  # additive increase, told with the next reservation
    pacer.succeeded("r:25", 1000)
    pacer.reserve("r:25")
    assert send_rates(redis_client, ["r:25"], 10.0) == {"r:25": 10.0}  # never above it


def test_unlimited_until_the_first_throttle(redis_client: redis.Redis) -> None:
    pacer = RelayPacer(redis_client, None)
    assert [pacer.reserve("r:25") for _ in range(5)] == [0.0] * 5
    assert not redis_client.exists(rate_key("r:25"))
    assert send_rates(redis_client, ["r:25"], None) == {"r:25": math.inf}
    pacer.throttled("r:25")
    assert send_rates(redis_client, ["r:25"], None) == {"r:25": THROTTLED_START}
    assert redis_client.pttl(rate_key("r:25")) > 0  # forgotten later
    assert 0.9 < pacer.reserve("r:25") <= 1.0  # one interval after the throttle
    assert 1.9 < RelayPacer(redis_client, None).reserve("r:25") <= 2.0  # every worker


def _relay_allowing(server: SMTPTestServer, n: int, window: float) -> list[float]:
    """Refuse MAIL FROM with 450 4.7.1 beyond *n* accepted in any *window* seconds."""
    accepted: list[float] = []
    lock = threading.Lock()

    def mail(sender: str) -> str | None:
        now = time.monotonic()
        with lock:
            recent = [t for t in accepted if now - t < window]
            if len(recent) >= n:
                return TOO_MUCH
            accepted.append(now)
            return None

    server.handler.mail_reply = mail
    return accepted


def test_a_throttled_mail_from_lowers_the_shared_rate(smtp_server: SMTPTestServer,
                                                      redis_client: redis.Redis) -> None:
    _relay_allowing(smtp_server, 2, 60.0)
    settings = settings_for(smtp_server, pacer=RelayPacer(redis_client, 100.0))
    with BatchConnection(settings) as connection:
        outcomes = [connection.send_data(SENDER, [f"r{i}@example.com"], message(i))
                    for i in range(5)]
    assert [o[f"r{i}@example.com"].status for i, o in enumerate(outcomes)] == [
        "sent", "sent", "deferred", "deferred", "deferred"]
    assert not any(o[f"r{i}@example.com"].counted for i, o in enumerate(outcomes) if i >= 2)
    assert len(smtp_server.handler.mail_times) == 3  # stopped at the first refusal
    assert send_rates(redis_client, [relay(smtp_server)], 100.0) == {relay(smtp_server): 50.0}


@pytest.mark.parametrize("pipelining", [False, True], ids=["stepwise", "pipelined"])
def test_pacing_counts_mail_from_and_never_holds_a_transaction_while_waiting(
        redis_client: redis.Redis, pipelining: bool) -> None:
    """A relay with a 0.4 s idle timeout, paced at 1.5 transactions a second."""
    server = SMTPTestServer(timeout=0.4).start()
    server.handler.pipelining = pipelining
    try:
        settings = settings_for(server, pacer=RelayPacer(redis_client, 1.5), idle_wait=0.2)
        n = 4
        with BatchConnection(settings) as connection:
            outcomes = []
            for i in range(n):
                upcoming = None
                if i + 1 < n:
                    from tasks.delivery.engine.transaction import Upcoming

                    upcoming = Upcoming(SENDER, (f"r{i + 1}@example.com",), len(message(i + 1)))
                outcomes.append(connection.send_data(SENDER, [f"r{i}@example.com"], message(i),
                                                     upcoming=upcoming))
        assert [o[f"r{i}@example.com"].status for i, o in enumerate(outcomes)] == ["sent"] * n
        times = server.handler.mail_times
        gaps = [b - a for a, b in zip(times, times[1:], strict=False)]
        assert len(times) == n and min(gaps) >= 0.6, gaps  # 1/1.5 s, less scheduling noise
        assert len(server.received) == n
    finally:
        server.stop()


def test_commands_go_ahead_when_the_slot_is_free(redis_client: redis.Redis,
                                                 smtp_server: SMTPTestServer) -> None:
    from tasks.delivery.engine.transaction import Upcoming

    smtp_server.handler.pipelining = True
    pacer = RelayPacer(redis_client, 1000.0)
    taken: list[bool] = []
    reserve_now = pacer.reserve_now

    def reserve_and_record(relay: str) -> bool:
        taken.append(reserve_now(relay))
        return taken[-1]

    pacer.reserve_now = reserve_and_record  # type: ignore[method-assign]
    with BatchConnection(settings_for(smtp_server, pacer=pacer)) as connection:
        first = connection.send_data(SENDER, ["r0@example.com"], message(0),
                                     upcoming=Upcoming(SENDER, ("r1@example.com",),
                                                       len(message(1))))
        assert connection._ahead is not None  # the next MAIL FROM went with this DATA
        second = connection.send_data(SENDER, ["r1@example.com"], message(1))
    assert (first["r0@example.com"].status, second["r1@example.com"].status) == ("sent", "sent")
    assert taken == [True]


def test_a_campaign_against_a_relay_allowing_n_a_window_sends_everyone(
        redis_url: str, redis_client: redis.Redis, smtp_server: SMTPTestServer) -> None:
    accepted = _relay_allowing(smtp_server, 3, 1.0)
    app = create_app(app_config(redis_url, smtp_server.port, MAIL_RATE_LIMIT=20.0,
                                DELIVERY_BACKOFF_BASE=0.2, DELIVERY_BACKOFF_CAP=0.5))
    client = app.test_client()
    started = time.monotonic()
    response = client.post("/api/campaigns", headers=AUTH, json={
        "subject": "Hi", "body": "Hello",
        "recipients": [{"email": f"reader{i}@example.com"} for i in range(12)]})
    assert response.status_code == 202, response.get_json()
    campaign = response.get_json()["id"]
    shown: dict[str, Any] = {}
    while time.monotonic() - started < 40:
        shown = client.get(f"/api/campaigns/{campaign}", headers=AUTH).get_json()
        if shown["status"] == "completed":
            break
        time.sleep(0.2)
    counts = Counter(rcpt for r in smtp_server.received for rcpt in r.recipients)
    assert len(counts) == 12 and set(counts.values()) == {1}, counts
    assert (shown["status"], shown["counts"]["sent"], shown["counts"].get("failed", 0)) == (
        "completed", 12, 0), shown
    refused = [r for r in smtp_server.handler.refused if r[1] == TOO_MUCH]
    assert refused, "the relay should have throttled at least once"
    assert len(refused) <= smtp_server.session_count, (  # never a "too many errors" session
        f"{len(refused)} refused MAIL FROMs in {smtp_server.session_count} sessions")
    assert send_rates(redis_client, [relay(smtp_server)], 20.0)[relay(smtp_server)] < 20.0
    assert len(accepted) == 12


# -- refused credentials: the breaker


def _counting_authenticator(attempts: list[str]) -> Any:
    def check(server: Any, session: Any, envelope: Any, mechanism: str,
              auth_data: Any) -> AuthResult:
        attempts.append(mechanism)
        ok = isinstance(auth_data, LoginPassword) and auth_data.password == b"s3cret"
        return AuthResult(success=ok, handled=False)
    return check


def test_refused_credentials_open_a_breaker_one_probe_per_cooldown(
        redis_client: redis.Redis) -> None:
    attempts: list[str] = []
    server = SMTPTestServer(authenticator=_counting_authenticator(attempts),
                            auth_require_tls=False).start()
    try:
        board = RelayBoard.from_config(redis_client, {"MAIL_RELAY_COOLDOWN": 1.0})
        settings = settings_for(server, username="postroom", password="wrong",
                                relay_state=board)

        def batch() -> list[Any]:
            with BatchConnection(settings) as connection:
                return [connection.send_data(SENDER, [f"r{i}@example.com"], message(i))
                        [f"r{i}@example.com"] for i in range(2)]

        outcomes = [o for _ in range(3) for o in batch()]
        assert attempts == ["PLAIN"], f"3 batches tried AUTH {attempts} (expected one PLAIN)"
        assert {(o.status, o.counted) for o in outcomes} == {("deferred", False)}
        [status] = board.statuses([relay(server)])
        assert (status.state, status.breaker) == ("cooling_down", AUTH_REFUSED)
        assert "535" in (status.error or "") and "wrong" not in (status.error or "")
        time.sleep(1.05)
        batch(), batch()  # two batches after the cooldown: one probes, one waits
        assert attempts == ["PLAIN", "PLAIN"]
        assert board.statuses([relay(server)])[0].breaker == AUTH_REFUSED
        time.sleep(1.05)
        good = settings_for(server, username="postroom", password="s3cret", relay_state=board)
        with BatchConnection(good) as connection:
            assert connection.send_data(SENDER, ["a@example.com"],
                                        message(0))["a@example.com"].status == "sent"
        assert board.statuses([relay(server)])[0].breaker is None  # the probe closed it
        assert board.cooling_down([relay(server)]) == set()
    finally:
        server.stop()


def test_healthz_says_why_a_relay_is_skipped(redis_url: str, redis_client: redis.Redis) -> None:
    server = SMTPTestServer(authenticator=_counting_authenticator([]),
                            auth_require_tls=False).start()
    try:
        config = app_config(redis_url, server.port, MAIL_USERNAME="postroom",
                            MAIL_PASSWORD="wrong", MAIL_RELAY_COOLDOWN=30.0)
        app = create_app(config)
        board = RelayBoard.from_config(redis_client, app.config)  # as the workers build it
        settings = SMTPSettings.from_config(app.config, relay_state=board)
        with BatchConnection(settings) as connection:
            outcome = connection.send_data(SENDER, ["a@example.com"], message(0))
        assert (outcome["a@example.com"].status, outcome["a@example.com"].counted) == (
            "deferred", False)
        health = app.test_client().get("/healthz")
        [shown] = health.get_json()["checks"]["smtp"]["relays"]
        assert health.status_code == 503
        assert (shown["state"], shown["reason"]) == ("cooling_down", "authentication refused")
        assert shown["send_rate"] is None  # no MAIL_RATE_LIMIT, never throttled
    finally:
        server.stop()


@pytest.mark.parametrize("config_overrides", [{"MAIL_RATE_LIMIT": 8.0}])
def test_the_rate_in_force_is_a_metric_and_on_healthz(client: Any, redis_client: redis.Redis,
                                                      smtp_server: SMTPTestServer) -> None:
    name = relay(smtp_server)
    text = client.get("/metrics").get_data(as_text=True)
    assert f'postroom_relay_send_rate{{relay="{name}"}} 8.0' in text
    RelayPacer(redis_client, 8.0).throttled(name)
    text = client.get("/metrics").get_data(as_text=True)
    assert f'postroom_relay_send_rate{{relay="{name}"}} 4.0' in text
    [shown] = client.get("/healthz").get_json()["checks"]["smtp"]["relays"]
    assert shown["send_rate"] == 4.0


# -- MAIL_DEBUG without secrets


@pytest.mark.parametrize("mechanism", ["PLAIN", "LOGIN"])
def test_mail_debug_logs_the_conversation_with_auth_redacted(
        mechanism: str, caplog: pytest.LogCaptureFixture,
        capsys: pytest.CaptureFixture[str]) -> None:
    other = "LOGIN" if mechanism == "PLAIN" else "PLAIN"
    server = SMTPTestServer(authenticator=_counting_authenticator([]), auth_require_tls=False,
                            auth_exclude_mechanism=[other]).start()
    try:
        settings = settings_for(server, username="postroom", password="s3cret", debug=True)
        with caplog.at_level(logging.INFO, logger="tasks.delivery.engine.smtp_auth"), \
                BatchConnection(settings) as connection:
            outcome = connection.send_data(SENDER, ["a@example.com"], message(0))
        assert outcome["a@example.com"].status == "sent"
        logged = caplog.text
        secrets = [base64.b64encode(b"\0postroom\0s3cret").decode(),
                   base64.b64encode(b"s3cret").decode(), base64.b64encode(b"postroom").decode(),
                   "s3cret"]
        assert not [s for s in secrets if s in logged], logged
        assert f"AUTH {mechanism} ****" in logged
        assert "MAIL FROM:<noreply@postroom.test>" in logged and "DATA" in logged
        assert "AUTH" not in capsys.readouterr().err  # nothing printed around the log
    finally:
        server.stop()


def test_run_batch_waits_its_turn_once_before_sending(redis_client: redis.Redis,
                                                      smtp_server: SMTPTestServer) -> None:
    """``wait_turn`` (called by run_batch before its lease check) takes the slot that
    ``send_data`` then uses: one reservation per MAIL FROM, not two."""
    pacer = RelayPacer(redis_client, 2.0)
    with BatchConnection(settings_for(smtp_server, pacer=pacer)) as connection:
        connection.wait_turn()
        connection.send_data(SENDER, ["r0@example.com"], message(0))
        started = time.monotonic()
        connection.wait_turn()
        waited = time.monotonic() - started
        connection.send_data(SENDER, ["r1@example.com"], message(1))
    assert 0.4 < waited < 0.6, waited
    assert len(smtp_server.received) == 2
    assert 0.4 < pacer.reserve(relay(smtp_server)) <= 0.5  # only two slots were taken

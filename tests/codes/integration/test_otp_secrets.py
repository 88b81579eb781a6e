"""A code never appears in Redis (any key, any type), a log line, a task argument or a
status record: the codes are read back from the SMTP server, then searched for."""

from __future__ import annotations

import logging
from typing import Any

import pytest
import redis
from flask.testing import FlaskClient

from tests.conftest import AUTH
from tests.support.otp_support import latest_code, request_code, submit_code
from tests.support.smtp_server import SMTPTestServer

LENGTH = 10  # long codes: a chance match with a timestamp or an id is out of the question

# aiosmtpd (the receiving server, which must see the code) logs under "mail.log".
RECEIVING_SERVER_LOGGERS = ("mail.log",)


@pytest.fixture
def config_overrides() -> dict[str, Any]:
    return {"OTP_LENGTH": LENGTH}


def redis_dump(client: redis.Redis) -> list[bytes]:
    """Every key's name and every value it holds, whatever its type."""
    dump: list[bytes] = []
    for name in client.scan_iter("*"):
        dump.append(name)
        kind = client.type(name).decode()
        if kind == "string":
            dump.append(client.get(name) or b"")
        elif kind == "hash":
            for field, value in client.hgetall(name).items():
                dump += [field, value]
        elif kind == "list":
            dump += client.lrange(name, 0, -1)
        elif kind == "set":
            dump += list(client.smembers(name))
        elif kind == "zset":
            dump += [member for member, _ in client.zrange(name, 0, -1, withscores=True)]
        elif kind == "stream":
            for _, fields in client.xrange(name):
                for field, value in fields.items():
                    dump += [field, value]
        else:
            raise AssertionError(f"unexpected key type {kind} for {name!r}")
    return dump


def assert_nowhere(codes: set[str], client: redis.Redis, caplog: pytest.LogCaptureFixture,
                   *texts: str) -> None:
    dump = redis_dump(client)
    assert dump, "nothing in Redis to search"
    records = [r for r in caplog.records if not r.name.startswith(RECEIVING_SERVER_LOGGERS)]
    lines = [record.getMessage() for record in records]
    assert lines, "no log output to search"
    for code in codes:
        assert not [blob for blob in dump if code.encode() in blob], code
        assert not [line for line in lines if code in line], code
        assert not [text for text in texts if code in text], code


def test_codes_leave_no_trace(client: FlaskClient, smtp_server: SMTPTestServer,
                              redis_client: redis.Redis,
                              caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    replies = iter(["451 4.3.0 greylisted, try later"])
    smtp_server.handler.rcpt_reply = lambda address: next(replies, None)

    accepted = client.post("/api/otp", json={"email": "ada@example.com"}, headers=AUTH)
    first = accepted.get_json()["id"]
    first_code = latest_code(smtp_server, "ada@example.com", LENGTH)
    seen = [accepted.get_data(as_text=True),
            client.get(f"/api/otp/{first}", headers=AUTH).get_data(as_text=True)]

    second = request_code(client, "ada@example.com")  # replaces the first request
    second_code = latest_code(smtp_server, "ada@example.com", LENGTH)
    assert len({first_code, second_code}) == 2
    wrong = f"{(int(second_code) + 1) % 10 ** LENGTH:0{LENGTH}d}"
    seen.append(submit_code(client, second, wrong)[1])
    seen.append(client.get(f"/verify/status/{second}").get_data(as_text=True))
    seen.append(client.get(f"/validate?request={second}").get_data(as_text=True))
    status, page = submit_code(client, second, second_code)
    assert status == 200
    seen += [page, client.get(f"/api/otp/{second}", headers=AUTH).get_data(as_text=True)]

    assert_nowhere({first_code, second_code}, redis_client, caplog, *seen)


@pytest.mark.parametrize("config_overrides", [{"OTP_LENGTH": LENGTH, "MAIL_DEBUG": True}])
def test_mail_debug_does_not_print_codes(client: FlaskClient, smtp_server: SMTPTestServer,
                                         capfd: pytest.CaptureFixture[str],
                                         caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG, logger="tasks")  # Postroom's own logs (not the test server's)
    client.post("/api/otp", json={"email": "ada@example.com"}, headers=AUTH)
    code = latest_code(smtp_server, "ada@example.com", LENGTH)
    client.post("/api/messages", json={"to": "bob@example.com", "subject": "Debug me",
                                       "body": "Hello"}, headers=AUTH)
    out, err = capfd.readouterr()
    logged = caplog.text
    assert "Debug me" in logged  # MAIL_DEBUG still logs the dialogue of ordinary mail
    assert code not in out + err + logged

"""Against a real Postfix: STARTTLS verified against the relay's own certificate
(``MAIL_TLS_CA_FILE``) and SASL AUTH PLAIN and LOGIN (Cyrus sasldb), mail refused without
them; every recipient forwarded once and recorded ``sent``."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from tests.delivery.e2e.postfix.conftest import (
    StartApp,
    StartPostfix,
    forwarded,
    send,
    statuses,
    wait_forwarded,
)
from tests.delivery.e2e.postfix.harness import self_signed, wait_for
from tests.support.smtp_server import SMTPTestServer

PASSWORD = "correct horse 7"
AUTH_ONLY = {"smtpd_relay_restrictions": "permit_sasl_authenticated, reject"}


@pytest.mark.timeout(60)
@pytest.mark.parametrize("mechanism", ["PLAIN", "LOGIN"])
def test_starttls_and_auth(start_postfix: StartPostfix, postroom: StartApp,
                           sink: SMTPTestServer, mechanism: str) -> None:
    relay = start_postfix(tls=True, users={"tester": PASSWORD}, mechanisms=mechanism,
                          settings=AUTH_ONLY)
    assert relay.cert is not None
    client = postroom(relay, MAIL_USE_TLS=True, MAIL_TLS_CA_FILE=str(relay.cert),
                      MAIL_USERNAME="tester", MAIL_PASSWORD=PASSWORD).test_client()
    to = ["ada@example.com", "bob@example.net", "cy@example.com"]
    message = send(client, to)
    wait_forwarded(sink, 3)
    assert forwarded(sink) == dict.fromkeys(to, 1)
    assert statuses(client, message["id"]) == dict.fromkeys(to, "sent")
    assert relay.logged(rf"sasl_method={mechanism}, sasl_username=tester")
    assert relay.logged(r"postfix/smtpd\[\d+\]: Anonymous TLS connection established|"
                        r"postfix/smtpd\[\d+\]: Untrusted TLS connection established|"
                        r"postfix/smtpd\[\d+\]: TLS connection established")
    assert sum(relay.accepted().values()) == 3
    assert PASSWORD not in relay.log()


@pytest.mark.timeout(60)
def test_a_certificate_postroom_does_not_trust_is_refused(
        start_postfix: StartPostfix, postroom_worker: StartApp, sink: SMTPTestServer,
        tmp_path: Path) -> None:
    relay = start_postfix(tls=True, users={"tester": PASSWORD}, settings=AUTH_ONLY)
    stranger, _ = self_signed(tmp_path)  # another self-signed certificate for 127.0.0.1
    client = postroom_worker(relay, MAIL_USE_TLS=True, MAIL_TLS_CA_FILE=str(stranger),
                             MAIL_USERNAME="tester", MAIL_PASSWORD=PASSWORD).test_client()
    message = send(client, ["ada@example.com"])
    wait_for(lambda: bool(relay.logged(r"SSL_accept error|TLS handshake failed|"
                                       r"lost connection after STARTTLS")), 15,
             "Postroom to try STARTTLS and give up on the certificate")
    time.sleep(1)
    assert statuses(client, message["id"])["ada@example.com"] != "sent"
    assert relay.accepted() == {} and forwarded(sink) == {}
    assert not relay.logged(r"sasl_username=tester")  # no credentials over unverified TLS


@pytest.mark.timeout(60)
def test_without_auth_the_relay_refuses(start_postfix: StartPostfix, postroom: StartApp,
                                        sink: SMTPTestServer) -> None:
    relay = start_postfix(tls=True, users={"tester": PASSWORD}, settings=AUTH_ONLY)
    assert relay.cert is not None
    client = postroom(relay, MAIL_USE_TLS=True, MAIL_TLS_CA_FILE=str(relay.cert)
                      ).test_client()
    message = send(client, ["ada@example.com"])
    assert statuses(client, message["id"]) == {"ada@example.com": "failed"}
    assert relay.logged(r"NOQUEUE: reject: RCPT from .*: 554 5.7.1 .*Relay access denied|"
                        r"NOQUEUE: reject: RCPT from .*Access denied")
    assert forwarded(sink) == {}

"""One webhook call, against real HTTP(S) receivers on 127.0.0.1: a deadline on the whole
answer, the connection pinned to the checked address with the host name as Host and TLS
server name, and tunnelled IPv6 forms of private addresses refused without naming them.

DNS cannot run here, so a test name's answers come from a stand-in for
``socket.getaddrinfo`` (the resolver the check uses); connections to anything but
127.0.0.1 are stopped at ``socket.connect``, so no packet leaves the machine."""

from __future__ import annotations

import socket
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import redis
from flask.testing import FlaskClient

from tasks.webhooks.client import REFUSED, UnsafeURL, check_url, pin, post, public
from tests.conftest import AUTH
from tests.support.smtp_server import SMTPTestServer
from tests.support.webhook_receiver import Receiver, receiving
from tests.webhooks.integration.test_webhook_delivery import deliveries, production_app, register

PUBLIC = "93.184.216.34"  # what the test names answer first; never actually connected to
NAME = "hooks.postroom.test"
BODY = b'{"id": "e1", "type": "otp.sent"}'


class Resolver:
    """Answers for test names, in turn (the last one again once they run out); every
    other name is resolved as usual. Counts the questions per name."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.answers: dict[str, list[str]] = {}
        self.asked: dict[str, int] = {}
        real = socket.getaddrinfo

        def getaddrinfo(host: Any, port: Any, *args: Any, **kwargs: Any) -> Any:
            name = host.decode() if isinstance(host, bytes) else host
            if name not in self.answers:
                return real(host, port, *args, **kwargs)
            self.asked[name] = self.asked.get(name, 0) + 1
            queue = self.answers[name]
            address = queue.pop(0) if len(queue) > 1 else queue[0]
            family = socket.AF_INET6 if ":" in address else socket.AF_INET
            return [(family, socket.SOCK_STREAM, 6, "", (address, port))]

        monkeypatch.setattr(socket, "getaddrinfo", getaddrinfo)


class Connects:
    """Records every TCP connect the test's own thread makes (background threads of the
    session, such as lease renewals, are not the call under test); refuses at once any that
    is not to 127.0.0.1."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.made: list[tuple[str, int]] = []
        real = socket.socket.connect
        caller = threading.get_ident()

        def connect(sock: socket.socket, address: Any) -> None:
            if sock.family in (socket.AF_INET, socket.AF_INET6):
                if threading.get_ident() == caller:
                    self.made.append((address[0], address[1]))
                if address[0] != "127.0.0.1":
                    raise ConnectionRefusedError(111, "refused by the test")
            real(sock, address)

        monkeypatch.setattr(socket.socket, "connect", connect)


@pytest.fixture
def resolver(monkeypatch: pytest.MonkeyPatch) -> Resolver:
    return Resolver(monkeypatch)


@pytest.fixture
def connects(monkeypatch: pytest.MonkeyPatch) -> Connects:
    return Connects(monkeypatch)


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    with receiving() as receiver:
        yield receiver


def certificate(directory: Path, name: str) -> tuple[Path, Path]:
    """A self-signed certificate for the DNS name *name* only (no IP), and its key."""
    cert, key = directory / f"{name}.pem", directory / f"{name}.key"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt",
                    "ec_paramgen_curve:prime256v1", "-nodes", "-keyout", str(key), "-out",
                    str(cert), "-days", "2", "-subj", f"/CN={name}", "-addext",
                    f"subjectAltName=DNS:{name}"], check=True, capture_output=True)
    return cert, key


@pytest.fixture(scope="module")
def tls_files(tmp_path_factory: pytest.TempPathFactory) -> Callable[[str], tuple[Path, Path]]:
    directory = tmp_path_factory.mktemp("certs")
    made: dict[str, tuple[Path, Path]] = {}

    def files(name: str) -> tuple[Path, Path]:
        if name not in made:
            made[name] = certificate(directory, name)
        return made[name]

    return files


def call(url: str, **options: Any) -> Any:
    options.setdefault("allow_private", True)
    return post(url, BODY, event_type="otp.sent", secret="s3cret", **options)


# --- the deadline --------------------------------------------------------------------------


@pytest.mark.parametrize("scheme", ["http", "https"])
def test_a_trickling_answer_is_cut_at_the_deadline(
        scheme: str, resolver: Resolver,
        tls_files: Callable[[str], tuple[Path, Path]]) -> None:
    tls = tls_files(NAME) if scheme == "https" else None
    with receiving(tls=tls) as receiver:
        receiver.trickle = 0.25  # a byte every 0.25 s: each read comes well within 2 s
        resolver.answers[NAME] = ["127.0.0.1"]
        started = time.monotonic()
        answer = call(f"{scheme}://{NAME}:{receiver.port}/hook", timeout=2.0,
                      verify=str(tls[0]) if tls else True)
        took = time.monotonic() - started
    assert answer.status_code is None and answer.error == "no answer within 2 s"
    assert 1.9 <= took < 3.0, took
    assert receiver.trickled >= 4  # bytes kept coming: a per-read timeout would still wait
    assert len(receiver.calls) == 1


def test_the_task_takes_webhook_timeout_from_the_settings(
        redis_client: redis.Redis, redis_url: str, smtp_server: SMTPTestServer,
        receiver: Receiver) -> None:
    app = production_app(redis_url, smtp_server.port, WEBHOOK_ALLOW_PRIVATE="true",
                         WEBHOOK_TIMEOUT="0.5")
    client = app.test_client()
    endpoint = register(client, f"{receiver.url}/hook", events=["otp.sent"])
    receiver.trickle = 0.2
    started = time.monotonic()
    assert client.post("/api/otp", headers=AUTH, json={"email": "ada@example.com"}
                       ).status_code == 202
    took = time.monotonic() - started  # Celery eager: three attempts inside the request
    log = deliveries(client, endpoint["id"])
    assert [a["error"] for a in log] == ["no answer within 0.5 s"] * 3
    assert took < 6, took  # a per-read timeout: about 8 s an attempt
    assert len(smtp_server.to("ada@example.com")) == 1


# --- the pinned connection ----------------------------------------------------------------


def test_the_call_goes_to_the_checked_address_when_the_name_changes_its_answer(
        resolver: Resolver, connects: Connects, receiver: Receiver) -> None:
    resolver.answers[NAME] = [PUBLIC, "127.0.0.1"]  # public when checked, loopback after
    answer = call(f"http://{NAME}:{receiver.port}/hook", allow_private=False)
    assert resolver.asked[NAME] == 1  # resolved once, for the check and the connection
    assert connects.made == [(PUBLIC, receiver.port)]
    assert receiver.calls == []  # 127.0.0.1 was never reached
    assert answer.status_code is None and answer.error and PUBLIC not in answer.error

    again = call(f"http://{NAME}:{receiver.port}/hook", allow_private=False)
    assert again.error == f"not called: {REFUSED}"  # now it answers loopback: refused
    assert connects.made == [(PUBLIC, receiver.port)] and receiver.calls == []


def test_a_pinned_http_call_sends_the_host_name(resolver: Resolver, connects: Connects,
                                                receiver: Receiver) -> None:
    resolver.answers[NAME] = ["127.0.0.1", PUBLIC]
    answer = call(f"http://{NAME}:{receiver.port}/hook?x=1")
    assert answer.status_code == 200, answer
    assert connects.made == [("127.0.0.1", receiver.port)] and resolver.asked[NAME] == 1
    [received] = receiver.calls
    assert received.path == "/hook?x=1" and received.body == BODY
    assert received.headers["Host"] == f"{NAME}:{receiver.port}"


def test_a_pinned_https_call_sends_the_name_as_host_and_sni_and_verifies_it(
        resolver: Resolver, connects: Connects,
        tls_files: Callable[[str], tuple[Path, Path]]) -> None:
    cert, key = tls_files(NAME)  # for the name only: no IP in it
    resolver.answers[NAME] = ["127.0.0.1"]
    with receiving(tls=(cert, key)) as receiver:
        answer = call(f"https://{NAME}:{receiver.port}/hook", verify=str(cert))
    assert answer.status_code == 200, answer
    assert connects.made == [("127.0.0.1", receiver.port)]
    assert receiver.server_names == [NAME]
    [received] = receiver.calls
    assert received.headers["Host"] == f"{NAME}:{receiver.port}"


def test_a_certificate_for_another_name_is_refused(
        resolver: Resolver, tls_files: Callable[[str], tuple[Path, Path]]) -> None:
    other_cert, other_key = tls_files("other.postroom.test")
    resolver.answers[NAME] = ["127.0.0.1"]
    with receiving(tls=(other_cert, other_key)) as receiver:
        answer = call(f"https://{NAME}:{receiver.port}/hook", verify=str(other_cert))
    assert answer.status_code is None and answer.error
    assert "SSLError" in answer.error and NAME in answer.error
    assert receiver.calls == []


def test_the_call_follows_no_redirect_and_no_proxy(
        resolver: Resolver, connects: Connects, receiver: Receiver,
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HTTP_PROXY", f"http://127.0.0.1:{receiver.port + 1}")
    resolver.answers[NAME] = ["127.0.0.1"]
    receiver.answers = [307]
    answer = call(f"http://{NAME}:{receiver.port}/hook")
    assert answer.status_code == 307
    assert [c.path for c in receiver.calls] == ["/hook"]
    assert connects.made == [("127.0.0.1", receiver.port)]


# --- tunnelled and private forms ------------------------------------------------------------

TUNNELLED = [
    "2002:7f00:1::1",  # 6to4 of 127.0.0.1
    "2002:a00:1::1",  # 6to4 of 10.0.0.1
    "2002:a9fe:a9fe::1",  # 6to4 of 169.254.169.254
    "2001:0:4136:e378:8000:63bf:3fff:fdd2",  # Teredo
    "2001:0:5db8:d822::1",  # Teredo, even with a public server
    "64:ff9b::7f00:1",  # NAT64 of 127.0.0.1
    "64:ff9b::c0a8:101",  # NAT64 of 192.168.1.1
    "64:ff9b:1::a00:1",  # local-use NAT64
    "::ffff:127.0.0.1",  # IPv4-mapped
    "::ffff:10.1.2.3",
    "::127.0.0.1",  # IPv4-compatible
    "::ffff:0:7f00:1",  # IPv4-translated
    "fec0::1",  # site-local
]


@pytest.mark.parametrize("address", TUNNELLED)
def test_tunnelled_forms_of_private_addresses_are_refused_without_naming_them(
        address: str, resolver: Resolver, connects: Connects) -> None:
    assert not public(address)
    resolver.answers[NAME] = [address]
    with pytest.raises(UnsafeURL) as refused:
        check_url(f"https://{NAME}/hook", allow_private=False)
    assert str(refused.value) == REFUSED
    assert call(f"https://{NAME}/hook", allow_private=False).error == f"not called: {REFUSED}"
    assert connects.made == []


def test_tunnelled_forms_of_public_addresses_pass() -> None:
    assert public("2002:5db8:d822::1") and public("64:ff9b::5db8:d822")  # 93.184.216.34


def test_one_private_address_among_public_ones_refuses_the_name(resolver: Resolver) -> None:
    resolver.answers[NAME] = [PUBLIC]
    assert pin(f"https://{NAME}/hook", allow_private=False).address == PUBLIC

    def several(host: Any, port: Any, *args: Any, **kwargs: Any) -> Any:
        return [(socket.AF_INET, socket.SOCK_STREAM, 6, "", (a, port))
                for a in (PUBLIC, "10.0.0.7")]

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(socket, "getaddrinfo", several)
        with pytest.raises(UnsafeURL, match="non-public"):
            pin(f"https://{NAME}/hook", allow_private=False)


@pytest.mark.parametrize("url", ["http://[2002:7f00:1::1]/hook", "http://[::ffff:7f00:1]:80/",
                                 "http://127.0.0.1:8080/hook", "http://[64:ff9b::a00:1]/"])
def test_the_api_refusal_names_no_address(
        redis_client: redis.Redis, redis_url: str, smtp_server: SMTPTestServer,
        url: str) -> None:
    client: FlaskClient = production_app(redis_url, smtp_server.port).test_client()
    response = client.post("/api/webhooks", headers=AUTH, json={"url": url})
    assert response.status_code == 422
    error = response.get_json()["error"]
    assert error["fields"] == {"url": REFUSED}
    for shown in ("127.0.0.1", "10.0.0.1", "7f00", "2002", "64:ff9b"):
        assert shown not in error["message"] + error["fields"]["url"]

"""docker-compose.yml: validated by Debian's ``docker-compose config``, and each of its
web, worker, worker-events, beat and flower commands run here against the test Redis until
it is up."""

from __future__ import annotations

import base64
import json
import os
import shutil
import signal
import smtplib
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import redis
import yaml
from celery import Celery

from tasks.delivery.relay_state import RelayBoard
from tests.support.paths import ROOT
from tests.support.smtp_server import SMTPTestServer
from web.testing import free_port

COMPOSE_FILE = ROOT / "docker-compose.yml"
SECRETS = {"SECRET_KEY": "compose-secret", "API_TOKENS": "compose-token",
           "FLOWER_BASIC_AUTH": "ops:compose-password", "PUBLIC_URL": "https://mail.example.com",
           "METRICS_TOKEN": "compose-metrics-token"}
# The configuration list of the design: every one must reach the app's processes.
DESIGN_VARIABLES = [
    "MAIL_SERVER", "MAIL_PORT", "MAIL_USE_TLS", "MAIL_USE_SSL", "MAIL_DEBUG", "MAIL_USERNAME",
    "MAIL_PASSWORD", "MAIL_DEFAULT_SENDER", "MAIL_MAX_EMAILS", "MAIL_SUPPRESS_SEND",
    "MAIL_ASCII_ATTACHMENTS", "MAIL_TIMEOUT", "MAIL_TLS_VERIFY", "MAIL_TLS_CA_FILE",
    "MAIL_MAX_CONNECTIONS", "MAIL_RATE_LIMIT", "REDIS_URL", "CELERY_BROKER_URL", "SECRET_KEY",
    "API_TOKENS", "ADMIN_USERNAME", "ADMIN_PASSWORD", "OTP_LENGTH", "OTP_TTL",
    "OTP_MAX_ATTEMPTS", "MAX_ATTACHMENT_BYTES", "MAX_MESSAGE_BYTES"]
APP_SERVICES = ("web", "worker", "worker-bulk", "worker-events", "bounces", "submission", "beat",
                "flower")


def docker_compose(*args: str, environ: dict[str, str]) -> subprocess.CompletedProcess[str]:
    binary = shutil.which("docker-compose")
    if binary is None:
        pytest.fail("docker-compose is not installed; `make test` installs Debian's package "
                    "when run as root, or run `apt-get install docker-compose`")
    return subprocess.run([binary, "-f", str(COMPOSE_FILE), *args], env=environ,
                          capture_output=True, text=True, timeout=60)


def compose_environ(**extra: str) -> dict[str, str]:
    """Only PATH and what the test gives: the host's settings must not leak in."""
    return {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), **extra}


@pytest.fixture(scope="module")
def services() -> dict[str, Any]:
    result = docker_compose("config", environ=compose_environ(**SECRETS))
    assert result.returncode == 0, result.stderr
    loaded: dict[str, Any] = yaml.safe_load(result.stdout)["services"]
    return loaded


def test_compose_defines_every_service(services: dict[str, Any]) -> None:
    assert set(services) == {"redis", "mailpit", "web", "worker", "worker-bulk",
                             "worker-events", "bounces", "submission", "beat", "flower"}
    assert services["bounces"]["command"][:2] == ["postroom", "bounces"]
    assert services["submission"]["command"][:2] == ["postroom", "submission"]
    assert [p["target"] for p in services["submission"]["ports"]] == [2587]
    redis_service = services["redis"]
    assert redis_service["command"][-2:] == ["--appendonly", "yes"]
    assert any(volume.startswith("redis-data:/data") for volume in redis_service["volumes"])
    assert services["mailpit"]["image"].startswith("axllent/mailpit")
    assert services["web"]["command"][0] == "gunicorn"
    assert services["web"]["command"][-1] == "web:create_app()"
    lane, bulk = services["worker"]["command"], services["worker-bulk"]["command"]
    events = services["worker-events"]["command"]
    for worker in (lane, bulk, events):
        assert worker[:4] == ["celery", "-A", "worker", "worker"] and "-E" in worker
        assert worker[worker.index("--pool") + 1] == "threads"
    assert lane[lane.index("-Q") + 1] == "otp,mail"  # codes never wait behind campaigns ...
    assert events[events.index("-Q") + 1] == "events"  # ... nor behind webhook receivers
    assert bulk[bulk.index("-Q") + 1] == "bulk"
    assert bulk[bulk.index("--concurrency") + 1] == "16"
    assert services["beat"]["command"][:4] == ["celery", "-A", "worker", "beat"]
    assert services["flower"]["command"][:4] == ["celery", "-A", "worker", "flower"]
    assert services["flower"]["environment"]["FLOWER_BASIC_AUTH"] == "ops:compose-password"
    for name in ("worker", "worker-events", "beat", "flower"):
        assert services[name]["cpu_shares"] == 256  # web (1024) is answered first
    for name in ("web", "worker-bulk"):
        assert "cpu_shares" not in services[name]
    for name in APP_SERVICES:
        assert services[name]["depends_on"]["redis"]["condition"] == "service_healthy"
        environment = services[name]["environment"]
        missing = [variable for variable in DESIGN_VARIABLES if variable not in environment]
        assert missing == [], f"{name} does not pass {missing}"
        assert environment["SECRET_KEY"] == "compose-secret"
        assert environment["REDIS_URL"] == "redis://redis:6379/0"


def test_compose_takes_settings_from_the_environment() -> None:
    result = docker_compose("config", environ=compose_environ(
        **SECRETS, MAIL_SERVER="relay.example.com", MAIL_PORT="587", MAIL_USE_TLS="true"))
    assert result.returncode == 0, result.stderr
    environment = yaml.safe_load(result.stdout)["services"]["worker"]["environment"]
    assert (environment["MAIL_SERVER"], environment["MAIL_PORT"], environment["MAIL_USE_TLS"]) \
        == ("relay.example.com", "587", "true")


def test_mailpit_and_flower_are_published_on_loopback_only(services: dict[str, Any]) -> None:
    """Mailpit's UI shows every mail (one-time codes too); Flower controls the workers."""
    for name, port in (("mailpit", 8025), ("flower", 5555)):
        assert [str(p) for p in services[name]["ports"]] == [f"127.0.0.1:{port}:{port}/tcp"]


def test_metrics_token_reaches_the_processes() -> None:
    result = docker_compose("config", environ=compose_environ(**{**SECRETS,
                                                                 "METRICS_TOKEN": "m-t"}))
    assert result.returncode == 0, result.stderr
    for name in APP_SERVICES:
        environment = yaml.safe_load(result.stdout)["services"][name]["environment"]
        assert environment["METRICS_TOKEN"] == "m-t"
        assert environment["PUBLIC_URL"] == "https://mail.example.com"


@pytest.mark.parametrize("missing", sorted(SECRETS))
def test_compose_refuses_to_run_without_a_secret(missing: str) -> None:
    given = {name: value for name, value in SECRETS.items() if name != missing}
    result = docker_compose("config", environ=compose_environ(**given))
    assert result.returncode != 0
    assert f"set {missing}" in result.stderr


# --- each app command, run here --------------------------------------------------------------


class Service:
    """One compose command running locally in its own process group."""

    def __init__(self, argv: list[str], environ: dict[str, str], log: Path) -> None:
        self.log = log
        with log.open("wb") as sink:
            self.process = subprocess.Popen(argv, env=environ, stdin=subprocess.DEVNULL,
                                            stdout=sink, stderr=subprocess.STDOUT,
                                            start_new_session=True)

    def output(self) -> str:
        return self.log.read_text(errors="replace")

    def wait_until(self, what: str, check: Callable[[], bool], timeout: float = 30.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if check():
                return
            if self.process.poll() is not None:
                break
            time.sleep(0.2)
        pytest.fail(f"{what}: not seen (exit code {self.process.poll()}):\n"
                    f"{self.output()[-3000:]}")

    def stop(self) -> None:
        if self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(15)
            except subprocess.TimeoutExpired:
                pass
        try:
            os.killpg(self.process.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        self.process.wait(5)


def local_command(command: list[str], replacements: dict[str, str]) -> list[str]:
    """The compose command with the venv's executable and this machine's ports and paths."""
    for old in replacements:
        assert old in command, f"{old!r} is no longer in the compose command {command}"
    argv = [replacements.get(part, part) for part in command]
    argv[0] = str(Path(sys.executable).with_name(argv[0]))
    return argv


def http_status(url: str, headers: dict[str, str] | None = None) -> int:
    try:
        with urllib.request.urlopen(urllib.request.Request(url, headers=headers or {}),
                                    timeout=2) as response:
            return int(response.status)
    except urllib.error.HTTPError as err:
        return err.code
    except OSError:
        return 0


class LocalCompose:
    """Runs compose services here: the test Redis and SMTP server, a key prefix of its own."""

    def __init__(self, services: dict[str, Any], redis_url: str, smtp_port: int,
                 workdir: Path) -> None:
        self.services = services
        self.redis_url = redis_url
        self.smtp_port = smtp_port
        self.workdir = workdir
        self.prefix = f"postroom:celery:{workdir.name}:"
        self.started: list[Service] = []

    def run(self, name: str, replacements: dict[str, str], **extra: str) -> Service:
        service = self.services[name]
        environment = {key: str(value) for key, value in service["environment"].items()
                       if value is not None}
        environment.update(
            PATH=os.environ.get("PATH", ""), HOME=os.environ.get("HOME", str(self.workdir)),
            PYTHONUNBUFFERED="1",  # as the image sets it
            REDIS_URL=self.redis_url, CELERY_BROKER_URL=self.redis_url,
            CELERY_KEY_PREFIX=self.prefix,
            MAIL_SERVER="127.0.0.1", MAIL_PORT=str(self.smtp_port), **extra)
        started = Service(local_command(service["command"], replacements), environment,
                          self.workdir / f"{name}.log")
        self.started.append(started)
        return started


@pytest.fixture
def compose(services: dict[str, Any], redis_client: redis.Redis, redis_url: str,
            smtp_server: SMTPTestServer, tmp_path: Path) -> Iterator[LocalCompose]:
    local = LocalCompose(services, redis_url, smtp_server.port, tmp_path)
    yield local
    for service in local.started:
        service.stop()


def test_web_command_serves_healthz(compose: LocalCompose) -> None:
    port = free_port()
    web = compose.run("web", {"0.0.0.0:8000": f"127.0.0.1:{port}"})
    url = f"http://127.0.0.1:{port}/healthz"
    web.wait_until("web answers /healthz", lambda: http_status(url) in (200, 503))

    def answer(headers: dict[str, str]) -> Any:
        try:
            with urllib.request.urlopen(urllib.request.Request(url, headers=headers),
                                        timeout=5) as response:
                return json.loads(response.read())
        except urllib.error.HTTPError as err:  # 503: no worker or beat runs in this test
            return json.loads(err.read())

    assert answer({}) == {"status": "unhealthy"}  # anonymous: status only
    body = answer({"Authorization": f"Bearer {SECRETS['METRICS_TOKEN']}"})
    assert body["checks"]["redis"]["ok"] is True
    assert body["down"] == ["workers", "beat"], body


@pytest.mark.parametrize("name", ["worker", "worker-events"])
def test_worker_command_answers_ping(compose: LocalCompose, redis_url: str, name: str) -> None:
    worker = compose.run(name, {})
    control = Celery(broker=redis_url)
    control.conf.broker_transport_options = {"global_keyprefix": compose.prefix}
    replies: list[dict[str, Any]] = []

    def pinged() -> bool:
        replies[:] = control.control.ping(timeout=1.0)
        return bool(replies)

    worker.wait_until("worker answers ping", pinged, timeout=40)
    assert list(replies[0].values()) == [{"ok": "pong"}]
    assert " ready." in worker.output()
    command = compose.services[name]["command"]
    active = control.control.inspect(timeout=2.0).active_queues() or {}
    assert [sorted(queue["name"] for queue in queues) for queues in active.values()] == [
        sorted(command[command.index("-Q") + 1].split(","))]
    control.close()


def test_beat_command_starts(compose: LocalCompose, tmp_path: Path) -> None:
    schedule = tmp_path / "celerybeat-schedule"
    beat = compose.run("beat", {"/var/lib/postroom/celerybeat-schedule": str(schedule)})
    beat.wait_until("beat logs its start",
                    lambda: "is starting" in beat.output() and "beat: Starting" in beat.output())
    assert list(tmp_path.glob("celerybeat-schedule*"))


def test_flower_command_serves_with_basic_auth(compose: LocalCompose) -> None:
    port = free_port()
    flower = compose.run("flower", {"--address=0.0.0.0": "--address=127.0.0.1",
                                    "--port=5555": f"--port={port}"})
    url = f"http://127.0.0.1:{port}/"
    credentials = base64.b64encode(SECRETS["FLOWER_BASIC_AUTH"].encode()).decode()
    flower.wait_until("flower answers HTTP", lambda: http_status(url) != 0)
    assert http_status(url) == 401
    assert http_status(url, {"Authorization": f"Basic {credentials}"}) == 200


def test_dockerfile_installs_the_project_and_serves_like_compose(
        services: dict[str, Any]) -> None:
    lines = (ROOT / "Dockerfile").read_text().splitlines()
    copied = " ".join(line for line in lines if line.startswith("COPY"))
    for part in ("pyproject.toml", "celeryconfig.py", "web", "worker", "tasks"):
        assert part in copied, f"the Dockerfile does not copy {part}"
    assert any("pip install ." in line for line in lines)
    [cmd] = [line for line in lines if line.startswith("CMD ")]
    assert json.loads(cmd.removeprefix("CMD ")) == services["web"]["command"]
    ignored = (ROOT / ".dockerignore").read_text().split()
    assert {".venv", "var", ".git"} <= set(ignored)


def test_bounces_command_takes_mail_for_the_return_path(compose: LocalCompose) -> None:
    port = free_port()
    listener = compose.run("bounces", {"0.0.0.0": "127.0.0.1", "2525": str(port)})

    def answers() -> bool:
        try:
            with smtplib.SMTP("127.0.0.1", port, timeout=2) as client:
                client.ehlo()
                return client.rcpt("nobody@example.com")[0] == 503  # MAIL FROM comes first
        except OSError:
            return False

    listener.wait_until("the bounce listener answers SMTP", answers, timeout=40)
    with smtplib.SMTP("127.0.0.1", port, timeout=5) as client:
        client.ehlo()
        client.mail("")
        assert client.rcpt("someone@example.com")[0] == 550  # not the return path
        assert client.rcpt("bounces+junk@bounces.localhost")[0] == 250


def test_web_healthcheck_probes_livez_and_a_dead_relay_fails_no_probe(
        compose: LocalCompose, redis_client: redis.Redis) -> None:
    """The compose healthcheck asks /livez; with every relay's last session failed, /livez
    and /readyz still answer 200 while /healthz (monitoring) reports the relay down."""
    check = compose.services["web"]["healthcheck"]["test"]
    assert check[:3] == ["CMD", "python", "-c"] and "/livez" in check[3]
    port = free_port()
    web = compose.run("web", {"0.0.0.0:8000": f"127.0.0.1:{port}"})
    base = f"http://127.0.0.1:{port}"
    web.wait_until("web answers /livez", lambda: http_status(base + "/livez") == 200)
    RelayBoard(redis_client, 0.0).failed(f"127.0.0.1:{compose.smtp_port}", "connection refused")
    probe = subprocess.run([sys.executable, "-c", check[3].replace("127.0.0.1:8000",
                                                                   f"127.0.0.1:{port}")],
                           capture_output=True, text=True, timeout=15, check=False)
    assert probe.returncode == 0, probe.stderr
    assert http_status(base + "/readyz") == 200
    request = urllib.request.Request(base + "/healthz", headers={
        "Authorization": f"Bearer {SECRETS['METRICS_TOKEN']}"})
    try:
        urllib.request.urlopen(request, timeout=5)
        raise AssertionError("/healthz answered 200 with the relay down")
    except urllib.error.HTTPError as err:
        assert err.code == 503
        assert "smtp" in json.loads(err.read())["down"]


def test_submission_command_takes_mail_after_starttls(compose: LocalCompose, tmp_path: Path,
                                                     smtp_server: SMTPTestServer) -> None:
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
                    "-keyout", str(key), "-out", str(cert), "-subj", "/CN=127.0.0.1"],
                   check=True, capture_output=True, timeout=60)
    environment = compose.services["submission"]["environment"]
    assert environment["SUBMISSION_TLS_CERT"] == "/etc/postroom/tls/cert.pem"
    port = free_port()
    listener = compose.run("submission", {"0.0.0.0": "127.0.0.1", "2587": str(port)},
                           SUBMISSION_TLS_CERT=str(cert), SUBMISSION_TLS_KEY=str(key))

    def answers() -> bool:
        try:
            with smtplib.SMTP("127.0.0.1", port, timeout=2) as client:
                return client.ehlo()[0] == 250
        except OSError:
            return False

    listener.wait_until("the submission listener answers SMTP", answers, timeout=40)
    with smtplib.SMTP("127.0.0.1", port, timeout=10) as client:
        client.ehlo()
        assert client.has_extn("starttls") and not client.has_extn("auth")  # not before TLS
        client.starttls()
        client.login("app", SECRETS["API_TOKENS"])
        client.mail("app@example.com")
        client.rcpt("ada@example.com")
        code, reply = client.data(b"From: app@example.com\r\nTo: ada@example.com\r\n"
                                  b"Subject: Through compose\r\n\r\nHello\r\n")
    assert code == 250 and reply.startswith(b"2.0.0 Ok: queued as ")

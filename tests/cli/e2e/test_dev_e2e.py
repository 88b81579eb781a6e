"""End to end: ``postroom dev`` as a subprocess, driven over HTTP.

It runs in a temporary directory (so its ``./var`` is the test's own), on free
ports, embedding both Redis and the SMTP capture server.
"""

from __future__ import annotations

import base64
import http.cookiejar
import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import flask_mail
import pytest
import redis
from flask import Flask

from tests.support.smtp_server import SMTPTestServer
from web.config import SETTINGS
from web.testing import free_port

pytestmark = pytest.mark.e2e

POSTROOM = Path(sys.executable).with_name("postroom")
READY_LINE = "Postroom is running"


def clean_environ() -> dict[str, str]:
    """The test's environment without any Postroom, Celery or Flower setting."""
    return {name: value for name, value in os.environ.items()
            if name not in SETTINGS and not name.startswith(("FLOWER_", "CELERY_", "MAIL_"))}


def proc_stat(pid: int) -> tuple[str, int, int] | None:
    """(state, parent pid, session id) of a live process, or None."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError):
        return None
    fields = text.rsplit(")", 1)[1].split()
    return fields[0], int(fields[1]), int(fields[3])


def all_pids() -> list[int]:
    return [int(entry.name) for entry in Path("/proc").iterdir() if entry.name.isdigit()]


def running(pid: int) -> bool:
    stat = proc_stat(pid)
    return stat is not None and stat[0] != "Z"


def descendants(root: int) -> dict[int, int]:
    """Every live process below *root*: pid -> session id."""
    table = {pid: stat for pid in all_pids() if (stat := proc_stat(pid)) is not None}
    found: dict[int, int] = {}
    frontier = [root]
    while frontier:
        parent = frontier.pop()
        for pid, (state, ppid, sid) in table.items():
            if ppid == parent and state != "Z" and pid not in found:
                found[pid] = sid
                frontier.append(pid)
    return found


def niceness_of_group(pid: int) -> int | None:
    """The nice value of *pid*'s autogroup (``/autogroup-N nice V``), None without one."""
    try:
        return int(Path(f"/proc/{pid}/autogroup").read_text().split()[-1])
    except (OSError, ValueError, IndexError):
        return None


def command_line(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
    except FileNotFoundError:
        return ""


@dataclass
class DevRun:
    process: subprocess.Popen[bytes]
    log: Path
    workdir: Path
    port: int
    flower_port: int
    token: str = ""

    def output(self) -> str:
        return self.log.read_text(errors="replace")

    def wait_for(self, pattern: str, timeout: float = 45.0) -> re.Match[str]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            match = re.search(pattern, self.output())
            if match:
                return match
            if self.process.poll() is not None:
                break
            time.sleep(0.1)
        pytest.fail(f"no {pattern!r} in the output of postroom dev "
                    f"(exit code {self.process.poll()}):\n{self.output()[-4000:]}")

    def api(self, method: str, path: str, body: object = None) -> tuple[int, dict[str, object]]:
        data = None if body is None else json.dumps(body).encode()
        request = urllib.request.Request(
            f"http://127.0.0.1:{self.port}{path}", data=data, method=method,
            headers={"Authorization": f"Bearer {self.token}",
                     "Content-Type": "application/json"})
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, json.loads(response.read())

    def wait_until_sent(self, message_id: str, timeout: float = 30.0) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        shown: dict[str, Any] = {}
        while time.monotonic() < deadline:
            _, shown = self.api("GET", f"/api/messages/{message_id}")
            if shown["status"] == "sent":
                return shown
            time.sleep(0.2)
        pytest.fail(f"message not sent in {timeout} s: {shown}\n{self.output()[-3000:]}")

    def stop(self, signum: int) -> int:
        self.process.send_signal(signum)
        return self.process.wait(30)


def start_dev(workdir: Path, *extra: str, environ: dict[str, str] | None = None) -> DevRun:
    port, flower_port = free_port(), free_port()
    log = workdir / "dev.log"
    argv = [str(POSTROOM), "dev", "--port", str(port), "--flower-port", str(flower_port),
            "--smtp-port", str(free_port()), "--redis-port", str(free_port()),
            "--bounce-port", str(free_port()), "--submission-port", str(free_port()), *extra]
    with log.open("wb") as sink:
        process = subprocess.Popen(argv, cwd=workdir, env=environ or clean_environ(),
                                   stdin=subprocess.DEVNULL, stdout=sink, stderr=subprocess.STDOUT)
    return DevRun(process, log, workdir, port, flower_port)


@pytest.fixture
def launch(tmp_path: Path) -> Iterator[Callable[..., DevRun]]:
    """Start ``postroom dev`` (with *environ* added to a clean environment), wait until ready."""
    runs: list[DevRun] = []

    def start(**environ: str) -> DevRun:
        run = start_dev(tmp_path, environ=clean_environ() | environ)
        runs.append(run)
        run.wait_for(READY_LINE)
        run.token = run.wait_for(r"API token\s+(\S+)").group(1)
        return run

    yield start
    for run in runs:
        if run.process.poll() is None:  # the test failed before stopping it
            for pid, sid in descendants(run.process.pid).items():
                if pid == sid:
                    os.killpg(pid, signal.SIGKILL)
            run.process.kill()
            run.process.wait(10)


def assert_nothing_left(children: dict[int, int]) -> None:
    sessions = set(children.values())
    left = [(pid, command_line(pid)) for pid in children if running(pid)]
    left += [(pid, command_line(pid)) for pid in all_pids()
             if (stat := proc_stat(pid)) and stat[2] in sessions and stat[0] != "Z"
             and pid not in children]
    assert left == [], f"processes left behind: {left}"


def post_and_deliver(run: DevRun, subject: str) -> None:
    """Post a message to Ada (Bcc Eve) and wait until both are ``sent``."""
    status, accepted = run.api("POST", "/api/messages", {
        "to": ["ada@example.com"], "bcc": ["eve@example.com"], "subject": subject,
        "body": "Hello from the end-to-end test"})
    assert (status, accepted["status"]) == (202, "queued")
    shown = run.wait_until_sent(str(accepted["id"]))
    assert [(r["email"], r["status"]) for r in shown["recipients"]] == [
        ("ada@example.com", "sent"), ("eve@example.com", "sent")]


def captured(run: DevRun, subject: str) -> Path:
    """The one outbox file holding the message with *subject*."""
    found = [path for path in (run.workdir / "var" / "outbox").glob("*.eml")
             if f"Subject: {subject}" in path.read_text()]
    assert len(found) == 1, found
    return found[0]


def test_dev_delivers_a_message_and_sigint_stops_every_process(
        launch: Callable[..., DevRun]) -> None:
    dev_run = launch()
    children = descendants(dev_run.process.pid)
    names = " ".join(command_line(pid) for pid in children)
    for part in ("redis-server", "gunicorn", "-Q otp,mail -P threads", "-Q events -P threads",
                 "-Q bulk -P threads", " beat ", " flower "):
        assert part in names, f"{part!r} not among the children: {names}"
    assert len(set(children.values())) >= 5  # every child leads its own session
    # the lane and events workers, beat and Flower yield the CPU to web (WORKER_NICENESS,
    # 10 by default); bulk workers keep their share
    leaders = {command_line(pid): pid for pid, sid in children.items() if pid == sid}
    for line, pid in leaders.items():
        expected = 0 if any(mark in line for mark in ("gunicorn", "redis-server", "-Q bulk")) \
            else (10 if " worker " in line or " beat " in line or " flower " in line else None)
        if expected is not None:
            assert os.getpriority(os.PRIO_PROCESS, pid) == expected, line
            assert niceness_of_group(pid) in (None, expected), line

    post_and_deliver(dev_run, "End to end")
    text = captured(dev_run, "End to end").read_text()
    assert "X-Envelope-To: ada@example.com, eve@example.com" in text
    assert "Hello from the end-to-end test" in text

    outbox_url = f"http://127.0.0.1:{dev_run.port}/outbox/"
    with urllib.request.urlopen(outbox_url, timeout=10) as page:  # anonymous: the sign-in form
        assert "/campaigns/login" in page.url and "End to end" not in page.read().decode()
    user, password = dev_run.wait_for(r"Flower .*\(user (\S+), password (\S+)\)").groups()
    flower_auth = (dev_run.workdir / "var" / "flower_auth").read_text().strip()
    assert f"{user}:{password}" == flower_auth
    request = urllib.request.Request(f"http://127.0.0.1:{dev_run.flower_port}/", headers={
        "Authorization": "Basic " + base64.b64encode(flower_auth.encode()).decode()})
    with urllib.request.urlopen(request, timeout=10) as flower:
        assert flower.status == 200
    # the workers' task events (sent in batches) reach Flower: the message's task succeeded
    deadline = time.monotonic() + 15
    while True:
        request = urllib.request.Request(f"http://127.0.0.1:{dev_run.flower_port}/api/tasks",
                                         headers=request.headers)
        with urllib.request.urlopen(request, timeout=10) as answer:
            tasks = json.loads(answer.read())
        states = {task.get("name"): task.get("state") for task in tasks.values()}
        if states.get("postroom.deliver_message") == "SUCCESS":
            break
        assert time.monotonic() < deadline, f"Flower never saw the message task: {tasks}"
        time.sleep(0.5)
    # and reads the broker's queues (it knows the broker by its URL's scheme). Flower
    # names them from the workers' replies to its inspection, made when it starts and
    # when asked to refresh: a worker slow to answer then is listed after a refresh
    flower = f"http://127.0.0.1:{dev_run.flower_port}/api"
    deadline = time.monotonic() + 30
    while True:
        refresh = urllib.request.Request(f"{flower}/workers?refresh=1", headers=request.headers)
        with urllib.request.urlopen(refresh, timeout=30) as answer:
            answer.read()
        lengths = urllib.request.Request(f"{flower}/queues/length", headers=request.headers)
        with urllib.request.urlopen(lengths, timeout=10) as answer:
            queues = {queue["name"]: queue["messages"]
                      for queue in json.loads(answer.read())["active_queues"]}
        if {"otp", "mail", "bulk", "events"} <= set(queues):
            break
        assert time.monotonic() < deadline, f"Flower's queue lengths lack a queue: {queues}"
        time.sleep(0.5)

    admin, admin_password = dev_run.wait_for(
        r"Campaigns .*\(user (\S+), password (\S+)\)").groups()
    browser = urllib.request.build_opener(
        urllib.request.HTTPCookieProcessor(http.cookiejar.CookieJar()))
    login_url = f"http://127.0.0.1:{dev_run.port}/campaigns/login"
    with browser.open(login_url, timeout=10) as form:
        found = re.search(r'name="csrf_token" value="([^"]+)"', form.read().decode())
    assert found, "the sign-in form has no CSRF token"
    fields = {"csrf_token": found.group(1), "username": admin, "password": admin_password}
    with browser.open(login_url, urllib.parse.urlencode(fields).encode(), timeout=10) as page:
        assert page.url.rstrip("/").endswith("/campaigns")  # followed the 303 to the list
        assert "Sign out" in page.read().decode()
    outbox_user = dev_run.wait_for(r"Outbox .*\(captured mail; sign in as ([^\s,]+)").group(1)
    assert outbox_user == admin  # the line says which sign-in opens it
    with browser.open(outbox_url, timeout=10) as page:
        assert "End to end" in page.read().decode()

    assert dev_run.stop(signal.SIGINT) == 0
    assert_nothing_left(children)
    assert "postroom dev: stopped" in dev_run.output()
    assert (dev_run.workdir / "var" / "redis" / "appendonly.aof").is_file()


def test_dev_uses_configured_servers_restarts_a_killed_worker_and_stops_on_sigterm(
        launch: Callable[..., DevRun], redis_client: redis.Redis, redis_url: str,
        smtp_server: SMTPTestServer, tmp_path: Path) -> None:
    """With REDIS_URL and MAIL_SERVER set, nothing is embedded: mail goes to that server."""
    dev_run = launch(REDIS_URL=redis_url, MAIL_SERVER="127.0.0.1",
                     MAIL_PORT=str(smtp_server.port), API_TOKENS="configured-token",
                     CELERY_KEY_PREFIX=f"postroom:celery:{tmp_path.name}:")
    assert dev_run.token == "configured-token"
    assert f"Redis        {redis_url}  (external)" in dev_run.output()
    assert f"SMTP         127.0.0.1:{smtp_server.port}" in dev_run.output()
    names = " ".join(command_line(pid) for pid in descendants(dev_run.process.pid))
    assert "redis-server" not in names

    def worker_leader() -> int:
        [pid] = [pid for pid, sid in descendants(dev_run.process.pid).items()
                 if pid == sid and "-Q otp,mail " in command_line(pid)]
        return pid

    first = worker_leader()
    os.kill(first, signal.SIGKILL)
    dev_run.wait_for(r"worker exited with code -9; restarting it", timeout=15)
    assert worker_leader() != first
    post_and_deliver(dev_run, "After a restart")
    [received] = smtp_server.to("eve@example.com")
    assert received.message["Subject"] == "After a restart"
    # a Flask-Mail app sends through the submission listener with the API token
    submission_port = int(dev_run.wait_for(r"Submission\s+smtp://127\.0\.0\.1:(\d+)").group(1))
    shop = Flask("shop")
    shop.config.update(MAIL_SERVER="127.0.0.1", MAIL_PORT=submission_port,
                       MAIL_USERNAME="shop", MAIL_PASSWORD="configured-token",
                       MAIL_DEFAULT_SENDER="shop@example.com")
    with shop.app_context():
        flask_mail.Mail(shop).send(flask_mail.Message("Submitted", body="Over SMTP",
                                                      recipients=["zoe@example.com"]))
    deadline = time.monotonic() + 30
    while not smtp_server.to("zoe@example.com") and time.monotonic() < deadline:
        time.sleep(0.2)
    assert [r.message["Subject"] for r in smtp_server.to("zoe@example.com")] == ["Submitted"]
    assert not (tmp_path / "var" / "outbox").exists()

    children = descendants(dev_run.process.pid)
    assert dev_run.stop(signal.SIGTERM) == 0
    assert_nothing_left(children)


def test_taken_port_is_one_clear_line(tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = subprocess.run(
            [str(POSTROOM), "dev", "--port", str(port), "--flower-port", str(free_port()),
             "--smtp-port", str(free_port()), "--redis-port", str(free_port()),
             "--bounce-port", str(free_port()), "--submission-port", str(free_port())],
            cwd=tmp_path, env=clean_environ(), stdin=subprocess.DEVNULL, capture_output=True,
            text=True, timeout=30)
    assert result.returncode != 0
    assert result.stderr.strip() == (f"postroom dev: port {port} (--port) is already in use on "
                                     f"127.0.0.1; choose another with --port")
    assert "Traceback" not in result.stdout + result.stderr


def test_worker_niceness_out_of_range_is_one_clear_line(tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "cli", "dev", "--var-dir", str(tmp_path / "var"),
         "--port", str(free_port())],
        env={**clean_environ(), "WORKER_NICENESS": "-5"}, capture_output=True, text=True,
        timeout=60)
    assert result.returncode == 2
    assert "WORKER_NICENESS must be a whole number from 0 to 19, not '-5'" in result.stderr

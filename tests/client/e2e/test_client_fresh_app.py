"""End to end: a fresh Flask app, in a venv holding only ``postroom-client[flask]``, sends
through a running ``postroom dev`` with ``postroom_client.flask.Mail``.

The app (tests/fixtures/client_app) has its own ``tasks.py``, ``web/`` and
``celeryconfig.py``, the names of Postroom's own top-level packages, so a client that
leaned on Postroom's code, or an app that picked up Postroom's modules, fails here.
"""

from __future__ import annotations

import email
import email.policy
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from email.message import EmailMessage
from pathlib import Path
from typing import Any

import pytest

from postroom_client import Postroom
from tests.cli.e2e.test_dev_e2e import READY_LINE, DevRun, clean_environ, descendants, start_dev
from tests.support.paths import ROOT

pytestmark = pytest.mark.e2e

APP = ROOT / "tests" / "fixtures" / "client_app"
PIXEL = bytes(range(256)) * 4


@pytest.fixture(scope="session")
def client_venv(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A new venv with ``pip install ./client[flask]`` and nothing of Postroom's."""
    venv = tmp_path_factory.mktemp("client-venv") / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=120)
    python = venv / "bin" / "python"
    result = subprocess.run(
        [str(python), "-m", "pip", "install", "--quiet", f"{ROOT / 'client'}[flask]"],
        capture_output=True, text=True, timeout=600,
        env={k: v for k, v in os.environ.items() if k != "PYTHONPATH"})
    assert result.returncode == 0, result.stdout + result.stderr
    return python


@pytest.fixture(scope="module")
def dev(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DevRun]:
    workdir = tmp_path_factory.mktemp("postroom-dev")
    run = start_dev(workdir, environ=clean_environ())
    try:
        run.wait_for(READY_LINE, timeout=90)
        run.token = run.wait_for(r"API token\s+(\S+)").group(1)
        yield run
    finally:
        if run.process.poll() is None:
            run.process.send_signal(signal.SIGINT)
            try:
                run.process.wait(30)
            except subprocess.TimeoutExpired:
                for pid, sid in descendants(run.process.pid).items():
                    if pid == sid:
                        os.killpg(pid, signal.SIGKILL)
                run.process.kill()
                run.process.wait(10)


@pytest.fixture
def app_dir(tmp_path: Path) -> Path:
    target = tmp_path / "client_app"
    shutil.copytree(APP, target, ignore=shutil.ignore_patterns("__pycache__"))
    return target


def run_app(python: Path, app_dir: Path, dev: DevRun, mode: str, subject: str) -> dict[str, Any]:
    environ = {"PATH": os.environ.get("PATH", ""), "HOME": os.environ.get("HOME", ""),
               "POSTROOM_URL": f"http://127.0.0.1:{dev.port}", "POSTROOM_TOKEN": dev.token}
    result = subprocess.run([str(python), "run.py", mode, subject], cwd=app_dir, env=environ,
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    shown: dict[str, object] = json.loads(result.stdout)
    return shown


def outbox_with(dev: DevRun, subject: str) -> list[EmailMessage]:
    found = []
    for path in sorted((dev.workdir / "var" / "outbox").glob("*.eml")):
        parsed = email.message_from_bytes(path.read_bytes(), policy=email.policy.default)
        assert isinstance(parsed, EmailMessage)
        if parsed["Subject"] == subject:
            found.append(parsed)
    return found


def wait_until_sent(postroom: Postroom, message_id: str, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    status = ""
    while time.monotonic() < deadline:
        status = postroom.get_message(message_id).status
        if status == "sent":
            return
        time.sleep(0.2)
    pytest.fail(f"message {message_id} still {status!r} after {timeout} s")


def test_a_fresh_app_switched_from_flask_mail_sends_through_postroom(
        client_venv: Path, app_dir: Path, dev: DevRun) -> None:
    suppressed = run_app(client_venv, app_dir, dev, "testing", "Welcome while testing")
    assert suppressed["accepted"] is None  # TESTING: nothing is sent ...
    assert suppressed["recorded"] == [  # ... and record_messages() still has it
        {"subject": "Welcome while testing", "attachments": ["pixel.bin", "notes.txt"]}]
    assert "postroom" not in suppressed["distributions"]
    assert {"postroom-client", "flask-mail", "httpx"} <= set(
        suppressed["distributions"])

    sent = run_app(client_venv, app_dir, dev, "send", "Welcome for real")
    accepted = sent["accepted"]
    assert isinstance(accepted, dict) and accepted["status"] == "queued"
    assert accepted["status_url"] == (f"http://127.0.0.1:{dev.port}/api/messages/"
                                      f"{accepted['id']}")
    assert sent["recorded"] == [{"subject": "Welcome for real",
                                 "attachments": ["pixel.bin", "notes.txt"]}]
    with Postroom(f"http://127.0.0.1:{dev.port}", dev.token) as postroom:
        wait_until_sent(postroom, str(accepted["id"]))
        recipients = postroom.get_message(str(accepted["id"])).recipients
    assert sorted(r.email for r in recipients) == [
        "ada@example.com", "bob@example.com", "carol@example.com"]

    [message] = outbox_with(dev, "Welcome for real")
    assert message["From"] == "Client App <app@example.com>"
    assert message["To"] == "ada@example.com"
    assert message["Cc"] == "Carol Cc <carol@example.com>"
    assert message["Reply-To"] == "Help Desk <help@example.com>"
    assert message["Bcc"] is None
    assert message["X-Campaign-Ref"] == "spring-42"
    text = message.get_body(preferencelist=("plain",))
    html = message.get_body(preferencelist=("html",))
    assert text is not None and text.get_content().strip() == "Welcome aboard."
    assert html is not None and "<b>aboard</b>" in html.get_content()
    files = {part.get_filename(): part for part in message.iter_attachments()}
    assert set(files) == {"pixel.bin", "notes.txt"}
    assert files["pixel.bin"].get_content() == PIXEL
    assert files["pixel.bin"].get_content_type() == "application/octet-stream"
    assert files["notes.txt"].get_content_type() == "text/plain"
    assert files["notes.txt"].get_payload(decode=True) == "Grüße\nline two\n".encode()

    # the message sent while testing was never sent: only the real one reached the outbox
    assert outbox_with(dev, "Welcome while testing") == []


def test_a_connect_block_sends_each_message_on_one_kept_connection(
        client_venv: Path, app_dir: Path, dev: DevRun) -> None:
    """Under gunicorn (gthread, keep-alive) the three API calls share one TCP connection."""
    shown = run_app(client_venv, app_dir, dev, "bulk", "Bulk")
    assert len(set(shown["ids"])) == 3
    assert len(shown["ports"]) == 3 and len(set(shown["ports"])) == 1
    for n in range(3):
        deadline = time.monotonic() + 60
        while not outbox_with(dev, f"Bulk {n}") and time.monotonic() < deadline:
            time.sleep(0.2)
        assert len(outbox_with(dev, f"Bulk {n}")) == 1

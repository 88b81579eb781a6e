"""``postroom campaign send/status`` against the app served over HTTP, with a real worker."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner
from flask import Flask
from werkzeug.serving import make_server

from cli import cli
from tests.conftest import API_TOKEN
from tests.support.campaign_helpers import csv_bytes, people
from tests.support.smtp_server import SMTPTestServer

pytestmark = pytest.mark.worker


@pytest.fixture
def config_overrides() -> dict[str, Any]:
    return {"CAMPAIGN_BATCH_SIZE": 25}


@pytest.fixture
def live_url(worker_app: Flask, celery_worker: object) -> Iterator[str]:
    server = make_server("127.0.0.1", 0, worker_app, threaded=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_port}"
    server.shutdown()
    thread.join(timeout=5)


def run(live_url: str, *args: str) -> Any:
    env = {"POSTROOM_URL": live_url, "POSTROOM_TOKEN": API_TOKEN}
    return CliRunner().invoke(cli, ["campaign", *args], env=env, catch_exceptions=False)


def test_send_shows_progress_until_completed(live_url: str, tmp_path: Path,
                                             smtp_server: SMTPTestServer) -> None:
    csv_file = tmp_path / "members.csv"
    csv_file.write_bytes(csv_bytes(people(120)) + b"broken-address,X,Y\n")
    body = tmp_path / "body.txt"
    body.write_text("Dear {{ name }}, code {{ code }}", encoding="utf-8")
    result = run(live_url, "send", str(csv_file), "--subject", "News for {{ name }}",
                 "--body-file", str(body), "--interval", "0.1")
    assert result.exit_code == 0, result.output
    assert "120 recipient(s)" in result.output and "1 row(s) rejected" in result.output
    assert "line 122: invalid email" in result.output
    last = result.output.strip().splitlines()[-1]
    assert last.endswith("completed: 120 sent"), result.output
    assert "\nmembers.csv" in result.output  # the bar's label (no bar drawn without a TTY)
    assert len(smtp_server.received) == 120
    campaign_id = last.split()[0]
    message = smtp_server.to("person00042@example.com")[0].message
    assert message["Subject"] == "News for Person 42"

    status = run(live_url, "status", campaign_id)
    assert status.exit_code == 0
    assert status.output.strip() == f"{campaign_id} completed: 120 sent"


def test_scheduled_send_and_errors(live_url: str, tmp_path: Path,
                                   smtp_server: SMTPTestServer) -> None:
    csv_file = tmp_path / "list.csv"
    csv_file.write_bytes(csv_bytes(people(3)))
    body = tmp_path / "body.txt"
    body.write_text("Hi {{ name }}", encoding="utf-8")
    scheduled = run(live_url, "send", str(csv_file), "--subject", "Later", "--body-file",
                    str(body), "--send-at", "2099-01-01T09:00:00Z")
    assert scheduled.exit_code == 0, scheduled.output
    assert "scheduled: 3 recipient(s)" in scheduled.output

    bad = run(live_url, "send", str(csv_file), "--subject", "{{ x.__class__ }}",
              "--body-file", str(body))
    assert bad.exit_code == 1
    assert "HTTP 422" in bad.output and "subject: refers to private attribute" in bad.output
    missing = run(live_url, "status", "no-such-campaign")
    assert missing.exit_code == 1 and "HTTP 404" in missing.output
    unreachable = CliRunner().invoke(cli, ["campaign", "status", "x", "--url",
                                           "http://127.0.0.1:9", "--token", "t"])
    assert unreachable.exit_code == 1 and "cannot reach Postroom" in unreachable.output
    assert smtp_server.received == []


def test_send_as_draft_stores_it_and_sends_nothing(live_url: str, tmp_path: Path,
                                                   smtp_server: SMTPTestServer) -> None:
    csv_file = tmp_path / "members.csv"
    csv_file.write_bytes(csv_bytes(people(3)))
    body = tmp_path / "body.txt"
    body.write_text("Dear {{ name }}", encoding="utf-8")
    result = run(live_url, "send", str(csv_file), "--subject", "Hi", "--body-file", str(body),
                 "--draft")
    assert result.exit_code == 0, result.output
    assert " draft: 3 recipient(s)" in result.output and "/start" in result.output
    campaign_id = result.output.split()[1]
    shown = run(live_url, "status", campaign_id)
    assert "draft" in shown.output
    assert smtp_server.received == []

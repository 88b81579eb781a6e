"""What operators see: /metrics counters kept in Redis (right from any process), queue ages,
campaigns by status, the shipped dashboard and alert rules, one log line per outcome."""

from __future__ import annotations

import json
import logging
import re
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import redis
import yaml
from flask import Flask
from flask.testing import FlaskClient
from prometheus_client.parser import text_string_to_metric_families

from tests.conftest import AUTH, app_config
from tests.support.paths import ROOT
from tests.support.smtp_server import SMTPTestServer
from web import create_app

DASHBOARD = ROOT / "deploy" / "grafana" / "postroom.json"
ALERTS = ROOT / "deploy" / "prometheus" / "alerts.yml"
METRIC_NAME = re.compile(r"\bpostroom_[a-z0-9_]+\b")

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def scrape(client: FlaskClient) -> Samples:
    response = client.get("/metrics")
    assert response.status_code == 200
    samples: Samples = {}
    for family in text_string_to_metric_families(response.get_data(as_text=True)):
        for sample in family.samples:
            samples[(sample.name, frozenset(sample.labels.items()))] = sample.value
    return samples


def value(samples: Samples, name: str, **labels: str) -> float:
    return samples[(name, frozenset(labels.items()))]


def refuse_and_defer(smtp_server: SMTPTestServer) -> None:
    """``gone@`` is refused for good; ``later@`` is deferred once, then accepted."""
    deferred: set[str] = set()

    def reply(address: str) -> str | None:
        if address.startswith("gone@"):
            return "550 5.1.1 no such user"
        if address.startswith("later@") and address not in deferred:
            deferred.add(address)
            return "451 4.3.0 try again later"
        return None

    smtp_server.handler.rcpt_reply = reply


def test_counters_by_kind_outcome_reply_class_sessions_and_latency(
        client: FlaskClient, app: Flask, redis_url: str,
        smtp_server: SMTPTestServer) -> None:
    refuse_and_defer(smtp_server)
    message = client.post("/api/messages", headers=AUTH, json={
        "to": ["ada@example.com", "gone@example.com", "later@example.org"],
        "subject": "Hi", "body": "Hello"})
    assert message.status_code == 202
    assert client.post("/api/otp", json={"email": "otp@example.com"},
                       headers=AUTH).status_code == 202
    campaign = client.post("/api/campaigns", headers=AUTH, json={
        "subject": "Hi {{ name }}", "body": "Hello",
        "recipients": [{"email": f"p{i}@example.net", "name": str(i)} for i in range(3)]})
    assert campaign.status_code == 202

    samples = scrape(client)
    deliveries = "postroom_deliveries_total"
    assert value(samples, deliveries, kind="message", outcome="sent") == 2  # ada, later
    assert value(samples, deliveries, kind="message", outcome="failed") == 1  # gone
    assert value(samples, deliveries, kind="message", outcome="deferred") == 1  # later, once
    assert value(samples, deliveries, kind="otp", outcome="sent") == 1
    assert value(samples, deliveries, kind="campaign", outcome="sent") == 3
    assert value(samples, deliveries, kind="campaign", outcome="bounced") == 0
    assert value(samples, "postroom_smtp_replies_total", **{"class": "5xx"}) == 1
    assert value(samples, "postroom_smtp_replies_total", **{"class": "4xx"}) == 1
    assert value(samples, "postroom_smtp_replies_total", **{"class": "2xx"}) == 6
    assert value(samples, "postroom_smtp_sessions_opened_total") == smtp_server.session_count
    histogram = "postroom_send_duration_seconds"
    assert value(samples, f"{histogram}_count", kind="campaign") == 3
    assert value(samples, f"{histogram}_count", kind="message") == 2  # two transactions
    assert value(samples, f"{histogram}_bucket", kind="campaign", le="+Inf") == 3
    assert 0 < value(samples, f"{histogram}_sum", kind="campaign") < 30
    assert value(samples, "postroom_campaigns", status="completed") == 1
    assert value(samples, "postroom_campaigns", status="running") == 0

    # another web process (a fresh app, a fresh registry) reads the same figures from Redis
    other = create_app(app_config(redis_url, smtp_server.port)).test_client()
    again = scrape(other)
    assert value(again, deliveries, kind="campaign", outcome="sent") == 3
    assert value(again, f"{histogram}_count", kind="message") == 2


def test_queue_depth_and_the_age_of_the_oldest_waiting_task(worker_app: Flask) -> None:
    client = worker_app.test_client()  # no worker: the task waits in the mail queue
    assert client.post("/api/messages", headers=AUTH, json={
        "to": "ada@example.com", "subject": "Hi", "body": "Hello"}).status_code == 202
    time.sleep(1.2)
    samples = scrape(client)
    assert value(samples, "postroom_queue_depth", queue="mail") == 1
    assert value(samples, "postroom_queue_depth", queue="bulk") == 0
    assert 1.0 <= value(samples, "postroom_queue_oldest_task_age_seconds", queue="mail") < 60
    assert value(samples, "postroom_queue_oldest_task_age_seconds", queue="otp") == 0
    assert value(samples, "postroom_workers_alive", queue="mail") == 0


def used_metrics() -> dict[str, set[str]]:
    """Metric names per file: the dashboard's queries and the alert rules' expressions."""
    dashboard = json.loads(DASHBOARD.read_text())
    queries = [target["expr"] for panel in dashboard["panels"] for target in panel["targets"]]
    rules = [rule for group in yaml.safe_load(ALERTS.read_text())["groups"]
             for rule in group["rules"]]
    alerts = {rule["alert"] for rule in rules}
    assert {"PostroomQueueBacklog", "PostroomHighFailureRate", "PostroomNoWorker",
            "PostroomRelayDown", "PostroomBeatDown"} <= alerts
    return {"dashboard": {name for query in queries for name in METRIC_NAME.findall(query)},
            "alerts": {name for rule in rules for name in METRIC_NAME.findall(rule["expr"])}}


def test_every_metric_the_dashboard_and_alerts_use_exists(
        client: FlaskClient, smtp_server: SMTPTestServer) -> None:
    assert client.post("/api/messages", headers=AUTH, json={
        "to": "ada@example.com", "subject": "Hi", "body": "Hello"}).status_code == 202
    exposed = {name for name, _ in scrape(client)}
    for source, names in used_metrics().items():
        assert len(names) >= 7, (source, names)
        missing = names - exposed
        assert not missing, f"{source} uses metrics /metrics does not have: {sorted(missing)}"


def delivery_of(record: logging.LogRecord) -> dict[str, Any]:
    found: dict[str, Any] = getattr(record, "delivery")  # noqa: B009  (set through extra=)
    return found


def test_one_log_line_per_outcome_names_the_domain_not_the_address(
        client: FlaskClient, smtp_server: SMTPTestServer,
        caplog: pytest.LogCaptureFixture) -> None:
    refuse_and_defer(smtp_server)
    caplog.set_level(logging.INFO, logger="tasks.delivery.observers")
    response = client.post("/api/messages", headers=AUTH, json={
        "to": ["Ada.Lovelace@Example.com", "gone@refused.example"], "subject": "Hi",
        "body": "Hello"})
    message_id = response.get_json()["id"]
    lines = [r for r in caplog.records if r.name == "tasks.delivery.observers"]
    assert len(lines) == 2, [r.getMessage() for r in lines]
    by_domain = {delivery_of(r)["domain"]: delivery_of(r) for r in lines}
    sent, failed = by_domain["example.com"], by_domain["refused.example"]
    assert (sent["status"], sent["smtp_code"]) == ("sent", 250)
    assert (failed["status"], failed["smtp_code"]) == ("failed", 550)
    for record in lines:
        text = record.getMessage()
        assert message_id in text and "@" in text  # the Message-ID, <id@domain>
        assert "lovelace" not in text.lower() and "gone@" not in text
        assert re.search(r"\d+\.\d{3} s$", text), text


def test_log_format_json_gives_json_lines(redis_client: redis.Redis, redis_url: str,
                                          tmp_path: Path) -> None:
    script = tmp_path / "send.py"
    script.write_text(
        "import os\n"
        "from web import create_app\n"
        "app = create_app({'TESTING': True, 'REDIS_URL': os.environ['TEST_REDIS_URL'],\n"
        "                  'API_TOKENS': ['t'], 'MAIL_DEFAULT_SENDER': 'desk@example.com',\n"
        "                  'CELERY': {'task_always_eager': True}})\n"
        "app.test_client().post('/api/messages', headers={'Authorization': 'Bearer t'},\n"
        "                       json={'to': 'ada@example.com', 'subject': 's', 'body': 'b'})\n")
    environ = {"LOG_FORMAT": "json", "PATH": "/usr/bin", "TEST_REDIS_URL": redis_url}
    result = subprocess.run([sys.executable, str(script)], cwd=tmp_path, capture_output=True,
                            text=True, timeout=60, env=environ, stdin=subprocess.DEVNULL)
    assert result.returncode == 0, result.stderr
    entries: list[dict[str, Any]] = [json.loads(line) for line in result.stderr.splitlines()]
    outcomes = [e for e in entries if "delivery" in e]
    assert len(outcomes) == 1, entries
    [line] = outcomes
    assert line["level"] == "INFO" and line["logger"] == "tasks.delivery.observers"
    assert line["delivery"]["domain"] == "example.com"
    assert line["delivery"]["status"] == "suppressed"
    assert "ada@" not in json.dumps(line)


@pytest.mark.worker
def test_a_real_workers_figures_reach_every_web_process(
        worker_app: Flask, celery_worker: Any, redis_url: str,
        smtp_server: SMTPTestServer) -> None:
    client = worker_app.test_client()
    response = client.post("/api/campaigns", headers=AUTH, json={
        "subject": "Hi", "body": "Hello",
        "recipients": [{"email": f"p{i}@example.net"} for i in range(5)]})
    assert response.status_code == 202
    deadline = time.monotonic() + 30
    web = create_app(app_config(redis_url, smtp_server.port)).test_client()  # another process
    while value(scrape(web), "postroom_campaigns", status="completed") < 1:
        assert time.monotonic() < deadline, "the campaign did not complete within 30 s"
        time.sleep(0.2)
    samples = scrape(web)
    assert value(samples, "postroom_deliveries_total", kind="campaign", outcome="sent") == 5
    assert value(samples, "postroom_send_duration_seconds_count", kind="campaign") == 5
    assert value(samples, "postroom_smtp_sessions_opened_total") == smtp_server.session_count
    assert value(samples, "postroom_workers_alive", queue="bulk") == 1
    assert value(samples, "postroom_workers_alive", queue="events") == 0  # not consumed here
    assert len(smtp_server.received) == 5

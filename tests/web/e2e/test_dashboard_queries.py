"""Every query of the Grafana dashboard returns data from a real Prometheus.

Debian's ``prometheus`` (``make prometheus-tool``) is started on 127.0.0.1 with a 1 s
scrape interval, scraping the web app on a werkzeug server (bearer ``METRICS_TOKEN``, as
docs/DEPLOYMENT.md configures it) while a real worker sends mail through the test SMTP
server. The dashboard's variables take what Grafana gives them: ``$job`` its "All" value,
``$__rate_interval`` four scrape intervals. Bounded to about 60 s.
"""

from __future__ import annotations

import json
import math
import shutil
import subprocess
import threading
import time
import urllib.parse
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.conftest import AUTH
from tests.support.paths import ROOT
from tests.support.smtp_server import SMTPTestServer
from web.testing import free_port

DASHBOARD = ROOT / "deploy" / "grafana" / "postroom.json"
PROMETHEUS = shutil.which("prometheus")
TOKEN = "dashboard-metrics-token"
RATE_INTERVAL = "4s"  # Grafana's $__rate_interval: 4 x the 1 s scrape interval

pytestmark = pytest.mark.skipif(
    PROMETHEUS is None, reason="prometheus is missing: `make prometheus-tool` installs "
    "Debian's prometheus package (needs root and apt-get)")


@pytest.fixture
def config_overrides() -> dict[str, Any]:
    return {"METRICS_TOKEN": TOKEN, "EXPECTED_WORKERS": {"mail": 1, "bulk": 1}}


def dashboard_queries() -> list[tuple[str, str]]:
    dashboard = json.loads(DASHBOARD.read_text())
    variables = {item["name"]: item for item in dashboard["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource"
    assert variables["job"]["type"] == "query" and variables["job"]["includeAll"]
    everything = variables["job"]["allValue"]
    found = []
    for panel in dashboard["panels"]:
        assert panel["datasource"]["uid"] == "${datasource}", panel["title"]
        for target in panel["targets"]:
            expr = target["expr"]
            assert "rate(" not in expr or "[$__rate_interval]" in expr, expr
            found.append((panel["title"], expr.replace("$__rate_interval", RATE_INTERVAL)
                          .replace("$job", everything)))
    return found


@pytest.fixture
def prometheus(live_server: str, tmp_path: Path) -> Iterator[str]:
    port = free_port()
    target = urllib.parse.urlsplit(live_server).netloc
    config = {"global": {"scrape_interval": "1s", "scrape_timeout": "1s"},
              "scrape_configs": [{"job_name": "postroom", "static_configs": [
                  {"targets": [target]}], "authorization": {"credentials": TOKEN}}]}
    (tmp_path / "prometheus.yml").write_text(yaml.safe_dump(config))
    log = (tmp_path / "prometheus.log").open("wb")
    process = subprocess.Popen(
        [str(PROMETHEUS), f"--config.file={tmp_path / 'prometheus.yml'}",
         f"--storage.tsdb.path={tmp_path / 'data'}", f"--web.listen-address=127.0.0.1:{port}"],
        stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        process.terminate()
        try:
            process.wait(10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(5)
        log.close()


def query(prometheus: str, expr: str) -> list[dict[str, Any]]:
    url = f"{prometheus}/api/v1/query?" + urllib.parse.urlencode({"query": expr})
    with urllib.request.urlopen(url, timeout=5) as response:
        answer = json.loads(response.read())
    assert answer["status"] == "success", answer
    result: list[dict[str, Any]] = answer["data"]["result"]
    return result


def finite(result: list[dict[str, Any]]) -> bool:
    return any(math.isfinite(float(series["value"][1])) for series in result)


def post(url: str, body: dict[str, Any]) -> int:
    request = urllib.request.Request(url, data=json.dumps(body).encode(), method="POST",
                                     headers={**AUTH, "Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=10) as response:
        return int(response.status)


def test_every_dashboard_query_returns_data_from_a_real_prometheus(
        live_server: str, prometheus: str, smtp_server: SMTPTestServer) -> None:
    queries = dashboard_queries()
    assert len(queries) >= 14
    stop = threading.Event()
    sent: list[int] = []

    def send_mail() -> None:  # a message every 0.3 s while the queries run, at most 200
        while not stop.is_set() and len(sent) < 200:
            sent.append(post(f"{live_server}/api/messages", {
                "to": f"reader{len(sent)}@example.com", "subject": "Hi", "body": "Hello"}))
            stop.wait(0.3)

    sender = threading.Thread(target=send_mail, name="mail-sender", daemon=True)
    sender.start()
    missing: dict[str, str] = {}
    try:
        deadline = time.monotonic() + 45
        pending = list(queries)
        while pending and time.monotonic() < deadline:
            try:
                pending = [(title, expr) for title, expr in pending
                           if not finite(query(prometheus, expr))]
            except OSError:
                pass  # Prometheus is starting
            time.sleep(1)
        missing = dict(pending)
        up = query(prometheus, 'up{job="postroom"}')
    finally:
        stop.set()
        sender.join(timeout=15)
    assert not missing, f"panels whose queries return no data: {missing}"
    assert [float(series["value"][1]) for series in up] == [1.0]
    assert sent and set(sent) == {202}
    assert len(smtp_server.received) >= 1

"""The campaign page's times and rate, the recipient list and its CSV export, the preview."""

from __future__ import annotations

import csv
import io
import re
import time
from datetime import UTC, datetime
from typing import Any

import pytest
from flask.testing import FlaskClient

from tests.campaigns.integration.test_campaign_pages import sign_in
from tests.support.campaign_helpers import create, csv_bytes, people
from tests.support.smtp_server import SMTPTestServer
from web.api.schemas_campaigns import CampaignOut
from web.campaigns.timing import campaign_rate, chart_scale, duration_text


@pytest.fixture
def config_overrides() -> dict[str, Any]:
    return {"ADMIN_USERNAME": "operator", "ADMIN_PASSWORD": "correct horse battery"}


def refuse_some(smtp_server: SMTPTestServer, every: int) -> None:
    """The server refuses every *every*-th person for good (550)."""
    smtp_server.handler.rcpt_reply = lambda address: (
        "550 5.1.1 no such user" if int(address[6:11]) % every == 0 else None)


def test_a_finished_campaign_shows_its_times_and_one_rate(
        client: FlaskClient, smtp_server: SMTPTestServer) -> None:
    campaign = create(client, csv_bytes(people(30)), name="Autumn")
    sign_in(client)
    page = client.get(f"/campaigns/{campaign['id']}").get_data(as_text=True)
    rates = re.findall(r'<span data-part="rate">([\d.]+)</span> messages/s', page)
    assert len(rates) == 2 and rates[0] == rates[1]  # the header and the table agree
    for label in ("Created", "Started", "Finished", "Duration", "Rate"):
        assert f"<th>{label}</th>" in page
    moments = re.findall(r'<time class="local-time" datetime="(\d{4}-\d\d-\d\dT[\d:]{8}Z)">'
                         r'(\d{4}-\d\d-\d\d [\d:]{8} UTC)</time>', page)
    assert len(moments) == 3 and all(iso[:10] == text[:10] for iso, text in moments)
    progress = client.get(f"/campaigns/{campaign['id']}/progress").get_json()
    assert f"{progress['sending_rate']:.1f}" == rates[0] and progress["elapsed"] >= 0
    assert progress["scale"]["top"] == 30 and progress["scale"]["last"].endswith(" UTC")
    assert '<span data-part="chart-top">30</span>' in page


def test_a_scheduled_campaign_shows_a_readable_time(client: FlaskClient) -> None:
    send_at = int(time.time()) + 7200
    campaign = create(client, csv_bytes(people(3)), send_at=f"{send_at}.0")
    sign_in(client)
    page = client.get(f"/campaigns/{campaign['id']}").get_data(as_text=True)
    assert str(send_at) not in page
    when = datetime.fromtimestamp(send_at, UTC)
    assert (f'<time class="local-time" datetime="{when:%Y-%m-%dT%H:%M:%S}Z">'
            f"{when:%Y-%m-%d %H:%M:%S} UTC</time>") in page
    assert "<th>Scheduled for</th>" in page and "not yet" in page


def test_the_rate_is_the_campaigns_own() -> None:
    now = 1_000_000.0
    running = CampaignOut(id="c", name="n", status="running", total=500, created_at=now - 60,
                          started_at=now - 50, counts={"sent": 400}, rate=200.0)
    assert campaign_rate(running, now) == 8.0
    assert campaign_rate(running.model_copy(update={"status": "paused"}), now) == 8.0
    done = running.model_copy(update={"status": "completed", "finished_at": now - 10})
    assert campaign_rate(done, now) == 10.0
    assert campaign_rate(running.model_copy(update={"started_at": None}), now) is None
    assert duration_text(3725) == "1 h 02 min 05 s" and duration_text(65) == "1 min 05 s"
    scale = chart_scale([(now, 4), (now + 10, 9), (now + 20, 2)])
    assert (scale["top"], scale["middle"], scale["step"]) == (9, 4.5, 10)
    assert scale["unit"] == "messages per 10 s"


def test_the_failed_list_says_when_it_is_cut_short(client: FlaskClient,
                                                   smtp_server: SMTPTestServer) -> None:
    refuse_some(smtp_server, 2)
    campaign = create(client, csv_bytes(people(50)))
    sign_in(client)
    page = client.get(f"/campaigns/{campaign['id']}").get_data(as_text=True)
    assert "Showing the first 20 of 25 failed recipients." in page
    assert f"/campaigns/{campaign['id']}/recipients?status=failed" in page


def test_the_recipient_list_filters_and_pages(client: FlaskClient,
                                              smtp_server: SMTPTestServer) -> None:
    refuse_some(smtp_server, 3)
    campaign = create(client, csv_bytes(people(250)))
    sign_in(client)
    base = f"/campaigns/{campaign['id']}/recipients"
    first = client.get(base).get_data(as_text=True)
    assert "person00000@example.com" in first and "person00099@example.com" in first
    assert "person00100@example.com" not in first
    assert "failed (84)" in first and "sent (166)" in first
    next_link = re.search(r'href="([^"]+cursor=100[^"]*)"', first)
    assert next_link
    second = client.get(next_link.group(1).replace("&amp;", "&")).get_data(as_text=True)
    assert "person00100@example.com" in second and "person00099@example.com" not in second
    failed = client.get(base + "?status=failed").get_data(as_text=True)
    assert "person00003@example.com" in failed and "person00001@example.com" not in failed
    assert "550" in failed and "no such user" in failed
    for junk in ("?status=nonsense", "?cursor=-1", "?cursor=abc", "?cursor=%C2%B2",
                 "?cursor=" + "9" * 40):
        assert client.get(base + junk).status_code == 400, junk
    assert client.get(base + "?cursor=99999").status_code == 200
    assert client.get("/campaigns/nope/recipients").status_code == 404
    assert client.get("/campaigns/nope/recipients.csv").status_code == 404
    assert client.get("/campaigns/nope/preview").status_code == 404


def test_recipients_export_as_csv_with_status_attempts_code_and_error(
        client: FlaskClient, smtp_server: SMTPTestServer) -> None:
    refuse_some(smtp_server, 3)
    campaign = create(client, csv_bytes(people(1200)))
    sign_in(client)
    response = client.get(f"/campaigns/{campaign['id']}/recipients.csv")
    assert response.status_code == 200 and response.is_streamed
    assert response.mimetype == "text/csv"
    assert "attachment;" in response.headers["Content-Disposition"]
    rows = list(csv.DictReader(io.StringIO(response.get_data(as_text=True))))
    assert len(rows) == 1200 and len({row["email"] for row in rows}) == 1200
    refused = rows[3]
    assert refused["email"] == "person00003@example.com" and refused["status"] == "failed"
    assert refused["smtp_code"] == "550" and "no such user" in refused["error"]
    assert refused["attempts"] == "1"
    assert rows[1]["status"] == "sent" and rows[1]["error"] == ""
    failed = client.get(f"/campaigns/{campaign['id']}/recipients.csv?status=failed")
    assert len(list(csv.DictReader(io.StringIO(failed.get_data(as_text=True))))) == 400
    assert client.get(f"/campaigns/{campaign['id']}/recipients.csv?status=x").status_code == 400


def test_the_preview_renders_the_first_message_before_sending(client: FlaskClient,
                                                               smtp_server: SMTPTestServer) -> None:
    campaign = create(client, csv_bytes(people(3)), send_at=str(time.time() + 3600),
                      subject="Hello {{ name }}", html="<p>Code <b>{{ code }}</b></p>"
                      "<script>alert(1)</script>")
    sign_in(client)
    page = client.get(f"/campaigns/{campaign['id']}/preview").get_data(as_text=True)
    assert "Hello Person 0" in page and "your code is C00000." in page
    assert "person00000@example.com" in page
    frame = re.search(r"<iframe[^>]*>", page)
    assert frame and 'sandbox=""' in frame.group()
    html = client.get(f"/campaigns/{campaign['id']}/preview.html")
    assert "<b>C00000</b>" in html.get_data(as_text=True)
    policy = html.headers["Content-Security-Policy"]
    assert "default-src 'none'" in policy and "sandbox" in policy and "script" not in policy
    assert smtp_server.received == []  # nothing was sent to preview it



def test_the_page_charts_the_campaigns_sends_over_time(client: FlaskClient,
                                                       smtp_server: SMTPTestServer) -> None:
    campaign = create(client, csv_bytes(people(25)), name="Charted")
    sign_in(client)
    page = client.get(f"/campaigns/{campaign['id']}").get_data(as_text=True)
    sent = [int(n) for n in re.findall(r"<title>[^<]*: (\d+) sent</title>", page)]
    assert sum(sent) == 25, page
    chart = client.get(f"/campaigns/{campaign['id']}/progress").get_json()["chart"]
    assert sum(int(str(bar["label"]).rsplit(": ", 1)[1].split()[0]) for bar in chart) == 25
    assert all(0 <= float(bar["y"]) <= 120 and float(bar["h"]) <= 120 for bar in chart)


def test_a_long_history_is_drawn_in_at_most_sixty_bars(redis_client: Any) -> None:
    from tasks.campaigns.store import HISTORY_STEP, CampaignStore

    store = CampaignStore(redis_client)
    start = 1_800_000_000
    for step in range(500):  # 500 steps of 10 s, 3 messages each
        redis_client.hset("postroom:campaign:c1:sends", str(start + step * HISTORY_STEP), 3)
    history = store.send_history("c1")
    assert len(history) <= 60 and sum(n for _, n in history) == 1500
    assert history[0][0] == start and [t for t, _ in history] == sorted(t for t, _ in history)

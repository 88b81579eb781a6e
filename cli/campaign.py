"""``postroom campaign send FILE.csv ...`` and ``postroom campaign status ID``, over the API.

They talk to a running Postroom (``--url``/``POSTROOM_URL``) with a bearer token
(``--token``/``POSTROOM_TOKEN``); the CSV is streamed, never read whole.
"""

from __future__ import annotations

import json
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import click

from tasks.vocabulary import CAMPAIGN_FINAL, CampaignStatus, Status

FINAL = CAMPAIGN_FINAL
SETTLED = (Status.SENT, Status.FAILED, Status.SUPPRESSED, Status.CANCELLED)  # the bar's progress
CHUNK = 64 * 1024


class PostroomAPI:
    """A small client for ``/api/campaigns``."""

    def __init__(self, url: str, token: str, timeout: float = 60.0) -> None:
        self.url = url.rstrip("/")
        self.token = token
        self.timeout = timeout

    def request(self, method: str, path: str, *, data: Any = None,
                headers: dict[str, str] | None = None) -> dict[str, Any]:
        sent = {"Authorization": f"Bearer {self.token}", "Accept": "application/json",
                **(headers or {})}
        call = urllib.request.Request(self.url + path, data=data, headers=sent, method=method)
        try:
            with urllib.request.urlopen(call, timeout=self.timeout) as response:
                body: dict[str, Any] = json.load(response)
                return body
        except urllib.error.HTTPError as err:
            raise click.ClickException(_describe_error(err)) from None
        except (urllib.error.URLError, OSError) as err:
            reason = getattr(err, "reason", err)
            raise click.ClickException(f"cannot reach Postroom at {self.url}: {reason}") from None

    def create_from_csv(self, csv_path: Path, fields: dict[str, str]) -> dict[str, Any]:
        boundary = f"postroom-{uuid.uuid4().hex}"
        head = b"".join(_form_field(boundary, name, value) for name, value in fields.items())
        head += (f"--{boundary}\r\nContent-Disposition: form-data; name=\"file\"; "
                 f"filename=\"{csv_path.name}\"\r\nContent-Type: text/csv\r\n\r\n").encode()
        tail = f"\r\n--{boundary}--\r\n".encode()
        length = len(head) + csv_path.stat().st_size + len(tail)

        def body() -> Iterator[bytes]:
            yield head
            with csv_path.open("rb") as handle:
                while chunk := handle.read(CHUNK):
                    yield chunk
            yield tail

        return self.request("POST", "/api/campaigns", data=body(), headers={
            "Content-Type": f"multipart/form-data; boundary={boundary}",
            "Content-Length": str(length)})

    def campaign(self, campaign_id: str) -> dict[str, Any]:
        return self.request("GET", f"/api/campaigns/{campaign_id}")


def _form_field(boundary: str, name: str, value: str) -> bytes:
    return (f"--{boundary}\r\nContent-Disposition: form-data; name=\"{name}\"\r\n\r\n"
            f"{value}\r\n").encode()


def _describe_error(err: urllib.error.HTTPError) -> str:
    try:
        error = json.load(err)["error"]
    except (ValueError, KeyError, TypeError):
        return f"HTTP {err.code}: {err.reason}"
    lines = [f"HTTP {err.code}: {error.get('message', err.reason)}"]
    lines += [f"  {field}: {reason}" for field, reason in (error.get("fields") or {}).items()]
    return "\n".join(lines)


def _settled(campaign: dict[str, Any]) -> int:
    counts = campaign["counts"]
    return int(sum(counts.get(s, 0) for s in SETTLED))


def _summary(campaign: dict[str, Any]) -> str:
    counts = campaign["counts"]
    shown = ", ".join(f"{n} {status}" for status, n in counts.items() if n)
    return f"{campaign['id']} {campaign['status']}: {shown or 'no recipients'}"


def follow(api: PostroomAPI, campaign_id: str, interval: float) -> dict[str, Any]:
    """Show a progress bar until the campaign is completed or cancelled."""
    campaign = api.campaign(campaign_id)
    with click.progressbar(length=max(campaign["total"], 1), label=campaign["name"],
                           show_pos=True) as bar:
        shown = 0
        while True:
            done = _settled(campaign)
            bar.update(done - shown)
            shown = done
            if campaign["status"] in FINAL:
                return campaign
            time.sleep(interval)
            campaign = api.campaign(campaign_id)


connection_options = [
    click.option("--url", envvar="POSTROOM_URL", default="http://127.0.0.1:5000",
                 show_default=True, help="Postroom's base URL (or POSTROOM_URL)."),
    click.option("--token", envvar="POSTROOM_TOKEN", required=True,
                 help="An API bearer token (or POSTROOM_TOKEN)."),
]


def with_connection(command: Any) -> Any:
    for option in reversed(connection_options):
        command = option(command)
    return command


@click.group()
def campaign() -> None:
    """Create bulk campaigns and follow them."""


@campaign.command()
@click.argument("csv_file", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--subject", required=True, help="Subject template (Jinja).")
@click.option("--body-file", type=click.File("r", encoding="utf-8"),
              help="Text body template (Jinja).")
@click.option("--html-file", type=click.File("r", encoding="utf-8"),
              help="HTML body template (Jinja, autoescaped).")
@click.option("--name", help="Campaign name (default: the file name).")
@click.option("--sender", help="From address (default: MAIL_DEFAULT_SENDER).")
@click.option("--send-at", help="ISO 8601 time to send (UTC unless a zone is given).")
@click.option("--draft", is_flag=True,
              help="Store it as a draft: nothing is sent until it is started.")
@click.option("--wait/--no-wait", default=True, show_default=True,
              help="Show progress until the campaign completes.")
@click.option("--interval", type=float, default=1.0, show_default=True, hidden=True)
@with_connection
def send(csv_file: Path, subject: str, body_file: Any, html_file: Any, name: str | None,
         sender: str | None, send_at: str | None, draft: bool, wait: bool, interval: float,
         url: str, token: str) -> None:
    """Send FILE.csv (an 'email' column plus variable columns) as a campaign."""
    if body_file is None and html_file is None:
        raise click.UsageError("give --body-file, --html-file or both")
    fields = {"subject": subject, "name": name or csv_file.name, "sender": sender or "",
              "send_at": send_at or "", "body": body_file.read() if body_file else "",
              "html": html_file.read() if html_file else "", "draft": "true" if draft else ""}
    api = PostroomAPI(url, token)
    accepted = api.create_from_csv(csv_file, {k: v for k, v in fields.items() if v})
    click.echo(f"campaign {accepted['id']} {accepted['status']}: {accepted['total']} "
               f"recipient(s), {accepted['duplicates']} duplicate(s), "
               f"{accepted['suppressed']} suppressed, {accepted['rejected']} row(s) rejected")
    for row in accepted.get("rejected_rows", []):
        click.echo(f"  line {row.get('line', row.get('index'))}: {row['reason']}", err=True)
    if accepted["status"] == CampaignStatus.DRAFT:
        click.echo(f"review it on its page (/campaigns/{accepted['id']}), then start it with "
                   f"POST /api/campaigns/{accepted['id']}/start")
        return
    if accepted["status"] == CampaignStatus.SCHEDULED or not wait:
        click.echo(f"follow it with: postroom campaign status {accepted['id']} --watch")
        return
    click.echo(_summary(follow(api, accepted["id"], interval)))


@campaign.command()
@click.argument("campaign_id")
@click.option("--watch", is_flag=True, help="Show progress until it completes.")
@click.option("--interval", type=float, default=1.0, show_default=True, hidden=True)
@with_connection
def status(campaign_id: str, watch: bool, interval: float, url: str, token: str) -> None:
    """Show a campaign's status and counts."""
    api = PostroomAPI(url, token)
    shown = follow(api, campaign_id, interval) if watch else api.campaign(campaign_id)
    click.echo(_summary(shown))
    if not watch and shown["status"] not in FINAL:
        click.echo(f"rate: {shown['rate']:.1f} messages/s")

"""A campaign created through the API from a CSV and followed to its end."""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench.baseline import body_for
from bench.load import OTPProbe
from bench.stack import Stack

FINAL = ("completed", "cancelled")
CAMPAIGN_FIELDS = {"name": "bench statement", "subject": "Your statement, {{ name }}",
                   "body": body_for("{{ name }}")}


def write_campaign_csv(path: Path, rows: int) -> Path:
    """``email,name`` rows addressed like the baseline loop's messages."""
    with path.open("w", encoding="utf-8", newline="") as handle:
        handle.write("email,name\r\n")
        for i in range(rows):
            handle.write(f"c{i}@example.com,Customer {i}\r\n")
    return path


@dataclass
class CampaignRun:
    campaign: dict[str, Any]
    started: float  # time.monotonic() just before POST /api/campaigns
    api_seconds: float  # the POST itself (the CSV read and stored)
    seen_final: float  # seconds to the first poll that showed completed/cancelled
    finished: float | None  # seconds to the campaign's finished_at
    timed_out: bool

    @property
    def sent(self) -> int:
        return int(self.campaign["counts"].get("sent", 0))

    def describe(self) -> str:
        counts = ", ".join(f"{n} {s}" for s, n in self.campaign["counts"].items() if n)
        return (f"status {self.campaign['status']} ({counts}); POST took "
                f"{self.api_seconds:.2f} s; `completed` seen by polling at "
                f"{self.seen_final:.2f} s")


def run_campaign(stack: Stack, csv_path: Path, timeout: float, poll: float = 0.05,
                 probe: OTPProbe | None = None) -> CampaignRun:
    """Create the campaign, then poll it until it is final (or *timeout* s pass)."""
    wall = time.time()
    started = time.monotonic()
    accepted = stack.create_campaign_from_csv(csv_path, CAMPAIGN_FIELDS)
    api_seconds = time.monotonic() - started
    if probe is not None:
        probe.start()
    timed_out = False
    while True:
        campaign = stack.campaign(accepted["id"])
        if campaign["status"] in FINAL:
            break
        if probe is not None and campaign["counts"].get("sent", 0) >= accepted["total"]:
            probe.stop(wait=False)  # all sent: the campaign no longer loads the workers
        if time.monotonic() - started > timeout:
            timed_out = True
            break
        time.sleep(poll)
    seen = time.monotonic() - started
    if probe is not None:
        probe.stop()
    finished_at = campaign.get("finished_at")
    return CampaignRun(campaign, started, api_seconds, seen,
                       finished_at - wall if finished_at else None, timed_out)

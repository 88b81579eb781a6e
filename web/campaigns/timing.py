"""A campaign's times and rate as the operator pages show them.

Times go to the page as ISO 8601 (UTC) in ``<time datetime=...>``, which the
page's script shows in the viewer's own time zone; the UTC text is the fallback.
The rate is the campaign's own: messages sent over the time it has been running,
and zero whenever it is not sending.
"""

from __future__ import annotations

from datetime import UTC, datetime

from flask import Blueprint

from web.api.schemas_campaigns import CampaignOut


def iso_utc(epoch: float | None) -> str:
    """``2026-11-24T15:12:00Z`` for a Unix time; '' for none."""
    if epoch is None:
        return ""
    return datetime.fromtimestamp(epoch, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def utc_text(epoch: float | None) -> str:
    """``2026-11-24 15:12:00 UTC``: what the page shows before (or without) its script."""
    if epoch is None:
        return ""
    return datetime.fromtimestamp(epoch, UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


def duration_text(seconds: float | None) -> str:
    """``1 h 02 min 05 s``, ``3 min 20 s``, ``12 s``; '' for none."""
    if seconds is None:
        return ""
    whole = max(int(round(seconds)), 0)
    hours, rest = divmod(whole, 3600)
    minutes, secs = divmod(rest, 60)
    if hours:
        return f"{hours} h {minutes:02d} min {secs:02d} s"
    if minutes:
        return f"{minutes} min {secs:02d} s"
    return f"{secs} s"


def elapsed(campaign: CampaignOut, now: float) -> float | None:
    """Seconds from start to finish (or to *now* while unfinished); None before the start."""
    if campaign.started_at is None:
        return None
    end = campaign.finished_at if campaign.finished_at is not None else now
    return max(end - campaign.started_at, 0.0)


def sending_rate(campaign: CampaignOut, now: float) -> float:
    """Messages per second since the start while running; 0.0 when not sending."""
    if campaign.status != "running" or campaign.started_at is None:
        return 0.0
    return campaign.counts.get("sent", 0) / max(now - campaign.started_at, 1.0)


def average_rate(campaign: CampaignOut) -> float | None:
    """A finished campaign's messages per second from start to finish; None before it ends."""
    if campaign.started_at is None or campaign.finished_at is None:
        return None
    return campaign.counts.get("sent", 0) / max(campaign.finished_at - campaign.started_at, 1.0)


def register_filters(bp: Blueprint) -> None:
    """The template filters the campaign pages use."""
    bp.add_app_template_filter(iso_utc, "iso_utc")
    bp.add_app_template_filter(utc_text, "utc_text")
    bp.add_app_template_filter(duration_text, "duration_text")


CHART_WIDTH, CHART_HEIGHT = 600, 120


def chart_bars(history: list[tuple[float, int]]) -> list[dict[str, object]]:
    """The bars of the sends-over-time chart: one per step of *history*, scaled to the
    busiest, in a ``600 x 120`` view box; each with its start (UTC) and count as a label."""
    if not history:
        return []
    tallest = max(count for _, count in history) or 1
    width = CHART_WIDTH / len(history)
    bars: list[dict[str, object]] = []
    for n, (start, count) in enumerate(history):
        height = round(CHART_HEIGHT * count / tallest, 1)
        bars.append({"x": round(n * width, 2), "y": round(CHART_HEIGHT - height, 1),
                     "w": round(max(width - 1, 1), 2), "h": height,
                     "label": f"{utc_text(start)}: {count} sent"})
    return bars

"""A campaign's times and rate as the operator pages show them.

Times go to the page as ISO 8601 (UTC) in ``<time datetime=...>``, which the
page's script shows in the viewer's own time zone; the UTC text is the fallback.
The rate is one figure, the same in the header, the facts table and the live
updates: messages sent over the time from the start to the finish (or to now).
The chart has a scale: its tallest bar's count and the time each bar covers.
"""

from __future__ import annotations

from datetime import UTC, datetime

from flask import Blueprint

from tasks.vocabulary import Status
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


def campaign_rate(campaign: CampaignOut, now: float) -> float | None:
    """The campaign's one rate figure, shown everywhere: messages sent per second from its
    start to its finish (or to *now* while unfinished); None before it starts."""
    span = elapsed(campaign, now)
    if span is None:
        return None
    return campaign.counts.get(Status.SENT, 0) / max(span, 1.0)


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


def chart_scale(history: list[tuple[float, int]]) -> dict[str, object]:
    """The chart's axes: the count at its top and middle (messages per bar), the seconds
    one bar covers, and the UTC times at its left and right ends."""
    if not history:
        return {"top": 0, "middle": 0, "step": 0, "first": "", "last": "", "unit": ""}
    tallest = max(count for _, count in history)
    step = int(history[1][0] - history[0][0]) if len(history) > 1 else 10
    return {"top": tallest, "middle": round(tallest / 2, 1), "step": step,
            "first": utc_text(history[0][0])[11:19],
            "last": utc_text(history[-1][0] + step)[11:19] + " UTC",
            "unit": f"messages per {step} s"}

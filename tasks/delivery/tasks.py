"""The delivery package's own Celery task, a thin call into what it runs.

- ``postroom.relay_probe``: probe the relays while every one is down, and publish the
  parked mail again when one is back (:mod:`tasks.delivery.relay_probe`).
"""

from __future__ import annotations

from celery import shared_task

from tasks.delivery import relay_probe


@shared_task(name=relay_probe.PROBE_TASK, ignore_result=True)
def probe_relays() -> None:
    """Probe the relays once if a probe is due; release parked work when one is back."""
    relay_probe.probe_relays()

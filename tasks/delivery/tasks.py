"""The delivery package's own Celery tasks, each a thin call into what it runs.

- ``postroom.reconcile``: one pass of the reconciler (:mod:`tasks.delivery.reconciler`),
  beat's way in; every worker process also tries for the pass on its own.
- ``postroom.relay_probe``: probe the relays while every one is down, and publish the
  parked mail again when one is back (:mod:`tasks.delivery.relay_probe`).
"""

from __future__ import annotations

from celery import shared_task

from tasks.delivery import relay_probe
from tasks.delivery.reconciler import reconcile_once


@shared_task(name="postroom.reconcile", ignore_result=True)
def reconcile() -> None:
    """One pass over running campaigns and the watch list (beat's way in)."""
    reconcile_once()


@shared_task(name=relay_probe.PROBE_TASK, ignore_result=True)
def probe_relays() -> None:
    """Probe the relays once if a probe is due; release parked work when one is back."""
    relay_probe.probe_relays()

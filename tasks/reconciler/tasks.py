"""The reconciler's Celery task: ``postroom.reconcile``, beat's way in (every worker
process also tries for the pass on its own)."""

from __future__ import annotations

from celery import shared_task

from tasks.reconciler.service import reconcile_once


@shared_task(name="postroom.reconcile", ignore_result=True)
def reconcile() -> None:
    """One pass over running campaigns and the watch list (beat's way in)."""
    reconcile_once()

"""The worker's consumer, sending its task events in batches (``worker_consumer``).

Celery buffers task events (``task-received``, ``task-started``, ``task-succeeded``...)
and publishes what is buffered on the next turn of the worker's event loop: with
messages arriving one at a time, that is one ``PUBLISH`` per event, three per task, and
Flower decodes each as a message of its own. Here the buffer is published
:data:`EVENT_FLUSH_DELAY` after the first event put in it, so a busy worker sends one
``task.multi`` message for all the events of that interval; Celery still publishes at
once when 24 are waiting. Flower sees a task that much later, and nothing is lost: the
buffer is published before the consumer stops, and across a broker reconnection (the
hub runs what was handed to it and keeps its timers); should a flush asked for not have
happened a second later, the next event asks again.
"""

from __future__ import annotations

import logging
import time
from typing import Any

from celery.worker.consumer import Consumer as CeleryConsumer

log = logging.getLogger(__name__)

EVENT_FLUSH_DELAY = 0.1  # seconds an event may wait for others to be published with
LOST_FLUSH_AFTER = 1.0  # seconds after which a flush asked for and not done is asked again


class Consumer(CeleryConsumer):  # type: ignore[misc]
    """Celery's consumer, publishing buffered task events on a short timer."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._flush_armed: float | None = None  # when the pending flush was asked for

    def on_send_event_buffered(self) -> None:
        """Called from any thread that buffered an event: have the loop arm the timer
        (``call_soon`` is the hub's thread-safe entry; its timers are not)."""
        armed, now = self._flush_armed, time.monotonic()
        if self.hub and (armed is None or now - armed > LOST_FLUSH_AFTER):
            self._flush_armed = now
            self.hub.call_soon(self._arm_flush)

    def _arm_flush(self) -> None:
        self.hub.call_later(EVENT_FLUSH_DELAY, self._flush_due_events)

    def _flush_due_events(self) -> None:
        self._flush_armed = None  # events buffered from now on arm a new timer
        self._flush_events()

    def stop(self) -> None:
        self._flush_before_stopping()
        super().stop()

    def shutdown(self) -> None:
        self._flush_before_stopping()
        super().shutdown()

    def _flush_before_stopping(self) -> None:
        """Publish what is buffered; a broker gone by now must not stop the stopping."""
        try:
            self._flush_events()
        except Exception as err:  # any failure here only loses events
            log.warning("task events not published before stopping: %s", err)

"""Postroom's behaviours, one package each: its Celery tasks, its rules and its store.

- :mod:`tasks.messages`: single messages from ``POST /api/messages`` and SMTP submission.
- :mod:`tasks.codes`: one-time verification codes.
- :mod:`tasks.campaigns`: bulk campaigns, from the CSV import to the last batch.
- :mod:`tasks.webhooks`: the events a client app hears about, and their delivery.
- :mod:`tasks.bounces`: bounces, complaints and the suppression list.
- :mod:`tasks.delivery`: the engine, the ledger, leases and relays.
- :mod:`tasks.reconciler`: what republishes lost work, across every feature.
- :mod:`tasks.workers`: who is alive, what they hold, and what a dead worker left.
- :mod:`tasks.shared`: Redis keys and connections, ids, mailboxes and attachments.

Importing this package registers every task with the current Celery app.
"""

from tasks.campaigns import tasks as campaign_tasks  # noqa: F401  (registers the tasks)
from tasks.codes import tasks as code_tasks  # noqa: F401  (registers the tasks)
from tasks.delivery import tasks as delivery_tasks  # noqa: F401  (registers the tasks)
from tasks.messages import tasks as message_tasks  # noqa: F401  (registers the tasks)
from tasks.reconciler import tasks as reconciler_tasks  # noqa: F401  (registers the tasks)
from tasks.webhooks import tasks as webhook_tasks  # noqa: F401  (registers the tasks)

"""Celery tasks (thin) and the delivery engine and stores they call.

Importing this package registers every task with the current Celery app.
"""

from tasks import campaigns as campaigns  # noqa: F401  (registers the tasks)
from tasks import mail as mail  # noqa: F401  (registers the tasks)
from tasks import otp as otp  # noqa: F401  (registers the tasks)
from tasks import reconcile as reconcile  # noqa: F401  (registers the tasks)
from tasks import webhooks as webhooks  # noqa: F401  (registers the tasks)

"""Gunicorn settings: ``gunicorn -c python:web.gunicorn_conf "web:create_app()"``.

The master builds the app once before it forks, so a malformed configuration
value stops gunicorn with one line naming the variable, instead of a traceback
from every worker followed by "Worker failed to boot".
"""

from __future__ import annotations

import os
from typing import Any

# Gunicorn 23+ opens a control socket in $HOME that every instance would share.
control_socket_disable = True

# Threads in each worker process: a request spends most of its time waiting on Redis,
# so one that waits does not hold up the next (the API answers within milliseconds
# under load instead of queueing behind a busy process).
worker_class = "gthread"
threads = int(os.environ.get("GUNICORN_THREADS", "4"))

# A CSV upload of a million recipients is read as a stream in about 40 s; the
# default 30 s worker timeout would kill it half-way.
timeout = int(os.environ.get("GUNICORN_TIMEOUT", "300"))


def post_worker_init(worker: Any) -> None:
    """Before a worker takes its first request, do what that request would otherwise pay
    for (tens of milliseconds): Celery's task registry, a broker connection for each
    thread that may publish at once, a Redis connection for each thread. Then the app's
    objects (about 95,000) leave the garbage collector's view (``gc.freeze``): a full
    collection over them took about 58 ms here, a pause every request in flight waited
    out; what requests allocate is still collected as before."""
    import gc

    from web.warm import warm_up

    warm_up(worker.wsgi, threads)
    gc.collect()
    gc.freeze()


def on_starting(server: Any) -> None:
    from web import create_app
    from web.config import ConfigError

    try:
        create_app()
    except ConfigError as err:
        raise SystemExit(f"postroom: configuration error: {err}") from None

"""What one single message costs a worker: ``python -m bench.profile_singles``.

Runs the real message task (``postroom.deliver_message``, eagerly, inside the
Flask app) once per stored one-recipient message, ``--messages`` (1,000) of
them, against postfix's ``smtp-sink`` and a private Redis, with SMTP sessions
kept between messages (``MAIL_SESSION_IDLE=5``) and without (``0``: a session
per message), ``--rounds`` (3) times each, interleaved; the best round counts,
since the machine is shared. Prints the CPU this process spent per message
(``time.process_time``, which other processes on the cores change little) and
the wall-clock rate; ``--profile`` adds where the time goes with sessions kept
(parts as in :mod:`bench.profile_batch`). Then, against :mod:`bench.delay_sink`
with every reply ``--latency`` (20 ms) late, how long one message takes on a
connection of its own (as a task sends it, QUIT included), 20 in a row, with and
without a kept session: what a code waits for across a network.
"""

from __future__ import annotations

import argparse
import cProfile
import pstats
import tempfile
import time
from pathlib import Path

from bench.profile_batch import report
from bench.report import spread
from bench.servers import delay_sink, redis_server, smtp_sink
from tasks.delivery.engine.compose import Composer, Draft
from tasks.delivery.engine.pool import SessionPool
from tasks.delivery.engine.session import BatchConnection, SMTPSettings
from tasks.messages.store import MessageStore
from tasks.messages.tasks import deliver_message
from web import create_app

BODY = "Your order has shipped. " * 20


def run(config: dict[str, object], n: int, tag: str,
        profiler: cProfile.Profile | None = None) -> tuple[float, float]:
    """CPU seconds and wall seconds for *n* message tasks, one after the other."""
    app = create_app(config)
    with app.app_context():
        store = MessageStore(app.extensions["redis"])
        ids = [store.create({"to": [f"{tag}{i}@example.com"], "subject": f"Order {i}",
                             "body": BODY}, [f"{tag}{i}@example.com"]).id for i in range(n)]
        cpu, wall = time.process_time(), time.perf_counter()
        if profiler is not None:
            profiler.enable()
        for message_id in ids:
            deliver_message.apply(args=[message_id], throw=True)
        if profiler is not None:
            profiler.disable()
        cpu, wall = time.process_time() - cpu, time.perf_counter() - wall
        sent = sum(store.ledger(i).counts().get("sent", 0) for i in ids)
        pool = app.extensions.get("postroom.session_pool")
        if pool is not None:
            pool.close_all()
    if sent != n:
        raise SystemExit(f"only {sent} of {n} were sent")
    return cpu, wall


def one_by_one(port: int, pool: SessionPool | None, n: int = 20) -> list[float]:
    """Seconds each of *n* messages takes on a connection of its own (QUIT included)."""
    settings = SMTPSettings(server="127.0.0.1", port=port, timeout=10.0)
    composer = Composer(message_id_domain="postroom.test")
    sender = "noreply@postroom.test"
    seconds = []
    for i in range(n):
        data = composer.compose(Draft(sender=sender, to=[f"d{i}@example.com"],
                                      subject=f"Code {i}", text=BODY)).data
        started = time.perf_counter()
        with BatchConnection(settings, pool=pool) as connection:
            outcome = connection.send_data(sender, [f"d{i}@example.com"], data)
        seconds.append(time.perf_counter() - started)
        if outcome[f"d{i}@example.com"].status != "sent":
            raise SystemExit(f"message {i} to the delay sink: {outcome}")
    if pool is not None:
        pool.close_all()
    return seconds


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.profile_singles", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--messages", type=int, default=1000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--profile", action="store_true")
    parser.add_argument("--latency", type=float, default=0.02, help="seconds, the delay sink")
    args = parser.parse_args()
    n = args.messages
    with redis_server() as url, smtp_sink() as port:
        base: dict[str, object] = {
            "TESTING": True, "SECRET_KEY": "profile", "REDIS_URL": url,
            "CELERY_BROKER_URL": url, "MAIL_SERVER": "127.0.0.1", "MAIL_PORT": port,
            "MAIL_SUPPRESS_SEND": False, "MAIL_DEFAULT_SENDER": "Postroom <noreply@postroom.test>",
            "CELERY": {"task_always_eager": True, "task_eager_propagates": True}}
        variants = {"a session per message (MAIL_SESSION_IDLE=0)": 0.0,
                    "sessions kept (MAIL_SESSION_IDLE=5)": 5.0}
        best: dict[str, tuple[float, float]] = {}
        run(base | {"MAIL_SESSION_IDLE": 5.0}, 50, "warm")
        for k in range(args.rounds):
            for name, idle in variants.items():
                cpu, wall = run(base | {"MAIL_SESSION_IDLE": idle}, n, f"r{k}-{idle:g}-")
                if name not in best or cpu < best[name][0]:
                    best[name] = (cpu, wall)
        print(f"{n} single messages to smtp-sink, one task after another in one process, "
              f"best of {args.rounds}:")
        for name, (cpu, wall) in best.items():
            print(f"  {name:44s} CPU {cpu / n * 1e6:6.0f} µs/message, {n / wall:6.0f} msg/s")
        off, on = (best[name][0] for name in variants)
        print(f"  CPU per message with sessions kept: {on / off:.0%} of a session per message")
        if args.profile:
            profiler = cProfile.Profile()
            run(base | {"MAIL_SESSION_IDLE": 5.0}, n, "profiled-", profiler)
            print("\nwith sessions kept, under the profiler:")
            print(report(pstats.Stats(profiler), n))
    with tempfile.TemporaryDirectory() as workdir, \
            delay_sink(args.latency, Path(workdir) / "accepted.tsv") as port:
        print(f"\none message per connection, 20 in a row, every reply "
              f"{args.latency * 1000:g} ms late:")
        print(f"  a session per message: {spread(one_by_one(port, None))}")
        print(f"  sessions kept:         {spread(one_by_one(port, SessionPool(idle=5.0)))}")


if __name__ == "__main__":
    main()

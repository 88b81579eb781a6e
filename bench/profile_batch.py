"""Where one campaign batch spends its time at 0 ms: ``python -m bench.profile_batch``.

Runs the real batch task (``postroom.campaign.send_batch``, eagerly, inside the
Flask app) for one batch of ``--recipients`` personalised ~2 KB messages against
postfix's ``smtp-sink`` and a private Redis, under :mod:`cProfile`, and prints
the rate and the functions that take the most time, grouped by what they do for
a message: template render, unsubscribe signing, ledger, suppression check, MIME,
SMTP. A second, unprofiled run gives the rate without the profiler's own cost.
"""

from __future__ import annotations

import argparse
import cProfile
import io
import pstats
import time

from bench.servers import redis_server, smtp_sink
from tasks.campaigns.store import CampaignStore
from tasks.campaigns.tasks import send_campaign_batch
from web import create_app

BODY = ("Dear {{ name }},\n\n" + "Thank you for being with us this year. Your statement for "
        "the period is ready, and the figures below are yours alone. " * 16
        + "\n\nKind regards,\nPostroom for {{ name }}\n")

# Which part of sending a message a function belongs to, by where it lives.
PARTS = [
    ("template render", ("jinja2", "templating.py")),
    ("unsubscribe signing", ("itsdangerous", "hmac.py", "suppression.py:")),
    ("ledger (Redis)", ("ledger", "redis/")),  # before "which": redis-py's own code
    ("MIME (compose)", ("compose.py", "plaintext.py", "binascii", "email/")),
    ("suppression check", ("smismember", "which")),
    ("batch task (claims, pause check, counters)", ("delivery.py", "campaigns.py",
                                                    "leases.py")),
    ("SMTP (session, transaction)", ("session.py", "transaction.py", "smtplib")),
]


def batch(app_config: dict[str, object], n: int, *, profile: bool,
          cpu_clock: bool = False) -> tuple[float, str]:
    app = create_app(app_config)
    with app.app_context():
        store = CampaignStore(app.extensions["redis"])
        campaign_id = store.begin(name="profile", subject="Your statement, {{ name }}",
                                  body=BODY, html=None, sender=None,
                                  base_url="http://postroom.test")
        store.add_recipients(campaign_id, [(f"c{i}@example.com", {"name": f"Customer {i}"})
                                           for i in range(n)], start=0)
        store.open(campaign_id, total=n, send_at=None, report={})
        store.transition(campaign_id, ("queued",), "running")
        slot = store.rescue_batch(campaign_id, 0, n - 1)
        # with --cpu the profiler counts this process's CPU time, not the time it waited
        # (for the sink, for Redis, for a core on a busy machine)
        profiler = cProfile.Profile(time.process_time) if cpu_clock else cProfile.Profile()
        started = time.perf_counter()
        if profile:
            profiler.enable()
        send_campaign_batch.apply(args=[campaign_id, 0, n - 1, slot], throw=True)
        if profile:
            profiler.disable()
        elapsed = time.perf_counter() - started
        sent = store.ledger(campaign_id).counts()["sent"]
        if sent != n:
            raise SystemExit(f"only {sent} of {n} were sent")
    if not profile:
        return elapsed, ""
    stats = pstats.Stats(profiler)
    return elapsed, report(stats, n)


def report(stats: pstats.Stats, n: int) -> str:
    """Own time per part; a function no part names (a builtin such as ``sendall``, a
    helper) counts for the part of the caller that spent most time calling it."""
    table = stats.stats  # type: ignore[attr-defined]

    def named(func: tuple[str, int, str]) -> str | None:
        where = f"{func[0]}:{func[2]}"
        return next((name for name, marks in PARTS if any(m in where for m in marks)), None)

    def parts_of(func: tuple[str, int, str], seconds: float, depth: int = 0) -> dict[str, float]:
        """*seconds* of *func*'s own time, split over the parts its callers belong to."""
        part = named(func)
        callers = table[func][4]
        if part is not None or depth > 8 or not callers:
            return {part or "other": seconds}
        share: dict[str, float] = {}
        spent = sum(times[2] for times in callers.values()) or 1.0
        for caller, times in callers.items():
            for name, value in parts_of(caller, seconds * times[2] / spent, depth + 1).items():
                share[name] = share.get(name, 0.0) + value
        return share

    own: dict[str, float] = {}
    total = 0.0
    for func, (_, _, tottime, _, _) in table.items():
        total += tottime
        for part, seconds in parts_of(func, tottime).items():
            own[part] = own.get(part, 0.0) + seconds
    calls = sum(entry[1] for entry in table.values())
    lines = [f"  Python function calls per message: {calls / n:,.0f}",
             f"  {'part':44s} {'µs/message':>10s} {'share':>6s}"]
    for part, seconds in sorted(own.items(), key=lambda item: -item[1]):
        lines.append(f"  {part:44s} {seconds / n * 1e6:10.0f} {seconds / total:6.0%}")
    text = io.StringIO()
    stats.stream = text  # type: ignore[attr-defined]
    stats.sort_stats("tottime").print_stats(25)
    return "\n".join(lines) + "\n\nTop functions by own time:\n" + text.getvalue()


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.profile_batch", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--recipients", type=int, default=4000)
    parser.add_argument("--cpu", action="store_true",
                        help="profile CPU time instead of wall time (a shared machine)")
    args = parser.parse_args()
    with redis_server() as url, smtp_sink() as port:
        config: dict[str, object] = {
            "TESTING": True, "SECRET_KEY": "profile", "REDIS_URL": url,
            "CELERY_BROKER_URL": url, "MAIL_SERVER": "127.0.0.1", "MAIL_PORT": port,
            "MAIL_SUPPRESS_SEND": False, "MAIL_DEFAULT_SENDER": "Postroom <noreply@postroom.test>",
            "PUBLIC_URL": "http://postroom.test",
            "CAMPAIGN_BATCH_SECONDS": 3600,  # the one batch whole, however busy the machine
            "CELERY": {"task_always_eager": True, "task_eager_propagates": True}}
        plain, _ = batch(config, args.recipients, profile=False)
        profiled, text = batch(config, args.recipients, profile=True, cpu_clock=args.cpu)
    print(f"one campaign batch of {args.recipients} messages to smtp-sink, one process: "
          f"{args.recipients / plain:,.0f} msg/s ({args.recipients / profiled:,.0f} msg/s "
          f"under the profiler)")
    print(text)


if __name__ == "__main__":
    main()

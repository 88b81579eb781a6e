"""The whole service, as ``make run`` starts it: ``.venv/bin/python -m bench stack``.

Each scenario starts its own private Redis, its own sink and its own
``postroom dev`` (free ports, a temporary ``--var-dir``), drives it over HTTP
only, and stops it with SIGTERM. Baselines run against the same sink in the
same run. Scenarios (``--scenarios``, comma-separated; default all but
``million``):

- ``sink``: postfix's ``smtp-sink``, ``--recipients`` (20,000) personalised
  ~2 KB messages. Postroom: a campaign created with ``POST /api/campaigns``
  (multipart CSV; ``Your statement, {{ name }}``), timed from just before the
  call to the campaign's ``finished_at`` (it becomes ``completed`` once the last
  reply is recorded; smtp-sink cannot say when it took its last message), with
  ``GET /api/campaigns/<id>`` polled every 50 ms. Baseline: the seed tutorial's
  ``with mail.connect() as conn:`` loop, the same messages. Goal: 4x.
- ``delay``: ``bench.delay_sink`` with every reply ``--latency`` (20 ms) late,
  ``MAIL_MAX_CONNECTIONS=--connections`` (50), ``--delay-recipients`` (5,000),
  timed from just before the call to the sink's last accepted campaign message.
  Baseline: the same loop on ``--loop-messages`` (200) messages. Goal: 175x.
  While the campaign runs, ``POST /api/otp`` every ``--otp-interval`` (0.5 s),
  each to a new address, timed to the moment the sink accepted that code's
  mail. Goal: p99 under 2 s.
- ``sessions``: a ``--session-recipients`` (120) campaign with
  ``MAIL_MAX_EMAILS=--max-emails`` (7) on the delay sink at 0 ms. Goal: exactly
  ceil(n/N) SMTP sessions (18), each carrying N but the last.
- ``sink`` and ``delay`` also time the peer (:mod:`bench.peer_app`, the Flask
  docs' Celery pattern, a task and a session per email). Goals: Postroom 10x
  it at 0 ms, 50x at 20 ms.
- ``memory``: Redis ``used_memory`` before and after a scheduled
  ``--memory-rows`` (100,000) row CSV campaign. Goal: at most 300 bytes each.
- ``enqueue``: the relay down (``MAIL_PORT`` a closed port), ``POST
  /api/messages`` at ``--enqueue-rate`` (200/s) for ``--enqueue-seconds``
  (10 s), open loop. Goal: p99 under 25 ms.
- ``singles``: single-message capacity, the relay up: ``POST /api/messages``
  stepped from 50 a second up while the API's p99 stays under 25 ms and every
  message is sent within 2 s of its 202 (:mod:`bench.singles`).
- ``enqueue-up``: the same load with the relay up (``bench.delay_sink`` with no
  added latency: it logs when it accepted each message, which smtp-sink cannot
  say). Goals: enqueue p99 under 25 ms, and each message's 202 -> accepted at
  the sink within 2 s.
- ``million`` (``--million``): see :mod:`bench.million`.
"""

from __future__ import annotations

import argparse
import collections
import math
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import redis

from bench.baseline import connection_loop
from bench.campaign_csv_memory import write_csv as write_member_csv
from bench.campaign_run import CampaignRun, run_campaign, write_campaign_csv
from bench.delay_sink import Accepted, AcceptedLog
from bench.load import OTPProbe, open_loop
from bench.million import scenario_million
from bench.peer import PEER, peer_worker, run_peer
from bench.report import Summary, percentile, rate, spread, verdict
from bench.servers import delay_sink, redis_server, smtp_sink
from bench.singles import scenario_singles
from bench.stack import postroom_dev
from web.testing import free_port

LOOP = "tutorial loop: Flask-Mail `with mail.connect() as conn:`, one session"
SCENARIOS = ("sink", "delay", "sessions", "memory", "enqueue", "enqueue-up", "singles")


def scenario_sink(workdir: Path, args: argparse.Namespace, summary: Summary) -> None:
    n = args.recipients
    print(f"\n[sink] postfix smtp-sink, {n:,} personalised ~2 KB messages")
    csv_path = write_campaign_csv(workdir / "sink.csv", n)
    with redis_server() as redis_url, smtp_sink() as port, \
            postroom_dev(workdir / "sink", redis_url, port) as stack:
        print(f"  a worker sent a first message {stack.wait_for_worker():.1f} s after "
              "`Postroom is running.`")
        loop = connection_loop(port, n)
        print(f"  {LOOP}: {rate(n, loop)}")
        peer = sink_peer(workdir / "sink-peer", redis_url, port, args.peer_messages)
        run = run_campaign(stack, csv_path, args.timeout)
        print(f"  Postroom campaign: {run.describe()}")
        if run.timed_out or run.finished is None or run.sent != n:
            print(f"  Postroom did not send all {n:,} within {args.timeout:.0f} s; no ratio")
            return
        print(f"  Postroom: POST /api/campaigns -> finished_at (completed):   "
              f"{rate(n, run.finished)}")
        ratio = loop / run.finished
        print(f"  ratio {ratio:.2f}x the tutorial loop   goal >= 4x: {verdict(ratio >= 4)}")
        summary.add("sink: campaign vs. tutorial loop", f"{ratio:.2f}x", ">= 4x", ratio >= 4)
        if peer is not None:
            ratio = (n / run.finished) / peer
            print(f"  ratio {ratio:.1f}x the Flask docs' Celery pattern   goal >= 10x: "
                  f"{verdict(ratio >= 10)}")
            summary.add("sink: campaign vs. the Flask docs' Celery pattern", f"{ratio:.1f}x",
                        ">= 10x", ratio >= 10)


def sink_peer(workdir: Path, redis_url: str, port: int, n: int) -> float | None:
    """The peer's msg/s on smtp-sink: enqueue -> the last ``mail.send`` returned."""
    with peer_worker(workdir, redis_url, port) as peer:
        timed = run_peer(peer, n)
    if timed is None:
        print(f"  {PEER}: did not send all {n:,}; no ratio")
        return None
    print(f"  {PEER}: {rate(n, timed[1])}")
    return n / timed[1]


def scenario_delay(workdir: Path, args: argparse.Namespace, summary: Summary) -> None:
    n, latency = args.delay_recipients, args.latency
    print(f"\n[delay] delay sink, every reply {latency * 1000:g} ms late, "
          f"MAIL_MAX_CONNECTIONS={args.connections}, {n:,} personalised ~2 KB messages")
    csv_path = write_campaign_csv(workdir / "delay.csv", n)
    log_path = workdir / "delay-sink.tsv"
    extra = {"MAIL_MAX_CONNECTIONS": str(args.connections),
             "OTP_RATE_LIMIT_PER_IP": "100000/minute", "OTP_RATE_LIMIT_PER_ADDRESS": "100/minute"}
    with redis_server() as redis_url, delay_sink(latency, log_path) as port, \
            postroom_dev(workdir / "delay", redis_url, port, extra) as stack:
        print(f"  a worker sent a first message {stack.wait_for_worker():.1f} s after "
              "`Postroom is running.`")
        loop = connection_loop(port, args.loop_messages)
        print(f"  {LOOP}, {args.loop_messages} messages: {rate(args.loop_messages, loop)}")
        accepted = AcceptedLog(log_path)
        peer = delay_peer(workdir / "delay-peer", redis_url, port, args.peer_delay_messages,
                          accepted)
        time.sleep(0.2)
        accepted.new()  # the loop's and the peer's messages are not the campaign's
        probe = OTPProbe(stack, interval=args.otp_interval)
        run = run_campaign(stack, csv_path, args.timeout, probe=probe)
        print(f"  Postroom campaign: {run.describe()}")
        arrivals = wait_for_arrivals(accepted, run, probe, args.otp_wait)
        mails = [m for email, m in arrivals.items() if email.endswith("@example.com")]
        if mails:
            opened = sorted(m.open_sessions for m in mails)
            print(f"  the sink took {len(mails):,} campaign messages, "
                  f"{sum(m.size for m in mails) / len(mails):,.0f} bytes each on average, "
                  f"on {len({m.session for m in mails})} SMTP sessions, at most {opened[-1]} "
                  f"connected at once (median {opened[len(opened) // 2]} when a message "
                  f"was accepted)")
            print(f"  the sink's own lag behind its {latency * 1000:g} ms: "
                  f"{spread([m.late for m in mails])}")
        if run.timed_out or run.sent != n or len(mails) < n:
            print(f"  Postroom did not send all {n:,} within {args.timeout:.0f} s; no ratio")
        else:
            last = max(m.at for m in mails) - run.started
            print(f"  Postroom: POST /api/campaigns -> the sink's last 250:       "
                  f"{rate(n, last)}")
            loop_rate, stack_rate = args.loop_messages / loop, n / last
            ratio = stack_rate / loop_rate
            print(f"  ratio {ratio:.1f}x the tutorial loop   goal >= 175x: {verdict(ratio >= 175)}")
            summary.add("delay: campaign vs. tutorial loop", f"{ratio:.1f}x", ">= 175x",
                        ratio >= 175)
            if peer is not None:
                ratio = stack_rate / peer
                print(f"  ratio {ratio:.1f}x the Flask docs' Celery pattern   goal >= 50x: "
                      f"{verdict(ratio >= 50)}")
                summary.add("delay: campaign vs. the Flask docs' Celery pattern",
                            f"{ratio:.1f}x", ">= 50x", ratio >= 50)
            report_tail(mails, run.started)
        report_otp(probe, arrivals, args.otp_wait, summary)


def delay_peer(workdir: Path, redis_url: str, port: int, n: int,
               accepted: AcceptedLog) -> float | None:
    """The peer's msg/s on the delay sink: enqueue -> the sink's last ``250`` for them."""
    with peer_worker(workdir, redis_url, port) as peer:
        accepted.new()  # the loop's and the warm-up's
        timed = run_peer(peer, n)
    if timed is None:
        print(f"  {PEER}: did not send all {n:,}; no ratio")
        return None
    started, _ = timed
    wanted = {f"c{i}@example.com" for i in range(n)}
    last = max((m.at for m in accepted.new() if m.at >= started and wanted & set(m.recipients)),
               default=None)
    if last is None:
        print(f"  {PEER}: the sink logged none of its messages; no ratio")
        return None
    print(f"  {PEER}, {n} messages: {rate(n, last - started)}")
    return n / (last - started)


def report_tail(mails: list[Accepted], started: float) -> None:
    """How evenly the campaign ended: messages and sessions connected per tenth of the run."""
    times = sorted(m.at - started for m in mails)
    first, last = times[0], times[-1]
    step = (last - first) / 10 or 1.0
    tenths: list[list[Accepted]] = [[] for _ in range(10)]
    for m in mails:
        tenths[min(9, int((m.at - started - first) / step))].append(m)
    cells = [f"{len(t)}/{sorted(x.open_sessions for x in t)[len(t) // 2] if t else 0}"
             for t in tenths]
    print(f"  per tenth of the sending time ({step:.2f} s each), messages/median sessions "
          f"connected: {' '.join(cells)}")
    ninety = times[math.ceil(0.9 * len(times)) - 1]
    print(f"  the last 10% of messages took {last - ninety:.2f} s of {last - first:.2f} s "
          f"({(last - ninety) / (last - first or 1):.0%}; an even end takes about 10%)")


def wait_for_arrivals(log: AcceptedLog, run: CampaignRun, probe: OTPProbe,
                      wait: float) -> dict[str, Accepted]:
    """Recipient -> the mail the sink accepted for it, once every sent mail and code is in."""
    arrivals: dict[str, Accepted] = {}
    wanted = {r.email for r in probe.requests if r.status == 202}
    deadline = time.monotonic() + wait
    while True:
        for message in log.new():
            if message.at < run.started:
                continue  # the baseline loop's
            for recipient in message.recipients:
                arrivals.setdefault(recipient, message)
        campaign_in = sum(1 for email in arrivals if email.endswith("@example.com"))
        if (campaign_in >= run.sent and wanted <= arrivals.keys()) \
                or time.monotonic() > deadline:
            return arrivals
        time.sleep(0.1)


def report_otp(probe: OTPProbe, arrivals: dict[str, Accepted], wait: float,
               summary: Summary) -> None:
    refused = [r for r in probe.requests if r.status != 202]
    waits = [arrivals[r.email].at - r.called_at for r in probe.requests
             if r.status == 202 and r.email in arrivals]
    missing = len(probe.requests) - len(refused) - len(waits)
    print(f"  OTP during the campaign: {len(probe.requests)} POST /api/otp, one every "
          f"{probe.interval:g} s, each to a new address; "
          f"{len(refused)} not accepted, {missing} not at the sink {wait:.0f} s after the end")
    print(f"  OTP POST /api/otp -> the sink accepted the code's mail: "
          f"{spread(waits, 1.0, 's')}")
    if not waits:
        print("  OTP: no code reached the sink   goal p99 < 2 s: NOT MET")
        summary.add("delay: OTP during the campaign, p99", "no code arrived", "< 2 s", False)
        return
    p99 = percentile(waits, 0.99)
    print(f"  OTP p99 {p99:.2f} s   goal p99 < 2 s: {verdict(p99 < 2.0 and not missing)}")
    summary.add("delay: OTP during the campaign, p99", f"{p99:.2f} s", "< 2 s",
                p99 < 2.0 and not missing)


def scenario_sessions(workdir: Path, args: argparse.Namespace, summary: Summary) -> None:
    n, per = args.session_recipients, args.max_emails
    want = math.ceil(n / per)
    print(f"\n[sessions] a {n}-recipient campaign with MAIL_MAX_EMAILS={per}, the delay sink "
          f"at 0 ms: exactly ceil({n}/{per}) = {want} SMTP sessions")
    csv_path = write_campaign_csv(workdir / "sessions.csv", n)
    log_path = workdir / "sessions-sink.tsv"
    with redis_server() as redis_url, delay_sink(0.0, log_path) as port, \
            postroom_dev(workdir / "sessions", redis_url, port,
                         {"MAIL_MAX_EMAILS": str(per)}) as stack:
        stack.wait_for_worker()
        accepted = AcceptedLog(log_path)
        time.sleep(0.2)
        accepted.new()  # the warm-up message's
        run = run_campaign(stack, csv_path, args.timeout)
        deadline = time.monotonic() + 10
        mails: list[Accepted] = []
        while len(mails) < run.sent and time.monotonic() < deadline:
            mails += [m for m in accepted.new() if m.recipients[0].endswith("@example.com")]
            time.sleep(0.1)
    carried = collections.Counter(m.session for m in mails)
    counts = sorted(carried.values(), reverse=True)
    whole = counts == [per] * (n // per) + ([n % per] if n % per else [])
    print(f"  Postroom campaign: {run.describe()}")
    print(f"  the sink took {len(mails)} campaign messages on {len(carried)} SMTP sessions "
          f"(messages per session: {', '.join(map(str, counts))})")
    met = run.sent == n and len(mails) == n and len(carried) == want and whole
    print(f"  sessions {len(carried)}   goal exactly {want}: {verdict(met)}")
    summary.add("sessions: campaign sessions, MAIL_MAX_EMAILS=N",
                f"{len(carried)} for n={n}, N={per}", f"exactly {want}", met)


def used_memory(client: redis.Redis) -> int:
    info: dict[str, Any] = client.info("memory")
    return int(info["used_memory"])


def scenario_memory(workdir: Path, args: argparse.Namespace, summary: Summary) -> None:
    rows = args.memory_rows
    print(f"\n[memory] Redis used_memory for a scheduled {rows:,}-row CSV campaign "
          "(email,name,city rows as bench.campaign_csv_memory writes them; send_at 2099)")
    csv_path = workdir / "memory.csv"
    write_member_csv(csv_path, rows)
    with redis_server() as redis_url, smtp_sink() as port, \
            postroom_dev(workdir / "memory", redis_url, port) as stack:
        client = redis.Redis.from_url(redis_url)
        stack.request("GET", "/api/campaigns")  # the app's first request is behind us
        time.sleep(1.0)
        before = used_memory(client)
        accepted = stack.create_campaign_from_csv(csv_path, {
            "subject": "Hello {{ name }}", "body": "Hi {{ name }} in {{ city }}",
            "send_at": "2099-01-01T00:00:00Z"})
        time.sleep(1.0)
        after = used_memory(client)
        client.close()
        per = (after - before) / accepted["total"]
        print(f"  used_memory {before:,} -> {after:,} bytes, {accepted['total']:,} recipients "
              f"stored (status {accepted['status']})")
        print(f"  Redis bytes per campaign recipient: {per:.0f}   goal <= 300: "
              f"{verdict(per <= 300)}")
        summary.add("memory: Redis bytes per campaign recipient", f"{per:.0f} B", "<= 300",
                    per <= 300)


def scenario_enqueue(workdir: Path, args: argparse.Namespace, summary: Summary) -> None:
    closed = free_port()
    print(f"\n[enqueue] POST /api/messages at {args.enqueue_rate:g}/s for "
          f"{args.enqueue_seconds:g} s, open loop, the relay down (MAIL_PORT={closed}, closed)")
    with redis_server() as redis_url, postroom_dev(workdir / "enqueue", redis_url, closed) as stack:
        print(f"  a worker tried (and deferred) a first message {stack.wait_for_worker():.1f} s "
              "after `Postroom is running.`")
        for i in range(20):  # warm: imports, first connections
            stack.post_json("/api/messages", {"to": [f"warm{i}@example.com"],
                                              "subject": "warm", "body": "warm"})
        result = open_loop(stack, args.enqueue_rate, args.enqueue_seconds)
        total = len(result.latencies)
        statuses = ", ".join(f"{n} x {s}" for s, n in sorted(result.statuses.items()))
        print(f"  {total} requests in {result.seconds:.2f} s ({total / result.seconds:.0f}/s): "
              f"{statuses}")
        print(f"  client lag (due -> sent): {spread(result.start_lags)}")
        print(f"  enqueue latency (due -> 202 read): {spread(result.latencies)}")
        p99 = percentile(result.latencies, 0.99)
        met = result.statuses.get("202", 0) == total and p99 < 0.025
        print(f"  enqueue p99 {p99 * 1000:.1f} ms   goal p99 < 25 ms: {verdict(met)}")
        summary.add("enqueue: POST /api/messages p99, relay down", f"{p99 * 1000:.1f} ms",
                    "< 25 ms", met)


def scenario_enqueue_up(workdir: Path, args: argparse.Namespace, summary: Summary) -> None:
    print(f"\n[enqueue-up] POST /api/messages at {args.enqueue_rate:g}/s for "
          f"{args.enqueue_seconds:g} s, open loop, the relay up (bench.delay_sink, no delay)")
    log_path = workdir / "enqueue-up-sink.tsv"
    with redis_server() as redis_url, delay_sink(0.0, log_path) as port, \
            postroom_dev(workdir / "enqueue-up", redis_url, port) as stack:
        print(f"  a worker sent a first message {stack.wait_for_worker():.1f} s after "
              "`Postroom is running.`")
        for i in range(20):  # warm: imports, first connections
            stack.post_json("/api/messages", {"to": [f"warm{i}@example.com"],
                                              "subject": "warm", "body": "warm"})
        accepted = AcceptedLog(log_path)
        time.sleep(1.0)
        accepted.new()  # the warm-up's
        result = open_loop(stack, args.enqueue_rate, args.enqueue_seconds)
        total = len(result.latencies)
        arrivals: dict[str, float] = {}
        deadline = time.monotonic() + 30
        while len(arrivals) < total and time.monotonic() < deadline:
            for message in accepted.new():
                for recipient in message.recipients:
                    arrivals.setdefault(recipient, message.at)
            time.sleep(0.1)
        statuses = ", ".join(f"{n} x {s}" for s, n in sorted(result.statuses.items()))
        print(f"  {total} requests in {result.seconds:.2f} s ({total / result.seconds:.0f}/s): "
              f"{statuses}")
        print(f"  client lag (due -> sent): {spread(result.start_lags)}")
        print(f"  enqueue latency (due -> 202 read): {spread(result.latencies)}")
        waits = [arrivals[f"enqueue{i}@example.com"] - result.answered_monotonic(i)
                 for i in range(total) if f"enqueue{i}@example.com" in arrivals]
        print(f"  202 -> accepted at the sink: {spread(waits, 1.0, 's')}; "
              f"{total - len(waits)} not at the sink 30 s after the end")
        p99 = percentile(result.latencies, 0.99)
        met = result.statuses.get("202", 0) == total and p99 < 0.025
        print(f"  enqueue p99 {p99 * 1000:.1f} ms   goal p99 < 25 ms: {verdict(met)}")
        summary.add("enqueue: POST /api/messages p99, relay up", f"{p99 * 1000:.1f} ms",
                    "< 25 ms", met)
        if waits:
            slowest = max(waits)
            within = slowest < 2.0 and len(waits) == total
            print(f"  202 -> sink max {slowest:.2f} s   goal within 2 s: {verdict(within)}")
            summary.add("enqueue-up: 202 -> at the relay, max", f"{slowest:.2f} s", "< 2 s",
                        within)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench stack", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--scenarios", default=",".join(SCENARIOS),
                        help=f"comma-separated, of {', '.join(SCENARIOS)}, million")
    parser.add_argument("--recipients", type=int, default=20_000, help="[sink]")
    parser.add_argument("--delay-recipients", type=int, default=5_000, help="[delay]")
    parser.add_argument("--latency", type=float, default=0.02, help="[delay] seconds")
    parser.add_argument("--connections", type=int, default=50, help="[delay]")
    parser.add_argument("--loop-messages", type=int, default=200, help="[delay] baseline")
    parser.add_argument("--otp-interval", type=float, default=0.5, help="[delay] seconds")
    parser.add_argument("--otp-wait", type=float, default=60.0,
                        help="[delay] seconds to wait for the last codes after the campaign")
    parser.add_argument("--peer-messages", type=int, default=2_000,
                        help="[sink] the Flask docs' Celery pattern")
    parser.add_argument("--peer-delay-messages", type=int, default=150,
                        help="[delay] the Flask docs' Celery pattern")
    parser.add_argument("--session-recipients", type=int, default=120, help="[sessions]")
    parser.add_argument("--max-emails", type=int, default=7,
                        help="[sessions] MAIL_MAX_EMAILS")
    parser.add_argument("--memory-rows", type=int, default=100_000, help="[memory]")
    parser.add_argument("--enqueue-rate", type=float, default=200.0,
                        help="[enqueue, enqueue-up] per s")
    parser.add_argument("--enqueue-seconds", type=float, default=10.0,
                        help="[enqueue, enqueue-up]")
    parser.add_argument("--singles-rates", default="50,100,150,200,300,400,600,800",
                        help="[singles] messages a second, one step each")
    parser.add_argument("--singles-seconds", type=float, default=10.0, help="[singles] per step")
    parser.add_argument("--singles-session-idle", type=float, default=None,
                        help="[singles] MAIL_SESSION_IDLE (0: no session kept)")
    parser.add_argument("--million", action="store_true", help="add the million scenario")
    parser.add_argument("--million-recipients", type=int, default=1_000_000, help="[million]")
    parser.add_argument("--timeout", type=float, default=1800.0,
                        help="seconds a campaign may take before it is given up on")
    args = parser.parse_args(argv)
    chosen = [s.strip() for s in args.scenarios.split(",") if s.strip()]
    if args.million and "million" not in chosen:
        chosen.append("million")
    runners: dict[str, Callable[[Path, argparse.Namespace, Summary], None]] = {
        "sink": scenario_sink, "delay": scenario_delay, "sessions": scenario_sessions,
        "memory": scenario_memory, "enqueue": scenario_enqueue, "enqueue-up": scenario_enqueue_up,
        "singles": scenario_singles,
        "million": lambda workdir, args, _: scenario_million(workdir, args)}
    unknown = [s for s in chosen if s not in runners]
    if unknown:
        parser.error(f"unknown scenario(s): {', '.join(unknown)}")
    started = time.monotonic()
    summary = Summary()
    print(f"whole stack: postroom dev per scenario ({', '.join(chosen)})")
    with tempfile.TemporaryDirectory(prefix="postroom-bench-") as workdir:
        for name in chosen:
            runners[name](Path(workdir), args, summary)
    print(f"\nwhole stack: done in {time.monotonic() - started:.0f} s; every figure and its "
          f"goal:\n{summary.render()}")

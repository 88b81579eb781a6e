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
  Baseline: the same loop on ``--loop-messages`` (200) messages. Goal: 80x.
  While the campaign runs, ``POST /api/otp`` every ``--otp-interval`` (0.5 s),
  each to a new address, timed to the moment the sink accepted that code's
  mail. Goal: p99 under 2 s.
- ``memory``: Redis ``used_memory`` before and after a scheduled
  ``--memory-rows`` (100,000) row CSV campaign. Goal: at most 300 bytes each.
- ``enqueue``: the relay down (``MAIL_PORT`` a closed port), ``POST
  /api/messages`` at ``--enqueue-rate`` (200/s) for ``--enqueue-seconds``
  (10 s), open loop. Goal: p99 under 25 ms.
- ``enqueue-up``: the same load with the relay up (``bench.delay_sink`` with no
  added latency: it logs when it accepted each message, which smtp-sink cannot
  say). Goals: enqueue p99 under 25 ms, and each message's 202 -> accepted at
  the sink within 2 s.
- ``million`` (``--million``): see :mod:`bench.million`.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path
from typing import Any

import redis

from bench.baseline import connection_loop
from bench.campaign_csv_memory import write_csv as write_member_csv
from bench.campaign_run import CampaignRun, run_campaign, write_campaign_csv
from bench.delay_sink import Accepted, AcceptedLog
from bench.load import OTPProbe, open_loop
from bench.million import scenario_million
from bench.report import percentile, rate, spread, verdict
from bench.servers import delay_sink, free_port, redis_server, smtp_sink
from bench.stack import postroom_dev

LOOP = "tutorial loop: Flask-Mail `with mail.connect() as conn:`, one session"
SCENARIOS = ("sink", "delay", "memory", "enqueue", "enqueue-up")


def scenario_sink(workdir: Path, args: argparse.Namespace) -> None:
    n = args.recipients
    print(f"\n[sink] postfix smtp-sink, {n:,} personalised ~2 KB messages")
    csv_path = write_campaign_csv(workdir / "sink.csv", n)
    with redis_server() as redis_url, smtp_sink() as port, \
            postroom_dev(workdir / "sink", redis_url, port) as stack:
        print(f"  a worker sent a first message {stack.wait_for_worker():.1f} s after "
              "`Postroom is running.`")
        loop = connection_loop(port, n)
        print(f"  {LOOP}: {rate(n, loop)}")
        run = run_campaign(stack, csv_path, args.timeout)
        print(f"  Postroom campaign: {run.describe()}")
        if run.timed_out or run.finished is None or run.sent != n:
            print(f"  Postroom did not send all {n:,} within {args.timeout:.0f} s; no ratio")
            return
        print(f"  Postroom: POST /api/campaigns -> finished_at (completed):   "
              f"{rate(n, run.finished)}")
        ratio = loop / run.finished
        print(f"  ratio {ratio:.2f}x the tutorial loop   goal >= 4x: {verdict(ratio >= 4)}")


def scenario_delay(workdir: Path, args: argparse.Namespace) -> None:
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
        time.sleep(0.2)
        accepted.new()  # the loop's messages are not the campaign's
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
            print(f"  ratio {ratio:.1f}x the tutorial loop   goal >= 80x: {verdict(ratio >= 80)}")
        report_otp(probe, arrivals, args.otp_wait)


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


def report_otp(probe: OTPProbe, arrivals: dict[str, Accepted], wait: float) -> None:
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
        return
    p99 = percentile(waits, 0.99)
    print(f"  OTP p99 {p99:.2f} s   goal p99 < 2 s: {verdict(p99 < 2.0 and not missing)}")


def used_memory(client: redis.Redis) -> int:
    info: dict[str, Any] = client.info("memory")  # type: ignore[assignment]
    return int(info["used_memory"])


def scenario_memory(workdir: Path, args: argparse.Namespace) -> None:
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


def scenario_enqueue(workdir: Path, args: argparse.Namespace) -> None:
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


def scenario_enqueue_up(workdir: Path, args: argparse.Namespace) -> None:
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
        waits = [arrivals[f"enqueue{i}@example.com"] - result.answered_at(i)
                 for i in range(total) if f"enqueue{i}@example.com" in arrivals]
        print(f"  202 -> accepted at the sink: {spread(waits, 1.0, 's')}; "
              f"{total - len(waits)} not at the sink 30 s after the end")
        p99 = percentile(result.latencies, 0.99)
        met = result.statuses.get("202", 0) == total and p99 < 0.025
        print(f"  enqueue p99 {p99 * 1000:.1f} ms   goal p99 < 25 ms: {verdict(met)}")
        if waits:
            slowest = max(waits)
            print(f"  202 -> sink max {slowest:.2f} s   goal within 2 s: "
                  f"{verdict(slowest < 2.0 and len(waits) == total)}")


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
    parser.add_argument("--memory-rows", type=int, default=100_000, help="[memory]")
    parser.add_argument("--enqueue-rate", type=float, default=200.0,
                        help="[enqueue, enqueue-up] per s")
    parser.add_argument("--enqueue-seconds", type=float, default=10.0,
                        help="[enqueue, enqueue-up]")
    parser.add_argument("--million", action="store_true", help="add the million scenario")
    parser.add_argument("--million-recipients", type=int, default=1_000_000, help="[million]")
    parser.add_argument("--timeout", type=float, default=1800.0,
                        help="seconds a campaign may take before it is given up on")
    args = parser.parse_args(argv)
    chosen = [s.strip() for s in args.scenarios.split(",") if s.strip()]
    if args.million and "million" not in chosen:
        chosen.append("million")
    runners = {"sink": scenario_sink, "delay": scenario_delay, "memory": scenario_memory,
               "enqueue": scenario_enqueue, "enqueue-up": scenario_enqueue_up,
               "million": scenario_million}
    unknown = [s for s in chosen if s not in runners]
    if unknown:
        parser.error(f"unknown scenario(s): {', '.join(unknown)}")
    started = time.monotonic()
    print(f"whole stack: postroom dev per scenario ({', '.join(chosen)})")
    with tempfile.TemporaryDirectory(prefix="postroom-bench-") as workdir:
        for name in chosen:
            runners[name](Path(workdir), args)
    print(f"\nwhole stack: done in {time.monotonic() - started:.0f} s")

"""Single-message capacity: ``python -m bench stack --scenarios singles``.

``POST /api/messages`` (one recipient, a short text) in an open loop at each
rate of ``--singles-rates`` (50, 100, 150, 200, 300, 400, 600, 800 a second) for
``--singles-seconds`` (10 s) each, the relay up (postfix's ``smtp-sink``). A rate
is held when every request got its 202, the API's p99 (due time to the answer
read) is under 25 ms, and every message was sent within 2 s of its 202: the
ledger's ``updated_at`` for the recipient, stamped when the relay's 250 is
recorded, against the wall-clock moment the client read the 202. The capacity
is the highest rate held; the steps stop at the first rate whose messages are
not all sent within 2 s (a backlog), so the scenario stays under two minutes.
A step lasts as long as ``enqueue-up``'s run (10 s): a shorter burst can end before
the lane worker's backlog reaches 2 s, and hold a rate the machine cannot sustain.
On a shared machine the API's p99 is the first to go, so each step also prints
the CPU the lane worker (``-Q otp,mail``), web and Flower spent per message (from
``/proc/<pid>/stat``), which contention on the cores changes much less, and the lane
worker's context switches per message (``/proc/<pid>/task/*/status``).

``--singles-session-idle`` sets ``MAIL_SESSION_IDLE`` for the run (``0``: every
message opens and closes its own SMTP session, as before sessions were kept).
"""

from __future__ import annotations

import argparse
import os
import time
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import redis

from bench.load import OpenLoopResult, open_loop
from bench.processes import command_line, descendants, role
from bench.report import Summary, percentile, spread, verdict
from bench.servers import redis_server, smtp_sink
from bench.stack import postroom_dev
from tasks.messages.store import MessageStore

API_P99 = 0.025  # seconds: the goal for POST /api/messages
DELIVERY = 2.0  # seconds from a message's 202 to its relay's 250
SWITCH_FIELDS = ("voluntary_ctxt_switches", "nonvoluntary_ctxt_switches")  # /proc/*/status
DRAIN_SLACK = 5.0  # seconds past the last 202 + DELIVERY to wait for stragglers


@dataclass
class Step:
    rate: float
    result: OpenLoopResult
    delivery: list[float]  # seconds from each sent message's 202 to its recorded 250
    unsent: int  # not sent by the time the step stopped waiting

    @property
    def delivered(self) -> bool:
        """Every request got its 202 and every message was sent within 2 s of it."""
        total = len(self.result.latencies)
        return (self.result.statuses.get("202", 0) == total and self.unsent == 0
                and max(self.delivery, default=0.0) <= DELIVERY)

    @property
    def held(self) -> bool:
        return self.delivered and percentile(self.result.latencies, 0.99) < API_P99


def cpu_seconds(pids: Iterable[int]) -> float:
    """User and system CPU the processes *pids* have used so far (those still alive)."""
    ticks = 0
    for pid in pids:
        try:
            fields = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        ticks += int(fields[11]) + int(fields[12])  # utime, stime
    return ticks / os.sysconf("SC_CLK_TCK")


def context_switches(pids: Iterable[int]) -> int:
    """Voluntary and involuntary context switches of every thread of *pids* so far: in a
    thread pool, mostly the GIL passing between threads at each socket call."""
    switches = 0
    for pid in pids:
        try:
            threads = os.listdir(f"/proc/{pid}/task")
        except OSError:
            continue
        for thread in threads:
            try:
                status = open(f"/proc/{pid}/task/{thread}/status").read()
            except OSError:
                continue
            switches += sum(int(line.split()[1]) for line in status.splitlines()
                            if line.split(":")[0] in SWITCH_FIELDS)
    return switches


def delivery_seconds(store: MessageStore, result: OpenLoopResult) -> tuple[list[float], int]:
    """Wait until every accepted message is sent (or the slack runs out); each one's
    seconds from its 202 to its recorded 250, and how many were not sent."""
    answered = {i: at for i, at in zip(result.ids, result.answered_at, strict=True) if i}
    deadline = time.time() + DELIVERY + DRAIN_SLACK
    seconds: dict[str, float] = {}
    while len(seconds) < len(answered) and time.time() < deadline:
        for message_id, at in answered.items():
            if message_id in seconds:
                continue
            [record] = store.ledger(message_id).get([0])
            if record.status == "sent" and record.updated_at is not None:
                seconds[message_id] = max(0.0, record.updated_at - at)
        if len(seconds) < len(answered):
            time.sleep(0.25)
    return list(seconds.values()), len(answered) - len(seconds)


def scenario_singles(workdir: Path, args: argparse.Namespace, summary: Summary) -> None:
    rates = [float(r) for r in args.singles_rates.split(",") if r.strip()]
    extra = {}
    if args.singles_session_idle is not None:
        extra["MAIL_SESSION_IDLE"] = str(args.singles_session_idle)
    idle = extra.get("MAIL_SESSION_IDLE", "the default")
    print(f"\n[singles] POST /api/messages, open loop, {args.singles_seconds:g} s at each of "
          f"{', '.join(f'{r:g}' for r in rates)}/s, postfix smtp-sink, MAIL_SESSION_IDLE "
          f"{idle}; held: all 202, API p99 < {API_P99 * 1000:g} ms, each sent within "
          f"{DELIVERY:g} s of its 202")
    with redis_server() as redis_url, smtp_sink() as port, \
            postroom_dev(workdir / "singles", redis_url, port, extra) as stack:
        print(f"  a worker sent a first message {stack.wait_for_worker():.1f} s after "
              "`Postroom is running.`")
        store = MessageStore(redis.Redis.from_url(redis_url))
        for i in range(20):  # warm: imports, first connections
            stack.post_json("/api/messages", {"to": [f"warm{i}@example.com"],
                                              "subject": "warm", "body": "warm"})
        tree = descendants(stack.process.pid)
        lane = [pid for pid in tree if "otp,mail" in command_line(pid)]
        web = [pid for pid in tree if role(command_line(pid)) == "web"]
        flower = [pid for pid in tree if role(command_line(pid)) == "flower"]
        capacity = delivered = 0.0
        for n, rate in enumerate(rates):
            before = cpu_seconds(lane), cpu_seconds(web), cpu_seconds(flower)
            switched = context_switches(lane)
            result = open_loop(stack, rate, args.singles_seconds, body="A single message.",
                               prefix=f"single{n}-")
            delivery, unsent = delivery_seconds(store, result)
            spent = (cpu_seconds(lane) - before[0], cpu_seconds(web) - before[1],
                     cpu_seconds(flower) - before[2])
            switched = context_switches(lane) - switched
            step = Step(rate, result, delivery, unsent)
            total = len(result.latencies)
            print(f"  {rate:5g}/s: {total} requests in {result.seconds:.2f} s "
                  f"({total / result.seconds:.0f}/s), {result.statuses.get('202', 0)} x 202; "
                  f"API {spread(result.latencies)}")
            print(f"         202 -> sent: {spread(delivery, 1.0, 's')}, {unsent} not sent; "
                  f"CPU per message: lane worker {spent[0] / total * 1000:.2f} ms "
                  f"({switched / total:.0f} context switches), web "
                  f"{spent[1] / total * 1000:.2f} ms, Flower {spent[2] / total * 1000:.2f} ms: "
                  f"{'held' if step.held else 'not held'}")
            if step.held:
                capacity = max(capacity, rate)
            if not step.delivered:
                break
            delivered = rate
        print(f"  sent within {DELIVERY:g} s of the 202 up to {delivered:g} messages/s")
        print(f"  single-message capacity: {capacity:g} messages/s "
              f"(API p99 < {API_P99 * 1000:g} ms and sent within {DELIVERY:g} s)   "
              f"goal 200/s: {verdict(capacity >= 200)}")
        summary.add("single-message capacity", f"{capacity:g} msg/s", ">= 200 msg/s",
                    capacity >= 200)

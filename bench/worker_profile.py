"""Where the whole bulk worker spends its CPU per message: ``python -m bench.worker_profile``.

Runs the ``sink`` scenario of ``python -m bench stack`` (``--recipients``
personalised ~2 KB messages to smtp-sink, through ``postroom dev`` exactly as
``make run`` starts it) and, once its tutorial-loop baseline is done and the
campaign is about to start, attaches ``py-spy record --gil --nonblocking`` to
every bulk worker process. ``--gil`` keeps only the samples of the thread that
holds the GIL, so a thread waiting for the sink or for Redis is not counted:
what is left is the worker's Python CPU. Each worker's CPU time (user and
system, ``/proc/<pid>/stat``) is read from then until it exits.

Every sample is given to the part of the innermost frame that names one
(template, signing, ledger, SMTP, logging...); the parts' shares times the
workers' CPU per message give microseconds per message. py-spy's raw stacks
stay in ``--out`` for a flame graph. Needs py-spy (the dev extra) and root or
``ptrace`` rights over the workers.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

from bench.processes import command_line, descendants

# (part, marks): a frame belongs to the first part one of whose marks it contains; a stack
# to the part of its innermost frame that belongs to one.
PARTS = [
    ("logging (the per-outcome line)", ("(logging/", "log_outcomes", "web/logs.py",
                                        "celery/utils/log.py")),
    ("template render", ("jinja2/", "templating.py", "sandbox.py", "markupsafe")),
    ("unsubscribe signing", ("itsdangerous/", "(hmac.py", "bounces/store.py:")),
    ("MIME (compose)", ("compose.py", "plaintext.py", "(email/", "(quopri", "(base64")),
    ("ledger (Redis)", ("ledger_stream.py", "ledger.py")),
    ("metrics counters", ("counters.py", "observers.py")),
    ("webhook events", ("webhooks/",)),
    ("Flask-Mail signal", ("email_dispatched.py", "blinker")),
    ("pacing, lease, session slots", ("pacing.py", "leases.py", "throttle.py", "relay_state.py",
                                      "relays.py")),
    ("SMTP (envelope, session, transaction)", ("envelope.py", "session.py", "transaction.py",
                                               "smtplib.py", "smtp_auth.py", "verp.py")),
    ("batch loop (delivery, campaign task)", ("delivery/service.py", "campaigns/tasks.py",
                                              "bounces/policy.py", "campaigns/store.py",
                                              "outcome.py")),
    ("Celery, kombu (tasks, results, events)", ("celery/", "kombu/", "billiard/", "vine/")),
]
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


def part_of(frames: list[str]) -> str:
    for frame in reversed(frames):
        for part, marks in PARTS:
            if any(mark in frame for mark in marks):
                return part
    return "Redis (other)" if any("redis/" in f for f in frames) else "other"


def parts(paths: list[Path]) -> Counter[str]:
    """Samples per part from py-spy's raw output (``frame;frame;... count`` lines)."""
    found: Counter[str] = Counter()
    for path in paths:
        for line in path.read_text(errors="replace").splitlines():
            stack, _, count = line.rpartition(" ")
            if stack.strip() and count.isdigit():
                found[part_of(stack.split(";"))] += int(count)
    return found


def cpu_seconds(pid: int) -> float | None:
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    except OSError:
        return None
    return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS  # utime, stime


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.worker_profile", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--recipients", type=int, default=20_000)
    parser.add_argument("--rate", type=int, default=100, help="py-spy samples a second")
    parser.add_argument("--out", type=Path, default=None, help="where py-spy's stacks go")
    args = parser.parse_args()
    spy = shutil.which("py-spy", path=str(Path(sys.executable).parent)) or shutil.which("py-spy")
    if spy is None:
        raise SystemExit("py-spy not found: pip install -e '.[dev]'")
    out = args.out or Path(tempfile.mkdtemp(prefix="postroom-worker-profile-"))
    out.mkdir(parents=True, exist_ok=True)
    log = out / "bench-stack.txt"
    with log.open("w") as output:
        bench = subprocess.Popen(
            [sys.executable, "-m", "bench", "stack", "--scenarios", "sink",
             "--recipients", str(args.recipients)],
            stdout=output, stderr=subprocess.STDOUT, env={**os.environ, "PYTHONUNBUFFERED": "1"})
    while "tutorial loop:" not in log.read_text() and bench.poll() is None:
        time.sleep(0.05)  # the baseline runs first; the campaign starts right after it
    workers = [pid for pid in descendants(bench.pid) if "-Q bulk" in command_line(pid)]
    if not workers:
        bench.wait()
        raise SystemExit(f"no bulk worker found; the benchmark said:\n{log.read_text()}")
    first = {pid: cpu_seconds(pid) or 0.0 for pid in workers}
    last = dict(first)
    spies = [subprocess.Popen([spy, "record", "--gil", "--nonblocking", "--rate",
                               str(args.rate), "--format", "raw", "-o",
                               str(out / f"bulk-{pid}.txt"), "-p", str(pid)],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
             for pid in workers]
    while bench.poll() is None:
        for pid in workers:
            seconds = cpu_seconds(pid)
            if seconds is not None:
                last[pid] = seconds
        time.sleep(0.2)
    for process in spies:
        try:
            process.wait(30)
        except subprocess.TimeoutExpired:
            process.terminate()
    print(log.read_text())
    cpu = sum(last[pid] - first[pid] for pid in workers)
    samples = parts(sorted(out.glob("bulk-*.txt")))
    total = sum(samples.values()) or 1
    per_message = cpu / args.recipients * 1e6
    print(f"bulk workers {', '.join(map(str, workers))}: {cpu:.2f} s of CPU for "
          f"{args.recipients:,} messages ({per_message:,.0f} µs a message), "
          f"{total:,} samples holding the GIL")
    print(f"  {'part':40s} {'µs/message':>10s} {'share':>6s}")
    for part, count in samples.most_common():
        print(f"  {part:40s} {count / total * per_message:10.0f} {count / total:6.1%}")
    print(f"py-spy's stacks: {out}")


if __name__ == "__main__":
    main()

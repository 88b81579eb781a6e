"""Memory over a 1,000,000-recipient campaign: ``python -m bench stack --million``.

Not run by default: it takes minutes. ``postroom dev`` sends the campaign (a
CSV upload through ``POST /api/campaigns``) to postfix's ``smtp-sink``; every
second the RSS of every process under ``postroom dev`` is read from ``/proc``
(see :mod:`bench.processes`). Printed: the web (gunicorn) processes' peak RSS —
the largest sample and the kernel's own high-water mark (``VmHWM``) — against
the 250 MB goal, and each worker process's RSS at its start (the first sample
after the first messages were sent) and at the end, against the goal of
staying flat within 50 MB.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from bench.campaign_run import CAMPAIGN_FIELDS, FINAL, write_campaign_csv
from bench.processes import MemorySampler, ProcessMemory
from bench.report import rate, verdict
from bench.servers import redis_server, smtp_sink
from bench.stack import postroom_dev

MIB = 1024
WEB_GOAL_MIB = 250
WORKER_DRIFT_GOAL_MIB = 50


def high_water_kib(pid: int) -> int | None:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1])
    except (FileNotFoundError, ProcessLookupError):
        return None
    return None


def scenario_million(workdir: Path, args: argparse.Namespace) -> None:
    n = args.million_recipients
    print(f"\n[million] {n:,} personalised ~2 KB messages to smtp-sink; RSS of every "
          "process under postroom dev, sampled every second from /proc")
    csv_path = write_campaign_csv(workdir / "million.csv", n)
    with redis_server() as redis_url, smtp_sink() as port, \
            postroom_dev(workdir / "million", redis_url, port) as stack:
        stack.wait_for_worker()
        sampler = MemorySampler(stack.process.pid).start()
        wall = time.time()
        started = time.monotonic()
        accepted = stack.create_campaign_from_csv(csv_path, CAMPAIGN_FIELDS)
        print(f"  POST /api/campaigns ({csv_path.stat().st_size / 2**20:.0f} MiB CSV) took "
              f"{time.monotonic() - started:.1f} s: {accepted['total']:,} recipients")
        web_hwm: dict[int, int] = {}
        campaign = stack.campaign(accepted["id"])
        while campaign["status"] not in FINAL:
            if time.monotonic() - started > args.timeout:
                print(f"  gave up after {args.timeout:.0f} s: {campaign['counts']}")
                break
            if campaign["counts"].get("sent", 0) > 0:
                sampler.mark_start()
            for process in sampler.of_role("web"):
                if (kib := high_water_kib(process.pid)) is not None:
                    web_hwm[process.pid] = kib
            time.sleep(1.0)
            campaign = stack.campaign(accepted["id"])
        sampler.stop()
        finished, sent = campaign.get("finished_at"), campaign["counts"].get("sent", 0)
        if campaign["status"] == "completed" and finished:
            print(f"  campaign completed: {rate(sent, finished - wall)} ({campaign['counts']})")
    report(sampler, web_hwm)


def _mib(kib: int | None) -> str:
    return "-" if kib is None else f"{kib / MIB:7.1f} MiB"


def report(sampler: MemorySampler, web_hwm: dict[int, int]) -> None:
    print(f"  {sampler.samples} samples of {len(sampler.processes)} processes")
    web = sampler.of_role("web")
    for process in web:
        print(f"  web    pid {process.pid:>7}: peak sample {_mib(process.peak_kib)}, "
              f"VmHWM {_mib(web_hwm.get(process.pid))}, last {_mib(process.last_kib)}")
    if web:
        peak = max(max(p.peak_kib, web_hwm.get(p.pid, 0)) for p in web)
        print(f"  web peak RSS {peak / MIB:.1f} MiB   goal < {WEB_GOAL_MIB} MB: "
              f"{verdict(peak / MIB < WEB_GOAL_MIB * 1e6 / 2**20)}")
    workers: list[ProcessMemory] = sampler.of_role("worker")
    drifts = []
    for process in workers:
        drift = None if process.start_kib is None else process.last_kib - process.start_kib
        if drift is not None:
            drifts.append(drift)
        print(f"  worker pid {process.pid:>7}: start {_mib(process.start_kib)}, end "
              f"{_mib(process.last_kib)}, growth {_mib(drift)}, peak {_mib(process.peak_kib)}"
              f"  ({process.command[:60]})")
    if drifts:
        worst = max(drifts) / MIB
        print(f"  largest worker growth {worst:.1f} MiB   goal flat within "
              f"{WORKER_DRIFT_GOAL_MIB} MB: "
              f"{verdict(worst <= WORKER_DRIFT_GOAL_MIB * 1e6 / 2**20)}")
    for other in ("beat", "flower"):
        for process in sampler.of_role(other):
            print(f"  {other:6} pid {process.pid:>7}: first {_mib(process.first_kib)}, "
                  f"last {_mib(process.last_kib)}")

"""``postroom dev``'s own output: the children's start-up output in ``var/startup.log``,
the banner last (and in ``var/banner.txt``, for ``--show``), a line per batch instead of
one per recipient, no Celery line per task; ``--verbose`` and ``DELIVERY_LOG_LEVEL``
bring the lines back. ``postroom dev`` runs as a subprocess, as in test_dev_e2e."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.cli.e2e.test_dev_e2e import (
    POSTROOM,
    READY_LINE,
    DevRun,
    clean_environ,
    descendants,
    post_and_deliver,
    start_dev,
)

pytestmark = pytest.mark.e2e

BANNER_END = r"Try it:"  # the banner's last line
PER_RECIPIENT = re.compile(r"message \S+ \S+: sent to example\.com, smtp 250")
PER_TASK = re.compile(r"Task postroom\.deliver_message\[[^\]]+\] received")


@pytest.fixture
def dev(tmp_path: Path) -> Iterator[Callable[..., DevRun]]:
    """Start ``postroom dev`` with *extra* arguments and *environ* added to a clean
    environment; wait until its banner is out."""
    runs: list[DevRun] = []

    def start(*extra: str, **environ: str) -> DevRun:
        run = start_dev(tmp_path, *extra, environ=clean_environ() | environ)
        runs.append(run)
        run.wait_for(BANNER_END)
        run.token = run.wait_for(r"API token\s+(\S+)").group(1)
        return run

    yield start
    for run in runs:
        if run.process.poll() is None:  # the test failed before stopping it
            for pid, sid in descendants(run.process.pid).items():
                if pid == sid:
                    os.killpg(pid, signal.SIGKILL)
            run.process.kill()
            run.process.wait(10)


def show(workdir: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(POSTROOM), "dev", "--show"], cwd=workdir, env=clean_environ(),
                          stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=30)


def send_campaign(run: DevRun, emails: list[str]) -> str:
    status, accepted = run.api("POST", "/api/campaigns", {
        "name": "Quiet", "subject": "Hello {{ name }}", "body": "Hi {{ name }}",
        "recipients": [{"email": email, "name": email.split("@")[0]} for email in emails]})
    assert (status, accepted["total"]) == (202, len(emails)), accepted
    campaign_id = str(accepted["id"])
    deadline = time.monotonic() + 30
    shown: dict[str, object] = {}
    while time.monotonic() < deadline:
        _, shown = run.api("GET", f"/api/campaigns/{campaign_id}")
        if shown["status"] == "completed":
            return campaign_id
        time.sleep(0.2)
    pytest.fail(f"campaign not completed in 30 s: {shown}\n{run.output()[-3000:]}")


def test_dev_is_quiet_ends_with_its_banner_and_shows_it_again(
        dev: Callable[..., DevRun]) -> None:
    run = dev()
    var = run.workdir / "var"
    banner = (var / "banner.txt").read_text().splitlines()
    assert banner[0] == "Postroom is running. Ctrl-C stops every process."
    assert f"  API token    {run.token}" in banner
    assert (var / "banner.txt").stat().st_mode & 0o077 == 0  # it holds passwords

    lines = run.output().splitlines()
    start = lines.index(banner[0])
    assert lines[start:start + len(banner)] == banner
    before = lines[:start]
    assert all(line.startswith("postroom dev: ") for line in before), before
    assert str(var / "banner.txt") in before[0]  # named at the top
    startup_log = (var / "startup.log").read_text()
    assert "Listening at" in startup_log and "web    |" in startup_log

    shown = show(run.workdir)
    assert (shown.returncode, shown.stdout.splitlines()) == (0, banner), shown.stderr

    campaign_id = send_campaign(run, ["ada@example.com", "bob@example.com", "eve@example.com"])
    run.wait_for(rf"campaign {campaign_id} batch 0-2: 3 sent, 0 deferred, 0 failed "
                 rf"in \d+\.\d{{3}} s \(1 session\(s\) opened, \d+ kept one\(s\) used\)")
    post_and_deliver(run, "Quiet message")
    run.wait_for(r"message \S+: 2 sent, 0 deferred, 0 failed in \d+\.\d{3} s")
    output = run.output()
    assert not PER_RECIPIENT.search(output) and "sent to example.com" not in output
    assert not re.search(r"Task postroom\.\S+ (received|succeeded)", output), output
    assert not PER_TASK.search(output)
    assert "[tasks]" not in output and "Listening at" not in output  # no start-up chatter

    assert run.stop(signal.SIGINT) == 0
    assert not (var / "banner.txt").exists() and not (var / "dev.pid").exists()
    gone = show(run.workdir)
    assert gone.returncode == 1
    assert gone.stderr.strip() == (
        f"postroom dev: no postroom dev is running with --var-dir {var.resolve()}")


@pytest.mark.parametrize(("extra", "environ", "task_lines"), [
    (["--verbose"], {}, True),
    ([], {"DELIVERY_LOG_LEVEL": "INFO"}, False),
], ids=["verbose", "DELIVERY_LOG_LEVEL"])
def test_per_recipient_lines_come_back_when_asked_for(
        dev: Callable[..., DevRun], extra: list[str], environ: dict[str, str],
        task_lines: bool) -> None:
    run = dev(*extra, **environ)
    post_and_deliver(run, "Loud message")
    run.wait_for(r"message \S+: 2 sent, 0 deferred, 0 failed in")
    output = run.output()
    assert len(PER_RECIPIENT.findall(output)) == 2, output[-3000:]  # Ada and Eve
    assert bool(PER_TASK.search(output)) is task_lines
    assert ("Listening at" in output) is task_lines  # --verbose: the start-up output too
    if task_lines:
        assert not (run.workdir / "var" / "startup.log").exists()
    else:
        lines = output.splitlines()
        assert all(line.startswith("postroom dev: ")
                   for line in lines[:lines.index(READY_LINE + ". Ctrl-C stops every process.")])
    assert run.stop(signal.SIGTERM) == 0

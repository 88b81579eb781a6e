"""Worker hosts: real ``celery -A worker worker`` processes inside a host's namespace.

Every process runs as ``ip netns exec NS unshare --uts --pid --fork --mount-proc sh -c
'hostname X; exec celery ...'``: its own hostname, and its own PID namespace in
which celery is PID 1, as in a container. Two hosts given the same hostname look
alike in every way a process can see.
"""

from __future__ import annotations

import ctypes
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from tests.delivery.e2e.multihost.network import HostLink, Network, kill_namespace, namespace_pids
from tests.support.paths import ROOT

STARTUP_TIMEOUT = 90.0
CELERY = [sys.executable, "-m", "celery", "-A", "worker"]
LANE_QUEUES = "otp,mail,events"


def die_with_parent() -> None:
    """In a child before exec: be killed when the process that started it exits, so a
    test run killed outright leaves nothing running on the bridge (``PR_SET_PDEATHSIG``)."""
    ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)


def shell_quote(words: list[str]) -> str:
    return " ".join("'" + word.replace("'", "'\\''") + "'" for word in words)


@dataclass
class WorkerHost:
    """One host: a namespace, a hostname, and the worker processes started in it."""

    network: Network
    link: HostLink
    hostname: str
    environment: dict[str, str]
    logs_dir: Path
    processes: list[subprocess.Popen[bytes]] = field(default_factory=list)
    logs: list[Path] = field(default_factory=list)

    @property
    def name(self) -> str:
        return self.link.name

    @property
    def address(self) -> str:
        return self.link.address

    def start_lane_worker(self, concurrency: int = 2) -> Path:
        """``-Q otp,mail,events`` (prefork): OTP, single messages, webhooks, the reconciler."""
        return self.start_worker("lane", LANE_QUEUES, "prefork", concurrency)

    def start_bulk_worker(self, threads: int = 4) -> Path:
        """``-Q bulk --pool threads``: campaign batches, one SMTP session per thread."""
        return self.start_worker("bulk", "bulk", "threads", threads)

    def start_worker(self, role: str, queues: str, pool: str, concurrency: int) -> Path:
        """Start one worker process (not waiting for it: see :meth:`wait_ready`)."""
        log_path = self.logs_dir / f"{self.name}-{role}{len(self.logs) + 1}.log"
        command = [*CELERY, "worker", "-Q", queues, "--pool", pool, "-c", str(concurrency),
                   "-n", f"{role}@%h", "-l", "INFO",
                   "--without-gossip", "--without-mingle", "--without-heartbeat"]
        script = f"hostname {self.hostname} && exec {shell_quote(command)}"
        with log_path.open("wb") as log_file:
            process = subprocess.Popen(
                ["ip", "netns", "exec", self.link.namespace,
                 "unshare", "--uts", "--pid", "--fork", "--kill-child", "--mount-proc",
                 "sh", "-c", script],
                cwd=ROOT, env=self.environment, stdout=log_file, stderr=subprocess.STDOUT,
                start_new_session=True, preexec_fn=die_with_parent)
        self.processes.append(process)
        self.logs.append(log_path)
        return log_path

    def wait_ready(self, deadline: float) -> None:
        """Until every worker started here has logged `` ready.``."""
        while not all(" ready." in path.read_text(errors="replace") for path in self.logs):
            for process, path in zip(self.processes, self.logs, strict=True):
                if process.poll() is not None:
                    raise RuntimeError(f"worker on {self.name} exited:\n"
                                       f"{path.read_text(errors='replace')[-3000:]}")
            if time.monotonic() > deadline:
                raise RuntimeError(f"workers on {self.name} did not start in time: {self.logs}")
            time.sleep(0.1)

    # -- faults -------------------------------------------------------------------------------

    def cut_off(self) -> None:
        """Every packet to and from this host dropped; its processes keep running."""
        self.network.cut_off(self.name)

    def reconnect(self) -> None:
        self.network.reconnect(self.name)

    def block_port(self, port: int) -> None:
        """Drop this host's traffic to and from *port* on the bridge (Redis, say)."""
        self.network.block(self.name, port)

    def unblock(self) -> None:
        self.network.unblock(self.name)

    def kill(self) -> int:
        """SIGKILL every process in the namespace at once, as a host losing power."""
        killed = kill_namespace(self.link.namespace)
        self._reap(10.0)
        return killed

    def stop(self) -> None:
        """SIGTERM every process, then SIGKILL what is left after 15 s."""
        kill_namespace(self.link.namespace, signal.SIGTERM)
        if not self._reap(15.0):
            self.kill()

    def _reap(self, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for process in self.processes:
                process.poll()
            if not namespace_pids(self.link.namespace):
                for process in self.processes:
                    try:
                        process.wait(timeout=max(0.1, deadline - time.monotonic()))
                    except subprocess.TimeoutExpired:
                        os.killpg(process.pid, signal.SIGKILL)
                return True
            time.sleep(0.05)
        return False

    def log_text(self) -> str:
        return "\n".join(f"--- {path.name}\n{path.read_text(errors='replace')[-4000:]}"
                         for path in self.logs)

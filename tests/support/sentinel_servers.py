"""A Redis primary, its replica and three Sentinels watching them, from Debian's
``redis-server`` and ``redis-sentinel`` (``make sentinel-tool`` installs them), each on
a free loopback port, with short failure detection so a failover takes seconds."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import time
from pathlib import Path

import redis

from web.testing import free_port

MASTER = "postroom"
DOWN_AFTER_MS = 1000  # a primary silent this long is subjectively down
FAILOVER_TIMEOUT_MS = 5000
START_TIMEOUT = 15.0


def missing_binaries() -> list[str]:
    return [name for name in ("redis-server", "redis-sentinel") if shutil.which(name) is None]


def _wait(condition: object, timeout: float, failure: str) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            if condition():  # type: ignore[operator]
                return
        except (redis.RedisError, OSError):
            pass
        if time.monotonic() > deadline:
            raise RuntimeError(failure)
        time.sleep(0.05)


class SentinelServers:
    """Primary, replica and three Sentinels; :meth:`kill_primary` for a failover."""

    def __init__(self, workdir: Path, *, password: str | None = None,
                 sentinel_password: str | None = None) -> None:
        self.workdir = workdir
        self.password = password  # the primary's and the replica's
        self.sentinel_password = sentinel_password  # the Sentinels' own
        self.primary_port = free_port()
        self.replica_port = free_port()
        self.sentinel_ports = [free_port() for _ in range(3)]
        self.processes: dict[str, subprocess.Popen[bytes]] = {}

    @property
    def url(self) -> str:
        hosts = ",".join(f"127.0.0.1:{port}" for port in self.sentinel_ports)
        auth = f":{self.password}@" if self.password else ""
        return f"sentinel://{auth}{hosts}/{MASTER}/0"

    def _server(self, name: str, port: int, *extra: str) -> None:
        data = self.workdir / name
        data.mkdir(parents=True, exist_ok=True)
        log = (self.workdir / f"{name}.log").open("wb")
        if self.password:
            extra += ("--requirepass", self.password, "--masterauth", self.password)
        self.processes[name] = subprocess.Popen(
            ["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--save", "",
             "--appendonly", "no", "--dir", str(data), "--protected-mode", "no", *extra],
            stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        log.close()

    def _sentinel(self, n: int, port: int) -> None:
        conf = self.workdir / f"sentinel{n}.conf"  # Sentinel rewrites it: one file each
        conf.write_text(
            f"port {port}\nbind 127.0.0.1\nprotected-mode no\ndir {self.workdir}\n"
            f"sentinel monitor {MASTER} 127.0.0.1 {self.primary_port} 2\n"
            f"sentinel down-after-milliseconds {MASTER} {DOWN_AFTER_MS}\n"
            f"sentinel failover-timeout {MASTER} {FAILOVER_TIMEOUT_MS}\n"
            f"sentinel parallel-syncs {MASTER} 1\n"
            + (f"sentinel auth-pass {MASTER} {self.password}\n" if self.password else "")
            + (f"requirepass {self.sentinel_password}\n"
               f"sentinel sentinel-pass {self.sentinel_password}\n"
               if self.sentinel_password else ""))
        log = (self.workdir / f"sentinel{n}.log").open("wb")
        self.processes[f"sentinel{n}"] = subprocess.Popen(
            ["redis-sentinel", str(conf)], stdout=log, stderr=subprocess.STDOUT,
            start_new_session=True)
        log.close()

    def start(self) -> SentinelServers:
        self._server("primary", self.primary_port)
        self._server("replica", self.replica_port,
                     "--replicaof", "127.0.0.1", str(self.primary_port))
        replica = redis.Redis(port=self.replica_port, socket_timeout=1, password=self.password)
        try:
            _wait(lambda: replica.info("replication").get("master_link_status") == "up",
                  START_TIMEOUT, "the replica did not sync with the primary")
        finally:
            replica.close()
        for n, port in enumerate(self.sentinel_ports, 1):
            self._sentinel(n, port)
        for port in self.sentinel_ports:  # each knows the replica and the two others
            client = self._sentinel_client(port, 1.0)
            try:
                _wait(lambda c=client: (
                    c.sentinel_master(MASTER)["num-other-sentinels"] == 2
                    and len(c.sentinel_slaves(MASTER)) == 1), START_TIMEOUT,
                      f"Sentinel on {port} did not find its peers and the replica")
            finally:
                client.close()
        return self

    def master_port(self) -> int | None:
        """The primary's port as the first Sentinel that answers sees it."""
        for port in self.sentinel_ports:
            client = self._sentinel_client(port, 0.5)
            try:
                address = client.sentinel_get_master_addr_by_name(MASTER)
                return int(address[1]) if address else None
            except (redis.RedisError, OSError):
                continue
            finally:
                client.close()
        return None

    def _sentinel_client(self, port: int, timeout: float) -> redis.Redis:
        return redis.Redis(port=port, socket_timeout=timeout, socket_connect_timeout=timeout,
                           password=self.sentinel_password)

    def kill_primary(self) -> None:
        """``kill -9``: no goodbye to the replica, no last write flushed."""
        process = self.processes["primary"]
        os.kill(process.pid, signal.SIGKILL)
        process.wait(10)

    def stop(self) -> None:
        for process in self.processes.values():
            if process.poll() is None:
                process.terminate()
        for process in self.processes.values():
            try:
                process.wait(10)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(10)

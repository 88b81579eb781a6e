"""The whole service as ``make run`` starts it, for the whole-stack benchmark.

:func:`postroom_dev` runs ``.venv/bin/postroom dev`` as a subprocess on free
ports, with its ``--var-dir`` in a temporary directory, ``REDIS_URL`` at a
private Redis and ``MAIL_SERVER``/``MAIL_PORT`` at the benchmark's sink, waits
for its ``Postroom is running.`` line and stops it with SIGTERM (it stops every
process it started). Whatever workers ``postroom dev`` starts are what gets
measured; the benchmark starts none of its own. Its output (every child's log)
goes to a file, shown in part when something fails.
"""

from __future__ import annotations

import http.client
import json
import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench.processes import descendants, session_id
from web.testing import free_port

POSTROOM = Path(sys.executable).with_name("postroom")
READY_LINE = "Postroom is running."
READY_TIMEOUT = 120.0
STOP_TIMEOUT = 60.0
TOKEN = "bench-token"
# Variables of the caller's environment that would change what is measured.
SCRUBBED_PREFIXES = ("MAIL_", "CELERY_", "FLOWER_", "OTP_", "CAMPAIGN_", "DELIVERY_", "REDIS_",
                     "API_", "ADMIN_", "SECRET_", "PUBLIC_", "POSTROOM_", "GUNICORN_")


class StackFailed(SystemExit):
    """``postroom dev`` did not start, or an API call failed."""


@dataclass
class Response:
    status: int
    body: dict[str, Any]


@dataclass
class Stack:
    """A running ``postroom dev``: its process, ports, log and the API token."""

    process: subprocess.Popen[bytes]
    log_path: Path
    port: int
    flower_port: int
    redis_url: str

    def log_tail(self, chars: int = 4000) -> str:
        return self.log_path.read_text(errors="replace")[-chars:]

    def request(self, method: str, path: str, body: bytes | None = None,
                headers: dict[str, str] | None = None, timeout: float = 30.0) -> Response:
        """One HTTP request on a fresh connection (gunicorn's sync workers close each)."""
        connection = http.client.HTTPConnection("127.0.0.1", self.port, timeout=timeout)
        try:
            connection.request(method, path, body=body, headers={
                "Authorization": f"Bearer {TOKEN}", "Accept": "application/json",
                **(headers or {})})
            response = connection.getresponse()
            raw = response.read()
        finally:
            connection.close()
        try:
            parsed = json.loads(raw) if raw else {}
        except ValueError:
            parsed = {"raw": raw[:200].decode("utf-8", "replace")}
        return Response(response.status, parsed if isinstance(parsed, dict) else {})

    def post_json(self, path: str, payload: object, timeout: float = 30.0) -> Response:
        return self.request("POST", path, json.dumps(payload).encode(),
                            {"Content-Type": "application/json"}, timeout)

    def campaign(self, campaign_id: str) -> dict[str, Any]:
        response = self.request("GET", f"/api/campaigns/{campaign_id}")
        if response.status != 200:
            raise StackFailed(f"GET /api/campaigns/{campaign_id}: {response.status} "
                              f"{response.body}")
        return response.body

    def wait_for_worker(self, timeout: float = 60.0) -> float:
        """Send one message and wait until a worker has tried it; seconds it took.

        ``Postroom is running.`` means web and Flower answer; a worker may still be
        starting. A message that is sent (or deferred, with the relay down) shows
        that one is consuming, and nothing timed afterwards pays for its start.
        """
        started = time.monotonic()
        accepted = self.post_json("/api/messages", {
            "to": ["warm-up@example.org"], "subject": "warm-up", "body": "warm-up"})
        if accepted.status != 202:
            raise StackFailed(f"POST /api/messages: {accepted.status} {accepted.body}")
        path = f"/api/messages/{accepted.body['id']}"
        while time.monotonic() - started < timeout:
            shown = self.request("GET", path).body
            # sent, or deferred with the relay down (which uses no attempt)
            if any(r.get("attempts", 0) > 0 or r.get("status") in {"sent", "deferred", "failed"}
                   for r in shown.get("recipients", [])):
                return time.monotonic() - started
            time.sleep(0.1)
        raise StackFailed(f"no worker tried a message within {timeout:.0f} s; postroom dev's "
                          f"output ends:\n{self.log_tail()}")

    def create_campaign_from_csv(self, csv_path: Path, fields: dict[str, str],
                                 timeout: float = 3600.0) -> dict[str, Any]:
        """``POST /api/campaigns`` as multipart with *csv_path* as the ``file`` field."""
        boundary = f"bench-{uuid.uuid4().hex}"
        parts = [f"--{boundary}\r\nContent-Disposition: form-data; name=\"{name}\"\r\n\r\n"
                 f"{value}\r\n" for name, value in fields.items()]
        head = ("".join(parts) + f"--{boundary}\r\nContent-Disposition: form-data; "
                f"name=\"file\"; filename=\"{csv_path.name}\"\r\n"
                "Content-Type: text/csv\r\n\r\n").encode()
        tail = f"\r\n--{boundary}--\r\n".encode()
        connection = http.client.HTTPConnection("127.0.0.1", self.port, timeout=timeout)
        try:
            connection.putrequest("POST", "/api/campaigns")
            for name, value in (("Authorization", f"Bearer {TOKEN}"),
                                ("Accept", "application/json"),
                                ("Content-Type", f"multipart/form-data; boundary={boundary}"),
                                ("Content-Length",
                                 str(len(head) + csv_path.stat().st_size + len(tail)))):
                connection.putheader(name, value)
            connection.endheaders()
            connection.send(head)
            with csv_path.open("rb") as handle:
                while chunk := handle.read(256 * 1024):
                    connection.send(chunk)
            connection.send(tail)
            response = connection.getresponse()
            raw = response.read()
        finally:
            connection.close()
        if response.status != 202:
            raise StackFailed(f"POST /api/campaigns: {response.status} {raw[:500]!r}")
        accepted: dict[str, Any] = json.loads(raw)
        return accepted


def stack_environ(redis_url: str, mail_port: int, extra: dict[str, str]) -> dict[str, str]:
    """The caller's environment without Postroom's settings, then the benchmark's."""
    env = {name: value for name, value in os.environ.items()
           if not name.startswith(SCRUBBED_PREFIXES)}
    env.update(REDIS_URL=redis_url, MAIL_SERVER="127.0.0.1", MAIL_PORT=str(mail_port),
               API_TOKENS=TOKEN, SECRET_KEY="bench-secret-key-" + uuid.uuid4().hex,
               POSTROOM_ENV="development", PYTHONUNBUFFERED="1",
               # the production log lines (postroom dev quiets them by default), so the
               # figures stay comparable with a deployment's and with earlier runs
               DELIVERY_LOG_LEVEL="INFO", TASK_LOG_LEVEL="INFO")
    env.update(extra)
    return env


@contextmanager
def postroom_dev(workdir: Path, redis_url: str, mail_port: int,
                 extra_env: dict[str, str] | None = None) -> Iterator[Stack]:
    """``postroom dev`` against *redis_url* and the SMTP server on *mail_port*."""
    workdir.mkdir(parents=True, exist_ok=True)
    port, flower_port = free_port(), free_port()
    while flower_port == port:
        flower_port = free_port()
    log_path = workdir / "postroom-dev.log"
    env = stack_environ(redis_url, mail_port, extra_env or {})
    with log_path.open("wb") as log:
        process = subprocess.Popen(
            [str(POSTROOM), "dev", "--port", str(port), "--flower-port", str(flower_port),
             "--bounce-port", str(free_port()), "--var-dir", str(workdir / "var")],
            cwd=workdir, env=env, stdin=subprocess.DEVNULL, stdout=log,
            stderr=subprocess.STDOUT)
    stack = Stack(process, log_path, port, flower_port, redis_url)
    try:
        _wait_until_ready(stack)
        yield stack
    finally:
        _stop(stack)


def _wait_until_ready(stack: Stack) -> None:
    deadline = time.monotonic() + READY_TIMEOUT
    while READY_LINE not in stack.log_path.read_text(errors="replace"):
        if stack.process.poll() is not None or time.monotonic() > deadline:
            raise StackFailed(f"postroom dev did not print {READY_LINE!r} "
                              f"(exit code {stack.process.poll()}); its output ends:\n"
                              f"{stack.log_tail()}")
        time.sleep(0.1)


def _stop(stack: Stack) -> None:
    if stack.process.poll() is not None:
        return
    children = descendants(stack.process.pid)  # each runs in a session of its own
    stack.process.send_signal(signal.SIGTERM)
    try:
        stack.process.wait(STOP_TIMEOUT)
    except subprocess.TimeoutExpired:
        print(f"  postroom dev (pid {stack.process.pid}) did not stop within "
              f"{STOP_TIMEOUT:.0f} s of SIGTERM; killing it and its process groups")
        for pid in children:
            if session_id(pid) == pid:
                try:
                    os.killpg(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
        stack.process.kill()
        stack.process.wait(10)

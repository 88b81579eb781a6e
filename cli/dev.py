"""``postroom dev``: the whole service on one machine, with nothing installed but Python.

It embeds what is not configured — Redis when ``REDIS_URL`` is unset and none
answers on 127.0.0.1, an SMTP capture server when ``MAIL_SERVER`` is unset —
then runs web, workers, beat and Flower, prints where they are and how to log
in, restarts a child that dies, and stops them all on Ctrl-C or SIGTERM.

Workers run in the shape delivery needs: one worker for the ``otp`` and
``mail`` queues, so codes and single messages never wait behind a campaign,
one for the ``events`` queue, so a slow webhook receiver never holds a thread that
sends codes, and one ``bulk`` worker process per core, each holding many SMTP
sessions in threads (a relay's latency, not the CPU, bounds a session).
"""

from __future__ import annotations

import json
import os
import secrets
import signal
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType
from typing import NoReturn

import click

from cli.embedded import CaptureServer, port_is_free, redis_answers, redis_command
from cli.running import RunningDev
from cli.supervisor import Child, GaveUp, Supervisor, say
from tasks.shared.connection import redacted
from tasks.vocabulary import Queue
from web import config as settings
from web.config import ConfigError
from web.token_scopes import token_of

READY_TIMEOUT = 60.0
DEV_SENDER = "Postroom <postroom@localhost>"
DEV_RETURN_PATH = "bounces@bounces.localhost"
# codes and single messages: never behind bulk or webhook calls
LANE_QUEUES = f"{Queue.OTP},{Queue.MAIL}"
EVENTS_QUEUE = Queue.EVENTS  # webhook calls: a slow receiver holds only this worker's threads
# The lane and events workers, beat and Flower yield the CPU to web (and to the listeners
# and the embedded servers) when the machine is busy: a request is answered first, their
# work uses what is left (WORKER_NICENESS, 0 to 19; 0 runs them all alike). Bulk workers
# keep their share: each of their sessions waits on the relay, and a worker scheduled late
# stretches every round trip (10-15% fewer messages a second at 20 ms when they yield too).
DEFAULT_WORKER_NICENESS = 10
BACKGROUND = ("worker", "events", "beat", "flower")
DEFAULT_BULK_THREADS = 16  # SMTP sessions per bulk process when MAIL_MAX_CONNECTIONS is unset


def fail(message: str, code: int = 1) -> NoReturn:
    """Stop with one line on stderr."""
    say(f"postroom dev: {message}", err=True)
    sys.exit(code)


def persisted_secret(path: Path, make: Callable[[], str]) -> str:
    """The value kept in *path*, made and kept (mode 0600) on first use."""
    if path.is_file():
        value = path.read_text().strip()
        if value:
            return value
    value = make()
    descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(descriptor, "w") as handle:
        handle.write(value + "\n")
    return value


@dataclass
class Plan:
    """What ``postroom dev`` will run, decided before anything starts."""

    host: str
    port: int
    flower_port: int
    smtp_port: int
    redis_port: int
    var_dir: Path
    bounce_port: int = 2525
    submission_port: int = 2587
    verbose: bool = False  # every child's start-up output, Celery's task lines, each recipient
    env: dict[str, str] = field(default_factory=dict)
    embed_redis: bool = False
    embed_smtp: bool = False
    api_token: str = ""
    flower_auth: str = ""
    worker_niceness: int = DEFAULT_WORKER_NICENESS  # WORKER_NICENESS

    @property
    def public_host(self) -> str:
        return "127.0.0.1" if self.host in {"0.0.0.0", "", "::"} else self.host

    def url(self, port: int, path: str = "/") -> str:
        return f"http://{self.public_host}:{port}{path}"


def make_plan(environ: dict[str, str], plan: Plan) -> Plan:
    """Decide what to embed and build the children's environment; check it all."""
    try:
        settings.from_environ(environ)  # the operator's own values first, as given
    except ConfigError as err:
        fail(f"configuration error: {err}", 2)

    var = plan.var_dir
    env = dict(environ)
    env.setdefault("POSTROOM_ENV", "development")
    env.setdefault("PUBLIC_URL", plan.url(plan.port, ""))  # links in mail, never the Host header
    env.setdefault("FLOWER_URL", plan.url(plan.flower_port))  # linked from the home page
    env["PYTHONUNBUFFERED"] = "1"
    # quiet by default: a summary line per batch instead of one per recipient, and none of
    # Celery's "received"/"succeeded" lines per task (--verbose or the variables: all back)
    env.setdefault("DELIVERY_LOG_LEVEL", "INFO" if plan.verbose else "DEBUG")
    env.setdefault("TASK_LOG_LEVEL", "INFO" if plan.verbose else "WARNING")
    if not env.get("SECRET_KEY"):  # kept, so codes and sessions survive a restart
        env["SECRET_KEY"] = persisted_secret(var / "secret_key", lambda: secrets.token_hex(32))
    tokens = [t.strip() for t in env.get("API_TOKENS", "").split(",") if t.strip()]
    if not tokens:
        tokens = [persisted_secret(var / "api_token", lambda: secrets.token_urlsafe(24))]
        env["API_TOKENS"] = tokens[0]
    sending = [t for t in tokens if ":" not in t or "send" in t.rpartition(":")[2]]
    plan.api_token = token_of((sending or tokens)[0])  # one that may send, without its scopes
    if not env.get("FLOWER_BASIC_AUTH"):
        env["FLOWER_BASIC_AUTH"] = persisted_secret(
            var / "flower_auth", lambda: f"admin:{secrets.token_urlsafe(12)}")
    plan.flower_auth = env["FLOWER_BASIC_AUTH"].split(",")[0]
    if not (env.get("ADMIN_USERNAME") and env.get("ADMIN_PASSWORD")):
        admin = persisted_secret(var / "admin_auth", lambda: f"admin:{secrets.token_urlsafe(12)}")
        env["ADMIN_USERNAME"], _, env["ADMIN_PASSWORD"] = admin.partition(":")

    if not env.get("REDIS_URL"):
        plan.embed_redis = not redis_answers(plan.redis_port)
        env["REDIS_URL"] = f"redis://127.0.0.1:{plan.redis_port}/0"
    if not env.get("MAIL_SERVER"):
        plan.embed_smtp = True
        env.update(MAIL_SERVER="127.0.0.1", MAIL_PORT=str(plan.smtp_port),
                   MAIL_USE_TLS="false", MAIL_USE_SSL="false",
                   OUTBOX_DIR=str((var / "outbox").resolve()))
        env.pop("MAIL_USERNAME", None)  # the capture server takes mail without a login
        env.pop("MAIL_PASSWORD", None)
    env.setdefault("MAIL_DEFAULT_SENDER", DEV_SENDER)
    env.setdefault("MAIL_RETURN_PATH", DEV_RETURN_PATH)  # bounces come back to the listener
    plan.env = env
    plan.worker_niceness = worker_niceness(env)

    try:
        config = settings.from_environ(env)
        config["CELERY_BROKER_URL"] = config["CELERY_BROKER_URL"] or config["REDIS_URL"]
        settings.check(config)
    except ConfigError as err:
        fail(f"configuration error: {err}", 2)
    return plan


def worker_niceness(env: dict[str, str]) -> int:
    """``WORKER_NICENESS``: the nice value of the lane and events workers, beat and Flower
    (10 when unset)."""
    raw = env.get("WORKER_NICENESS", "").strip()
    if not raw:
        return DEFAULT_WORKER_NICENESS
    try:
        value = int(raw)
    except ValueError:
        value = -1
    if not 0 <= value <= 19:
        fail(f"configuration error: WORKER_NICENESS must be a whole number from 0 to 19, "
             f"not {raw!r}", 2)
    return value


def niceness_of(plan: Plan, name: str) -> int:
    """The nice value *name*'s process starts with: background work yields to web."""
    return plan.worker_niceness if name.startswith(BACKGROUND) else 0


def check_ports(plan: Plan) -> None:
    """One clear line, before anything starts, for a port that is taken or used twice."""
    wanted = [("--port", plan.port, plan.host), ("--flower-port", plan.flower_port, plan.host),
              ("--bounce-port", plan.bounce_port, plan.host),
              ("--submission-port", plan.submission_port, plan.host)]
    if plan.embed_smtp:
        wanted.append(("--smtp-port", plan.smtp_port, "127.0.0.1"))
    if plan.embed_redis:
        wanted.append(("--redis-port", plan.redis_port, "127.0.0.1"))
    seen: dict[int, str] = {}
    for option, port, host in wanted:
        if port in seen:
            fail(f"{option} and {seen[port]} are both {port}; give each its own port")
        seen[port] = option
        if not port_is_free(port, host):
            fail(f"port {port} ({option}) is already in use on {host}; "
                 f"choose another with {option}")


def bulk_shape(env: dict[str, str], cores: int | None = None) -> tuple[int, int]:
    """``(processes, threads each)`` for bulk workers: one process per core (composing is
    CPU work), and as many SMTP sessions in flight as ``MAIL_MAX_CONNECTIONS`` allows, or
    ``BULK_CONCURRENCY`` per process (16 when neither is set)."""
    processes = max(1, cores or os.cpu_count() or 1)
    if env.get("BULK_CONCURRENCY"):
        return processes, max(1, int(env["BULK_CONCURRENCY"]))
    limit = env.get("MAIL_MAX_CONNECTIONS")
    if limit:
        return processes, max(1, -(-int(limit) // processes))
    return processes, DEFAULT_BULK_THREADS


def commands(plan: Plan) -> dict[str, list[str]]:
    python = sys.executable
    celery = [python, "-m", "celery", "-A", "worker", *([] if plan.verbose else ["--quiet"])]
    worker = [*celery, "worker", "-E", "--without-gossip", "--without-mingle",
              "--loglevel", "INFO"]
    processes, threads = bulk_shape(plan.env)
    bulk = {f"bulk-{n}" if processes > 1 else "bulk":
            [*worker, "-Q", Queue.BULK, "-P", "threads", "-c", str(threads), "-n", f"bulk{n}@%h"]
            for n in range(1, processes + 1)}
    return {
        "web": [python, "-m", "gunicorn", "-c", "python:web.gunicorn_conf",
                "--bind", f"{plan.host}:{plan.port}", "--workers", "2", "web:create_app()"],
        "worker": [*worker, "-Q", LANE_QUEUES, "-P", "threads", "-c", "8", "-n", "lane@%h"],
        "events": [*worker, "-Q", EVENTS_QUEUE, "-P", "threads", "-c", "8", "-n", "events@%h"],
        **bulk,
        "beat": [*celery, "beat", "--loglevel", "INFO",
                 "--schedule", str(plan.var_dir / "celerybeat-schedule")],
        "flower": [*celery, "flower", f"--address={plan.host}", f"--port={plan.flower_port}",
                   *([] if plan.verbose else ["--logging=warning"])],
        "bounces": [python, "-m", "cli", "bounces", "--host", plan.host,
                    "--port", str(plan.bounce_port)],
        "submit": [python, "-m", "cli", "submission", "--host", plan.host,
                   "--port", str(plan.submission_port)],
    }


def answers_http(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=2):
            return True
    except urllib.error.HTTPError:
        return True  # any HTTP answer (401, 503) means the server is up
    except OSError:
        return False


def wait_for_redis(plan: Plan, child: Child, stopping: threading.Event) -> None:
    deadline = time.monotonic() + 15
    while not redis_answers(plan.redis_port):
        if child.exit_code() is not None:
            raise GaveUp(f"the embedded Redis exited with code {child.exit_code()}")
        if stopping.is_set() or time.monotonic() > deadline:
            raise GaveUp("the embedded Redis did not start within 15 s")
        time.sleep(0.05)


def workers_ready(url: str) -> bool:
    """True once ``/healthz`` at *url* answers and finds a live worker on every queue (or,
    showing no details, does not say)."""
    try:
        with urllib.request.urlopen(url, timeout=2) as response:
            body = response.read()
    except urllib.error.HTTPError as err:
        body = err.read()  # a 503 still says which checks failed
    except OSError:
        return False
    try:
        checks = json.loads(body).get("checks")
    except (ValueError, AttributeError):
        return True
    return not isinstance(checks, dict) or bool(checks.get("workers", {}).get("ok", True))


def wait_until_ready(plan: Plan, supervisor: Supervisor, stopping: threading.Event) -> bool:
    """True once web answers with every queue's workers up and Flower answers HTTP;
    False if asked to stop first."""
    deadline = time.monotonic() + READY_TIMEOUT
    healthz, flower = plan.url(plan.port, "/healthz"), plan.url(plan.flower_port)
    pending: dict[str, Callable[[], bool]] = {
        "web and the workers": lambda: workers_ready(healthz),
        "flower": lambda: answers_http(flower)}
    while pending:
        for name, ready in list(pending.items()):
            if ready():
                del pending[name]
        if stopping.wait(0.2):
            return False
        supervisor.restart_exited()
        if time.monotonic() > deadline:
            raise GaveUp(f"{', '.join(pending)} did not answer within {READY_TIMEOUT:.0f} s")
    return True


def banner(plan: Plan) -> list[str]:
    user, _, password = plan.flower_auth.partition(":")
    redis_note = (f"embedded, data in {plan.var_dir / 'redis'}" if plan.embed_redis
                  else "external")
    lines = [
        "Postroom is running. Ctrl-C stops every process.",
        f"  Web          {plan.url(plan.port)}",
        f"  API          {plan.url(plan.port, '/api/messages')}",
        f"  OpenAPI      {plan.url(plan.port, '/api/openapi.json')}",
        f"  API docs     {plan.url(plan.port, '/api/docs')}  (Swagger UI; Authorize with the "
        "API token)",
        f"  Health       {plan.url(plan.port, '/healthz')}",
        f"  Metrics      {plan.url(plan.port, '/metrics')}",
    ]
    if plan.embed_smtp:
        lines.append(f"  Outbox       {plan.url(plan.port, '/outbox/')}  "
                     f"(captured mail; sign in as {plan.env['ADMIN_USERNAME']}, as for "
                     f"Campaigns; files in {plan.var_dir / 'outbox'})")
        lines.append(f"  SMTP         smtp://127.0.0.1:{plan.smtp_port}  (embedded capture server)")
    else:
        lines.append(f"  SMTP         {plan.env['MAIL_SERVER']}:{plan.env.get('MAIL_PORT', '25')}")
    lines += [
        f"  Verify       {plan.url(plan.port, '/verify')}  (email verification with a code)",
        f"  Campaigns    {plan.url(plan.port, '/campaigns/')}  (user {plan.env['ADMIN_USERNAME']}, "
        f"password {plan.env['ADMIN_PASSWORD']})",
        f"  Flower       {plan.url(plan.flower_port)}  (user {user}, password {password})",
        f"  Bounces      smtp://{plan.public_host}:{plan.bounce_port}  (DSNs and complaints for "
        f"{plan.env['MAIL_RETURN_PATH']})",
        f"  Submission   smtp://{plan.public_host}:{plan.submission_port}  (Flask-Mail apps: "
        "MAIL_PASSWORD is the API token)",
        f"  Redis        {redacted(plan.env['REDIS_URL'])}  ({redis_note})",
        f"  API token    {plan.api_token}",
        "  Try it:      curl -H 'Authorization: Bearer " + plan.api_token + "' "
        "-H 'Content-Type: application/json' "
        "-d '{\"to\": [\"ada@example.com\"], \"subject\": \"Hi\", \"body\": \"Hello\"}' "
        + plan.url(plan.port, "/api/messages"),
    ]
    return lines


def run(plan: Plan) -> int:
    stopping = threading.Event()
    state = RunningDev(plan.var_dir)
    say(f"postroom dev: starting; once everything is up it prints the URLs, logins and "
        f"token for the API last, and keeps them in {state.banner_path} "
        f"(`postroom dev --show` prints them again)")

    def on_signal(signum: int, frame: FrameType | None) -> None:
        stopping.set()

    for signum in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(signum, on_signal)

    supervisor = Supervisor()
    if not plan.verbose:
        say(f"postroom dev: the processes' start-up output goes to {state.startup_log} "
            f"(--verbose shows it here)")
        supervisor.output.hold(state.startup_log)
    capture: CaptureServer | None = None
    redis_child: Child | None = None
    status = 0
    state.started()
    try:
        if plan.embed_redis:
            (plan.var_dir / "redis").mkdir(parents=True, exist_ok=True)
            redis_child = supervisor.start(Child(
                "redis", redis_command(plan.redis_port, (plan.var_dir / "redis").resolve()),
                plan.env))
            wait_for_redis(plan, redis_child, stopping)
        if plan.embed_smtp:
            capture = CaptureServer(plan.var_dir / "outbox", plan.smtp_port).start()
        for name, argv in commands(plan).items():
            if not stopping.is_set():
                supervisor.start(Child(name, argv, plan.env,
                                       niceness=niceness_of(plan, name)))
        if wait_until_ready(plan, supervisor, stopping):
            supervisor.output.release()
            lines = banner(plan)
            state.ready(lines)
            for line in lines:
                say(line)
        while not stopping.wait(0.5):
            supervisor.restart_exited()
    except GaveUp as err:
        if supervisor.output.held is not None:
            supervisor.output.release()
            say(f"postroom dev: the last lines of {state.startup_log}:", err=True)
            for line in state.startup_log.read_text(errors="replace").splitlines()[-20:]:
                say(line, err=True)
        say(f"postroom dev: {err}", err=True)
        status = 1
    finally:
        supervisor.output.release()
        state.stopped()
        say("postroom dev: stopping every process")
        others = [c for c in supervisor.children if c is not redis_child]
        supervisor.stop(first=others)
        if capture is not None:
            capture.stop()
        say("postroom dev: stopped")
    return status


def show_banner(state: RunningDev) -> NoReturn:
    """``--show``: the running instance's banner, or one line saying why there is none."""
    text = state.banner()
    if text is not None:
        click.echo(text, nl=False)
        sys.exit(0)
    if state.pid() is not None:
        fail(f"postroom dev (pid {state.pid()}) is still starting; its banner will be in "
             f"{state.banner_path}")
    fail(f"no postroom dev is running with --var-dir {state.var_dir}")


@click.command()
@click.option("--host", default="127.0.0.1", show_default=True,
              help="Address web and Flower listen on.")
@click.option("--port", type=click.IntRange(1, 65535), default=5000, show_default=True,
              help="Web port.")
@click.option("--flower-port", type=click.IntRange(1, 65535), default=5555, show_default=True,
              help="Flower port.")
@click.option("--smtp-port", type=click.IntRange(1, 65535), default=1025, show_default=True,
              help="Port of the embedded SMTP capture server (when MAIL_SERVER is unset).")
@click.option("--redis-port", type=click.IntRange(1, 65535), default=6379, show_default=True,
              help="Port of the embedded Redis (when REDIS_URL is unset and none answers there).")
@click.option("--bounce-port", type=click.IntRange(1, 65535), default=2525, show_default=True,
              help="Port of the listener for bounces and complaints (MAIL_RETURN_PATH).")
@click.option("--submission-port", type=click.IntRange(1, 65535), default=2587,
              show_default=True, help="Port of the SMTP submission listener (AUTH with the "
              "API token).")
@click.option("--var-dir", type=click.Path(file_okay=False, path_type=Path), default=Path("var"),
              show_default=True, help="Where the embedded servers keep their data.")
@click.option("--verbose", is_flag=True, help="Show every process's start-up output, Celery's "
              "line per task and a line per recipient (DELIVERY_LOG_LEVEL=INFO).")
@click.option("--show", is_flag=True, help="Print the banner (URLs, API token, logins) of the "
              "postroom dev running with this --var-dir, and exit.")
def dev(host: str, port: int, flower_port: int, smtp_port: int, redis_port: int,
        bounce_port: int, submission_port: int, var_dir: Path, verbose: bool,
        show: bool) -> None:
    """Run web, workers, beat, Flower and the bounce and submission listeners, embedding
    Redis and SMTP when not configured."""
    if show:
        show_banner(RunningDev(var_dir.resolve()))
    var_dir.mkdir(parents=True, exist_ok=True)
    plan = make_plan(dict(os.environ), Plan(host, port, flower_port, smtp_port, redis_port,
                                            var_dir.resolve(), bounce_port, submission_port,
                                            verbose))
    check_ports(plan)
    sys.exit(run(plan))

"""Every connection to Redis: the state client, the rate limiter's, the broker's, the results'.

A Redis that vanishes without a reset (a host powered off, a cable pulled, a
partition) must be noticed within seconds, not at TCP's next retransmit minutes
later. Every client built here has:

- a socket timeout (``REDIS_SOCKET_TIMEOUT``): a command whose reply does not
  come raises :class:`redis.TimeoutError`;
- a connect timeout (``REDIS_CONNECT_TIMEOUT``);
- TCP keepalive (``REDIS_KEEPALIVE_IDLE``, ``_INTERVAL``, ``_COUNT``) and, where
  the platform has it, ``TCP_USER_TIMEOUT`` (``REDIS_USER_TIMEOUT``), so the
  kernel drops an idle or unacknowledged connection to a host that went away;
- a health check (``REDIS_HEALTH_CHECK_INTERVAL``): a connection idle for longer
  is PINGed before it is used again (and kombu drops a BRPOP overdue by this).

``REDIS_URL`` names one server (``redis://``, ``rediss://``, ``unix://``) or a
Sentinel group: ``sentinel://[:password@]host1:26379,host2:26379/<master>/<db>``.
The password there is the one of the primary and its replicas;
``REDIS_SENTINEL_PASSWORD`` is the Sentinels' own, when they ask for one. Kombu
and Celery spell a Sentinel group differently (one ``sentinel://`` URL per
Sentinel joined by ``;``, the master name in the transport options):
:func:`broker_settings` and :func:`backend_settings` translate.

No Flask here: the app, the workers, beat and the Celery config all call this
module with the parsed settings (see ``web.config``).
"""

from __future__ import annotations

import socket
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote, unquote

from redis import Redis
from redis.backoff import ExponentialBackoff, NoBackoff
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.retry import Retry
from redis.sentinel import Sentinel

SENTINEL_SCHEME = "sentinel://"
SENTINEL_PORT = 26379
# A refused or reset connection is retried up to three times within about 1.5 s (a client
# of a Sentinel group asks for the primary again each time), as redis-py does by default.
# A timeout is not retried: the command may have run (a Lua script applied twice is not
# the same as once), and waiting again would multiply the time a caller hangs on a
# silent server.
RETRIES = 3


@dataclass(frozen=True)
class Timeouts:
    """How long any Redis client waits, and how soon it gives up on a silent peer."""

    socket: float = 5.0  # REDIS_SOCKET_TIMEOUT, seconds
    connect: float = 3.0  # REDIS_CONNECT_TIMEOUT, seconds
    keepalive_idle: int = 4  # REDIS_KEEPALIVE_IDLE, seconds before the first probe
    keepalive_interval: int = 2  # REDIS_KEEPALIVE_INTERVAL, seconds between probes
    keepalive_count: int = 3  # REDIS_KEEPALIVE_COUNT, unanswered probes before giving up
    user_timeout: float = 6.0  # REDIS_USER_TIMEOUT, seconds unacknowledged; 0: off
    health_check_interval: int = 8  # REDIS_HEALTH_CHECK_INTERVAL, seconds; 0: off

    @classmethod
    def from_config(cls, config: Mapping[str, Any]) -> Timeouts:
        default = cls()
        return cls(
            socket=float(config.get("REDIS_SOCKET_TIMEOUT") or default.socket),
            connect=float(config.get("REDIS_CONNECT_TIMEOUT") or default.connect),
            keepalive_idle=int(config.get("REDIS_KEEPALIVE_IDLE") or default.keepalive_idle),
            keepalive_interval=int(config.get("REDIS_KEEPALIVE_INTERVAL")
                                   or default.keepalive_interval),
            keepalive_count=int(config.get("REDIS_KEEPALIVE_COUNT") or default.keepalive_count),
            user_timeout=float(config.get("REDIS_USER_TIMEOUT", default.user_timeout)),
            health_check_interval=int(config.get("REDIS_HEALTH_CHECK_INTERVAL",
                                                 default.health_check_interval)),
        )

    def keepalive_options(self) -> dict[int, int]:
        """TCP-level socket options redis-py sets on every connection it opens.

        redis-py applies each as ``setsockopt(IPPROTO_TCP, key, value)``, so
        ``TCP_USER_TIMEOUT`` (also an ``IPPROTO_TCP`` option) rides along; options the
        platform lacks are left out.
        """
        options: dict[int, int] = {}
        for name, value in (("TCP_KEEPIDLE", self.keepalive_idle),
                            ("TCP_KEEPINTVL", self.keepalive_interval),
                            ("TCP_KEEPCNT", self.keepalive_count)):
            if hasattr(socket, name):
                options[getattr(socket, name)] = int(value)
        if self.user_timeout > 0 and hasattr(socket, "TCP_USER_TIMEOUT"):
            options[socket.TCP_USER_TIMEOUT] = int(self.user_timeout * 1000)
        return options

    def socket_options(self) -> dict[str, Any]:
        """The keyword arguments of a redis-py connection (also kombu's transport options)."""
        return {
            "socket_timeout": self.socket,
            "socket_connect_timeout": self.connect,
            "socket_keepalive": True,
            "socket_keepalive_options": self.keepalive_options(),
            "health_check_interval": self.health_check_interval,
        }

    def noticed_within(self) -> float:
        """The longest a call to a server that went silent can wait before it raises."""
        return self.connect + self.socket


@dataclass(frozen=True)
class SentinelGroup:
    """``sentinel://[user:password@]host:port,host:port/<master>/<db>`` parsed."""

    sentinels: tuple[tuple[str, int], ...]
    master: str
    db: int = 0
    username: str | None = None
    password: str | None = None

    @classmethod
    def parse(cls, url: str) -> SentinelGroup:
        """Raise ValueError, saying what is wrong, for a malformed URL."""
        if not url.startswith(SENTINEL_SCHEME):
            raise ValueError(f"expected {SENTINEL_SCHEME}..., got {redacted(url)!r}")
        rest = url[len(SENTINEL_SCHEME):]
        netloc, _, path = rest.partition("/")
        if "?" in path or "#" in path or ";" in netloc:
            raise ValueError("expected sentinel://host:port,host:port/<master>/<db> "
                             "(no query, one URL)")
        userinfo, at, hosts = netloc.rpartition("@")
        username = password = None
        if at:
            user, colon, secret = userinfo.partition(":")
            username = unquote(user) or None
            password = unquote(secret) if colon else None
        sentinels = tuple(_host_port(item) for item in hosts.split(","))
        parts = [part for part in path.split("/") if part]
        if not parts or len(parts) > 2:
            raise ValueError("expected sentinel://host:port,host:port/<master>/<db>, "
                             "the master's name is missing")
        db = 0
        if len(parts) == 2:
            if not parts[1].isdigit():
                raise ValueError(f"the database must be a number, got {parts[1]!r}")
            db = int(parts[1])
        return cls(sentinels, unquote(parts[0]), db, username, password)

    def kombu_url(self) -> str:
        """Kombu's and Celery's spelling: one ``sentinel://`` URL per Sentinel, ``;``-joined."""
        auth = ""
        if self.password is not None or self.username:
            auth = f"{quote(self.username or '', safe='')}:{quote(self.password or '', safe='')}@"
        return ";".join(f"{SENTINEL_SCHEME}{auth}{_netloc(host, port)}/{self.db}"
                        for host, port in self.sentinels)


def _host_port(item: str) -> tuple[str, int]:
    item = item.strip()
    if item.startswith("["):  # [::1]:26379
        host, _, port = item[1:].partition("]")
        port = port.removeprefix(":")
    else:
        host, _, port = item.rpartition(":") if ":" in item else (item, "", "")
    if not host:
        raise ValueError(f"a Sentinel address without a host: {item!r}")
    if port and not (port.isdigit() and 0 < int(port) < 65536):
        raise ValueError(f"a Sentinel port must be 1-65535, got {port!r}")
    return host, int(port) if port else SENTINEL_PORT


def _netloc(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def is_sentinel(url: str) -> bool:
    return url.startswith(SENTINEL_SCHEME)


def redacted(url: str) -> str:
    """*url* with any password replaced by ``***`` (for logs and start-up banners)."""
    scheme, sep, rest = url.partition("://")
    if not sep:
        return url
    netloc, slash, path = rest.partition("/")
    userinfo, at, hosts = netloc.rpartition("@")
    if not at or ":" not in userinfo:
        return url
    user = userinfo.partition(":")[0]
    return f"{scheme}://{user}:***@{hosts}{slash}{path}"


def _retry() -> Retry:
    return Retry(ExponentialBackoff(cap=0.8, base=0.1), RETRIES,
                 supported_errors=(RedisConnectionError,))


def sentinel_kwargs(timeouts: Timeouts, password: str | None) -> dict[str, Any]:
    """How to talk to the Sentinels themselves: the same timeouts, their own password."""
    options = timeouts.socket_options()
    options.pop("health_check_interval")
    # one try each: discovery goes on to the next Sentinel (redis-py's default would retry
    # a Sentinel that is down or refuses the password for seconds before moving on)
    options["retry"] = Retry(NoBackoff(), 0)
    if password:
        options["password"] = password
    return options


def redis_client(url: str, timeouts: Timeouts, *, sentinel_password: str | None = None,
                 ) -> Redis:
    """The client of one server, or of a Sentinel group's current primary.

    A Sentinel group's client asks the Sentinels for the primary whenever it opens
    a connection, so after a failover the next command (once the old connections
    have failed) reaches the new primary.
    """
    options = timeouts.socket_options() | {"retry": _retry()}
    if not is_sentinel(url):
        return Redis.from_url(url, **options)
    group = SentinelGroup.parse(url)
    sentinel = Sentinel(list(group.sentinels),
                        sentinel_kwargs=sentinel_kwargs(timeouts, sentinel_password),
                        **options)
    client: Redis = sentinel.master_for(
        group.master, db=group.db, username=group.username, password=group.password)
    return client


def broker_settings(url: str, timeouts: Timeouts, *,
                    sentinel_password: str | None = None) -> tuple[str, dict[str, Any]]:
    """``(broker_url, transport options to merge)`` for kombu's redis or sentinel transport.

    ``retry_on_timeout`` stays off: a publish that timed out may have been applied, and
    kombu batches publishes only without it.
    """
    options = timeouts.socket_options()
    if not is_sentinel(url):
        return url, options
    group = SentinelGroup.parse(url)
    options |= {"master_name": group.master,
                "sentinel_kwargs": sentinel_kwargs(timeouts, sentinel_password)}
    return group.kombu_url(), options


def backend_settings(url: str, timeouts: Timeouts, *,
                     sentinel_password: str | None = None) -> dict[str, Any]:
    """Celery settings for the redis (or ``sentinel://``) result backend.

    Celery's backend has no setting for the keepalive timings: it turns keepalive on
    with the system's timings, and every backend command has the socket timeout.
    """
    settings: dict[str, Any] = {
        "result_backend": url,
        "redis_socket_timeout": timeouts.socket,
        "redis_socket_connect_timeout": timeouts.connect,
        "redis_socket_keepalive": True,
        "redis_retry_on_timeout": False,
        "redis_backend_health_check_interval": timeouts.health_check_interval,
    }
    if is_sentinel(url):
        group = SentinelGroup.parse(url)
        settings["result_backend"] = group.kombu_url()
        settings["result_backend_transport_options"] = {
            "master_name": group.master,
            "sentinel_kwargs": sentinel_kwargs(timeouts, sentinel_password)}
    return settings

"""Configuration read from the environment, parsed strictly.

Every variable has one parser; a malformed value raises :class:`ConfigError`
naming the variable, so start-up stops with one clear line.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable, Mapping, MutableMapping, Sequence
from typing import Any

from tasks.delivery.engine.relays import Relay
from web import token_scopes

TRUE_WORDS = frozenset({"true", "1", "yes"})
FALSE_WORDS = frozenset({"false", "0", "no"})


class ConfigError(ValueError):
    """A configuration value is missing or malformed."""


def parse_bool(name: str, raw: str) -> bool:
    word = raw.strip().lower()
    if word in TRUE_WORDS:
        return True
    if word in FALSE_WORDS:
        return False
    raise ConfigError(f"{name}: expected true/false/1/0/yes/no, got {raw!r}")


def _whole_number(minimum: int = 0) -> Callable[[str, str], int]:
    def parse(name: str, raw: str) -> int:
        try:
            value = int(raw.strip())
        except ValueError:
            raise ConfigError(f"{name}: expected a whole number, got {raw!r}") from None
        if value < minimum:
            raise ConfigError(f"{name}: must be at least {minimum}, got {value}")
        return value

    return parse


def _optional_whole_number(name: str, raw: str) -> int | None:
    return None if raw.strip() == "" else _whole_number(0)(name, raw)


def _positive_number(name: str, raw: str) -> float:
    try:
        value = float(raw.strip())
    except ValueError:
        raise ConfigError(f"{name}: expected a number, got {raw!r}") from None
    if value <= 0:
        raise ConfigError(f"{name}: must be greater than 0, got {raw!r}")
    return value


def _non_negative_number(name: str, raw: str) -> float:
    """A number of seconds, where 0 turns the feature off."""
    if raw.strip() in {"0", "0.0"}:
        return 0.0
    return _positive_number(name, raw)


def _optional_positive_number(name: str, raw: str) -> float | None:
    return None if raw.strip() == "" else _positive_number(name, raw)


def _text(name: str, raw: str) -> str:
    return raw


def _optional_text(name: str, raw: str) -> str | None:
    return raw or None


def _optional_address(name: str, raw: str) -> str | None:
    """A bare address (``bounces@bounces.example.com``), or nothing."""
    value = raw.strip()
    if not value:
        return None
    local, at, domain = value.rpartition("@")
    if not at or not local or "." not in domain or any(c in value for c in " <>+,;\r\n"):
        raise ConfigError(f"{name}: expected a bare address such as "
                          f"bounces@bounces.example.com (no '+'), got {raw!r}")
    return value


def _token_list(name: str, raw: str) -> list[str]:
    return [token.strip() for token in raw.split(",") if token.strip()]


def expected_workers(name: str, raw: str | Mapping[str, int]) -> dict[str, int]:
    """``otp:2,bulk:3`` (or a dict, from a test's config): live workers each queue needs."""
    if not isinstance(raw, str):
        return {str(queue): int(count) for queue, count in raw.items()}
    found: dict[str, int] = {}
    for item in filter(None, (part.strip() for part in raw.split(","))):
        queue, sep, count = item.partition(":")
        if not sep or not queue.strip() or not count.strip().isdigit():
            raise ConfigError(f"{name}: expected queue:count,queue:count, got {item!r}")
        found[queue.strip()] = int(count)
    return found


def relay_list(name: str, raw: str | Sequence[str | Relay]) -> tuple[Relay, ...]:
    """``host:port,host:port`` (or a list of them, from a test's config) as relays."""
    items = raw.split(",") if isinstance(raw, str) else list(raw)
    relays: list[Relay] = []
    for item in items:
        if isinstance(item, Relay):
            relays.append(item)
            continue
        if isinstance(raw, str) and not item.strip():
            if raw.strip():
                raise ConfigError(f"{name}: an empty entry in {raw!r}")
            continue
        try:
            relays.append(Relay.parse(str(item)))
        except ValueError as err:
            raise ConfigError(f"{name}: {err}") from None
    return tuple(relays)


def _file_path(name: str, raw: str) -> str | None:
    if not raw:
        return None
    if not os.path.isfile(raw):
        raise ConfigError(f"{name}: no such file {raw!r}")
    return raw


def _log_format(name: str, raw: str) -> str:
    word = raw.strip().lower()
    if word not in {"text", "json"}:
        raise ConfigError(f"{name}: expected text or json, got {raw!r}")
    return word


def _log_level(name: str, raw: str) -> str:
    word = raw.strip().upper()
    if word not in {"DEBUG", "INFO", "WARNING"}:
        raise ConfigError(f"{name}: expected DEBUG, INFO or WARNING, got {raw!r}")
    return word


def _rate_limits(name: str, raw: str) -> str:
    """A Flask-Limiter limit string such as ``3/minute;10/hour``."""
    from limits import parse_many

    try:
        parse_many(raw)
    except ValueError:
        raise ConfigError(f"{name}: expected limits like '3/minute;10/hour', got {raw!r}") from None
    return raw


# name -> (parser, default). Defaults for MAIL_* are Flask-Mail's own.
SETTINGS: dict[str, tuple[Callable[[str, str], Any], Any]] = {
    "MAIL_SERVER": (_text, "127.0.0.1"),  # Flask-Mail 0.10 falls back to 127.0.0.1
    "MAIL_PORT": (_whole_number(1), 25),
    "MAIL_USE_TLS": (parse_bool, False),
    "MAIL_USE_SSL": (parse_bool, False),
    "MAIL_DEBUG": (parse_bool, False),
    "MAIL_USERNAME": (_optional_text, None),
    "MAIL_PASSWORD": (_optional_text, None),
    "MAIL_DEFAULT_SENDER": (_optional_text, None),
    "MAIL_MAX_EMAILS": (_optional_whole_number, None),
    "MAIL_SUPPRESS_SEND": (parse_bool, None),  # None: app.testing, as Flask-Mail
    "MAIL_ASCII_ATTACHMENTS": (parse_bool, False),
    "MAIL_TIMEOUT": (_positive_number, 30.0),
    "MAIL_TLS_VERIFY": (parse_bool, True),
    "MAIL_TLS_CA_FILE": (_file_path, None),
    "MAIL_MAX_CONNECTIONS": (_optional_whole_number, None),
    "MAIL_SESSION_IDLE": (_non_negative_number, 5.0),  # 0: no session kept between messages
    "MAIL_RATE_LIMIT": (_optional_positive_number, None),
    "MAIL_MESSAGE_ID_DOMAIN": (_optional_text, None),
    "MAIL_RETURN_PATH": (_optional_address, None),
    "MAIL_FALLBACK_SERVERS": (relay_list, ()),
    "MAIL_RELAY_COOLDOWN": (_positive_number, 60.0),
    "MAIL_RELAY_PROBE_INTERVAL": (_positive_number, 1.0),  # a relay that is down, probed
    "ALLOW_SPECIAL_USE_DOMAINS": (lambda name, raw: special_use_list(name, raw), ()),
    "REDIS_URL": (_text, "redis://127.0.0.1:6379/0"),
    "CELERY_BROKER_URL": (_optional_text, None),
    # every Redis client (tasks.shared.connection): a silent Redis is noticed in seconds
    "REDIS_SOCKET_TIMEOUT": (_positive_number, 5.0),
    "REDIS_CONNECT_TIMEOUT": (_positive_number, 3.0),
    "REDIS_KEEPALIVE_IDLE": (_whole_number(1), 4),
    "REDIS_KEEPALIVE_INTERVAL": (_whole_number(1), 2),
    "REDIS_KEEPALIVE_COUNT": (_whole_number(1), 3),
    "REDIS_USER_TIMEOUT": (_non_negative_number, 6.0),
    "REDIS_HEALTH_CHECK_INTERVAL": (_whole_number(0), 8),
    "REDIS_SENTINEL_PASSWORD": (_optional_text, None),
    "SECRET_KEY": (_optional_text, None),
    "API_TOKENS": (_token_list, []),
    "ADMIN_USERNAME": (_optional_text, None),
    "ADMIN_PASSWORD": (_optional_text, None),
    "ADMIN_EMAIL": (_optional_text, None),  # where a draft's "Send test" goes by default
    "OTP_LENGTH": (_whole_number(4), 6),
    "OTP_TTL": (_whole_number(30), 600),
    "OTP_MAX_ATTEMPTS": (_whole_number(1), 5),
    "OTP_RECORD_TTL": (_whole_number(60), 24 * 3600),
    "OTP_RATE_LIMIT_PER_ADDRESS": (_rate_limits, "3/minute;10/hour"),
    "OTP_RATE_LIMIT_PER_IP": (_rate_limits, "10/minute;50/hour"),
    "OTP_RATE_LIMIT_PER_TOKEN": (_rate_limits, "300/minute;5000/hour"),
    "OTP_VERIFY_RATE_LIMIT_PER_IP": (_rate_limits, "10/minute;60/hour"),
    "OTP_GUESSES_PER_DAY": (_whole_number(1), 20),
    "ADMIN_LOGIN_RATE_LIMIT": (_rate_limits, "5/minute;30/hour"),
    "METRICS_TOKEN": (_optional_text, None),
    "METRICS_PUBLIC": (parse_bool, False),  # true: /metrics and /healthz details for anyone
    "LOG_FORMAT": (_log_format, "text"),
    "DELIVERY_LOG_LEVEL": (_log_level, "INFO"),
    "TASK_LOG_LEVEL": (_log_level, "INFO"),  # Celery's per-task "received"/"succeeded" lines
    "FLOWER_URL": (_optional_text, None),
    "MAX_ATTACHMENT_BYTES": (_whole_number(1), 10 * 1024 * 1024),
    "MAX_MESSAGE_BYTES": (_whole_number(1), 25 * 1024 * 1024),
    "MAX_FORM_BYTES": (_whole_number(1), 64 * 1024),  # public forms (web.request_bounds)
    "DELIVERY_MAX_ATTEMPTS": (_whole_number(1), 8),
    "DELIVERY_BACKOFF_BASE": (_positive_number, 30.0),
    "DELIVERY_BACKOFF_CAP": (_positive_number, 1800.0),
    "DELIVERY_MAX_AGE": (_positive_number, 5 * 24 * 3600.0),
    "CLAIM_LEASE": (_positive_number, 8.0),
    "RECONCILE_INTERVAL": (_positive_number, 4.0),
    "RECONCILE_IN_WORKERS": (parse_bool, True),
    "RETENTION_DAYS": (_positive_number, 30.0),
    "CAMPAIGN_BATCH_SIZE": (_whole_number(1), 200),
    "CAMPAIGN_BATCH_SECONDS": (_positive_number, 5.0),
    "CAMPAIGN_BATCHES_AHEAD": (_optional_whole_number, None),
    "CAMPAIGN_MAX_UPLOAD_BYTES": (_whole_number(1), 1024 * 1024 * 1024),
    "PUBLIC_URL": (_optional_text, None),
    "POSTROOM_ENV": (_text, "production"),
    "OUTBOX_DIR": (_optional_text, None),
    "WEBHOOK_ALLOW_PRIVATE": (parse_bool, None),  # None: true in development and testing
    "WEBHOOK_TIMEOUT": (_positive_number, 10.0),  # seconds for a whole call, not per read
    # The bounce listener (postroom bounces): what one client, and all, may hold of it.
    "BOUNCE_MAX_BYTES": (_whole_number(1024), 1024 * 1024),
    "BOUNCE_MAX_CONNECTIONS": (_whole_number(1), 100),
    "BOUNCE_MAX_CONNECTIONS_PER_CLIENT": (_whole_number(1), 10),
    "BOUNCE_DATA_TIMEOUT": (_positive_number, 60.0),
    "BOUNCE_IDLE_TIMEOUT": (_positive_number, 60.0),
    "BOUNCE_WORKERS": (_whole_number(1), 2),
    "BOUNCE_QUEUE": (_whole_number(1), 32),
    # The submission listener (postroom submission): AUTH with an API token, STARTTLS with
    # this certificate, failed logins per client network, and the bounce listener's bounds
    # (a message's size is MAX_MESSAGE_BYTES).
    "SUBMISSION_TLS_CERT": (_file_path, None),
    "SUBMISSION_TLS_KEY": (_file_path, None),
    "SUBMISSION_AUTH_RATE_LIMIT": (_rate_limits, "5/minute;30/hour"),
    "SUBMISSION_MAX_CONNECTIONS": (_whole_number(1), 100),
    "SUBMISSION_MAX_CONNECTIONS_PER_CLIENT": (_whole_number(1), 10),
    "SUBMISSION_DATA_TIMEOUT": (_positive_number, 300.0),
    "SUBMISSION_IDLE_TIMEOUT": (_positive_number, 60.0),
    "SUBMISSION_WORKERS": (_whole_number(1), 4),
    "SUBMISSION_QUEUE": (_whole_number(1), 32),
    "EXPECTED_WORKERS": (expected_workers, {}),  # exported as postroom_workers_expected
}


def from_environ(environ: Mapping[str, str]) -> dict[str, Any]:
    """Parse every known variable present in *environ*; absent ones take defaults."""
    config: dict[str, Any] = {}
    for name, (parse, default) in SETTINGS.items():
        raw = environ.get(name)
        config[name] = default if raw is None else parse(name, raw)
    return config


def normalise(config: MutableMapping[str, Any]) -> None:
    """Bring values a test's config may give in their text form to the parsed form.

    ``MAIL_SUPPRESS_SEND`` that nobody set follows ``TESTING``, Flask-Mail's rule.
    """
    if config.get("MAIL_SUPPRESS_SEND") is None:
        config["MAIL_SUPPRESS_SEND"] = bool(config.get("TESTING"))
    config["MAIL_FALLBACK_SERVERS"] = relay_list("MAIL_FALLBACK_SERVERS",
                                                 config.get("MAIL_FALLBACK_SERVERS") or ())
    config["EXPECTED_WORKERS"] = expected_workers("EXPECTED_WORKERS",
                                                  config.get("EXPECTED_WORKERS") or {})
    allow_private = config.get("WEBHOOK_ALLOW_PRIVATE")
    if isinstance(allow_private, str):
        allow_private = parse_bool("WEBHOOK_ALLOW_PRIVATE", allow_private)
    config["WEBHOOK_ALLOW_PRIVATE"] = relaxed(config) if allow_private is None else allow_private
    webhook_timeout = config.get("WEBHOOK_TIMEOUT")
    if isinstance(webhook_timeout, str):
        config["WEBHOOK_TIMEOUT"] = _positive_number("WEBHOOK_TIMEOUT", webhook_timeout)
    cooldown = config.get("MAIL_RELAY_COOLDOWN")
    if isinstance(cooldown, str):
        config["MAIL_RELAY_COOLDOWN"] = _positive_number("MAIL_RELAY_COOLDOWN", cooldown)
    probe = config.get("MAIL_RELAY_PROBE_INTERVAL")
    if isinstance(probe, str):
        config["MAIL_RELAY_PROBE_INTERVAL"] = _positive_number("MAIL_RELAY_PROBE_INTERVAL",
                                                               probe)
    config["ALLOW_SPECIAL_USE_DOMAINS"] = special_use_list(
        "ALLOW_SPECIAL_USE_DOMAINS", config.get("ALLOW_SPECIAL_USE_DOMAINS") or ())


def special_use_list(name: str, raw: str | Iterable[str]) -> tuple[str, ...]:
    """``local,internal``: the special-use names recipients may be under."""
    from tasks.shared.mailbox import SPECIAL_USE_DOMAINS

    items = raw.split(",") if isinstance(raw, str) else list(raw)
    names = tuple(dict.fromkeys(str(item).strip().strip(".").lower() for item in items
                                if str(item).strip()))
    unknown = [n for n in names if n not in SPECIAL_USE_DOMAINS]
    if unknown:
        raise ConfigError(f"{name}: {', '.join(unknown)} is not a special-use name; choose "
                          f"from {', '.join(SPECIAL_USE_DOMAINS)}")
    return names


DEV_PUBLIC_URL = "http://127.0.0.1:5000"  # links in development and tests without PUBLIC_URL
# An attacker's chance of guessing one address's code in a day stays below this.
GUESS_CHANCE_PER_DAY = 1 / 10_000


def relaxed(config: Mapping[str, Any]) -> bool:
    """Development or testing: secrets may be generated and links may point at localhost."""
    return bool(config.get("TESTING") or config["POSTROOM_ENV"] in {"development", "testing"})


def guess_chance(length: int, guesses_per_day: int) -> float:
    """The most an attacker can win in any 24 hours: two guess windows overlap one day,
    and each compared guess hits at most one of the codes not yet tried."""
    compared = 2 * guesses_per_day
    return compared / (10 ** length - compared) if 10 ** length > compared else 1.0


def _check_metrics_access(config: Mapping[str, Any]) -> None:
    """Outside development, /metrics and the /healthz details are open only when said so."""
    public = config.get("METRICS_PUBLIC") or False
    if isinstance(public, str):
        public = parse_bool("METRICS_PUBLIC", public)
    if not config.get("METRICS_TOKEN") and not public and not relaxed(config):
        raise ConfigError("METRICS_TOKEN: must be set outside development and testing (the "
                          "bearer token for /metrics and the /healthz details), or set "
                          "METRICS_PUBLIC=true to serve them to anyone")


def check(config: Mapping[str, Any]) -> None:
    """Reject combinations that cannot work, whatever their source."""
    if config["MAIL_USE_TLS"] and config["MAIL_USE_SSL"]:
        raise ConfigError("MAIL_USE_TLS and MAIL_USE_SSL: choose one, not both")
    if bool(config.get("SUBMISSION_TLS_CERT")) != bool(config.get("SUBMISSION_TLS_KEY")):
        raise ConfigError("SUBMISSION_TLS_CERT and SUBMISSION_TLS_KEY: set both (the "
                          "certificate chain and its private key, PEM files) or neither")
    if not config.get("SECRET_KEY") and not relaxed(config):
        raise ConfigError("SECRET_KEY: must be set outside development and testing")
    public_url = config.get("PUBLIC_URL")
    if public_url and not str(public_url).startswith(("http://", "https://")):
        raise ConfigError(f"PUBLIC_URL: expected an http:// or https:// URL, got {public_url!r}")
    if not public_url and not relaxed(config):
        raise ConfigError("PUBLIC_URL: must be set outside development and testing "
                          "(the base of links in mail, e.g. https://mail.example.com)")
    _check_metrics_access(config)
    length, guesses = int(config["OTP_LENGTH"]), int(config.get("OTP_GUESSES_PER_DAY") or 20)
    if guess_chance(length, guesses) >= GUESS_CHANCE_PER_DAY:
        raise ConfigError(f"OTP_GUESSES_PER_DAY: {guesses} wrong codes a day against "
                          f"{length}-digit codes would let an attacker guess one address's "
                          "code with a chance of 1 in 10,000 or more a day; lower it or "
                          "raise OTP_LENGTH")
    if not config.get("CELERY_BROKER_URL"):
        raise ConfigError("CELERY_BROKER_URL: empty")
    try:  # token, or token:scope+scope (web.token_scopes)
        token_scopes.grants(config.get("API_TOKENS") or [])
    except ValueError as err:
        raise ConfigError(f"API_TOKENS: {err}") from None
    check_redis_urls(config)
    primary = Relay(str(config["MAIL_SERVER"]), int(config["MAIL_PORT"]))
    if primary in config.get("MAIL_FALLBACK_SERVERS", ()):
        raise ConfigError(f"MAIL_FALLBACK_SERVERS: lists MAIL_SERVER:MAIL_PORT ({primary}), "
                          "which is always tried first")


def check_redis_urls(config: Mapping[str, Any]) -> None:
    """A ``sentinel://`` REDIS_URL or CELERY_BROKER_URL must name Sentinels and a master."""
    from tasks.shared.connection import SentinelGroup, is_sentinel

    for name in ("REDIS_URL", "CELERY_BROKER_URL"):
        url = str(config.get(name) or "")
        if is_sentinel(url):
            try:
                SentinelGroup.parse(url)
            except ValueError as err:
                raise ConfigError(f"{name}: {err}") from None

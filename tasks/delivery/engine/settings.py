"""The SMTP settings a batch connection runs with, as plain values (no Flask app needed)."""

from __future__ import annotations

import ssl
from dataclasses import dataclass, field
from typing import Any

from tasks.delivery.engine.relays import Pacer, Relay, RelayState


@dataclass(frozen=True, slots=True)
class SMTPSettings:
    """Flask-Mail's settings plus ours, as plain values (no Flask app needed)."""

    server: str = "localhost"
    port: int = 25
    use_tls: bool = False
    use_ssl: bool = False
    debug: bool = False
    username: str | None = None
    password: str | None = None
    default_sender: str | None = None
    max_emails: int | None = None
    suppress: bool = False
    ascii_attachments: bool = False
    timeout: float = 30.0
    tls_verify: bool = True
    tls_ca_file: str | None = None
    message_id_domain: str | None = None
    return_path: str | None = None  # MAIL_RETURN_PATH: bounces go to a VERP form of it
    fallbacks: tuple[Relay, ...] = ()  # MAIL_FALLBACK_SERVERS, tried in order
    relay_state: RelayState | None = field(default=None, compare=False, repr=False)
    pacer: Pacer | None = field(default=None, compare=False, repr=False)  # per-relay rates
    idle_wait: float = 2.0  # a pacing wait longer than this closes the session meanwhile

    @property
    def relays(self) -> tuple[Relay, ...]:
        """``MAIL_SERVER:MAIL_PORT``, then the fallbacks: the order sessions are tried in."""
        return (Relay(self.server, self.port), *self.fallbacks)

    @classmethod
    def from_config(cls, config: Any, *, relay_state: RelayState | None = None,
                    pacer: Pacer | None = None) -> SMTPSettings:
        """Read the settings from a Flask-style config mapping.

        ``MAIL_FALLBACK_SERVERS`` may hold :class:`Relay` values or ``host:port`` text.
        """
        fallbacks = tuple(relay if isinstance(relay, Relay) else Relay.parse(str(relay))
                          for relay in config.get("MAIL_FALLBACK_SERVERS") or ())
        return cls(
            server=config["MAIL_SERVER"],
            port=int(config["MAIL_PORT"]),
            use_tls=bool(config["MAIL_USE_TLS"]),
            use_ssl=bool(config["MAIL_USE_SSL"]),
            debug=bool(config["MAIL_DEBUG"]),
            username=config.get("MAIL_USERNAME"),
            password=config.get("MAIL_PASSWORD"),
            default_sender=config.get("MAIL_DEFAULT_SENDER"),
            max_emails=config.get("MAIL_MAX_EMAILS"),
            suppress=bool(config["MAIL_SUPPRESS_SEND"]),
            ascii_attachments=bool(config["MAIL_ASCII_ATTACHMENTS"]),
            timeout=float(config["MAIL_TIMEOUT"]),
            tls_verify=bool(config["MAIL_TLS_VERIFY"]),
            tls_ca_file=config.get("MAIL_TLS_CA_FILE"),
            message_id_domain=config.get("MAIL_MESSAGE_ID_DOMAIN"),
            return_path=config.get("MAIL_RETURN_PATH"),
            fallbacks=fallbacks,
            relay_state=relay_state,
            pacer=pacer,
        )

    def tls_context(self) -> ssl.SSLContext:
        """A context that verifies the server unless verification is turned off.

        ``MAIL_TLS_CA_FILE`` is trusted in addition to the system's CAs.
        """
        context = ssl.create_default_context()
        if self.tls_ca_file:
            context.load_verify_locations(cafile=self.tls_ca_file)
        if not self.tls_verify:
            context.check_hostname = False
            context.verify_mode = ssl.CERT_NONE
        return context

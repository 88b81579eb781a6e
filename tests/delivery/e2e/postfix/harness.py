"""A private Postfix for tests: Debian's ``postfix`` started from its own configuration and
queue directories under a temporary directory, listening on 127.0.0.1 only.

Nothing it accepts can leave the machine: no DNS (``disable_dns_lookups``,
``smtp_host_lookup = native``), ``default_transport`` and ``relay_transport`` are
``error:``, and the only routes are ``transport_maps`` entries a test gives, each a
domain sent to ``[127.0.0.1]:port`` (an aiosmtpd counter, the bounce listener). STARTTLS
uses a self-signed certificate for 127.0.0.1; SASL is Cyrus with a sasldb of test users
(PLAIN and LOGIN). :meth:`Postfix.stop` stops the instance and kills whatever of its
processes is left (found by their working directory, the queue directory).
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import smtplib
import subprocess
import tempfile
import time
from collections.abc import Callable, Mapping
from pathlib import Path

from web.testing import free_port

MASTER_CF = Path("/etc/postfix/master.cf")
HOSTNAME = "relay.postroom.test"
SASL_REALM = "postroom.test"


def missing() -> str | None:
    """Why a private Postfix cannot run here, or ``None`` when it can."""
    if os.geteuid() != 0:
        return "a private Postfix must be started as root (it drops to the postfix user)"
    for tool in ("postfix", "postconf", "saslpasswd2", "openssl"):
        if shutil.which(tool) is None:
            return f"{tool} is not installed (make postfix-tool installs it)"
    if not MASTER_CF.exists():
        return f"{MASTER_CF} is missing (Debian's postfix package installs it)"
    return None


def wait_for(check: Callable[[], bool], timeout: float, what: str) -> None:
    """Poll *check* until it is true; fail naming *what* after *timeout* seconds."""
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what}")
        time.sleep(0.05)


def self_signed(directory: Path) -> tuple[Path, Path]:
    """A self-signed certificate (and its key) for 127.0.0.1."""
    cert, key = directory / "cert.pem", directory / "key.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt",
                    "ec_paramgen_curve:prime256v1", "-nodes", "-keyout", str(key), "-out",
                    str(cert), "-days", "2", "-subj", "/CN=127.0.0.1", "-addext",
                    "subjectAltName=IP:127.0.0.1"], check=True, capture_output=True, timeout=30)
    key.chmod(0o644)  # smtpd reads it after dropping to the postfix user; a test key
    return cert, key


class Postfix:
    """One private instance: :meth:`start`, then :meth:`stop` (always)."""

    def __init__(self, *, routes: Mapping[str, int], settings: Mapping[str, str] | None = None,
                 users: Mapping[str, str] | None = None, tls: bool = False,
                 mechanisms: str = "PLAIN LOGIN") -> None:
        self.root = Path(tempfile.mkdtemp(prefix="postroom-postfix-"))
        self.root.chmod(0o755)  # the postfix user works in the queue directory below it
        self.config_dir = self.root / "etc"
        self.queue_dir = self.root / "queue"
        self.maillog = self.root / "maillog"
        self.port = free_port()
        self.routes = dict(routes)
        self.settings = dict(settings or {})
        self.users = dict(users or {})
        self.tls = tls
        self.mechanisms = mechanisms
        self.cert: Path | None = None
        self.started = False

    # -- configuration -----------------------------------------------------------------

    def _main_cf(self) -> dict[str, str]:
        root = str(self.root)
        transport = self.root / "transport"
        transport.write_text("".join(f"{domain} smtp:[127.0.0.1]:{port}\n"
                                     for domain, port in self.routes.items()))
        settings = {
            "compatibility_level": "3.6",
            "queue_directory": str(self.queue_dir),
            "data_directory": f"{root}/data",
            "command_directory": "/usr/sbin",
            "daemon_directory": "/usr/lib/postfix/sbin",
            "meta_directory": "/etc/postfix",
            "shlib_directory": "/usr/lib/postfix",
            "mail_owner": "postfix",
            "setgid_group": "postdrop",
            "maillog_file": str(self.maillog),
            "maillog_file_prefixes": root,
            "myhostname": HOSTNAME,
            "mydomain": "postroom.test",
            "myorigin": "$myhostname",
            "mydestination": "",
            "local_recipient_maps": "",
            "alias_maps": "",
            "alias_database": "",
            "biff": "no",
            "inet_interfaces": "127.0.0.1",
            "inet_protocols": "ipv4",
            "mynetworks": "127.0.0.0/8",
            "smtpd_peername_lookup": "no",
            "disable_dns_lookups": "yes",
            "smtp_host_lookup": "native",
            "default_transport": "error:this test relay delivers to its test domains only",
            "relay_transport": "error:this test relay delivers to its test domains only",
            "transport_maps": f"texthash:{transport}",
            "relay_domains": " ".join(self.routes) or "",
            "smtpd_relay_restrictions": "permit_sasl_authenticated, reject_unauth_destination",
            "smtp_tls_security_level": "none",
            "queue_run_delay": "1s",
            "minimal_backoff_time": "1s",
            "maximal_backoff_time": "2s",
            "smtp_connect_timeout": "5s",
        }
        if self.tls:
            self.cert, key = self_signed(self.root)
            settings.update({"smtpd_tls_security_level": "may",
                             "smtpd_tls_cert_file": str(self.cert),
                             "smtpd_tls_key_file": str(key),
                             "smtpd_tls_auth_only": "yes", "smtpd_tls_loglevel": "1"})
        if self.users:
            settings.update({"smtpd_sasl_auth_enable": "yes", "smtpd_sasl_type": "cyrus",
                             "smtpd_sasl_path": "smtpd",
                             "smtpd_sasl_local_domain": SASL_REALM,
                             "smtpd_sasl_security_options": "noanonymous"})
        settings.update(self.settings)
        return settings

    def _sasl(self) -> None:
        """Cyrus SASL: Debian's Postfix reads ``<config_directory>/sasl/smtpd.conf``."""
        sasl = self.config_dir / "sasl"
        sasl.mkdir()
        sasldb = sasl / "sasldb2"
        (sasl / "smtpd.conf").write_text(
            f"pwcheck_method: auxprop\nauxprop_plugin: sasldb\nmech_list: {self.mechanisms}\n"
            f"sasldb_path: {sasldb}\n")
        for user, password in self.users.items():
            subprocess.run(["saslpasswd2", "-f", str(sasldb), "-p", "-c", "-u", SASL_REALM,
                            user], input=password.encode(), check=True, capture_output=True,
                           timeout=30)
        sasldb.chmod(0o644)

    def _configure(self) -> None:
        self.config_dir.mkdir()
        self.queue_dir.mkdir(mode=0o755)
        shutil.copy(MASTER_CF, self.config_dir / "master.cf")
        (self.config_dir / "main.cf").write_text(
            "".join(f"{name} = {value}\n" for name, value in self._main_cf().items()))
        if self.users:
            self._sasl()
        self.postconf("-F", "*/*/chroot = n")  # no chroot: it would need copies of /etc
        self.postconf("-M#", "smtp/inet")
        self.postconf("-M", f"127.0.0.1:{self.port}/inet = 127.0.0.1:{self.port} inet n - n - - "
                      "smtpd")

    def postconf(self, *args: str) -> str:
        done = subprocess.run(["postconf", "-c", str(self.config_dir), *args],
                              capture_output=True, text=True, timeout=30)
        assert done.returncode == 0, f"postconf {' '.join(args)}: {done.stderr}"
        return done.stdout

    # -- life cycle --------------------------------------------------------------------

    def start(self) -> Postfix:
        self._configure()
        done = subprocess.run(["postfix", "-c", str(self.config_dir), "start"],
                              capture_output=True, text=True, timeout=60)
        self.started = True
        assert done.returncode == 0, f"postfix start failed: {self.log()[-2000:]}"
        wait_for(self._answers, 15, f"Postfix to answer on 127.0.0.1:{self.port}")
        return self

    def _answers(self) -> bool:
        try:
            with smtplib.SMTP("127.0.0.1", self.port, timeout=2) as probe:
                return probe.noop()[0] == 250
        except OSError:
            return False

    def processes(self) -> list[int]:
        """Processes of this instance: every Postfix daemon works in its queue directory."""
        found = []
        for entry in Path("/proc").iterdir():
            if not entry.name.isdigit():
                continue
            try:
                cwd = os.readlink(entry / "cwd")
            except OSError:
                continue
            if cwd == str(self.queue_dir) or cwd.startswith(f"{self.queue_dir}/"):
                found.append(int(entry.name))
        return found

    def stop(self) -> None:
        """Stop the instance; kill what is left after 5 s; remove its directory."""
        if self.started:
            subprocess.run(["postfix", "-c", str(self.config_dir), "stop"],
                           capture_output=True, timeout=30)
            deadline = time.monotonic() + 5
            while self.processes() and time.monotonic() < deadline:
                time.sleep(0.05)
            for pid in self.processes():
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
            wait_for(lambda: not self.processes(), 5, "the Postfix processes to exit")
            self.started = False
        shutil.rmtree(self.root, ignore_errors=True)

    # -- what it did -------------------------------------------------------------------

    def log(self) -> str:
        try:
            return self.maillog.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def logged(self, pattern: str) -> list[str]:
        """Log lines matching the regular expression *pattern*."""
        return [line for line in self.log().splitlines() if re.search(pattern, line)]

    def accepted(self) -> dict[str, int]:
        """Mail Postfix took into its queue from clients (not its own bounces):
        queue id -> recipients (``nrcpt``), from the queue manager's log."""
        found: dict[str, int] = {}
        for line in self.logged(r"postfix/qmgr\[\d+\]: \w+: from=<[^>]+>, size=\d+, nrcpt="):
            queue_id = line.split("]: ", 1)[1].split(":", 1)[0]
            found[queue_id] = int(line.split("nrcpt=", 1)[1].split()[0])
        return found

    def queue_empty(self) -> bool:
        """Nothing left in the incoming, active or deferred queues."""
        return not any(path.is_file() for name in ("incoming", "active", "deferred")
                       for path in (self.queue_dir / name).rglob("*"))

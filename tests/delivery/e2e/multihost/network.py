"""Worker hosts as Linux network namespaces behind one bridge in the root namespace.

Each host is a namespace ``pmh<pid>-<name>`` joined to the bridge ``pmh<pid>br`` by a
veth pair (``pmh<pid><name>`` on the bridge, ``eth0`` inside), with an address the
test assigns from ``10.203.<n>.0/24``; the bridge holds ``10.203.<n>.1``, where the
test's Redis and relay listen. ``<pid>`` is the pytest process that made them, so
:func:`remove_stale` can delete what a run that died left behind.

Faults are made with the kernel's own tools: a host is cut off by taking its veth
down on the bridge side (every packet dropped, no reset sent either way), and Redis
is made unreachable from a host by iptables ``DROP`` rules inside its namespace.
"""

from __future__ import annotations

import logging
import os
import re
import shutil
import signal
import subprocess
import time
from dataclasses import dataclass

log = logging.getLogger(__name__)

PREFIX = "pmh"
_OWNER = re.compile(rf"^{PREFIX}(\d+)")


class NamespaceError(RuntimeError):
    """A namespace, link or rule could not be made."""


def ip(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return _run("ip", *args, check=check)


def _run(*command: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    done = subprocess.run(command, capture_output=True, text=True, timeout=20)
    if check and done.returncode != 0:
        raise NamespaceError(f"{' '.join(command)}: {done.stderr.strip() or done.returncode}")
    return done


def unavailable() -> str | None:
    """Why namespaces cannot be made here, or ``None`` when they can."""
    if os.geteuid() != 0:
        return "network namespaces need root (CI runs the suite as root)"
    for tool in ("ip", "unshare", "iptables"):
        if shutil.which(tool) is None:
            return f"{tool} is not installed (make netns-tool installs iproute2 and iptables)"
    probe = f"{PREFIX}{os.getpid()}-probe"
    made = ip("netns", "add", probe, check=False)
    if made.returncode != 0:
        return f"cannot create a network namespace: {made.stderr.strip()}"
    ip("netns", "del", probe, check=False)
    return None


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def namespace_pids(namespace: str) -> list[int]:
    """Every process (root-namespace pid) whose network namespace is *namespace*."""
    done = ip("netns", "pids", namespace, check=False)
    return [int(word) for word in done.stdout.split() if word.isdigit()]


def kill_namespace(namespace: str, signum: int = signal.SIGKILL) -> int:
    """Send *signum* to every process in *namespace*; returns how many there were."""
    pids = namespace_pids(namespace)
    for pid in pids:
        try:
            os.kill(pid, signum)
        except ProcessLookupError:
            pass
    return len(pids)


def remove_stale() -> None:
    """Delete namespaces and links with our prefix whose pytest process has exited."""
    for line in ip("netns", "list", check=False).stdout.splitlines():
        name = line.split()[0] if line.split() else ""
        owner = _OWNER.match(name)
        if owner and not _alive(int(owner.group(1))):
            log.info("removing stale namespace %s", name)
            kill_namespace(name)
            ip("netns", "del", name, check=False)
    for line in ip("-o", "link", "show", check=False).stdout.splitlines():
        fields = line.split(":")
        name = fields[1].strip().split("@")[0] if len(fields) > 1 else ""
        owner = _OWNER.match(name)
        if owner and not _alive(int(owner.group(1))):
            log.info("removing stale link %s", name)
            ip("link", "del", name, check=False)


def _free_subnet() -> int:
    """The third octet of a 10.203.x.0/24 no interface uses yet."""
    used = ip("-o", "-4", "addr", "show", check=False).stdout
    start = 10 + os.getpid() % 200
    for n in list(range(start, 250)) + list(range(10, start)):
        if f"10.203.{n}." not in used:
            return n
    raise NamespaceError("no free 10.203.x.0/24 subnet")


@dataclass
class HostLink:
    """One host's namespace and the two ends of its veth pair."""

    name: str
    namespace: str
    outer: str  # the bridge side, in the root namespace
    address: str


class Network:
    """The bridge, and one namespace per host; :meth:`destroy` removes everything."""

    def __init__(self) -> None:
        self.owner = os.getpid()
        self.octet = _free_subnet()
        self.bridge = f"{PREFIX}{self.owner}br"
        self.gateway = f"10.203.{self.octet}.1"
        self.hosts: dict[str, HostLink] = {}
        self.blocked: set[str] = set()

    def create(self) -> Network:
        ip("link", "add", "name", self.bridge, "type", "bridge", "forward_delay", "0")
        ip("addr", "add", f"{self.gateway}/24", "dev", self.bridge)
        ip("link", "set", self.bridge, "up")
        return self

    def add_host(self, name: str) -> HostLink:
        """A namespace joined to the bridge, with the next free address."""
        if not re.fullmatch(r"[a-z0-9]{1,4}", name):
            raise ValueError(f"host name {name!r}: 1-4 lowercase letters or digits")
        link = HostLink(name, f"{PREFIX}{self.owner}-{name}", f"{PREFIX}{self.owner}{name}",
                        f"10.203.{self.octet}.{10 + len(self.hosts)}")
        ip("netns", "add", link.namespace)
        self.hosts[name] = link
        ip("link", "add", link.outer, "type", "veth", "peer", "name", "eth0",
           "netns", link.namespace)
        ip("link", "set", link.outer, "master", self.bridge)
        ip("link", "set", link.outer, "up")
        ip("-n", link.namespace, "addr", "add", f"{link.address}/24", "dev", "eth0")
        ip("-n", link.namespace, "link", "set", "eth0", "up")
        ip("-n", link.namespace, "link", "set", "lo", "up")
        return link

    def remove_host(self, name: str) -> None:
        """Kill what runs in host *name*, then delete its namespace (and with it the veth)."""
        link = self.hosts.pop(name)
        kill_namespace(link.namespace)
        ip("netns", "del", link.namespace, check=False)
        ip("link", "del", link.outer, check=False)

    # -- faults -------------------------------------------------------------------------------

    def cut_off(self, name: str) -> None:
        """Drop every packet to and from host *name* (its veth down on the bridge side)."""
        ip("link", "set", self.hosts[name].outer, "down")

    def reconnect(self, name: str) -> None:
        ip("link", "set", self.hosts[name].outer, "up")

    def block(self, name: str, port: int) -> None:
        """Drop, inside host *name*, every TCP packet to or from the gateway's *port*."""
        namespace = self.hosts[name].namespace
        for chain, direction in (("OUTPUT", "--dport"), ("INPUT", "--sport")):
            _run("ip", "netns", "exec", namespace, "iptables", "-w", "-A", chain, "-p", "tcp",
                 "-s" if chain == "INPUT" else "-d", self.gateway, direction, str(port),
                 "-j", "DROP")
        self.blocked.add(name)

    def unblock(self, name: str) -> None:
        namespace = self.hosts[name].namespace
        for chain in ("OUTPUT", "INPUT"):
            _run("ip", "netns", "exec", namespace, "iptables", "-w", "-F", chain)
        self.blocked.discard(name)

    # -- the end ------------------------------------------------------------------------------

    def destroy(self) -> None:
        """Kill whatever still runs in the namespaces, then delete them and the bridge."""
        for link in self.hosts.values():
            kill_namespace(link.namespace)
        deadline = time.monotonic() + 10
        while any(namespace_pids(link.namespace) for link in self.hosts.values()):
            if time.monotonic() > deadline:
                log.warning("processes outlived SIGKILL in %s", list(self.hosts))
                break
            time.sleep(0.05)
        for link in self.hosts.values():
            ip("netns", "del", link.namespace, check=False)
            ip("link", "del", link.outer, check=False)
        self.hosts.clear()
        ip("link", "del", self.bridge, check=False)

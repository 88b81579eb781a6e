"""The relay every host sends to, on the bridge: counts what it accepted and from whom.

It is :class:`tests.support.smtp_server.SMTPTestServer` listening on the bridge address,
with each session's peer address kept, so a test can tell which host sent each
message and how many sessions each host holds open. :class:`Tally` counts a
campaign's deliveries by (Message-ID, recipient).
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from typing import Any

from bench.delay_sink import headers_of
from tests.support.smtp_server import (
    CountingController,
    CountingSMTP,
    RecordingHandler,
    SMTPTestServer,
)


class PeerHandler(RecordingHandler):
    """Also keeps each session's peer address and the sessions open per peer."""

    def __init__(self) -> None:
        super().__init__()
        self.peers: dict[int, str] = {}
        self.open_by_peer: Counter[str] = Counter()
        self.peak_by_peer: Counter[str] = Counter()


class PeerSMTP(CountingSMTP):
    def connection_made(self, transport: Any) -> None:
        first = not hasattr(self, "connection_number")
        super().connection_made(transport)
        handler = self.event_handler
        assert isinstance(handler, PeerHandler)
        if first:
            peer = str((transport.get_extra_info("peername") or ("?",))[0])
            with handler.lock:
                handler.peers[self.connection_number] = peer
                handler.open_by_peer[peer] += 1
                handler.peak_by_peer[peer] = max(handler.peak_by_peer[peer],
                                                 handler.open_by_peer[peer])

    def connection_lost(self, error: Exception | None) -> None:
        counted = hasattr(self, "connection_number") and not getattr(self, "session_closed",
                                                                     False)
        super().connection_lost(error)
        handler = self.event_handler
        assert isinstance(handler, PeerHandler)
        if counted:
            with handler.lock:
                handler.open_by_peer[handler.peers[self.connection_number]] -= 1


class PeerController(CountingController):
    def factory(self) -> PeerSMTP:
        return PeerSMTP(self.handler, **self.SMTP_kwargs)


class BridgeRelay(SMTPTestServer):
    """The relay on *address*:*port*; every DATA answered *latency* seconds late."""

    def __init__(self, address: str, port: int = 2525, latency: float = 0.02) -> None:
        self.address = address
        self.latency = latency
        super().__init__()
        self.handler = PeerHandler()
        self.port = port
        self.controller = self._controller()

    def _controller(self) -> PeerController:
        return PeerController(self.handler, hostname=self.address, port=self.port,
                              **self.options)

    def reset(self) -> None:
        # Session numbers go on from the last test's: a number used again would take the
        # place of an earlier session's peer, which a session still open from that test
        # (or a count of the sessions a peer opened) reads.
        handler = self.handler
        assert isinstance(handler, PeerHandler)
        numbered = handler.connections
        super().reset()
        with handler.lock:
            handler.connections = numbered
            handler.peak_by_peer = Counter({p: n for p, n in handler.open_by_peer.items() if n})
        handler.data_delay = self.latency

    def open_sessions_from(self, peer: str) -> int:
        handler = self.handler
        assert isinstance(handler, PeerHandler)
        with handler.lock:
            return handler.open_by_peer[peer]

    def sessions_opened_by(self, peer: str) -> int:
        """How many sessions *peer* has opened since the relay started."""
        handler = self.handler
        assert isinstance(handler, PeerHandler)
        with handler.lock:
            return sum(1 for opened_by in handler.peers.values() if opened_by == peer)

    def peak_sessions_from(self, peer: str) -> int:
        """The most sessions *peer* had open at once since the last :meth:`reset`."""
        handler = self.handler
        assert isinstance(handler, PeerHandler)
        with handler.lock:
            return handler.peak_by_peer[peer]

    def deliveries(self) -> list[Delivery]:
        """Every (Message-ID, recipient) the relay accepted, in order, with its sender."""
        handler = self.handler
        assert isinstance(handler, PeerHandler)
        with handler.lock:
            received, peers = list(handler.received), dict(handler.peers)
        found = []
        for message in received:
            message_id = headers_of(message.data)[0]
            for recipient in message.recipients:
                found.append(Delivery(message_id, recipient, peers.get(message.session, "?"),
                                      message.received_at, message.session))
        return found


@dataclass(frozen=True)
class Delivery:
    message_id: str
    recipient: str
    peer: str
    at: float  # time.monotonic() when the relay accepted it
    session: int


@dataclass
class Tally:
    """One campaign at the relay: sent (distinct), lost and duplicated recipients."""

    expected: set[str]
    deliveries: list[Delivery]

    @classmethod
    def of(cls, relay: BridgeRelay, campaign_id: str, expected: set[str]) -> Tally:
        return cls(expected, [d for d in relay.deliveries() if campaign_id in d.message_id])

    @property
    def pairs(self) -> Counter[tuple[str, str]]:
        return Counter((d.message_id, d.recipient) for d in self.deliveries)

    @property
    def sent(self) -> int:
        return len({recipient for _, recipient in self.pairs} & self.expected)

    @property
    def lost(self) -> int:
        return len(self.expected - {recipient for _, recipient in self.pairs})

    @property
    def duplicates(self) -> int:
        """Copies beyond the first, over every (Message-ID, recipient)."""
        return sum(n - 1 for n in self.pairs.values())

    def duplicates_by_session(self) -> Counter[int]:
        """For each session, how many of the recipients it had accepted were sent again."""
        first: dict[tuple[str, str], int] = {}
        for d in self.deliveries:  # in the order the relay accepted them
            first.setdefault((d.message_id, d.recipient), d.session)
        return Counter(first[pair] for pair, n in self.pairs.items() if n > 1)

    def summary(self) -> str:
        return (f"sent={self.sent} lost={self.lost} duplicates={self.duplicates} "
                f"sessions={len({d.session for d in self.deliveries})}")

    def recovery_after(self, failed: str, fault_at: float, window: float = 10.0
                       ) -> float | None:
        """Seconds from *fault_at* until another host sent on from where *failed* stopped.

        A batch sends its recipients in index order, so for each session the failed host
        used in the *window* before the fault, the recipient after the last one it got
        accepted is where that batch stood. The first acceptance of one of those from
        another host ends the wait; ``None`` when none came.
        """
        before = [d for d in self.deliveries if d.at <= fault_at]
        accepted = {d.recipient for d in before}
        last: dict[int, int] = {}
        for d in before:
            if d.peer == failed and d.at >= fault_at - window:
                last[d.session] = max(last.get(d.session, -1), recipient_index(d.recipient))
        stranded = {i + 1 for i in last.values()}
        waits = [d.at - fault_at for d in self.deliveries
                 if d.at > fault_at and d.peer != failed and d.recipient not in accepted
                 and recipient_index(d.recipient) in stranded]
        return min(waits) if waits else None

    def first_after(self, moment: float) -> float | None:
        """Seconds from *moment* to the first acceptance after it."""
        waits = [d.at - moment for d in self.deliveries if d.at > moment]
        return min(waits) if waits else None


def recipient_index(address: str) -> int:
    """``person00042@example.com`` -> 42 (the addresses campaign_helpers.people makes)."""
    digits = "".join(c for c in address.partition("@")[0] if c.isdigit())
    return int(digits) if digits else -1

"""An in-memory lab for the sans-IO ``DtlsServer``: client-role ``DtlsConnection``s at
made-up addresses, virtual time as a number, no trio and no sockets."""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass, field

from loadgen.proto import cstp
from loadgen.proto.dtls import (
    DTLS12_CIPHERS_HEADER,
    DTLS_CIPHERS_HEADER,
    KNOWN_DTLS12_CIPHERS,
    KNOWN_DTLS_CIPHERS,
    SERVER_RETRANSMIT_SCHEDULE_S,
    ApplicationDataReceived,
    AssociationDown,
    AssociationUp,
    ClientHello,
    ConnectionTerminated,
    DropReason,
    DtlsConnection,
    DtlsEvent,
    DtlsServer,
    DtlsSession,
    EndpointStats,
    HandshakeCompleted,
    Role,
    ServerAssociation,
    ServerEvent,
    lookup_cipher,
)
from loadgen.proto.dtls.association import Address
from loadgen.proto.dtls.handshake import HandshakeType, encode_handshake
from loadgen.proto.dtls.records import encode_record

__all__ = [
    "ALL_SUITES",
    "NEW_PEER_REASONS",
    "Client",
    "Lab",
    "Target",
    "client_hello_bytes",
    "down_reasons",
    "new_peer_drops",
    "stray_datagrams",
]

#: (header, name) of every cipher we speak
ALL_SUITES = [(DTLS_CIPHERS_HEADER, n) for n in KNOWN_DTLS_CIPHERS] + [
    (DTLS12_CIPHERS_HEADER, n) for n in KNOWN_DTLS12_CIPHERS
]
#: drop reasons that only datagrams from an unknown address can get
NEW_PEER_REASONS = (
    DropReason.GARBAGE,
    DropReason.NOT_CLIENT_HELLO,
    DropReason.ZERO_RANDOM,
    DropReason.UNKNOWN_SESSION,
    DropReason.TOO_SOON,
    DropReason.OVERSIZE,
)


def new_peer_drops(stats: EndpointStats) -> int:
    return sum(stats.dropped[r] for r in NEW_PEER_REASONS)


class Target:
    """A gateway session as the server sees it: only its DTLS keys."""

    def __init__(self, session: DtlsSession) -> None:
        self.dtls_session = session


@dataclass
class Client:
    """A client-role connection at ``address``, with what it has seen."""

    address: Address
    conn: DtlsConnection
    events: list[DtlsEvent] = field(default_factory=list)
    #: (packet type, payload) of every record received
    frames: list[tuple[int, bytes]] = field(default_factory=list)
    #: every datagram it sent, in order
    sent: list[bytes] = field(default_factory=list)

    @property
    def completed(self) -> bool:
        return any(isinstance(e, HandshakeCompleted) for e in self.events)

    @property
    def terminated(self) -> ConnectionTerminated | None:
        ends = [e for e in self.events if isinstance(e, ConnectionTerminated)]
        return ends[0] if ends else None


class Lab:
    """One server; ``now`` only moves when a test says so."""

    def __init__(
        self,
        *,
        dpd_s: float = 0.0,
        handover_guard_s: float = 3.0,
        retransmit_schedule_s: Sequence[float] = SERVER_RETRANSMIT_SCHEDULE_S,
        seed: int = 99,
    ) -> None:
        self.targets: dict[bytes, Target] = {}
        self.server: DtlsServer[Target] = DtlsServer(
            lookup=self.targets.get,
            random_bytes=random.Random(seed).randbytes,
            dpd_s=dpd_s,
            handover_guard_s=handover_guard_s,
            retransmit_schedule_s=retransmit_schedule_s,
        )
        self.now = 0.0
        self.events: list[ServerEvent[Target]] = []
        #: every (datagram, peer) the server sent, in order
        self.wire: list[tuple[bytes, Address]] = []
        self._inbox: dict[Address, list[bytes]] = {}

    @property
    def stats(self) -> EndpointStats:
        return self.server.stats

    def add(self, session: DtlsSession) -> Target:
        target = Target(session)
        self.targets[session.session_id] = target
        return target

    def client(self, session: DtlsSession, address: Address, *, seed: int = 1) -> Client:
        conn = DtlsConnection(
            Role.CLIENT, session=session, random_bytes=random.Random(seed).randbytes
        )
        return Client(address, conn)

    # -- moving datagrams --------------------------------------------------------------

    def collect(self) -> None:
        """Take the server's events and datagrams (datagrams wait in the peers' inboxes)."""
        while (event := self.server.next_event()) is not None:
            self.events.append(event)
        for datagram, peer in self.server.datagrams_to_send():
            self.wire.append((datagram, peer))
            self._inbox.setdefault(peer, []).append(datagram)

    def send(self, address: Address, datagram: bytes) -> None:
        self.server.receive_datagram(datagram, address, self.now)
        self.collect()

    def inbox(self, address: Address) -> list[bytes]:
        """The datagrams sent to ``address`` and not yet delivered (taken)."""
        return self._inbox.pop(address, [])

    def flush(self, client: Client) -> int:
        """The client's queued datagrams to the server; how many."""
        out = client.conn.datagrams_to_send(self.now)
        for datagram in out:
            client.sent.append(datagram)
            self.send(client.address, datagram)
        return len(out)

    def deliver(self, client: Client) -> int:
        """The server's datagrams for the client to it; how many."""
        datagrams = self.inbox(client.address)
        for datagram in datagrams:
            client.conn.receive_datagram(datagram, self.now)
        self._client_events(client)
        return len(datagrams)

    def _client_events(self, client: Client) -> None:
        while (event := client.conn.next_event()) is not None:
            client.events.append(event)
            if isinstance(event, ApplicationDataReceived):
                frame = cstp.decode_dtls_payload_untrusted(event.data)
                client.frames.append((frame.type, frame.payload))

    def converse(self, client: Client) -> None:
        """Exchange datagrams until both sides are quiet."""
        for _ in range(20):
            if not self.flush(client) + self.deliver(client):
                return
        raise AssertionError("the conversation never went quiet")

    def handshake(self, client: Client) -> None:
        client.conn.connect(self.now)
        self.converse(client)
        assert client.completed, client.events

    def start(self, session: DtlsSession, address: Address, *, seed: int = 1) -> Client:
        """A known session's client that sent its ClientHello."""
        self.add(session)
        client = self.client(session, address, seed=seed)
        client.conn.connect(self.now)
        self.flush(client)
        return client

    def up(
        self, session: DtlsSession, address: Address, *, seed: int = 1
    ) -> tuple[Client, ServerAssociation[Target]]:
        """A known session's client after its handshake, and its association (the
        events so far are taken: the last one is its AssociationUp)."""
        self.add(session)
        client = self.client(session, address, seed=seed)
        self.handshake(client)
        up = self.take()[-1]
        assert isinstance(up, AssociationUp) and up.association.peer == address
        return client, up.association

    def send_frame(self, client: Client, ptype: int, payload: bytes) -> None:
        client.conn.send_application_data(cstp.encode_dtls_payload(ptype, payload))
        self.flush(client)

    # -- time --------------------------------------------------------------------------

    def advance(self, until: float) -> None:
        """Run the server's timers, each at its deadline, up to ``until``."""
        for _ in range(100_000):
            timer = self.server.get_timer()
            if timer is None or timer > until:
                break
            self.now = max(self.now, timer)
            self.server.handle_timer(self.now)
            self.collect()
        self.now = max(self.now, until)

    def take(self) -> list[ServerEvent[Target]]:
        """The server's events since the last take."""
        out, self.events = self.events, []
        return out


def down_reasons(events: Sequence[ServerEvent[Target]]) -> list[str | None]:
    return [
        None if e.reason is None else str(e.reason)
        for e in events
        if isinstance(e, AssociationDown)
    ]


def client_hello_bytes(session: DtlsSession, *, random_: bytes, epoch: int = 0) -> bytes:
    hello = ClientHello(
        client_version=session.cipher.version,
        random=random_,
        session_id=session.session_id,
        cipher_suites=(session.cipher.code,),
    )
    message = encode_handshake(HandshakeType.CLIENT_HELLO, 0, hello.encode())
    return encode_record(22, session.cipher.version, epoch, 0, message)


def stray_datagrams(known: DtlsSession) -> dict[DropReason, list[bytes]]:
    """Datagrams from an unknown address, by the reason they are dropped for
    (``known`` is a session the server knows; the UNKNOWN_SESSION hello names another)."""
    stranger = DtlsSession(
        session_id=bytes(reversed(known.session_id)),
        master_secret=known.master_secret,
        cipher=lookup_cipher(DTLS_CIPHERS_HEADER, "AES256-SHA"),
    )
    good = client_hello_bytes(stranger, random_=b"\x01" * 32)
    return {
        DropReason.GARBAGE: [
            b"",
            b"\x16\xfe\xfd\x00",
            b"\x16\x03\x03" + good[3:],  # a TLS record version
            client_hello_bytes(known, random_=b"\x02" * 32)[:40],  # truncated
            good[:13] + b"\x01\x00\x00",  # record length beyond the datagram
        ],
        DropReason.NOT_CLIENT_HELLO: [
            b"\x17\xfe\xfd" + bytes(40),  # application data from nobody
            b"\x15\xfe\xfd" + bytes(12) + b"\x02\x28",  # an alert
            client_hello_bytes(stranger, random_=b"\x01" * 32, epoch=1),
            good[:13] + b"\x02" + good[14:],  # a ServerHello type
        ],
        DropReason.ZERO_RANDOM: [client_hello_bytes(known, random_=bytes(32))],
        DropReason.OVERSIZE: [random.Random(1).randbytes(60_000)],
        DropReason.UNKNOWN_SESSION: [good],
    }

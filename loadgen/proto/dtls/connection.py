"""The legacy AnyConnect DTLS state machine for both roles (protocol.md §7.1-§7.5).

Driver contract (aioquic style, style.md): the caller feeds datagrams and
``now``, drains ``datagrams_to_send``, arms a timer from ``get_timer`` and
reads events from ``next_event``.  No clock, no sockets, randomness injected.
Every change of state goes through the table in ``states.py``; a call in the
wrong state raises ``LocalProtocolError`` naming role, state and trigger.

Abbreviated handshake (§7.2)::

    client                                   server
    ClientHello(session id)          -->
                                     <--  [HelloVerifyRequest(cookie)]
    [ClientHello(cookie), mseq 1]    -->
                                     <--  ServerHello | CCS | Finished  (three datagrams)
    CCS + Finished                   -->  (one datagram)
"""

from __future__ import annotations

import dataclasses
from collections import deque
from collections.abc import Callable, Sequence
from typing import Literal

from loadgen.proto.dtls import flights as fl
from loadgen.proto.dtls import handshake as hs
from loadgen.proto.dtls.ciphers import DTLS0_9, DTLS1_0, DTLS1_2
from loadgen.proto.dtls.errors import (
    AlertDescription,
    AlertLevel,
    DtlsAlertError,
    DtlsHandshakeError,
    FinishedMismatchError,
    UnknownSessionError,
)
from loadgen.proto.dtls.events import (
    AlertReceived,
    ApplicationDataReceived,
    ConnectionTerminated,
    DtlsEvent,
    HandshakeCompleted,
    HandshakeTimedOut,
)
from loadgen.proto.dtls.handshake import HandshakeType
from loadgen.proto.dtls.protection import RecordReader, RecordWriter
from loadgen.proto.dtls.records import (
    MAX_PLAINTEXT_LEN,
    SEQ_MASK,
    ContentType,
    Record,
    ReplayWindow,
    encode_record,
    iter_records_untrusted,
)
from loadgen.proto.dtls.session import (
    DEFAULT_RETRANSMIT_SCHEDULE_S,
    DtlsCounters,
    DtlsSession,
    Role,
    SessionLookup,
)
from loadgen.proto.dtls.states import INITIAL_STATE, RETRANSMITTING, State, Trigger, next_state
from loadgen.proto.errors import BadPacketError, LocalProtocolError

__all__ = ["DtlsConnection"]

#: epoch-1 records that arrive before the CCS (reordering), and application data
#: that arrives before the client's Finished; bounded so a peer cannot grow them.
MAX_BUFFERED_RECORDS = 16
#: A re-sent peer flight triggers our re-send (§7.1) unless we sent this recently
#: (e.g. our own timer fired at the same moment): no double sends.
MIN_TRIGGERED_RESEND_S = 0.1
#: Cookie size of our HelloVerifyRequest (tests of the client, §7.4)
COOKIE_LEN = 16
_EPOCH0_VERSIONS = frozenset((DTLS0_9, DTLS1_0, DTLS1_2))
_HANDSHAKE = int(ContentType.HANDSHAKE)
_CCS = int(ContentType.CHANGE_CIPHER_SPEC)
_ALERT = int(ContentType.ALERT)
_APP = int(ContentType.APPLICATION_DATA)
_EPOCH1 = 1 << 48

#: (content type, epoch, payload) per record; a flight is a list of datagrams
_Datagram = list[tuple[int, int, bytes]]
#: the per-record paths test these by identity (cheaper than the table lookup) and
#: consult the table only to raise; test_dtls_states checks they agree with it
_IDLE, _CLOSED, _ESTABLISHED = State.IDLE, State.CLOSED, State.ESTABLISHED


class DtlsConnection:
    """One DTLS association, client or server role.

    ``random_bytes(n)`` supplies client/server randoms, CBC IVs and the HVR cookie.
    Client: ``session`` (from the CONNECT answer), then ``connect(now)``.  Server:
    ``session`` or ``session_lookup(session_id)``; ``hello_verify=True`` answers the
    first ClientHello with a HelloVerifyRequest (Cisco style, for testing clients).
    ``hello_extensions`` overrides the hello's extensions (client default: none for 0.9,
    empty renegotiation_info for 1.2; server default: none).  ``retransmit_schedule_s``:
    flight sends at these offsets from its first send, the last one is the give-up time.
    """

    def __init__(
        self,
        role: Role,
        *,
        random_bytes: Callable[[int], bytes],
        session: DtlsSession | None = None,
        session_lookup: SessionLookup | None = None,
        hello_verify: bool = False,
        hello_extensions: hs.Extensions | Literal["default"] | None = "default",
        retransmit_schedule_s: Sequence[float] = DEFAULT_RETRANSMIT_SCHEDULE_S,
    ) -> None:
        schedule = tuple(float(t) for t in retransmit_schedule_s)
        if len(schedule) < 2 or schedule[0] < 0 or list(schedule) != sorted(schedule):
            raise LocalProtocolError("retransmit schedule: >= 2 non-decreasing offsets >= 0")
        if role is Role.CLIENT and (session is None or session_lookup or hello_verify):
            raise LocalProtocolError("a client needs a session, and no lookup or hello_verify")
        if role is Role.SERVER and session is None and session_lookup is None:
            raise LocalProtocolError("a server needs a session or a session_lookup")
        self.role = role
        self.counters = DtlsCounters()
        self._random = random_bytes
        self._session = session
        self._lookup = session_lookup
        self._hello_verify = hello_verify
        # override for fingerprint fidelity (e.g. openconnect's exact hello) and tests
        ext_types = (
            {t for t, _ in hello_extensions or ()} if hello_extensions != "default" else set()
        )
        if ext_types & hs.FORBIDDEN_EXTENSIONS:
            raise LocalProtocolError("never extended_master_secret or encrypt_then_mac (§7.4)")
        self._hello_extensions = hello_extensions
        self._schedule = schedule
        self._state = INITIAL_STATE[role]
        self._version = session.cipher.version if session else DTLS1_2
        self._events: deque[DtlsEvent] = deque()
        self._outbox: list[bytes] = []
        self._write_seq0 = 0
        self._write_seq1 = 0
        self._write_epoch = 0
        self._writer: RecordWriter | None = None
        self._reader: RecordReader | None = None
        self._pending_reader: RecordReader | None = None
        self._window0 = ReplayWindow()
        self._window1 = ReplayWindow()
        self._reassembler = hs.Reassembler()
        self._next_send_mseq = 0
        self._next_recv_mseq = 0
        self._transcript: list[bytes] = []
        self._cookie: bytes | None = None
        self._hello: hs.ClientHello | None = None
        self._hello_mseq = 0
        self._flight: list[_Datagram] = []
        self._flight_start = 0.0
        self._tx_index = 1
        self._resend_pending = False
        self._flight_sent_at = 0.0
        self._early_ccs = False
        self._future: list[Record] = []
        self._early_data: list[bytes] = []

    # -- public surface -------------------------------------------------------------

    @property
    def state(self) -> State:
        return self._state

    def _transition(self, trigger: Trigger) -> None:
        self._state = next_state(self.role, self._state, trigger)

    @property
    def session(self) -> DtlsSession | None:
        """The session being resumed (for a server: known once a ClientHello was accepted)."""
        return self._session

    @property
    def client_hello(self) -> hs.ClientHello | None:
        """Our ClientHello (client) or the one we answered (server)."""
        return self._hello

    def connect(self, now: float) -> None:
        """Client: send the ClientHello and start the retransmission schedule."""
        new_state = next_state(self.role, self._state, Trigger.CONNECT)  # raises first
        assert self._session is not None
        random = self._random(32)
        if len(random) != 32 or not any(random):
            raise LocalProtocolError("random_bytes(32) must give 32 bytes, not all zero (§7.1)")
        spec = self._session.cipher
        self._hello = hs.ClientHello(
            client_version=spec.version,
            random=random,
            session_id=self._session.session_id,
            cipher_suites=(spec.code,),
            extensions=self._client_extensions(spec.version),
        )
        self._state = new_state
        self._send_client_hello()
        self._start_flight_timer(now)

    def _client_extensions(self, version: int) -> hs.Extensions | None:
        if self._hello_extensions != "default":
            return self._hello_extensions
        # §7.4: nothing for 0.9; only an empty renegotiation_info for 1.2
        return None if version == DTLS0_9 else ((hs.EXT_RENEGOTIATION_INFO, b"\x00"),)

    def receive_datagram(self, data: bytes, now: float) -> None:
        state = self._state
        if state is _CLOSED:
            return
        if state is _IDLE:
            self._transition(Trigger.RECEIVE)  # not in the table: raises
        try:
            for record in iter_records_untrusted(data):
                self._handle_record(record, now)
                if self._state is _CLOSED:
                    return
        except BadPacketError:
            self.counters.datagrams_undecodable += 1

    def datagrams_to_send(self, now: float) -> list[bytes]:
        if self._resend_pending:
            # coalesced: one re-send however many copies of the peer's flight arrived
            self._resend_pending = False
            recent = now - self._flight_sent_at < MIN_TRIGGERED_RESEND_S
            if self._state is not State.CLOSED and self._flight and not recent:
                self._send_flight(now)
                self.counters.retransmits += 1
        out, self._outbox = self._outbox, []
        return out

    def get_timer(self) -> float | None:
        state = self._state
        if state is _ESTABLISHED or state not in RETRANSMITTING:  # skips Enum.__hash__
            return None
        return self._flight_start + self._schedule[self._tx_index]

    def handle_timer(self, now: float) -> None:
        deadline = self.get_timer()
        if deadline is None or now < deadline:
            return
        # compare absolute deadlines (the values get_timer() returned), never
        # now - start: float rounding would leave a due timer un-advanced
        start = self._flight_start
        last = len(self._schedule) - 1
        if now >= start + self._schedule[last]:
            self._flight = []
            self._transition(Trigger.TIME_OUT)
            self._events.append(HandshakeTimedOut(retransmits=self.counters.retransmits))
            return
        while self._tx_index < last and start + self._schedule[self._tx_index] <= now:
            self._tx_index += 1
        self._send_flight(now)
        self.counters.retransmits += 1

    def next_event(self) -> DtlsEvent | None:
        return self._events.popleft() if self._events else None

    def send_application_data(self, payload: bytes) -> None:
        """Queue one record; ``payload`` is already framed (type byte + packet, §7.7)."""
        if self._state is not _ESTABLISHED:
            self._transition(Trigger.SEND_APPLICATION_DATA)  # not in the table: raises
        writer = self._writer
        assert writer is not None  # set before the state can be ESTABLISHED
        if len(payload) > MAX_PLAINTEXT_LEN:
            raise LocalProtocolError(f"DTLS plaintext of {len(payload)} bytes > 16384")
        seq = self._write_seq1
        if seq > SEQ_MASK:
            raise LocalProtocolError("epoch 1 sequence numbers exhausted")
        self._write_seq1 = seq + 1
        self._outbox.append(writer.protect(_APP, _EPOCH1 | seq, payload))
        self.counters.records_protected += 1

    def close(self) -> None:
        """Send close_notify (if we have something to say it to) and terminate."""
        if self._state is State.CLOSED:
            return
        if self._state is not State.IDLE:
            self._outbox.append(self._encode(_ALERT, self._write_epoch, b"\x01\x00"))
        self._terminate(ConnectionTerminated(error=None, by_peer=False))

    # -- records ----------------------------------------------------------------------

    def _encode(self, content_type: int, epoch: int, payload: bytes) -> bytes:
        if epoch == 0:
            seq = self._write_seq0
            self._write_seq0 = seq + 1
            return encode_record(content_type, self._version, 0, seq, payload)
        assert self._writer is not None
        seq = self._write_seq1
        self._write_seq1 = seq + 1
        self.counters.records_protected += 1
        return self._writer.protect(content_type, _EPOCH1 | seq, payload)

    def _send_flight(self, now: float) -> None:
        self._flight_sent_at = now
        # each (re)transmission gets fresh record sequence numbers (RFC 6347 §4.2.4)
        for datagram in self._flight:
            self._outbox.append(b"".join(self._encode(t, e, p) for t, e, p in datagram))

    def _start_flight_timer(self, now: float) -> None:
        self._flight_start = now
        self._tx_index = 1
        self._send_flight(now)

    def _handle_record(self, record: Record, now: float) -> None:
        epoch_seq = record.epoch_seq
        epoch = epoch_seq >> 48
        counters = self.counters
        if epoch == 1:
            reader = self._reader
            if reader is None:
                if self._state in RETRANSMITTING and len(self._future) < MAX_BUFFERED_RECORDS:
                    self._future.append(record)
                else:
                    counters.records_dropped_unexpected += 1
                return
            if record.version != self._version:
                counters.records_dropped_unexpected += 1
                return
            seq = epoch_seq & SEQ_MASK
            if self._window1.is_replay(seq):
                counters.records_dropped_replay += 1
                return
            plaintext = reader.unprotect(record)
            if plaintext is None:
                counters.records_dropped_bad += 1
                return
            self._window1.mark(seq)
            counters.records_unprotected += 1
            if record.content_type == _APP and self._state is _ESTABLISHED:
                self._events.append(ApplicationDataReceived(data=plaintext))
                return
            self._dispatch(record.content_type, 1, plaintext, now)
        elif epoch == 0 and record.version in _EPOCH0_VERSIONS:
            seq = epoch_seq & SEQ_MASK
            if self._window0.is_replay(seq):
                counters.records_dropped_replay += 1
                return
            self._window0.mark(seq)
            self._dispatch(record.content_type, 0, record.fragment, now)
        else:
            counters.records_dropped_unexpected += 1

    def _dispatch(self, content_type: int, epoch: int, payload: bytes, now: float) -> None:
        if content_type == _HANDSHAKE:
            for frag in hs.parse_handshake_fragments_untrusted(payload):
                mseq = frag.message_seq
                if not frag.is_complete and not (
                    self._next_recv_mseq <= mseq < self._next_recv_mseq + 4
                ):
                    continue  # stale or far-future fragment: never buffered
                body = self._reassembler.add(frag)
                if body is not None:
                    self._on_handshake(frag.msg_type, mseq, body, epoch, now)
                    if self._state is State.CLOSED:
                        return
        elif content_type == _CCS and epoch == 0:
            hs.parse_change_cipher_spec_untrusted(self._version, payload)
            self._on_change_cipher_spec(now)
        elif content_type == _ALERT:
            self._on_alert(payload, epoch)
        elif content_type == _APP and self._state is State.WAIT_CLIENT_FINISHED and epoch == 1:
            if len(self._early_data) < MAX_BUFFERED_RECORDS:
                self._early_data.append(payload)
        else:
            self.counters.records_dropped_unexpected += 1

    def _on_change_cipher_spec(self, now: float) -> None:
        if self._state is State.WAIT_SERVER_HELLO:
            self._early_ccs = True  # reordered ahead of the ServerHello
        elif self._state in (State.WAIT_SERVER_FINISHED, State.WAIT_CLIENT_FINISHED):
            if self._reader is None:
                self._activate_read(now)
        else:
            self.counters.records_dropped_unexpected += 1

    def _activate_read(self, now: float) -> None:
        self._reader = self._pending_reader
        if self._version == DTLS0_9:
            self._next_recv_mseq += 1  # the 0.9 CCS consumes a message_seq (§7.4)
        future, self._future = self._future, []
        for record in future:
            if self._state is State.CLOSED:
                return
            self._handle_record(record, now)

    def _on_alert(self, payload: bytes, epoch: int) -> None:
        if len(payload) != 2:
            raise BadPacketError(f"alert of {len(payload)} bytes")
        if epoch == 0 and self._state is State.ESTABLISHED:
            # unauthenticated; a real peer protects its alerts once keys exist
            self.counters.records_dropped_unexpected += 1
            return
        error = DtlsAlertError(payload[0], payload[1])
        self._events.append(AlertReceived(level=error.level, description=error.description))
        if error.description == AlertDescription.CLOSE_NOTIFY:
            self._terminate(ConnectionTerminated(error=None, by_peer=True))
        elif error.is_fatal:
            self._terminate(ConnectionTerminated(error=error, by_peer=True))

    def _terminate(self, event: ConnectionTerminated) -> None:
        self._transition(Trigger.TERMINATE)
        self._flight = []
        self._future = []
        self._events.append(event)

    def _fail(self, error: DtlsHandshakeError) -> None:
        """Our verdict on the peer: a fatal alert, then terminate."""
        alert = bytes((AlertLevel.FATAL, error.alert))
        self._outbox.append(self._encode(_ALERT, self._write_epoch, alert))
        self._terminate(ConnectionTerminated(error=error, by_peer=False))

    # -- handshake --------------------------------------------------------------------

    def _on_handshake(self, msg_type: int, mseq: int, body: bytes, epoch: int, now: float) -> None:
        state = self._state
        if state is State.WAIT_CLIENT_HELLO:
            if msg_type == HandshakeType.CLIENT_HELLO and epoch == 0:
                self._server_on_client_hello(hs.parse_client_hello_untrusted(body), mseq, body, now)
            else:
                self.counters.records_dropped_unexpected += 1
        elif mseq < self._next_recv_mseq:
            self._on_old_message(msg_type, mseq, body)
        elif mseq > self._next_recv_mseq:
            self.counters.records_dropped_unexpected += 1  # the peer will retransmit
        elif state is State.WAIT_SERVER_HELLO and epoch == 0:
            if msg_type == HandshakeType.HELLO_VERIFY_REQUEST and self._cookie is None:
                hvr = hs.parse_hello_verify_request_untrusted(body)
                self._client_on_hello_verify(hvr, mseq, now)
            elif msg_type == HandshakeType.SERVER_HELLO:
                self._client_on_server_hello(hs.parse_server_hello_untrusted(body), mseq, body, now)
            else:
                self.counters.records_dropped_unexpected += 1
        elif (
            msg_type == HandshakeType.FINISHED
            and epoch == 1
            and state is State.WAIT_SERVER_FINISHED
        ):
            self._client_on_finished(hs.parse_finished_untrusted(body), mseq, now)
        elif (
            msg_type == HandshakeType.FINISHED
            and epoch == 1
            and state is State.WAIT_CLIENT_FINISHED
        ):
            self._server_on_finished(hs.parse_finished_untrusted(body), mseq)
        else:
            self.counters.records_dropped_unexpected += 1

    def _on_old_message(self, msg_type: int, mseq: int, body: bytes) -> None:
        """A message we already processed: the peer is retransmitting its flight."""
        if self.role is Role.CLIENT:
            if self._state is State.ESTABLISHED and msg_type in (
                HandshakeType.SERVER_HELLO,
                HandshakeType.FINISHED,
            ):
                self._resend_pending = True  # our CCS+Finished got lost (§7.1)
                return
        elif self._state is State.WAIT_CLIENT_FINISHED and msg_type == HandshakeType.CLIENT_HELLO:
            hello = hs.parse_client_hello_untrusted(body)
            assert self._hello is not None
            if mseq == self._hello_mseq and hello.random == self._hello.random:
                self._resend_pending = True
                return
        self.counters.records_dropped_unexpected += 1

    def _send_client_hello(self) -> None:
        assert self._hello is not None
        self._hello_mseq = self._next_send_mseq
        self._next_send_mseq += 1
        message = hs.encode_handshake(
            HandshakeType.CLIENT_HELLO, self._hello_mseq, self._hello.encode()
        )
        self._flight = [[(_HANDSHAKE, 0, message)]]

    def _client_on_hello_verify(self, hvr: hs.HelloVerifyRequest, mseq: int, now: float) -> None:
        # §7.4: the same ClientHello plus the cookie, message_seq 1; the first
        # ClientHello and the HVR stay out of the transcript (§11.2)
        assert self._hello is not None
        self._cookie = hvr.cookie
        self._next_recv_mseq = mseq + 1
        self._hello = dataclasses.replace(self._hello, cookie=hvr.cookie)
        self._send_client_hello()
        self._send_flight(now)  # a new flight, not a retransmission; the schedule keeps running

    def _client_on_server_hello(
        self, hello: hs.ServerHello, mseq: int, body: bytes, now: float
    ) -> None:
        assert self._session is not None and self._hello is not None
        error = fl.check_server_hello(self._session, hello)
        if error is not None:
            self._fail(error)
            return
        self._next_recv_mseq = mseq + 1
        self._transcript = fl.hello_transcript(
            self._version, (self._hello_mseq, self._hello.encode()), (mseq, body)
        )
        self._pending_reader, self._writer = fl.epoch1_state(
            self._session,
            client_random=self._hello.random,
            server_random=hello.random,
            client=True,
            random_bytes=self._random,
        )
        self._transition(Trigger.ACCEPT_SERVER_HELLO)
        if self._early_ccs:
            self._activate_read(now)

    def _client_on_finished(self, verify_data: bytes, mseq: int, now: float) -> None:
        assert self._session is not None
        spec, master = self._session.cipher, self._session.master_secret
        if not fl.verify_finished(spec, master, self._transcript, verify_data, from_server=True):
            self._fail(FinishedMismatchError("server Finished verify_data mismatch"))
            return
        fl.add_finished(spec, self._transcript, mseq, verify_data)
        self._next_recv_mseq = mseq + 1
        ccs, finished, self._next_send_mseq = fl.finished_message(
            spec, master, self._transcript, self._next_send_mseq, from_server=False
        )
        self._write_epoch = 1
        self._flight = [[(_CCS, 0, ccs), (_HANDSHAKE, 1, finished)]]
        self._send_flight(now)
        self._complete()

    def _complete(self) -> None:
        assert self._session is not None
        self._transition(Trigger.VERIFY_FINISHED)
        self._transcript = []
        self._events.append(
            HandshakeCompleted(
                version=self._version,
                cipher_name=self._session.cipher.name,
                retransmits=self.counters.retransmits,
            )
        )

    def _server_on_client_hello(
        self, hello: hs.ClientHello, mseq: int, body: bytes, now: float
    ) -> None:
        if hello.client_version in _EPOCH0_VERSIONS:
            self._version = hello.client_version  # for an alert before we know the session
        if self._hello_verify and (self._cookie is None or hello.cookie != self._cookie):
            if self._cookie is None:
                self._cookie = self._random(COOKIE_LEN)
            # RFC 6347 §4.2.1: DTLS 1.0 version in the HVR; 0.9 stays 0.9
            version = DTLS0_9 if hello.client_version == DTLS0_9 else DTLS1_0
            hvr = hs.HelloVerifyRequest(server_version=version, cookie=self._cookie)
            message = hs.encode_handshake(HandshakeType.HELLO_VERIFY_REQUEST, mseq, hvr.encode())
            seq = self._write_seq0
            self._write_seq0 = seq + 1
            self._outbox.append(encode_record(_HANDSHAKE, version, 0, seq, message))
            return
        session = self._session
        if session is None or session.session_id != hello.session_id:
            session = self._lookup(hello.session_id) if self._lookup else None
        if session is None:
            self._fail(UnknownSessionError(f"no DTLS session {hello.session_id.hex()}"))
            return
        spec = session.cipher
        self._session = session
        self._version = spec.version
        error = fl.check_client_hello(session, hello)
        if error is not None:
            self._fail(error)
            return
        self._hello, self._hello_mseq = hello, mseq
        self._next_recv_mseq = mseq + 1
        server_hello = hs.ServerHello(
            server_version=spec.version,
            random=self._random(32),
            session_id=hello.session_id,
            cipher_suite=spec.code,
            extensions=None if self._hello_extensions == "default" else self._hello_extensions,
        )
        sh_body = server_hello.encode()
        self._pending_reader, self._writer = fl.epoch1_state(
            session,
            client_random=hello.random,
            server_random=server_hello.random,
            client=False,
            random_bytes=self._random,
        )
        self._transcript = fl.hello_transcript(spec.version, (mseq, body), (mseq, sh_body))
        ccs, finished, self._next_send_mseq = fl.finished_message(
            spec, session.master_secret, self._transcript, mseq + 1, from_server=True
        )
        self._write_epoch = 1
        # three datagrams, as ocserv sends them (§7.4)
        self._flight = [
            [(_HANDSHAKE, 0, hs.encode_handshake(HandshakeType.SERVER_HELLO, mseq, sh_body))],
            [(_CCS, 0, ccs)],
            [(_HANDSHAKE, 1, finished)],
        ]
        self._transition(Trigger.ACCEPT_CLIENT_HELLO)
        self._start_flight_timer(now)

    def _server_on_finished(self, verify_data: bytes, mseq: int) -> None:
        assert self._session is not None
        spec, master = self._session.cipher, self._session.master_secret
        if not fl.verify_finished(spec, master, self._transcript, verify_data, from_server=False):
            self._fail(FinishedMismatchError("client Finished verify_data mismatch"))
            return
        self._next_recv_mseq = mseq + 1
        self._flight = []
        self._complete()
        early, self._early_data = self._early_data, []
        self._events.extend(ApplicationDataReceived(data=data) for data in early)

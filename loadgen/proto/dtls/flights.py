"""Pure handshake steps shared by both roles (protocol.md §7.2, §7.4).

No state here: the connection owns the state and calls these to check hellos,
build the epoch-1 record state and produce or verify Finished messages.
"""

from __future__ import annotations

from collections.abc import Callable

from cryptography.hazmat.primitives import constant_time

from loadgen.proto.dtls import handshake as hs
from loadgen.proto.dtls.ciphers import DTLS0_9, CipherSpec
from loadgen.proto.dtls.errors import (
    AlertDescription,
    DtlsHandshakeError,
    FullHandshakeRefusedError,
    NegotiationMismatchError,
)
from loadgen.proto.dtls.handshake import HandshakeType
from loadgen.proto.dtls.prf import derive_key_block, finished_verify_data
from loadgen.proto.dtls.protection import RecordReader, RecordWriter, make_reader, make_writer
from loadgen.proto.dtls.session import DtlsSession

__all__ = [
    "add_finished",
    "check_client_hello",
    "check_server_hello",
    "epoch1_state",
    "finished_message",
    "hello_transcript",
    "verify_finished",
]


def check_server_hello(session: DtlsSession, hello: hs.ServerHello) -> DtlsHandshakeError | None:
    """Client side: the server must resume our session with our suite (§7.2)."""
    spec = session.cipher
    if hello.session_id != session.session_id:
        return FullHandshakeRefusedError("the ServerHello does not resume our session id")
    got = (hello.server_version, hello.cipher_suite, hello.compression_method)
    if got != (spec.version, spec.code, 0):
        return NegotiationMismatchError(
            f"ServerHello version 0x{got[0]:04x} suite 0x{got[1]:04x}"
            f" compression {got[2]}, expected {spec!r}"
        )
    return None


def check_client_hello(session: DtlsSession, hello: hs.ClientHello) -> DtlsHandshakeError | None:
    """Server side: the hello must speak the session's version and offer its suite."""
    spec = session.cipher
    if hello.client_version != spec.version:
        error = NegotiationMismatchError(f"ClientHello version 0x{hello.client_version:04x}")
        error.alert = AlertDescription.PROTOCOL_VERSION
        return error
    if spec.code not in hello.cipher_suites or 0 not in hello.compression_methods:
        error = NegotiationMismatchError(f"ClientHello does not offer {spec!r} / null compression")
        error.alert = AlertDescription.HANDSHAKE_FAILURE
        return error
    return None


def epoch1_state(
    session: DtlsSession,
    *,
    client_random: bytes,
    server_random: bytes,
    client: bool,
    random_bytes: Callable[[int], bytes],
) -> tuple[RecordReader, RecordWriter]:
    """Derive the key block once and build this side's epoch-1 reader and writer."""
    spec = session.cipher
    keys = derive_key_block(
        spec, session.master_secret, client_random=client_random, server_random=server_random
    )
    reader = make_reader(spec, keys, client=not client)
    return reader, make_writer(spec, keys, client=client, random_bytes=random_bytes)


def hello_transcript(
    version: int, client_hello: tuple[int, bytes], server_hello: tuple[int, bytes]
) -> list[bytes]:
    """The transcript starts at the ClientHello the server answered (§7.4, §11.2)."""
    return [
        hs.transcript_entry(version, HandshakeType.CLIENT_HELLO, *client_hello),
        hs.transcript_entry(version, HandshakeType.SERVER_HELLO, *server_hello),
    ]


def finished_message(
    spec: CipherSpec, master: bytes, transcript: list[bytes], mseq: int, *, from_server: bool
) -> tuple[bytes, bytes, int]:
    """(CCS body, Finished message, next message_seq).  The DTLS 0.9 CCS consumes
    ``mseq`` and the Finished takes the next one (§7.4).  Appends to ``transcript``."""
    ccs = hs.encode_change_cipher_spec(spec.version, mseq)
    if spec.version == DTLS0_9:
        mseq += 1
    verify = finished_verify_data(spec, master, from_server=from_server, messages=transcript)
    add_finished(spec, transcript, mseq, verify)
    return ccs, hs.encode_handshake(HandshakeType.FINISHED, mseq, verify), mseq + 1


def verify_finished(
    spec: CipherSpec,
    master: bytes,
    transcript: list[bytes],
    verify_data: bytes,
    *,
    from_server: bool,
) -> bool:
    expected = finished_verify_data(spec, master, from_server=from_server, messages=transcript)
    return constant_time.bytes_eq(verify_data, expected)


def add_finished(spec: CipherSpec, transcript: list[bytes], mseq: int, verify_data: bytes) -> None:
    transcript.append(hs.transcript_entry(spec.version, HandshakeType.FINISHED, mseq, verify_data))

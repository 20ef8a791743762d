"""Our client against an independent, hand-built Cisco-style DTLS 0.9 server.

The server side follows openconnect's ``tests/bad_dtls_test.c`` (sailfishos-mirror/
openconnect, protocol.md §13): HelloVerifyRequest with record seq 0; ServerHello with
record seq 1, message_seq 1 and no extensions block; CCS ``01 00 02`` with record seq 2;
Finished message_seq 3 in epoch 1; transcript = bodies of the second ClientHello and the
ServerHello only.  Crypto here uses the standard library's hmac/hashlib plus a one-shot
AES-CBC, not the code under test.  The replay-window sequence list is the one from that
test (``tests[]``), which once caught OpenSSL bugs.
"""

from __future__ import annotations

import hashlib
import hmac
import random
import struct

from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

from loadgen.proto.dtls import (
    DTLS_CIPHERS_HEADER,
    ApplicationDataReceived,
    DtlsConnection,
    DtlsSession,
    HandshakeCompleted,
    Role,
    lookup_cipher,
)
from tests.proto.dtls.dtls_testlib import events, seeded_random

RNG = random.Random(2016)

SEQ_TESTS = [  # (sequence number, dropped?) from bad_dtls_test.c
    (1, 0), (3, 0), (2, 0), (0x1234, 0), (0x1230, 0), (0x1235, 0), (0xFFFF, 0),
    (0x10001, 0), (0xFFFE, 0), (0x10000, 0), (0x10001, 1), (0xFF, 1), (0x100000, 0),
    (0x800000, 0), (0x7FFFE1, 0), (0xFFFFFF, 0), (0x1000000, 0), (0xFFFFFE, 0),
    (0xFFFFFF, 1), (0x1000010, 0), (0xFFFFFD, 0), (0x1000011, 0), (0x12, 1),
    (0x1000012, 0), (0x1FFFFFF, 0), (0x2000000, 0), (0x1FF00FE, 1), (0x2000001, 0),
    (0x20FFFFF, 0), (0x2105500, 0), (0x20FFFFE, 1), (0x21054FF, 0), (0x211FFFF, 0),
    (0x2110000, 1), (0x2120000, 0),
]  # fmt: skip


def _p_hash(name: str, secret: bytes, seed: bytes, n: int) -> bytes:
    out, a = b"", seed
    while len(out) < n:
        a = hmac.new(secret, a, name).digest()
        out += hmac.new(secret, a + seed, name).digest()
    return out[:n]


def _prf10(secret: bytes, label: bytes, seed: bytes, n: int) -> bytes:
    md5 = _p_hash("md5", secret[:24], label + seed, n)
    sha = _p_hash("sha1", secret[24:], label + seed, n)
    return bytes(x ^ y for x, y in zip(md5, sha, strict=True))


class CiscoServer:
    """Just enough of bad_dtls_test.c's server, for AES128-SHA."""

    def __init__(self, session_id: bytes, master: bytes) -> None:
        self.session_id, self.master = session_id, master
        self.cookie = RNG.randbytes(20)
        self.server_random = RNG.randbytes(32)
        self.transcript = b""

    @staticmethod
    def record(ctype: int, epoch: int, seq: int, body: bytes) -> bytes:
        return (
            struct.pack("!BHH", ctype, 0x0100, epoch)
            + seq.to_bytes(6)
            + len(body).to_bytes(2)
            + body
        )

    @staticmethod
    def message(mtype: int, mseq: int, body: bytes) -> bytes:
        n = len(body).to_bytes(3)
        return bytes([mtype]) + n + mseq.to_bytes(2) + b"\x00\x00\x00" + n + body

    def parse_client_hello(self, datagram: bytes) -> tuple[int, bytes, bytes]:
        """(message_seq, cookie, body) of a ClientHello datagram, checking the fixed parts."""
        assert datagram[:3] == b"\x16\x01\x00" and datagram[13] == 1
        body = datagram[25:]
        assert body[:2] == b"\x01\x00" and body[34] == 32 and body[35:67] == self.session_id
        cookie = body[68 : 68 + body[67]]
        rest = body[68 + len(cookie) :]
        assert rest == b"\x00\x02\x00\x2f\x01\x00"  # one suite, null compression, no extensions
        self.client_random = body[2:34]
        return int.from_bytes(datagram[17:19]), cookie, body

    def hello_verify(self) -> bytes:
        body = b"\x01\x00" + bytes([len(self.cookie)]) + self.cookie
        return self.record(22, 0, 0, self.message(3, 0, body))

    def server_flight(self, client_hello_body: bytes) -> bytes:
        sh = b"\x01\x00" + self.server_random + b"\x20" + self.session_id + b"\x00\x2f\x00"
        self.transcript = client_hello_body + sh  # DTLS 0.9: bodies only (§7.4)
        block = _prf10(self.master, b"key expansion", self.server_random + self.client_random, 104)
        self.client_mac, self.server_mac = block[:20], block[20:40]
        self.client_key, self.server_key = block[40:56], block[56:72]
        verify = self.verify(b"server finished", self.transcript)
        self.transcript += verify
        return (
            self.record(22, 0, 1, self.message(2, 1, sh))
            + self.record(20, 0, 2, b"\x01\x00\x02")
            + self.protect(22, 0, self.message(20, 3, verify))
        )

    def verify(self, label: bytes, transcript: bytes) -> bytes:
        digest = hashlib.md5(transcript).digest() + hashlib.sha1(transcript).digest()
        return _prf10(self.master, label, digest, 12)

    def protect(self, ctype: int, seq: int, payload: bytes) -> bytes:
        pseudo = b"\x00\x01" + seq.to_bytes(6) + bytes([ctype]) + b"\x01\x00"
        mac = hmac.new(self.server_mac, pseudo + len(payload).to_bytes(2) + payload, "sha1")
        pad = 15 - ((len(payload) + 20) % 16)
        iv = RNG.randbytes(16)
        encryptor = Cipher(algorithms.AES(self.server_key), modes.CBC(iv)).encryptor()
        data = payload + mac.digest() + bytes([pad]) * (pad + 1)
        fragment = iv + encryptor.update(data) + encryptor.finalize()
        return self.record(ctype, 1, seq, fragment)

    def unprotect(self, record: bytes) -> bytes:
        decryptor = Cipher(algorithms.AES(self.client_key), modes.CBC(record[13:29])).decryptor()
        plain = decryptor.update(record[29:]) + decryptor.finalize()
        plain = plain[: -plain[-1] - 1]
        payload, mac = plain[:-20], plain[-20:]
        pseudo = record[3:11] + record[:3] + len(payload).to_bytes(2)
        assert hmac.compare_digest(
            mac, hmac.new(self.client_mac, pseudo + payload, "sha1").digest()
        )
        return payload


def test_client_completes_against_the_cisco_style_server() -> None:
    session_id, master = RNG.randbytes(32), RNG.randbytes(48)
    session = DtlsSession(
        session_id=session_id,
        master_secret=master,
        cipher=lookup_cipher(DTLS_CIPHERS_HEADER, "AES128-SHA"),
    )
    client = DtlsConnection(Role.CLIENT, session=session, random_bytes=seeded_random(11))
    server = CiscoServer(session_id, master)
    client.connect(0.0)
    (first,) = client.datagrams_to_send(0.0)
    assert server.parse_client_hello(first)[:2] == (0, b"")
    client.receive_datagram(server.hello_verify(), 0.1)
    (second,) = client.datagrams_to_send(0.1)
    mseq, cookie, body = server.parse_client_hello(second)
    assert (mseq, cookie) == (1, server.cookie)
    assert second[5:11] == (1).to_bytes(6)  # the next record sequence number
    client.receive_datagram(server.server_flight(body), 0.2)
    assert events(client) == [
        HandshakeCompleted(version=0x0100, cipher_name="AES128-SHA", retransmits=0)
    ]
    (final,) = client.datagrams_to_send(0.2)
    # validate_ccs(): CCS 01 00 02 in epoch 0, then a Finished record in epoch 1
    assert final[:16] == bytes.fromhex("14 0100 0000 000000000002 0003 010002")
    finished = final[16:]
    assert finished[:5] == bytes.fromhex("16 0100 0001")
    plain = server.unprotect(finished)
    assert plain[:12] == bytes.fromhex("14 00000c 0003 000000 00000c")
    assert plain[12:] == server.verify(b"client finished", server.transcript)
    # data in both directions; the replay-window sequence list of bad_dtls_test.c
    for seq, dropped in SEQ_TESTS:
        client.receive_datagram(server.protect(23, seq, seq.to_bytes(8)), 1.0)
        got = events(client)
        if dropped:
            assert got == [], hex(seq)
        else:
            assert got == [ApplicationDataReceived(data=seq.to_bytes(8))], hex(seq)
    assert client.counters.records_dropped_replay == sum(d for _, d in SEQ_TESTS)
    client.send_application_data(b"\x00ping")
    (upstream,) = client.datagrams_to_send(1.0)
    assert server.unprotect(upstream) == b"\x00ping"

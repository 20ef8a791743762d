"""Known-answer tests from captured openconnect 9.01 <-> ocserv 1.1.6 exchanges.

Vectors: vectors/protocol-test-vectors.json beside this file (docs/protocol.md §10.2), and
docs/protocol.md §10.1 for the DTLS 0.9 literals repeated below.
"""

from __future__ import annotations

from typing import Any

import pytest
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

from loadgen.proto.dtls import (
    DTLS0_9,
    DTLS1_2,
    DTLS12_CIPHERS_HEADER,
    ApplicationDataReceived,
    DtlsConnection,
    HandshakeCompleted,
    Role,
    lookup_cipher,
    parse_client_hello_datagram_untrusted,
)
from loadgen.proto.dtls import handshake as hs
from loadgen.proto.dtls.flights import hello_transcript
from loadgen.proto.dtls.prf import derive_key_block, finished_verify_data
from loadgen.proto.dtls.protection import make_reader, make_writer
from loadgen.proto.dtls.records import ContentType, encode_record, parse_records_untrusted
from tests.proto.dtls.dtls_testlib import (
    MASTER_KEY,
    ScriptedRandom,
    events,
    load_vectors,
    record_bytes,
    vector_session,
    vector_spec,
)

VECTORS = load_vectors()
LEGACY = [v for v in VECTORS if v["label"].startswith("legacy")]
PSK = next(v for v in VECTORS if v["label"].startswith("PSK"))
IDS = [v["label"] for v in LEGACY]

# protocol.md §10.1 (DTLS 0.9 AES128-SHA)
V09_SERVER_VERIFY = bytes.fromhex("deeb6001b1408252dd36f587")
V09_CLIENT_VERIFY = bytes.fromhex("3d12b73e499fcb6029302f32")
V09_APP_PLAINTEXT = bytes.fromhex(
    "00"
    "6000000000240001fe800000000000000c9008b4a9aefbb5ff0200000000000000000000000000163a"
    "000502000001008f00b9fc0000000104000000ff0200000000000000000001ffaefbb5"
)
V09_APP_MAC = bytes.fromhex("c1e0a0c37809e97159565a3a6181ae4556c751ca")


def test_there_are_three_legacy_vectors() -> None:
    assert [vector_spec(v).version for v in LEGACY] == [DTLS0_9, DTLS1_2, DTLS1_2]
    assert [vector_spec(v).code for v in LEGACY] == [0x002F, 0x009D, 0x009D]
    assert all(int(v["cipher_suite_code"], 16) == vector_spec(v).code for v in LEGACY)


def _wire(v: dict[str, Any], index: int) -> bytes:
    return record_bytes(v["records_in_wire_order"][index])


def _keys(v: dict[str, Any]) -> Any:
    return derive_key_block(
        vector_spec(v),
        bytes.fromhex(v[MASTER_KEY]),
        client_random=bytes.fromhex(v["client_random"]),
        server_random=bytes.fromhex(v["server_random"]),
    )


def _hello_bodies(v: dict[str, Any]) -> tuple[bytes, bytes]:
    ch = hs.parse_handshake_fragments_untrusted(parse_records_untrusted(_wire(v, 0))[0].fragment)
    sh = hs.parse_handshake_fragments_untrusted(parse_records_untrusted(_wire(v, 1))[0].fragment)
    return ch[0].body, sh[0].body


def _finished_plaintext(v: dict[str, Any], index: int) -> bytes:
    (record,) = parse_records_untrusted(_wire(v, index))
    from_client = v["records_in_wire_order"][index]["from"] == "client"
    plaintext = make_reader(vector_spec(v), _keys(v), client=from_client).unprotect(record)
    assert plaintext is not None
    return plaintext


@pytest.mark.parametrize("v", LEGACY, ids=IDS)
def test_key_block(v: dict[str, Any]) -> None:
    keys = _keys(v)
    kb = v["key_block"]
    assert keys.client_write_key.hex() == kb["client_write_key"]
    assert keys.server_write_key.hex() == kb["server_write_key"]
    if vector_spec(v).is_aead:
        assert keys.client_write_salt.hex() == kb["client_write_salt(4)"]
        assert keys.server_write_salt.hex() == kb["server_write_salt(4)"]
        assert keys.client_write_mac_key == b""
    else:
        assert keys.client_write_mac_key.hex() == kb["client_write_MAC_key"]
        assert keys.server_write_mac_key.hex() == kb["server_write_MAC_key"]


@pytest.mark.parametrize("v", LEGACY, ids=IDS)
def test_parse_captured_client_hello(v: dict[str, Any]) -> None:
    spec = vector_spec(v)
    raw = _wire(v, 0)
    (record,) = parse_records_untrusted(raw)
    assert (record.content_type, record.version, record.epoch, record.seq) == (
        22,
        spec.version,
        0,
        0,
    )
    (frag,) = hs.parse_handshake_fragments_untrusted(record.fragment)
    assert (frag.msg_type, frag.message_seq, frag.is_complete) == (1, 0, True)
    hello = hs.parse_client_hello_untrusted(frag.body)
    assert hello.client_version == spec.version
    assert hello.random.hex() == v["client_random"]
    assert hello.session_id.hex() == v["X-DTLS-Session-ID"]
    assert hello.cookie == b""
    assert hello.cipher_suites == (spec.code,)
    assert hello.compression_methods == b"\x00"
    assert hello.extensions is not None
    ext_types = [t for t, _ in hello.extensions]
    # openconnect: session_ticket, renegotiation_info, record_size_limit (+ sig_algs for 1.2), §7.4
    assert ext_types[-3:] == [0x0023, 0xFF01, 0x001C]
    assert 0x0017 not in ext_types and 0x0016 not in ext_types
    # codec round trip down to the record bytes
    assert hello.encode() == frag.body
    rebuilt = encode_record(22, spec.version, 0, 0, hs.encode_handshake(1, 0, hello.encode()))
    assert rebuilt == raw
    assert parse_client_hello_datagram_untrusted(raw) == hello


@pytest.mark.parametrize("v", LEGACY, ids=IDS)
def test_parse_captured_server_hello_and_ccs(v: dict[str, Any]) -> None:
    spec = vector_spec(v)
    raw = _wire(v, 1)
    (record,) = parse_records_untrusted(raw)
    (frag,) = hs.parse_handshake_fragments_untrusted(record.fragment)
    assert (frag.msg_type, frag.message_seq) == (2, 0)
    hello = hs.parse_server_hello_untrusted(frag.body)
    assert hello.server_version == spec.version
    assert hello.random.hex() == v["server_random"]
    assert hello.session_id.hex() == v["X-DTLS-Session-ID"]  # resumption echoes the id
    assert (hello.cipher_suite, hello.compression_method) == (spec.code, 0)
    assert hello.extensions == ((0x001C, b"\x40\x00"),)  # ocserv's record_size_limit
    assert encode_record(22, spec.version, 0, 0, hs.encode_handshake(2, 0, hello.encode())) == raw
    # CCS: epoch 0, record seq 1; 3 bytes consuming message_seq 1 in DTLS 0.9 (§7.4)
    for index in (2, 4):
        (ccs,) = parse_records_untrusted(_wire(v, index))
        assert (ccs.content_type, ccs.epoch, ccs.seq) == (20, 0, 1)
        hs.parse_change_cipher_spec_untrusted(spec.version, ccs.fragment)
        assert ccs.fragment == hs.encode_change_cipher_spec(spec.version, 1)
    assert (parse_records_untrusted(_wire(v, 2))[0].fragment == b"\x01\x00\x01") == (
        spec.version == DTLS0_9
    )


@pytest.mark.parametrize("v", LEGACY, ids=IDS)
def test_both_finished_verify_data(v: dict[str, Any]) -> None:
    spec = vector_spec(v)
    master = bytes.fromhex(v[MASTER_KEY])
    ch, sh = _hello_bodies(v)
    finished_mseq = 2 if spec.version == DTLS0_9 else 1  # the 0.9 CCS consumes mseq 1
    server_plain = _finished_plaintext(v, 3)
    client_plain = _finished_plaintext(v, 5)
    header = hs.encode_handshake(20, finished_mseq, bytes(12))[:12]
    assert server_plain[:12] == header and client_plain[:12] == header
    transcript = hello_transcript(spec.version, (0, ch), (0, sh))
    server_verify = finished_verify_data(spec, master, from_server=True, messages=transcript)
    assert server_plain[12:] == server_verify
    transcript.append(hs.transcript_entry(spec.version, 20, finished_mseq, server_verify))
    client_verify = finished_verify_data(spec, master, from_server=False, messages=transcript)
    assert client_plain[12:] == client_verify
    if spec.version == DTLS0_9:
        assert (server_verify, client_verify) == (V09_SERVER_VERIFY, V09_CLIENT_VERIFY)
        # the 0.9 rule matters: hashing the full messages gives something else
        full = [hs.encode_handshake(1, 0, ch), hs.encode_handshake(2, 0, sh)]
        assert finished_verify_data(spec, master, from_server=True, messages=full) != server_verify
    else:
        bodies_only = [ch, sh]
        assert finished_verify_data(spec, master, from_server=True, messages=bodies_only) != (
            server_verify
        )


@pytest.mark.parametrize("v", LEGACY, ids=IDS)
@pytest.mark.parametrize("index", [3, 5], ids=["server", "client"])
def test_reproduce_finished_record_bytes(v: dict[str, Any], index: int) -> None:
    """Same keys, same IV (CBC) or the epoch||seq nonce (GCM): identical record bytes."""
    spec = vector_spec(v)
    raw = _wire(v, index)
    from_client = index == 5
    iv = raw[13 : 13 + 16]
    writer = make_writer(
        spec,
        _keys(v),
        client=from_client,
        random_bytes=ScriptedRandom([] if spec.is_aead else [iv]),
    )
    assert writer.protect(22, 1 << 48, _finished_plaintext(v, index)) == raw


@pytest.mark.parametrize("v", LEGACY, ids=IDS)
def test_decrypt_and_reproduce_application_record(v: dict[str, Any]) -> None:
    spec = vector_spec(v)
    entry = v["first_application_records"][2]
    raw = record_bytes(entry)
    assert len(raw) == 13 + entry["record_len"]
    (record,) = parse_records_untrusted(raw)
    assert (record.content_type, record.epoch, record.seq) == (23, 1, 2)
    plaintext = make_reader(spec, _keys(v), client=False).unprotect(record)
    assert plaintext is not None
    # §7.7: DATA (00) + a 76-byte IPv6 router solicitation from the gateway
    assert len(plaintext) == 77 and plaintext[:2] == b"\x00\x60"
    assert plaintext[9:17] == bytes.fromhex("fe80000000000000")
    if spec.version == DTLS0_9:
        assert plaintext == V09_APP_PLAINTEXT
    iv = raw[13:29]
    writer = make_writer(
        spec, _keys(v), client=False, random_bytes=ScriptedRandom([] if spec.is_aead else [iv])
    )
    assert writer.protect(23, (1 << 48) | 2, plaintext) == raw
    # tampering with any one byte of the fragment makes the record invalid
    reader = make_reader(spec, _keys(v), client=False)
    for position in range(13, len(raw)):
        bad = bytearray(raw)
        bad[position] ^= 0x01
        assert reader.unprotect(parse_records_untrusted(bytes(bad))[0]) is None


def test_dtls09_application_record_mac_and_padding() -> None:
    """protocol.md §10.1: MAC c1e0..., 14 bytes of padding 0e + length byte 0e."""
    v = LEGACY[0]
    raw = record_bytes(v["first_application_records"][2])
    key = bytes.fromhex(v["key_block"]["server_write_key"])
    decryptor = Cipher(algorithms.AES(key), modes.CBC(raw[13:29])).decryptor()
    padded = decryptor.update(raw[29:]) + decryptor.finalize()
    assert padded[:77] == V09_APP_PLAINTEXT
    assert padded[77:97] == V09_APP_MAC
    assert padded[97:] == b"\x0e" * 15


@pytest.mark.parametrize("v", LEGACY, ids=IDS)
def test_truncated_mtu_probes_decrypt_with_derived_keys(v: dict[str, Any]) -> None:
    """The first application records are DPD MTU probes (§7.8), stored truncated: decrypt
    their start with the derived keys and the §7.5 IV/nonce layout."""
    spec, keys = vector_spec(v), _keys(v)
    starts = []
    for entry in v["first_application_records"][:2]:
        raw = record_bytes(entry)
        assert int.from_bytes(raw[11:13]) == entry["record_len"] > len(raw) - 13
        from_client = entry["from"] == "client"
        key = keys.client_write_key if from_client else keys.server_write_key
        fragment = raw[13:]
        if spec.is_aead:
            salt = keys.client_write_salt if from_client else keys.server_write_salt
            assert fragment[:8] == raw[3:11]  # explicit nonce = epoch || seq
            counter = salt + fragment[:8] + b"\x00\x00\x00\x02"  # GCM: CTR from J0 + 1
            decryptor = Cipher(algorithms.AES(key), modes.CTR(counter)).decryptor()
            start = decryptor.update(fragment[8:])
        else:
            blocks = (len(fragment) - 16) // 16 * 16
            decryptor = Cipher(algorithms.AES(key), modes.CBC(fragment[:16])).decryptor()
            start = decryptor.update(fragment[16 : 16 + blocks])
        starts.append(start)
    request, response = starts
    assert request[0] == 0x03 and response[0] == 0x04  # DPD-REQ, echoed as DPD-RESP
    assert request[1:] == response[1:]
    assert request[5:] == bytes(len(request) - 5)  # probe id, then zeros


def _ext(v: dict[str, Any], index: int) -> Any:
    (record,) = parse_records_untrusted(_wire(v, index))
    (frag,) = hs.parse_handshake_fragments_untrusted(record.fragment)
    if index == 0:
        return hs.parse_client_hello_untrusted(frag.body).extensions
    return hs.parse_server_hello_untrusted(frag.body).extensions


@pytest.mark.parametrize("v", LEGACY, ids=IDS)
def test_our_client_replays_the_capture_byte_for_byte(v: dict[str, Any]) -> None:
    """With openconnect's extensions and the captured random/IV, our client emits the
    captured bytes and accepts ocserv's real flight."""
    spec = vector_spec(v)
    client_fin = _wire(v, 5)
    script = [bytes.fromhex(v["client_random"])] + ([] if spec.is_aead else [client_fin[13:29]])
    client = DtlsConnection(
        Role.CLIENT,
        session=vector_session(v),
        random_bytes=ScriptedRandom(script),
        hello_extensions=_ext(v, 0),
    )
    client.connect(0.0)
    assert client.datagrams_to_send(0.0) == [_wire(v, 0)]
    for index in (1, 2, 3):  # three datagrams, as ocserv sends them
        client.receive_datagram(_wire(v, index), 0.1)
    assert client.datagrams_to_send(0.1) == [_wire(v, 4) + client_fin]
    assert events(client) == [
        HandshakeCompleted(version=spec.version, cipher_name=spec.name, retransmits=0)
    ]
    client.receive_datagram(record_bytes(v["first_application_records"][2]), 0.2)
    (event,) = events(client)
    assert isinstance(event, ApplicationDataReceived) and len(event.data) == 77
    assert client.counters.records_unprotected == 2


@pytest.mark.parametrize("v", LEGACY, ids=IDS)
def test_our_server_replays_the_capture_byte_for_byte(v: dict[str, Any]) -> None:
    spec = vector_spec(v)
    server_fin = _wire(v, 3)
    app = record_bytes(v["first_application_records"][2])
    ivs = [] if spec.is_aead else [server_fin[13:29], bytes(16), app[13:29]]
    server = DtlsConnection(
        Role.SERVER,
        session=vector_session(v),
        random_bytes=ScriptedRandom([bytes.fromhex(v["server_random"]), *ivs]),
        hello_extensions=_ext(v, 1),
    )
    server.receive_datagram(_wire(v, 0), 0.0)
    assert server.datagrams_to_send(0.0) == [_wire(v, 1), _wire(v, 2), server_fin]
    server.receive_datagram(_wire(v, 4), 0.1)
    assert events(server) == []
    server.receive_datagram(_wire(v, 5), 0.1)
    assert events(server) == [
        HandshakeCompleted(version=spec.version, cipher_name=spec.name, retransmits=0)
    ]
    assert server.datagrams_to_send(0.1) == []
    # ocserv's epoch-1 seq 1 was a DPD answer; ours is a filler, then seq 2 matches exactly
    (record,) = parse_records_untrusted(app)
    plaintext = make_reader(spec, _keys(v), client=False).unprotect(record)
    assert plaintext is not None
    server.send_application_data(b"\x07")
    server.send_application_data(plaintext)
    assert server.datagrams_to_send(0.2)[1] == app


def test_psk_vector_key_block_and_finished() -> None:
    """The PSK-NEGOTIATE vector (§7.6) is not legacy mode, but its key block (P_SHA384),
    GCM records and DTLS 1.2 Finished (full-header transcript) use the same code."""
    spec = lookup_cipher(DTLS12_CIPHERS_HEADER, "AES256-GCM-SHA384")  # same layout as 0x00A9
    master = bytes.fromhex(PSK["master_secret"])
    keys = derive_key_block(
        spec,
        master,
        client_random=bytes.fromhex(PSK["client_random"]),
        server_random=bytes.fromhex(PSK["server_random"]),
    )
    assert keys.client_write_key.hex() == PSK["client_write_key"]
    assert keys.server_write_key.hex() == PSK["server_write_key"]
    assert keys.client_write_salt.hex() == PSK["client_write_salt"]
    assert keys.server_write_salt.hex() == PSK["server_write_salt"]
    wire = [record_bytes(r) for r in PSK["records_in_wire_order"]]
    transcript = [
        parse_records_untrusted(wire[i])[0].fragment for i in (0, 1, 2, 3)
    ]  # CH, SH, ServerHelloDone, ClientKeyExchange: unfragmented, full headers
    client_plain = make_reader(spec, keys, client=True).unprotect(
        parse_records_untrusted(wire[5])[0]
    )
    server_plain = make_reader(spec, keys, client=False).unprotect(
        parse_records_untrusted(wire[7])[0]
    )
    assert client_plain is not None and server_plain is not None
    assert client_plain[:12] == server_plain[:12] == hs.encode_handshake(20, 2, bytes(12))[:12]
    client_verify = finished_verify_data(spec, master, from_server=False, messages=transcript)
    assert client_plain[12:] == client_verify
    transcript.append(client_plain)
    assert server_plain[12:] == finished_verify_data(
        spec, master, from_server=True, messages=transcript
    )
    assert ContentType(parse_records_untrusted(wire[4])[0].content_type) is (
        ContentType.CHANGE_CIPHER_SPEC
    )

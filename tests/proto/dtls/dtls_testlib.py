"""Helpers shared by the DTLS tests: vectors, deterministic randomness, in-memory pairs."""

from __future__ import annotations

import json
import random
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from loadgen.proto.dtls import (
    DtlsConnection,
    DtlsEvent,
    DtlsSession,
    Role,
    lookup_cipher,
)
from loadgen.proto.dtls.ciphers import CipherSpec

#: Captured openconnect 9.01 <-> ocserv 1.1.6 handshakes (docs/protocol.md §10.2), vendored here.
VECTORS_PATH = Path(__file__).parent / "vectors" / "protocol-test-vectors.json"
MASTER_KEY = "X-DTLS-Master-Secret (48 bytes, also the TLS master_secret)"


def load_vectors() -> list[dict[str, Any]]:
    data: dict[str, Any] = json.loads(VECTORS_PATH.read_text())
    return list(data["vectors"])


def vector_spec(vector: dict[str, Any]) -> CipherSpec:
    header, _, name = vector["response_header"].partition(": ")
    return lookup_cipher(header, name)


def vector_session(vector: dict[str, Any]) -> DtlsSession:
    return DtlsSession(
        session_id=bytes.fromhex(vector["X-DTLS-Session-ID"]),
        master_secret=bytes.fromhex(vector[MASTER_KEY]),
        cipher=vector_spec(vector),
    )


def record_bytes(entry: dict[str, Any]) -> bytes:
    """A captured record; long ones are stored truncated with a trailing '...'."""
    return bytes.fromhex(entry["hex"].removesuffix("..."))


def seeded_random(seed: int) -> Callable[[int], bytes]:
    rng = random.Random(seed)
    return rng.randbytes


class ScriptedRandom:
    """Returns the scripted chunks in order (each must match the requested size),
    then seeded bytes; ``calls`` records the sizes requested."""

    def __init__(self, chunks: Iterable[bytes], seed: int = 0) -> None:
        self._chunks = list(chunks)
        self._fallback = random.Random(seed)
        self.calls: list[int] = []

    def __call__(self, n: int) -> bytes:
        self.calls.append(n)
        if self._chunks:
            chunk = self._chunks.pop(0)
            assert len(chunk) == n, f"script gives {len(chunk)} bytes, {n} requested"
            return chunk
        return self._fallback.randbytes(n)


def make_session(header: str, name: str, seed: int = 1) -> DtlsSession:
    rng = random.Random(seed)
    return DtlsSession(
        session_id=rng.randbytes(32),
        master_secret=rng.randbytes(48),
        cipher=lookup_cipher(header, name),
    )


def make_pair(
    session: DtlsSession,
    *,
    seed: int = 7,
    hello_verify: bool = False,
    server_session: DtlsSession | None = None,
    **kwargs: Any,
) -> tuple[DtlsConnection, DtlsConnection]:
    known = server_session or session
    client = DtlsConnection(
        Role.CLIENT, session=session, random_bytes=seeded_random(seed), **kwargs
    )
    server = DtlsConnection(
        Role.SERVER,
        session_lookup={known.session_id: known}.get,
        random_bytes=seeded_random(seed + 1000),
        hello_verify=hello_verify,
        **kwargs,
    )
    return client, server


def events(conn: DtlsConnection) -> list[DtlsEvent]:
    out: list[DtlsEvent] = []
    for _ in range(10_000):
        event = conn.next_event()
        if event is None:
            return out
        out.append(event)
    raise AssertionError("event queue does not drain")


def pump(a: DtlsConnection, b: DtlsConnection, now: float = 0.0, rounds: int = 20) -> int:
    """Exchange datagrams until both sides are quiet; returns the datagrams moved."""
    moved = 0
    for _ in range(rounds):
        out_a = a.datagrams_to_send(now)
        for datagram in out_a:
            b.receive_datagram(datagram, now)
        out_b = b.datagrams_to_send(now)
        for datagram in out_b:
            a.receive_datagram(datagram, now)
        moved += len(out_a) + len(out_b)
        if not out_a and not out_b:
            return moved
    raise AssertionError("peers never went quiet")


def handshake(session: DtlsSession, **kwargs: Any) -> tuple[DtlsConnection, DtlsConnection]:
    client, server = make_pair(session, **kwargs)
    client.connect(0.0)
    pump(client, server)
    return client, server

"""Record protection throughput of the legacy DTLS package, every cipher, per CPU core.

    python -m benchmarks.dtls_records [--records N] [--repeat R] [--sizes 100,1400] [--json FILE]

For each cipher of ``loadgen.proto.dtls`` (``KNOWN_DTLS_CIPHERS`` under
``X-DTLS-CipherSuite``, ``KNOWN_DTLS12_CIPHERS`` under ``X-DTLS12-CipherSuite``,
protocol.md §7.3) a client and a server ``DtlsConnection`` complete the abbreviated
handshake in memory, then for each payload size:

* protect: the client's ``send_application_data`` + ``datagrams_to_send``, one record
  per datagram, as the tunnel sends a packet;
* unprotect: the server's ``receive_datagram`` + ``next_event``, draining the
  ``ApplicationDataReceived`` events, fed exactly the datagrams just protected.

A payload of SIZE bytes is what the tunnel puts in one record (§7.7): the DATA type byte
``00`` and an IPv4 packet of SIZE - 1 bytes.  CBC IVs come from ``os.urandom``, as in the
engine.  Times are ``time.process_time`` (CPU time of this single-threaded process, so
rates are per core, and other load on a shared machine costs less than with wall time);
each figure is the median of ``--repeat`` batches of ``--records`` records, after one
untimed warm-up batch.  Mbit/s counts the record plaintext (type byte + IP packet).
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shlex
import struct
import sys
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path

from benchmarks._util import Column, gc_paused, machine_info, median, print_table
from loadgen.proto.dtls import (
    DTLS12_CIPHERS_HEADER,
    DTLS_CIPHERS_HEADER,
    KNOWN_DTLS12_CIPHERS,
    KNOWN_DTLS_CIPHERS,
    ApplicationDataReceived,
    DtlsConnection,
    DtlsSession,
    HandshakeCompleted,
    Role,
    State,
    lookup_cipher,
)
from loadgen.proto.dtls.ciphers import version_name

__all__ = [
    "ALL_CIPHERS",
    "Figure",
    "established_pair",
    "main",
    "measure",
    "tunnel_payload",
]

#: (header, name) in the package's preference order, the 0.9/1.2 header first
ALL_CIPHERS: tuple[tuple[str, str], ...] = tuple(
    [(DTLS_CIPHERS_HEADER, name) for name in KNOWN_DTLS_CIPHERS]
    + [(DTLS12_CIPHERS_HEADER, name) for name in KNOWN_DTLS12_CIPHERS]
)
DEFAULT_SIZES = (100, 1400)
DEFAULT_RECORDS = 20_000
DEFAULT_REPEAT = 5
WARMUP_RECORDS = 1_000
MIN_SIZE = 1 + 20  # the type byte and an IPv4 header
MAX_SIZE = 16_384  # DTLS plaintext limit
_PUMP_ROUNDS = 20
_IPV4_HEADER = struct.Struct("!BBHHHBBH4s4s")


@dataclass(frozen=True, kw_only=True)
class Figure:
    """One (cipher, size) line; rates in records per CPU second, one per batch."""

    cipher: str
    header: str
    version: str
    size: int
    records: int
    protect_rps: list[float]
    unprotect_rps: list[float]

    @property
    def protect_median(self) -> float:
        return median(self.protect_rps)

    @property
    def unprotect_median(self) -> float:
        return median(self.unprotect_rps)

    def mbit(self, rps: float) -> float:
        return rps * self.size * 8 / 1e6

    def as_json(self) -> dict[str, object]:
        out: dict[str, object] = asdict(self)
        out["protect_rps_median"] = round(self.protect_median)
        out["unprotect_rps_median"] = round(self.unprotect_median)
        out["protect_mbit_s"] = round(self.mbit(self.protect_median), 1)
        out["unprotect_mbit_s"] = round(self.mbit(self.unprotect_median), 1)
        return out


def _ipv4_checksum(header: bytes) -> int:
    total = sum(int.from_bytes(header[i : i + 2]) for i in range(0, len(header), 2))
    while total > 0xFFFF:
        total = (total & 0xFFFF) + (total >> 16)
    return ~total & 0xFFFF


def tunnel_payload(size: int) -> bytes:
    """One record's plaintext of ``size`` bytes: DATA type ``00`` + an IPv4/UDP-ish packet."""
    if not MIN_SIZE <= size <= MAX_SIZE:
        raise ValueError(f"size {size} outside {MIN_SIZE}..{MAX_SIZE}")
    ip_len = size - 1
    src, dst = bytes((192, 0, 2, 1)), bytes((198, 51, 100, 1))  # TEST-NET addresses
    header = _IPV4_HEADER.pack(0x45, 0, ip_len, 1, 0x4000, 64, 17, 0, src, dst)
    header = header[:10] + _ipv4_checksum(header).to_bytes(2) + header[12:]
    body = bytes(i & 0xFF for i in range(ip_len - len(header)))
    return b"\x00" + header + body


def established_pair(header: str, name: str) -> tuple[DtlsConnection, DtlsConnection]:
    """A client and a server that completed the abbreviated handshake in memory (§7.2)."""
    rng = random.Random(f"{header}/{name}")  # fixed session id and master secret per suite
    session = DtlsSession(
        session_id=rng.randbytes(32),
        master_secret=rng.randbytes(48),
        cipher=lookup_cipher(header, name),
    )
    client = DtlsConnection(Role.CLIENT, session=session, random_bytes=os.urandom)
    server = DtlsConnection(Role.SERVER, session=session, random_bytes=os.urandom)
    client.connect(0.0)
    for _ in range(_PUMP_ROUNDS):
        out_client = client.datagrams_to_send(0.0)
        for datagram in out_client:
            server.receive_datagram(datagram, 0.0)
        out_server = server.datagrams_to_send(0.0)
        for datagram in out_server:
            client.receive_datagram(datagram, 0.0)
        if not out_client and not out_server:
            break
    for conn in (client, server):
        event = conn.next_event()
        if conn.state is not State.ESTABLISHED or not isinstance(event, HandshakeCompleted):
            raise RuntimeError(f"{name} ({header}): handshake failed, {conn.role}: {event!r}")
        if conn.next_event() is not None:
            raise RuntimeError(f"{name} ({header}): unexpected event after the handshake")
    return client, server


def _protect(client: DtlsConnection, payload: bytes, count: int) -> tuple[list[bytes], float]:
    send, flush = client.send_application_data, client.datagrams_to_send
    datagrams: list[bytes] = []
    extend = datagrams.extend
    with gc_paused():
        start = time.process_time()
        for _ in range(count):
            send(payload)
            extend(flush(0.0))
        elapsed = time.process_time() - start
    return datagrams, elapsed


def _unprotect(server: DtlsConnection, datagrams: list[bytes]) -> tuple[int, bytes, float]:
    receive, next_event = server.receive_datagram, server.next_event
    received, last = 0, b""
    with gc_paused():
        start = time.process_time()
        for datagram in datagrams:
            receive(datagram, 0.0)
            while (event := next_event()) is not None:
                if type(event) is ApplicationDataReceived:
                    received += 1
                    last = event.data
        elapsed = time.process_time() - start
    return received, last, elapsed


def _batch(
    client: DtlsConnection, server: DtlsConnection, payload: bytes, count: int
) -> tuple[float, float]:
    datagrams, t_protect = _protect(client, payload, count)
    received, last, t_unprotect = _unprotect(server, datagrams)
    # a benchmark of records that were silently dropped would measure nothing
    if len(datagrams) != count or received != count or last != payload:
        raise RuntimeError(
            f"sent {count}, {len(datagrams)} datagrams, {received} received, "
            f"last plaintext {'ok' if last == payload else 'differs'}: {server.counters}"
        )
    # process_time ticks can be coarse; a zero would be an infinite rate
    return count / max(t_protect, 1e-9), count / max(t_unprotect, 1e-9)


def measure(header: str, name: str, size: int, *, records: int, repeat: int) -> Figure:
    client, server = established_pair(header, name)
    payload = tunnel_payload(size)
    _batch(client, server, payload, min(records, WARMUP_RECORDS))
    protect: list[float] = []
    unprotect: list[float] = []
    for _ in range(repeat):
        rate_protect, rate_unprotect = _batch(client, server, payload, records)
        protect.append(rate_protect)
        unprotect.append(rate_unprotect)
    return Figure(
        cipher=name,
        header=header,
        version=version_name(lookup_cipher(header, name).version),
        size=size,
        records=records,
        protect_rps=protect,
        unprotect_rps=unprotect,
    )


def _sizes(text: str) -> tuple[int, ...]:
    try:
        sizes = tuple(int(part) for part in text.replace(" ", ",").split(",") if part)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"not a list of integers: {text!r}") from exc
    if not sizes or any(not MIN_SIZE <= s <= MAX_SIZE for s in sizes):
        raise argparse.ArgumentTypeError(f"sizes must be {MIN_SIZE}..{MAX_SIZE} bytes")
    return sizes


def _positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1: {text}")
    return value


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.dtls_records",
        description="Legacy DTLS records protected/unprotected per CPU second, every cipher.",
    )
    parser.add_argument(
        "--records", type=_positive, default=DEFAULT_RECORDS, help="records per timed batch"
    )
    parser.add_argument(
        "--repeat", type=_positive, default=DEFAULT_REPEAT, help="timed batches per figure"
    )
    parser.add_argument(
        "--sizes",
        type=_sizes,
        default=DEFAULT_SIZES,
        help="record plaintext sizes, comma-separated: type byte + IP packet (default 100,1400)",
    )
    parser.add_argument("--json", type=Path, metavar="FILE", help="also write the figures here")
    return parser


def _rows(figures: Sequence[Figure]) -> list[list[str]]:
    rows = []
    for fig in figures:
        protect, unprotect = fig.protect_median, fig.unprotect_median
        rows.append(
            [
                fig.cipher,
                fig.header,
                fig.version,
                str(fig.size),
                f"{protect:,.0f}",
                f"{unprotect:,.0f}",
                f"{fig.mbit(protect):,.0f}",
                f"{fig.mbit(unprotect):,.0f}",
            ]
        )
    return rows


COLUMNS = (
    Column(title="cipher"),
    Column(title="header"),
    Column(title="version"),
    Column(title="size", justify="right"),
    Column(title="protect rec/s", justify="right"),
    Column(title="unprotect rec/s", justify="right"),
    Column(title="protect Mbit/s", justify="right"),
    Column(title="unprotect Mbit/s", justify="right"),
)


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    command = "python -m benchmarks.dtls_records " + shlex.join(
        sys.argv[1:] if argv is None else argv
    )
    started = datetime.now(UTC)
    wall = time.monotonic()
    info = machine_info()
    figures: list[Figure] = []
    for header, name in ALL_CIPHERS:
        for size in args.sizes:
            figures.append(measure(header, name, size, records=args.records, repeat=args.repeat))
        print(f"  {name} ({header}) done", file=sys.stderr, flush=True)
    wall = time.monotonic() - wall
    print(f"$ {command.strip()}")
    print(f"{started:%Y-%m-%d %H:%M} UTC; {info}")
    print(
        f"median of {args.repeat} x {args.records} records per figure, CPU time of one "
        f"process (per core); run took {wall:.0f} s wall"
    )
    print_table(COLUMNS, _rows(figures))
    if args.json is not None:
        document = {
            "benchmark": "dtls_records",
            "command": command.strip(),
            "date": started.isoformat(timespec="seconds"),
            "machine": info,
            "records": args.records,
            "repeat": args.repeat,
            "sizes": list(args.sizes),
            "wall_s": round(wall, 1),
            "figures": [fig.as_json() for fig in figures],
        }
        args.json.write_text(json.dumps(document, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

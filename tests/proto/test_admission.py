"""CONNECT admission without trio (protocol.md §4.1 to §4.3, §5.4): every refusal, in
ocserv's order, the replacement rule, the address leases and the cookie records."""

from __future__ import annotations

import random
from ipaddress import IPv4Address, IPv4Network

import pytest

from loadgen.proto.admission import (
    AddressPool,
    Admitted,
    ConnectAdmission,
    PoolExhaustedError,
    Refused,
    SessionRecord,
    SessionTable,
)
from loadgen.proto.dtls import lookup_cipher
from loadgen.proto.http_server import HttpRequest
from loadgen.proto.personality import personality_for
from loadgen.proto.personality.base import AuthSuccess, TunnelSettings
from loadgen.proto.tunnel import DTLS12_CIPHER_HEADER, DTLS_CIPHER_HEADER, ConnectRequest
from tests.proto.test_tunnel import MASTER_SECRET, minimal_request

OCSERV = personality_for("ocserv")
TIMEOUT_S = 120.0
COOKIE = "AfzLCYSXxJy04oVxpdyhC7H6epZvnVxoFCMJAxe/zek="


class Tunnel:
    """Stands for the shell's tunnel object."""


class Gate:
    """An admission, its records and pool, and a clock."""

    def __init__(self, *, pool: str = "10.200.0.0/16", **settings: object) -> None:
        opts: dict[str, object] = {
            "server_name": "loadgen gateway",
            "mtu": 1406,
            "dtls_mtu": None,
            "dpd_s": 90,
            "keepalive_s": 32400,
        }
        opts.update(settings)
        self.pool = AddressPool(IPv4Network(pool))
        self.sessions: SessionTable[Tunnel] = SessionTable(self.pool, cookie_timeout_s=TIMEOUT_S)
        self.draws: list[int] = []
        rng = random.Random(3)

        def random_bytes(n: int) -> bytes:
            self.draws.append(n)
            return rng.randbytes(n)

        self.admission = ConnectAdmission(
            personality=OCSERV,
            settings=TunnelSettings(**opts),  # type: ignore[arg-type]
            pool=self.pool,
            random_bytes=random_bytes,
        )
        self.now = 1000.0
        self.tunnels = 0

    def login(self, cookie: str = COOKIE, username: str = "alice") -> SessionRecord[Tunnel]:
        return self.sessions.add(
            AuthSuccess(username=username, group=None, cookie=cookie), self.now
        )

    def decide(
        self, request: ConnectRequest | HttpRequest, *, target: str = "/CSCOSSLC/tunnel"
    ) -> Admitted[Tunnel] | Refused:
        if isinstance(request, ConnectRequest):
            request = HttpRequest(
                method="CONNECT", target=target, headers=request.to_headers(), body=b""
            )
        return self.admission.decide(
            request,
            sessions=self.sessions,
            tunnels_active=self.tunnels,
            dtls_port=4443,
            now=self.now,
        )

    def admit(self, request: ConnectRequest) -> Admitted[Tunnel]:
        decision = self.decide(request)
        assert isinstance(decision, Admitted), decision
        return decision

    def refuse(self, request: ConnectRequest | HttpRequest, **kw: str) -> Refused:
        decision = self.decide(request, **kw)
        assert isinstance(decision, Refused), decision
        return decision


def raw(*headers: tuple[bytes, bytes], target: str = "/CSCOSSLC/tunnel") -> HttpRequest:
    return HttpRequest(method="CONNECT", target=target, headers=list(headers), body=b"")


def line(refused: Refused) -> tuple[int, str, tuple[tuple[str, str], ...]]:
    return refused.status, refused.reason, refused.headers


# -- refusals ---------------------------------------------------------------------------


def test_a_connect_elsewhere_is_404() -> None:
    gate = Gate()
    gate.login()
    refused = gate.refuse(minimal_request(cookie=COOKIE), target="/elsewhere\x07")
    assert line(refused) == (404, "Not found", ())
    assert (refused.drop_label, refused.rejected) == ("http_not_found", False)
    assert refused.log == "refused a CONNECT to /elsewhere\\x07: not found"


def test_no_cookie_is_503() -> None:
    refused = Gate().refuse(raw((b"Host", b"gw"), (b"Cookie", b"webvpncontext=x")))
    assert line(refused) == (503, "Service Unavailable", ())
    assert (refused.drop_label, refused.rejected) == ("cookie_rejected", False)
    assert "without a webvpn cookie" in refused.log


def test_malformed_headers_are_503() -> None:
    refused = Gate().refuse(raw((b"Cookie", b"webvpn=t"), (b"X-CSTP-Base-MTU", b"15OO")))
    assert line(refused) == (503, "Service Unavailable", ())
    assert (refused.drop_label, refused.rejected) == ("http_malformed", False)
    assert "X-CSTP-Base-MTU" in refused.log


def test_an_unknown_cookie_is_401() -> None:
    gate = Gate()
    gate.login()
    refused = gate.refuse(minimal_request(cookie="bogus"))
    assert line(refused) == (401, "Cookie is not acceptable", ())
    assert (refused.drop_label, refused.rejected) == ("cookie_rejected", True)
    assert refused.log == "refused a CONNECT: unknown, expired or logged-out cookie"


def test_an_expired_cookie_is_401_and_forgotten() -> None:
    gate = Gate()
    gate.login()
    gate.now += TIMEOUT_S - 0.001
    address = gate.admit(minimal_request(cookie=COOKIE)).record.address
    gate.now += 0.001
    refused = gate.refuse(minimal_request(cookie=COOKIE))
    assert line(refused) == (401, "Cookie is not acceptable", ())
    assert len(gate.sessions) == 0
    assert gate.pool.allocate() == address  # the lease came back


def test_a_logged_out_cookie_is_401() -> None:
    gate = Gate()
    record = gate.login()
    tunnel = Tunnel()
    record.tunnel = tunnel
    gate.sessions.tunnel_ended(record, tunnel, logged_out=True, now=gate.now)
    assert line(gate.refuse(minimal_request(cookie=COOKIE)))[0] == 401


def test_too_many_sessions_is_503_with_a_reason() -> None:
    gate = Gate(max_sessions=2)
    gate.login()
    gate.tunnels = 2
    refused = gate.refuse(minimal_request(cookie=COOKIE))
    assert line(refused) == (503, "Service Unavailable", (("X-Reason", "Too many sessions"),))
    assert (refused.drop_label, refused.rejected, refused.warning) == ("max_sessions", True, False)
    assert refused.log == "refused a CONNECT: 2 sessions already"
    gate.tunnels = 1
    assert isinstance(gate.decide(minimal_request(cookie=COOKIE)), Admitted)


def test_an_exhausted_pool_is_503_with_a_reason() -> None:
    gate = Gate(pool="10.9.0.0/30")  # the gateway and one client
    gate.login("first")
    gate.login("second")
    gate.admit(minimal_request(cookie="first"))
    refused = gate.refuse(minimal_request(cookie="second"))
    assert line(refused) == (503, "Service Unavailable", (("X-Reason", "No address available"),))
    assert (refused.drop_label, refused.rejected, refused.warning) == ("max_sessions", False, True)


def test_refusals_come_in_ocserv_order() -> None:
    # a wrong target wins over a missing cookie, which wins over a full gateway
    gate = Gate(max_sessions=0)
    assert gate.refuse(raw(target="/x")).status == 404
    assert gate.refuse(raw()).drop_label == "cookie_rejected"
    assert gate.refuse(minimal_request(cookie="bogus")).status == 401
    gate.login()
    assert gate.refuse(minimal_request(cookie=COOKIE)).drop_label == "max_sessions"


# -- admission ---------------------------------------------------------------------------


def test_admitted_with_legacy_dtls() -> None:
    gate = Gate()
    record = gate.login()
    admitted = gate.admit(minimal_request(cookie=COOKIE, hostname="h1"))
    assert (admitted.status, admitted.reason, admitted.replaces) == (200, "CONNECTED", False)
    assert admitted.record is record and record.address == IPv4Address("10.200.0.2")
    params = admitted.params
    assert admitted.headers == params.to_headers()
    assert (params.address, params.netmask) == (record.address, IPv4Address("255.255.0.0"))
    assert (params.hostname, params.base_mtu, params.dtls_port) == ("h1", 1500, 4443)
    assert (params.dtls_cipher, params.dtls_cipher_header) == ("AES128-SHA", DTLS_CIPHER_HEADER)
    session = admitted.dtls_session
    assert session is not None
    assert session.session_id == params.dtls_session_id and len(session.session_id) == 32
    assert session.master_secret == MASTER_SECRET
    assert session.cipher == lookup_cipher(DTLS_CIPHER_HEADER, "AES128-SHA")
    assert gate.draws == [32]


@pytest.mark.parametrize(
    "request_changes",
    [{"dtls_master_secret": None}, {"dtls_ciphers": ("PSK-NEGOTIATE",)}],
    ids=["no-secret", "nothing-known"],
)
def test_no_dtls_offer_no_dtls(request_changes: dict[str, object]) -> None:
    gate = Gate()
    gate.login()
    admitted = gate.admit(minimal_request(cookie=COOKIE, **request_changes))
    assert admitted.dtls_session is None and admitted.params.dtls_port is None
    assert gate.draws == []


def test_no_dtls_when_the_gateway_offers_none() -> None:
    gate = Gate(dtls=False)
    gate.login()
    admitted = gate.admit(minimal_request(cookie=COOKIE))
    assert admitted.dtls_session is None and admitted.params.dtls_cipher is None


def test_the_configured_list_is_the_preference() -> None:
    gate = Gate(dtls_ciphers=("AES128-SHA", "AES256-SHA"), dtls12_ciphers=(), dtls_mtu=1200)
    gate.login()
    admitted = gate.admit(minimal_request(cookie=COOKIE, dtls_ciphers=("AES256-SHA", "AES128-SHA")))
    assert admitted.params.dtls_cipher == "AES128-SHA"
    assert (admitted.params.dtls_mtu, admitted.params.mtu) == (1200, 1406)
    gate.login("other")
    offer12 = minimal_request(cookie="other", dtls12_ciphers=("AES256-GCM-SHA384",))
    # an empty DTLS 1.2 list accepts nothing there: the legacy header answers
    assert gate.admit(offer12).params.dtls_cipher_header == DTLS_CIPHER_HEADER
    default = Gate()
    default.login("other")
    assert default.admit(offer12).params.dtls_cipher_header == DTLS12_CIPHER_HEADER


def test_the_address_stays_with_the_cookie() -> None:
    gate = Gate()
    gate.login()
    first = gate.admit(minimal_request(cookie=COOKIE)).params.address
    gate.login("other")
    assert gate.admit(minimal_request(cookie="other")).params.address != first
    assert gate.admit(minimal_request(cookie=COOKIE)).params.address == first


# -- the replacement rule ---------------------------------------------------------------------


def test_a_cookie_in_use_replaces_its_tunnel() -> None:
    gate = Gate()
    record = gate.login()
    old = Tunnel()
    gate.admit(minimal_request(cookie=COOKIE))
    record.tunnel = old
    gate.tunnels = 1
    again = gate.admit(minimal_request(cookie=COOKIE))
    assert again.replaces and again.record is record
    new = Tunnel()
    record.tunnel = new
    # the old tunnel's end leaves the new one alone
    gate.sessions.tunnel_ended(record, old, logged_out=True, now=gate.now)
    assert record.tunnel is new and gate.sessions.lookup(COOKIE, gate.now) is record


def test_a_replacement_is_not_refused_for_its_own_slot() -> None:
    gate = Gate(max_sessions=1)
    record = gate.login()
    gate.admit(minimal_request(cookie=COOKIE))
    record.tunnel = Tunnel()
    gate.tunnels = 1
    assert gate.admit(minimal_request(cookie=COOKIE)).replaces
    gate.login("other")
    assert gate.refuse(minimal_request(cookie="other")).drop_label == "max_sessions"


# -- the records ---------------------------------------------------------------------------------


def test_records_expire_only_when_idle() -> None:
    gate = Gate()
    busy = gate.login("busy")
    busy.tunnel = Tunnel()
    idle = gate.login("idle")
    idle.address = gate.pool.allocate()
    gate.now += TIMEOUT_S
    assert gate.sessions.expire(gate.now) == 1
    assert [r.cookie for r in gate.sessions] == ["busy"]
    assert gate.pool.allocate() == idle.address
    assert gate.sessions.lookup(None, gate.now) is None
    assert gate.sessions.lookup("", gate.now) is None


def test_a_disconnect_restarts_the_cookie_clock() -> None:
    gate = Gate()
    record = gate.login()
    tunnel = Tunnel()
    record.tunnel = tunnel
    gate.now += 10 * TIMEOUT_S  # a tunnel keeps its cookie alive
    assert gate.sessions.lookup(COOKIE, gate.now) is record
    gate.sessions.tunnel_ended(record, tunnel, logged_out=False, now=gate.now)
    assert record.tunnel is None and record.expires_at == gate.now + TIMEOUT_S
    assert gate.sessions.lookup(COOKIE, gate.now + TIMEOUT_S - 1) is record
    assert gate.sessions.lookup(COOKIE, gate.now + TIMEOUT_S) is None


def test_the_pool_lends_hosts_after_the_gateway() -> None:
    pool = AddressPool(IPv4Network("10.9.0.0/29"))
    assert pool.gateway == IPv4Address("10.9.0.1")
    assert pool.netmask == IPv4Address("255.255.255.248")
    lent = [pool.allocate() for _ in range(5)]
    assert lent == [IPv4Address(f"10.9.0.{i}") for i in range(2, 7)]
    with pytest.raises(PoolExhaustedError):
        pool.allocate()
    pool.release(lent[2])
    assert pool.allocate() == lent[2]

"""CONNECT admission on the gateway side: who gets a tunnel, and with what (protocol.md §4).

Sans-IO, as the rest of ``proto``: the gateway's trio shell reads the
CONNECT, asks ``ConnectAdmission.decide`` and writes what it says, then runs
the tunnel.  The decision is either ``Refused`` (the status line, the
``loadgen_gateway_dropped_total`` reason, the log line) or ``Admitted``
(the answer's headers, the tunnel's ``TunnelParams`` and ``DtlsSession``,
and whether the cookie's current tunnel is to be ended first).

The session records behind the cookies live in a ``SessionTable``: a record
is made at login, leases an address from the ``AddressPool`` at its first
CONNECT and keeps it until the record is forgotten, and outlives its tunnel
by ``cookie_timeout_s`` (ocserv's ``cookie-timeout``, §2.6, §5.4).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from ipaddress import IPv4Address, IPv4Network
from typing import Generic, TypeVar

from loadgen.proto.dtls import DtlsSession, lookup_cipher
from loadgen.proto.errors import BadPacketError
from loadgen.proto.http_server import HttpRequest, printable
from loadgen.proto.personality.base import (
    Answer,
    AuthSuccess,
    DtlsGrant,
    Personality,
    TunnelSettings,
)
from loadgen.proto.tunnel import ConnectRequest, NoSessionCookieError, TunnelParams

__all__ = [
    "AddressPool",
    "Admitted",
    "ConnectAdmission",
    "PoolExhaustedError",
    "Refused",
    "SessionRecord",
    "SessionTable",
]

_T = TypeVar("_T")
#: X-DTLS-Session-ID: 32 random bytes (§4.3)
_SESSION_ID_BYTES = 32


class PoolExhaustedError(Exception):
    pass


class AddressPool:
    """Tunnel addresses: the first host is the gateway's, the rest lent to sessions."""

    def __init__(self, network: IPv4Network) -> None:
        hosts = network.hosts()
        self.gateway = next(hosts)
        self._hosts = hosts
        self._free: list[IPv4Address] = []
        self.netmask = network.netmask

    def allocate(self) -> IPv4Address:
        if self._free:
            return self._free.pop()
        try:
            return next(self._hosts)
        except StopIteration:
            raise PoolExhaustedError("the address pool is exhausted") from None

    def release(self, address: IPv4Address) -> None:
        self._free.append(address)


@dataclass
class SessionRecord(Generic[_T]):
    """What a cookie stands for: lives from login until logout or expiry."""

    username: str
    group: str | None
    cookie: str = field(repr=False)
    address: IPv4Address | None = None
    #: set while a tunnel uses the cookie
    tunnel: _T | None = None
    #: monotonic time after which an idle cookie is dead
    expires_at: float = math.inf


class SessionTable(Generic[_T]):
    """The gateway's cookies and their records; ``_T`` is the shell's tunnel type."""

    def __init__(self, pool: AddressPool, *, cookie_timeout_s: float) -> None:
        self._pool = pool
        self._timeout_s = cookie_timeout_s
        self._records: dict[str, SessionRecord[_T]] = {}

    def __len__(self) -> int:
        return len(self._records)

    def __iter__(self) -> Iterator[SessionRecord[_T]]:
        return iter(list(self._records.values()))

    def add(self, success: AuthSuccess, now: float) -> SessionRecord[_T]:
        """The record of a login; it lives ``cookie_timeout_s`` unless a tunnel uses it."""
        record: SessionRecord[_T] = SessionRecord(
            username=success.username,
            group=success.group,
            cookie=success.cookie,
            expires_at=now + self._timeout_s,
        )
        self._records[success.cookie] = record
        return record

    def lookup(self, cookie: str | None, now: float) -> SessionRecord[_T] | None:
        """The live record of ``cookie``; an expired idle one is forgotten on the way."""
        record = self._records.get(cookie) if cookie else None
        if record is None:
            return None
        if record.tunnel is None and record.expires_at <= now:
            self.forget(record.cookie)
            return None
        return record

    def expire(self, now: float) -> int:
        """Forget every idle record past its time; return how many went."""
        dead = [
            r.cookie for r in self._records.values() if r.tunnel is None and r.expires_at <= now
        ]
        for cookie in dead:
            self.forget(cookie)
        return len(dead)

    def forget(self, cookie: str) -> None:
        """Drop a record and give its address back."""
        record = self._records.pop(cookie, None)
        if record is not None and record.address is not None:
            self._pool.release(record.address)

    def tunnel_ended(
        self, record: SessionRecord[_T], tunnel: _T, *, logged_out: bool, now: float
    ) -> None:
        """``tunnel`` of ``record`` is over: a logout kills the cookie, else its clock restarts."""
        if record.tunnel is not tunnel:  # replaced by a newer CONNECT
            return
        record.tunnel = None
        if logged_out:
            self.forget(record.cookie)
        else:
            record.expires_at = now + self._timeout_s


@dataclass(frozen=True, kw_only=True)
class Refused:
    """Answer ``status reason`` with ``headers``, close, and count ``drop_label``."""

    status: int
    reason: str
    headers: tuple[tuple[str, str], ...]
    #: the ``loadgen_gateway_dropped_total`` reason
    drop_label: str
    #: also a ``loadgen_gateway_sessions_total{outcome="rejected"}``
    rejected: bool
    #: the log line (client text made printable)
    log: str
    #: the gateway's own limit, worth a warning rather than an info line
    warning: bool = False


@dataclass(frozen=True, kw_only=True)
class Admitted(Generic[_T]):
    """Answer ``status reason`` with ``headers`` and run the tunnel of ``record``."""

    status: int
    reason: str
    headers: list[tuple[bytes, bytes]] = field(repr=False)
    params: TunnelParams
    dtls_session: DtlsSession | None = field(repr=False)
    record: SessionRecord[_T]
    #: the cookie's current tunnel is to be ended first ("session re-use", as ocserv)
    replaces: bool


def _preferences(names: tuple[str, ...] | None, default: Mapping[str, int]) -> dict[str, int]:
    """Server preference from an ordered list (best first), or the default table."""
    if names is None:
        return dict(default)
    return {name: len(names) - i for i, name in enumerate(names)}


class ConnectAdmission:
    """Decides each CONNECT: refusals in ocserv's order, then the tunnel's parameters."""

    def __init__(
        self,
        *,
        personality: Personality,
        settings: TunnelSettings,
        pool: AddressPool,
        random_bytes: Callable[[int], bytes],
    ) -> None:
        self._personality = personality
        self._settings = settings
        self._pool = pool
        self._random = random_bytes
        self._legacy_prefs = _preferences(settings.dtls_ciphers, personality.legacy_priorities)
        self._dtls12_prefs = _preferences(settings.dtls12_ciphers, personality.dtls12_priorities)

    def decide(
        self,
        request: HttpRequest,
        *,
        sessions: SessionTable[_T],
        tunnels_active: int,
        dtls_port: int,
        now: float,
    ) -> Admitted[_T] | Refused:
        """Admit or refuse one CONNECT; an admission leases the record's address."""
        if request.target != self._personality.connect_target:
            text = f"refused a CONNECT to {printable(request.target)}: not found"
            return self._refused(Answer.NOT_FOUND, "http_not_found", text)
        try:
            creq = ConnectRequest.from_headers_untrusted(request.headers)
        except NoSessionCookieError as exc:
            return self._refused(
                Answer.NO_SESSION_COOKIE, "cookie_rejected", f"refused a CONNECT: {exc}"
            )
        except BadPacketError as exc:
            return self._refused(
                Answer.CONNECT_MALFORMED, "http_malformed", f"refused a CONNECT: {exc}"
            )
        record = sessions.lookup(creq.cookie, now)
        if record is None:
            text = "refused a CONNECT: unknown, expired or logged-out cookie"
            return self._refused(Answer.COOKIE_REJECTED, "cookie_rejected", text, rejected=True)
        # a new CONNECT with a cookie in use replaces the old tunnel, as ocserv
        # does: the client reconnected, so the old tunnel's slot is not taken
        replaces = record.tunnel is not None
        limit = self._settings.max_sessions
        if limit is not None and tunnels_active - int(replaces) >= limit:
            text = f"refused a CONNECT: {tunnels_active} sessions already"
            return self._refused(Answer.TOO_MANY_SESSIONS, "max_sessions", text, rejected=True)
        if record.address is None:
            try:
                record.address = self._pool.allocate()
            except PoolExhaustedError:
                text = "refused a CONNECT: the address pool is exhausted"
                return self._refused(Answer.NO_ADDRESS, "max_sessions", text, warning=True)
        grant, dtls_session = self._dtls(creq, dtls_port)
        params = self._personality.tunnel_params(
            creq,
            address=record.address,
            netmask=self._pool.netmask,
            settings=self._settings,
            dtls=grant,
        )
        line = self._personality.answer(Answer.CONNECTED)
        return Admitted(
            status=line.status,
            reason=line.reason,
            headers=[*((k.encode(), v.encode()) for k, v in line.headers), *params.to_headers()],
            params=params,
            dtls_session=dtls_session,
            record=record,
            replaces=replaces,
        )

    def _dtls(self, creq: ConnectRequest, port: int) -> tuple[DtlsGrant | None, DtlsSession | None]:
        """The legacy DTLS session to offer, if the client can have one."""
        if not self._settings.dtls or creq.dtls_master_secret is None:
            return None, None
        choice = self._personality.choose_dtls_cipher(
            creq, legacy_prefs=self._legacy_prefs, dtls12_prefs=self._dtls12_prefs
        )
        if choice is None:
            return None, None
        name, header = choice
        session_id = self._random(_SESSION_ID_BYTES)
        session = DtlsSession(
            session_id=session_id,
            master_secret=creq.dtls_master_secret,
            cipher=lookup_cipher(header, name),
        )
        return DtlsGrant(port=port, session_id=session_id, cipher=name, header=header), session

    def _refused(
        self,
        kind: Answer,
        drop_label: str,
        log: str,
        *,
        rejected: bool = False,
        warning: bool = False,
    ) -> Refused:
        line = self._personality.answer(kind)
        return Refused(
            status=line.status,
            reason=line.reason,
            headers=line.headers,
            drop_label=drop_label,
            rejected=rejected,
            log=log,
            warning=warning,
        )

"""The tunnel of one session after CONNECT: CSTP always, DTLS when it comes up.

Data goes over CSTP until DTLS is up, then over DTLS; packets arriving on
either channel reach the same handler, so nothing is lost in the switch.  CSTP
stays open for DPD, keepalive and DISCONNECT (protocol.md §7.9).
"""

from __future__ import annotations

from collections.abc import Callable
from functools import partial
from ipaddress import IPv4Address

import trio

from loadgen.engine.dtls import DatagramSocket, DtlsChannel, DtlsOptions, DtlsState, open_udp
from loadgen.engine.echo import ECHO_OVERHEAD_BYTES, Echoer, EchoResult
from loadgen.engine.tunnel import CstpTunnel
from loadgen.failures import FallbackReason, Phase, Reason, SessionFailedError
from loadgen.proto.cstp import DisconnectReason
from loadgen.proto.dtls import DtlsSession, UnknownCipherError, lookup_cipher
from loadgen.proto.errors import LocalProtocolError
from loadgen.proto.tunnel import TunnelParams

__all__ = ["DataPath"]


class DataPath:
    """CSTP + optional DTLS + echo for one CONNECTed session."""

    def __init__(
        self,
        *,
        stream: trio.SSLStream[trio.SocketStream],
        params: TunnelParams,
        random_bytes: Callable[[int], bytes],
    ) -> None:
        self.params = params
        self._random = random_bytes
        self.echoer = Echoer(
            send=self.send_ip, check_alive=self._check_alive, random_bytes=random_bytes
        )
        self.cstp = CstpTunnel(
            stream,
            params,
            on_packet=self.echoer.on_packet,
            on_end=self._ended,
            random_bytes=random_bytes,
        )
        self.dtls: DtlsChannel | None = None
        #: why DTLS was never tried although offered (e.g. an unknown cipher answer)
        self.dtls_refused: FallbackReason | None = None
        self._scope = trio.CancelScope()
        #: called with (old, new) channel names when data moves between CSTP and DTLS
        self.on_channel: Callable[[str, str], None] | None = None
        #: called once when the tunnel ends (gateway DISCONNECT, DPD, broken TLS)
        self.on_end: Callable[[], None] | None = None
        self._last_channel = "cstp"

    # -- lifecycle --------------------------------------------------------------

    def start(
        self,
        nursery: trio.Nursery,
        leftover: bytes,
        *,
        master_secret: bytes | None,
        dtls: DtlsOptions | None,
        gateway_host: str,
        source_ip: str | None,
    ) -> None:
        self.cstp.start(nursery, leftover)
        if dtls is None or master_secret is None:
            self.dtls_refused = FallbackReason.DISABLED
            return
        if not self._dtls_answered():
            # the gateway gave no legacy DTLS session: the tunnel stays on CSTP, named
            self.dtls_refused = FallbackReason.NOT_OFFERED
            return
        params = self.params
        assert params.dtls_session_id is not None and params.dtls_cipher is not None
        header = params.dtls_cipher_header or "X-DTLS-CipherSuite"
        try:
            spec = lookup_cipher(header, params.dtls_cipher)
        except UnknownCipherError:
            # the gateway picked a suite we never offered: no DTLS, not a failure
            self.dtls_refused = FallbackReason.PROTOCOL
            return
        host = dtls.host or gateway_host
        port = dtls.port or params.dtls_port
        assert port is not None
        self.dtls = DtlsChannel(
            session=DtlsSession(
                session_id=params.dtls_session_id, master_secret=master_secret, cipher=spec
            ),
            header=header,
            cipher_name=params.dtls_cipher,
            dpd_s=float(params.dtls_dpd_s or params.cstp_dpd_s or 0),
            keepalive_s=float(params.dtls_keepalive_s or 0),
            options=dtls,
            socket_factory=partial(_open, host, port, source_ip),
            on_packet=self.echoer.on_packet,
            on_state=self._on_dtls_state,
            random_bytes=self._random,
        )
        nursery.start_soon(self._run_dtls)

    def _ended(self) -> None:
        self.echoer.wake_all()
        if self.on_end is not None:
            self.on_end()

    def _dtls_answered(self) -> bool:
        p = self.params
        return (
            p.dtls_port is not None and p.dtls_session_id is not None and p.dtls_cipher is not None
        )

    async def _run_dtls(self) -> None:
        assert self.dtls is not None
        with self._scope:
            try:
                await self.dtls.run()
            except Exception as exc:  # a bug must not take the session down
                self.dtls.fail_internal(exc)

    def _on_dtls_state(self, state: DtlsState) -> None:
        del state
        channel = self.channel
        if channel != self._last_channel:
            old, self._last_channel = self._last_channel, channel
            if self.on_channel is not None:
                self.on_channel(old, channel)

    def stop(self) -> None:
        self._scope.cancel()
        self.cstp.stop()

    @property
    def ended(self) -> SessionFailedError | None:
        return self.cstp.ended

    def _check_alive(self) -> None:
        if self.cstp.ended is not None:
            raise self.cstp.ended

    # -- state ------------------------------------------------------------------

    @property
    def channel(self) -> str:
        return "dtls" if self.dtls is not None and self.dtls.up else "cstp"

    @property
    def mtu(self) -> int | None:
        """The tunnel MTU as applied: X-DTLS-MTU on DTLS, X-CSTP-MTU otherwise (§4.3)."""
        p = self.params
        if self.channel == "dtls":
            return p.dtls_mtu or p.mtu
        return p.mtu or p.dtls_mtu

    @property
    def address(self) -> IPv4Address:
        if self.params.address is None:
            raise SessionFailedError(Phase.TUNNEL, Reason.PROTOCOL, "no IPv4 tunnel address")
        return IPv4Address(str(self.params.address))

    def traffic(self) -> dict[str, tuple[int, int, int, int]]:
        """channel -> (tx packets, tx bytes, rx packets, rx bytes) of IP packets so far."""
        c = self.cstp.conn.counters
        out = {"cstp": (c.packets_tx, c.bytes_tx, c.packets_rx, c.bytes_rx)}
        d = self.dtls
        out["dtls"] = (
            (0, 0, 0, 0) if d is None else (d.tx_packets, d.tx_bytes, d.rx_packets, d.rx_bytes)
        )
        return out

    async def wait_dtls(self) -> None:
        """Until the first DTLS attempt ended (up or fallen back); bounded by its schedule."""
        if self.dtls is not None:
            await self.dtls.first_outcome.wait()

    # -- data -------------------------------------------------------------------

    async def send_ip(self, packet: bytes) -> str:
        """Send one IP packet on the best channel; returns its name."""
        self._check_alive()
        if self.dtls is not None and self.dtls.up:
            try:
                await self.dtls.send_ip(packet)
                return "dtls"
            except LocalProtocolError:
                pass  # a hard DTLS write error re-queues the packet to CSTP (§7.9)
        await self.cstp.send_ip(packet)
        return "cstp"

    async def echo(
        self,
        target: IPv4Address,
        *,
        count: int,
        interval_s: float,
        timeout_s: float,
        payload_bytes: int = 56,
        udp: bool = False,
    ) -> EchoResult:
        mtu = self.mtu
        if mtu is not None and payload_bytes + ECHO_OVERHEAD_BYTES > mtu:
            raise SessionFailedError(
                Phase.TUNNEL,
                Reason.INTERNAL,
                f"echo payload of {payload_bytes} bytes exceeds the tunnel MTU {mtu}",
            )
        return await self.echoer.echo(
            self.address,
            target,
            count=count,
            interval_s=interval_s,
            timeout_s=timeout_s,
            payload_bytes=payload_bytes,
            udp=udp,
        )

    async def dpd_probe(self, timeout_s: float) -> float | None:
        """A DPD round trip over CSTP."""
        return await self.cstp.dpd_probe(timeout_s)

    async def dtls_dpd_probe(self, timeout_s: float) -> float | None:
        """A DPD round trip over DTLS, or None when DTLS is not up."""
        if self.dtls is None:
            return None
        return await self.dtls.dpd_probe(timeout_s)

    async def disconnect(self, reason: DisconnectReason | None) -> None:
        self._scope.cancel()
        await self.cstp.disconnect(reason)


async def _open(host: str, port: int, source_ip: str | None) -> DatagramSocket:
    return await open_udp(host, port, source_ip)

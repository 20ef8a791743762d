"""The datagram proxy: one listening UDP socket, one upstream socket per client flow.

A flow is one client (address, port).  Its first datagram opens a UDP socket
connected to the upstream, so the upstream sees one source port per client, as the
gateway expects of a DTLS client (protocol.md §7.1).  Datagrams from the client go
through the ``upstream`` stream's toxics, answers through ``downstream``'s, each flow
and direction with its own toxic instances (a ``DatagramChain``), so a toxic change
reaches open flows at once.  A flow with no datagram either way for ``flow_idle_s``
and nothing held in its toxics expires.  At most ``max_flows``
flows are open; a new client beyond that is dropped and counted (``refused_flows``).

Memory is bounded in bytes as well as in datagrams, since every source address may be
spoofed: each flow's queue per direction holds at most 1024 datagrams and
``max_queue_bytes`` (default :data:`MAX_QUEUE_BYTES`), and all flows together hold
at most ``max_held_bytes`` (default :data:`MAX_HELD_BYTES`), counting both the queues
and what the toxics hold (their chains count it, a ``duplicate`` toxic's copies
included).  A datagram beyond either bound is dropped and counted as overload (cause
``queue_full``); each toxic's own ``MAX_HELD`` still applies.

Datagrams are opaque bytes of any size up to 65535.  Socket errors (an ICMP port
unreachable shows as ConnectionRefusedError on a connected UDP socket) are logged and
the proxy goes on; cancelling :meth:`UdpProxy.serve` closes every socket.
"""

from __future__ import annotations

import errno
import logging
import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from functools import partial
from typing import Any, Unpack

import trio

from loadgen.faultproxy.chain import DatagramChain
from loadgen.faultproxy.datagram import check_datagram_toxic
from loadgen.faultproxy.model import (
    DOWNSTREAM,
    STREAMS,
    UDP_SCHEME,
    UPSTREAM,
    ApiError,
    ToxicSpec,
    parse_host_port,
)
from loadgen.faultproxy.runtime import ProxyArgs, ToxicProxy

__all__ = [
    "MAX_DATAGRAM_BYTES",
    "MAX_HELD_BYTES",
    "MAX_QUEUE_BYTES",
    "UdpProxy",
    "parse_udp_address",
]

log = logging.getLogger(__name__)

MAX_DATAGRAM_BYTES = 65535
_RECV_BYTES = MAX_DATAGRAM_BYTES + 1
_INBOX_DATAGRAMS = 1024  # per flow and direction; beyond, the proxy itself is overrun
#: bytes queued per flow and direction before the toxics; beyond, dropped (queue_full)
MAX_QUEUE_BYTES = 1024 * 1024
#: bytes held across all flows of a proxy (queues and toxics); beyond, dropped (queue_full)
MAX_HELD_BYTES = 64 * 1024 * 1024
_RECV_ERROR_BACKOFF_S = 0.05


def parse_udp_address(address: str, *, listen: bool) -> tuple[str, int]:
    """``udp://host:port`` (``[v6]:port`` too) as (host, port); ApiError(400) if malformed.

    An empty host means every interface when listening (Go's ``net.Listen`` reading,
    as Toxiproxy has it); port 0 picks a free port and is only valid for ``listen``.
    """
    if not address.startswith(UDP_SCHEME):
        raise ApiError(400, f"proxy: {address!r} is not a udp:// address")
    return parse_host_port(address, listen=listen)


def _format(sockname: Any) -> str:
    host, port = sockname[0], sockname[1]
    return f"{UDP_SCHEME}[{host}]:{port}" if ":" in host else f"{UDP_SCHEME}{host}:{port}"


@dataclass(eq=False, kw_only=True)
class _Flow:
    client: Any  # the client's socket address; never a metric label
    sock: trio.socket.SocketType
    chains: dict[str, DatagramChain]
    senders: dict[str, trio.MemorySendChannel[bytes | None]]
    receivers: dict[str, trio.MemoryReceiveChannel[bytes | None]]
    last_activity_s: float
    scope: trio.CancelScope = field(default_factory=trio.CancelScope)
    #: bytes waiting in each direction's queue, and inside its toxics
    queued: dict[str, int] = field(default_factory=lambda: dict.fromkeys(STREAMS, 0))
    in_chain: dict[str, int] = field(default_factory=lambda: dict.fromkeys(STREAMS, 0))

    def push(self, stream: str, item: bytes | None) -> bool:
        try:
            self.senders[stream].send_nowait(item)
        except trio.WouldBlock:
            return False
        if item is not None:
            self.queued[stream] += len(item)
        return True

    def wake(self, stream: str) -> None:
        """Wake ``stream``'s driver (a toxic change); a full inbox wakes it anyway."""
        self.push(stream, None)


class UdpProxy(ToxicProxy[bytes]):
    """A Toxiproxy-style proxy for datagrams (implements ``ProxyRuntime``)."""

    datagrams = True
    parse_address = staticmethod(parse_udp_address)

    def __init__(
        self,
        *,
        flow_idle_s: float = 60.0,
        max_flows: int = 10_000,
        max_queue_bytes: int = MAX_QUEUE_BYTES,
        max_held_bytes: int = MAX_HELD_BYTES,
        **proxy: Unpack[ProxyArgs],
    ) -> None:
        super().__init__(**proxy)
        self.flow_idle_s = flow_idle_s
        self.max_flows = max_flows
        self.max_queue_bytes = max_queue_bytes
        self.max_held_bytes = max_held_bytes
        #: bytes held across flows: in their queues and in their toxics
        self.held_bytes = 0
        self._flows: dict[Any, _Flow] = {}
        self._sock: trio.socket.SocketType | None = None
        self._upstream_addr: Any = None
        self._family = trio.socket.AF_INET
        self._nursery: trio.Nursery | None = None
        #: datagrams of new clients dropped because ``max_flows`` were open
        self.refused_flows = 0
        #: datagrams dropped because a flow's inbox was full (the proxy overrun)
        self.overrun_drops = 0

    # -- toxics (ProxyRuntime) -------------------------------------------------------

    def check_toxic(self, toxic: ToxicSpec) -> ToxicSpec:
        return check_datagram_toxic(toxic)

    def _open_chains(self, stream: str) -> Iterator[tuple[DatagramChain, Callable[[], None]]]:
        for flow in self._flows.values():
            yield flow.chains[stream], partial(flow.wake, stream)

    @property
    def flow_count(self) -> int:
        return len(self._flows)

    # -- serving ---------------------------------------------------------------------

    async def serve(self, *, task_status: trio.TaskStatus[str] = trio.TASK_STATUS_IGNORED) -> None:
        """Bind, report ``udp://host:port``, relay until cancelled; then close every socket."""
        host, port = self._listen_hp
        try:
            infos = await trio.socket.getaddrinfo(host, port, type=trio.socket.SOCK_DGRAM)
            up_host, up_port = self._upstream_hp
            up_infos = await trio.socket.getaddrinfo(up_host, up_port, type=trio.socket.SOCK_DGRAM)
        except OSError as exc:
            raise ApiError(500, f"proxy {self.name}: cannot resolve: {exc}") from exc
        family, _, _, _, sockaddr = infos[0]
        up = next((i for i in up_infos if i[0] == family), up_infos[0])
        self._family, self._upstream_addr = up[0], up[4]
        sock = trio.socket.socket(family, trio.socket.SOCK_DGRAM)
        with sock:
            try:
                await sock.bind(sockaddr)
            except OSError as exc:
                raise ApiError(500, f"proxy {self.name}: listen {self.listen}: {exc}") from exc
            self._sock = sock
            self.address = _format(sock.getsockname())
            try:
                async with trio.open_nursery() as nursery:
                    self._nursery = nursery
                    task_status.started(self.address)
                    await self._receive_from_clients(sock)
            finally:
                self._nursery = None
                self._sock = None
                self.address = None

    async def _receive_from_clients(self, sock: trio.socket.SocketType) -> None:
        while True:
            try:
                data, client = await sock.recvfrom(_RECV_BYTES)
            except OSError as exc:
                # hostile or unlucky traffic must not end the proxy; back off on a
                # persistent error so the loop cannot spin
                log.warning("faultproxy %s: receive failed: %s", self.name, exc)
                if not isinstance(exc, ConnectionError):
                    await trio.sleep(_RECV_ERROR_BACKOFF_S)
                continue
            flow = self._flows.get(client) or self._open_flow(client)
            if flow is None:
                continue
            flow.last_activity_s = trio.current_time()
            self._enqueue(flow, UPSTREAM, data)

    def _enqueue(self, flow: _Flow, stream: str, data: bytes) -> None:
        """Queue a datagram for ``stream``'s toxics, or drop it at the proxy's own bounds."""
        size = len(data)
        if (
            flow.queued[stream] + size > self.max_queue_bytes
            or self.held_bytes + size > self.max_held_bytes
            or not flow.push(stream, data)
        ):
            self.overrun_drops += 1
            self.metrics.overload(self.name, stream, "queue_full")
            return
        self.held_bytes += size

    def _open_flow(self, client: Any) -> _Flow | None:
        if len(self._flows) >= self.max_flows:
            self.refused_flows += 1
            self.metrics.overload(self.name, UPSTREAM, "max_flows")
            if self.refused_flows == 1 or self.refused_flows % 1000 == 0:
                log.warning(
                    "faultproxy %s: %d flows open, new clients dropped (%d so far)",
                    self.name,
                    len(self._flows),
                    self.refused_flows,
                )
            return None
        try:
            up_sock = trio.socket.socket(self._family, trio.socket.SOCK_DGRAM)
        except OSError as exc:  # out of file descriptors: drop, do not crash
            log.warning("faultproxy %s: no socket for a new flow: %s", self.name, exc)
            return None
        senders: dict[str, trio.MemorySendChannel[bytes | None]] = {}
        receivers: dict[str, trio.MemoryReceiveChannel[bytes | None]] = {}
        for s in STREAMS:
            senders[s], receivers[s] = trio.open_memory_channel[bytes | None](_INBOX_DATAGRAMS)
        now = trio.current_time()
        chains = {
            s: DatagramChain(
                (t for t in self.toxics() if t.stream == s),
                rng=self.rng,
                now=now,
                stats_for=self._stats_for(s),
            )
            for s in STREAMS
        }
        flow = _Flow(
            client=client,
            sock=up_sock,
            chains=chains,
            senders=senders,
            receivers=receivers,
            last_activity_s=now,
        )
        self._flows[client] = flow
        self.metrics.connection_opened(self.name)
        assert self._nursery is not None
        self._nursery.start_soon(self._run_flow, flow)
        return flow

    async def _run_flow(self, flow: _Flow) -> None:
        try:
            with flow.scope:
                try:
                    await flow.sock.connect(self._upstream_addr)
                except OSError as exc:
                    log.warning("faultproxy %s: cannot reach upstream: %s", self.name, exc)
                    return
                async with trio.open_nursery() as nursery:
                    nursery.start_soon(self._drive, flow, UPSTREAM)
                    nursery.start_soon(self._drive, flow, DOWNSTREAM)
                    nursery.start_soon(self._receive_from_upstream, flow)
                    nursery.start_soon(self._expire, flow)
        finally:
            flow.sock.close()
            for sender in flow.senders.values():
                sender.close()
            for receiver in flow.receivers.values():
                receiver.close()
            if self._flows.get(flow.client) is flow:
                del self._flows[flow.client]
            self.held_bytes -= sum(flow.queued.values()) + sum(flow.in_chain.values())
            self.metrics.connection_closed(self.name)

    async def _receive_from_upstream(self, flow: _Flow) -> None:
        while True:
            try:
                data = await flow.sock.recv(_RECV_BYTES)
            except OSError as exc:
                # ICMP port unreachable from an earlier send: the upstream is not there
                # (yet); the flow stays, as a real path would
                log.debug("faultproxy %s: upstream receive: %s", self.name, exc)
                if not isinstance(exc, ConnectionError):
                    await trio.sleep(_RECV_ERROR_BACKOFF_S)
                continue
            flow.last_activity_s = trio.current_time()
            self._enqueue(flow, DOWNSTREAM, data)

    async def _drive(self, flow: _Flow, stream: str) -> None:
        """Run one direction's toxic chain: take datagrams, wait for timers, send."""
        chain = flow.chains[stream]
        inbox = flow.receivers[stream]
        while True:
            timer = chain.get_timer()
            item: bytes | None = None
            with trio.move_on_at(math.inf if timer is None else timer):
                item = await inbox.receive()  # None is a wake-up after a toxic change
            now = trio.current_time()
            if item is not None:
                # the bytes move from the queue into the toxics (held_bytes unchanged)
                flow.queued[stream] -= len(item)
                flow.in_chain[stream] += len(item)
                chain.receive(item, now)
            out = chain.datagrams_to_send(now)
            if out:
                # leaving the toxics is activity too, or the flow could expire between
                # a release and the answer it draws
                flow.last_activity_s = now
            held = chain.held_bytes
            self.held_bytes -= flow.in_chain[stream] - held
            flow.in_chain[stream] = held
            for datagram in out:
                await self._send(flow, stream, datagram)

    async def _send(self, flow: _Flow, stream: str, datagram: bytes) -> None:
        try:
            if stream == UPSTREAM:
                await flow.sock.send(datagram)
            else:
                assert self._sock is not None
                await self._sock.sendto(datagram, flow.client)
        except OSError as exc:
            # refused (ICMP), too big for the path (EMSGSIZE), no buffers: the datagram
            # is lost as it would be on a real network
            level = logging.DEBUG if exc.errno in _QUIET_ERRNOS else logging.WARNING
            log.log(level, "faultproxy %s: %s send failed: %s", self.name, stream, exc)
            return
        self.metrics.relayed(self.name, stream, len(datagram), datagram=True)

    async def _expire(self, flow: _Flow) -> None:
        while True:
            due = flow.last_activity_s + self.flow_idle_s
            now = trio.current_time()
            if now >= due:
                if any(c.held_count for c in flow.chains.values()):
                    due = now + self.flow_idle_s  # something is still on its way
                else:
                    flow.scope.cancel()
                    return
            await trio.sleep_until(due)


_QUIET_ERRNOS = frozenset({errno.ECONNREFUSED, errno.EMSGSIZE, errno.ENOBUFS, errno.EAGAIN})

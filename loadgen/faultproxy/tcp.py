"""The TCP proxy: a trio listener, and per connection two directions through toxics.

Each accepted client gets its own upstream connection.  Each direction (``upstream``:
client to server, ``downstream``: server to client) is a :class:`_Link`: a reader task
stamps what it reads and queues it, a pump task feeds the direction's
:class:`~loadgen.faultproxy.chain.TcpChain`, runs its timers and writes what
leaves it.  Toxic changes made through the API reach every open connection at once
(Toxiproxy's ToxicStub chains); data held by a removed toxic goes on, not lost.

The source's EOF is passed on as a half-close (``send_eof``), so a client that shuts
down its sending side still gets the answer; the connection ends when both
directions have ended, when a toxic closes it (``timeout``, ``limit_data``; with RST
for ``reset_peer``), or when a write fails.  Cancelling :meth:`TcpProxy.serve` closes
the listener and every connection (a disabled proxy drops its connections).

Memory stays bounded: a direction stops reading while more than
``MAX_HELD_BYTES`` wait in its toxics (``latency`` holds a window of data), which
pushes back on the sender through TCP.  A proxy relays at most ``max_connections``
connections at once (default :data:`MAX_CONNECTIONS`); one more is accepted and closed
at once, and counted as overload (cause ``max_connections``).  The upstream connect is
bounded by ``connect_timeout_s`` (default :data:`CONNECT_TIMEOUT_S`): a client whose
upstream does not answer is closed, not kept forever.
"""

from __future__ import annotations

import contextlib
import logging
import math
import socket
import struct
from collections import deque
from collections.abc import Callable, Iterator
from typing import Unpack

import trio

from loadgen.faultproxy.chain import TcpChain
from loadgen.faultproxy.model import (
    DOWNSTREAM,
    UPSTREAM,
    ApiError,
    ToxicSpec,
    is_udp,
    parse_host_port,
)
from loadgen.faultproxy.runtime import ProxyArgs, ToxicProxy
from loadgen.faultproxy.toxics import check_tcp_toxic
from loadgen.faultproxy.toxics.base import Chunk, Close, EndOfStream, Item

__all__ = [
    "CONNECT_TIMEOUT_S",
    "MAX_CONNECTIONS",
    "MAX_HELD_BYTES",
    "TcpProxy",
    "format_address",
    "parse_tcp_address",
]

log = logging.getLogger(__name__)

RECEIVE_BYTES = 65536
#: per direction: above this, the link stops reading until its toxics let data go
MAX_HELD_BYTES = 4 * 1024 * 1024
#: connections one proxy relays at once; beyond, accepted and closed at once
MAX_CONNECTIONS = 10_000
#: how long the upstream connect may take before the client is closed
CONNECT_TIMEOUT_S = 10.0
_STREAM_ERRORS = (trio.BrokenResourceError, trio.ClosedResourceError, OSError)


def parse_tcp_address(address: str, *, listen: bool) -> tuple[str, int]:
    """``host:port`` (``[v6]:port``; an empty host listens everywhere) as (host, port)."""
    if is_udp(address):
        raise ApiError(400, f"proxy: {address!r} is a udp:// address")
    return parse_host_port(address, listen=listen)


def format_address(host: str, port: int) -> str:
    """Go's ``net.JoinHostPort``: ``[v6]:port`` or ``host:port``."""
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


class _ConnectionClosedError(Exception):
    """A toxic closed the connection (or a write failed): end both directions."""

    def __init__(self, *, reset: bool) -> None:
        super().__init__("connection closed by a toxic")
        self.reset = reset


class _Link:
    """One direction of one connection."""

    def __init__(
        self,
        *,
        proxy: TcpProxy,
        direction: str,
        source: trio.abc.ReceiveStream,
        dest: trio.abc.HalfCloseableStream,
    ) -> None:
        self.proxy = proxy
        self.direction = direction
        self.source = source
        self.dest = dest
        self.chain = TcpChain(rng=proxy.rng, stats_for=proxy._stats_for(direction))
        self._inbox: deque[Item] = deque()
        self._inbox_bytes = 0
        self._kick = trio.Event()
        self._space = trio.Event()

    def kick(self) -> None:
        """Wake the pump: data came in, or the toxics changed."""
        self._kick.set()

    async def read(self) -> None:
        try:
            while True:
                while self._inbox_bytes + self.chain.held_bytes > MAX_HELD_BYTES:
                    self._space = trio.Event()
                    await self._space.wait()
                data = await self.source.receive_some(RECEIVE_BYTES)
                if not data:
                    break
                self._inbox.append(Chunk(data=bytes(data), timestamp=trio.current_time()))
                self._inbox_bytes += len(data)
                self.kick()
        except _STREAM_ERRORS:
            pass  # a reset or error reads as the end of this direction
        self._inbox.append(EndOfStream())
        self.kick()

    async def pump(self) -> None:
        """Feed the toxics, run their timers, write what they release, until EOF."""
        while True:
            self._kick = trio.Event()
            now = trio.current_time()
            while self._inbox:
                item = self._inbox.popleft()
                if isinstance(item, Chunk):
                    self._inbox_bytes -= len(item.data)
                self.chain.receive(item, now)
            self.chain.handle_timer(now)
            for item in self.chain.take_output():
                if await self._write(item):
                    return
            self._space.set()
            deadline = self.chain.get_timer()
            with trio.move_on_at(math.inf if deadline is None else deadline):
                await self._kick.wait()

    async def _write(self, item: Item) -> bool:
        """Write one item; True when this direction is over."""
        if isinstance(item, Close):
            raise _ConnectionClosedError(reset=item.reset)
        try:
            if isinstance(item, Chunk):
                await self.dest.send_all(item.data)
                self.proxy.metrics.relayed(
                    self.proxy.name, self.direction, len(item.data), datagram=False
                )
                return False
            await self.dest.send_eof()
        except _STREAM_ERRORS:
            raise _ConnectionClosedError(reset=False) from None
        return True


class _Connection:
    def __init__(
        self,
        proxy: TcpProxy,
        client: trio.abc.HalfCloseableStream,
        upstream: trio.abc.HalfCloseableStream,
    ) -> None:
        self.client = client
        self.upstream = upstream
        self.links = {
            UPSTREAM: _Link(proxy=proxy, direction=UPSTREAM, source=client, dest=upstream),
            DOWNSTREAM: _Link(proxy=proxy, direction=DOWNSTREAM, source=upstream, dest=client),
        }
        now = trio.current_time()
        for toxic in proxy.toxics():
            self.links[toxic.stream].chain.add(toxic, now)

    async def run(self) -> None:
        reset = False
        try:
            async with trio.open_nursery() as nursery:
                for link in self.links.values():
                    nursery.start_soon(link.read)
                    nursery.start_soon(link.pump)
        except* _ConnectionClosedError as group:
            reset = any(isinstance(e, _ConnectionClosedError) and e.reset for e in group.exceptions)
        if reset:
            for stream in (self.client, self.upstream):
                _set_linger_zero(stream)


def _set_linger_zero(stream: trio.abc.Stream) -> None:
    """Close with RST rather than FIN (Toxiproxy's ``SetLinger(0)``)."""
    if isinstance(stream, trio.SocketStream):
        with contextlib.suppress(OSError):
            stream.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))


class TcpProxy(ToxicProxy[Item]):
    """A Toxiproxy proxy for TCP (implements ``ProxyRuntime``)."""

    datagrams = False
    parse_address = staticmethod(parse_tcp_address)

    def __init__(
        self,
        *,
        max_connections: int = MAX_CONNECTIONS,
        connect_timeout_s: float = CONNECT_TIMEOUT_S,
        **proxy: Unpack[ProxyArgs],
    ) -> None:
        super().__init__(**proxy)
        self._connections: set[_Connection] = set()
        self.max_connections = max_connections
        self.connect_timeout_s = connect_timeout_s
        #: accepted connections being served (connecting upstream or relaying)
        self.active_connections = 0
        #: connections closed at once because ``max_connections`` were open
        self.refused_connections = 0

    # -- toxics (ProxyRuntime) ------------------------------------------------------

    def check_toxic(self, toxic: ToxicSpec) -> ToxicSpec:
        return check_tcp_toxic(toxic)

    def _open_chains(self, stream: str) -> Iterator[tuple[TcpChain, Callable[[], None]]]:
        for conn in self._connections:
            link = conn.links[stream]
            yield link.chain, link.kick

    # -- serving --------------------------------------------------------------------

    async def serve(self, *, task_status: trio.TaskStatus[str] = trio.TASK_STATUS_IGNORED) -> None:
        """Listen, report ``host:port``, relay until cancelled (then drop everything)."""
        listener = await _bind(*self._listen_hp)
        try:
            host, port = listener.socket.getsockname()[:2]
            self.address = format_address(host, port)
            log.info("proxy %s listening", self.name)
            task_status.started(self.address)
            await trio.serve_listeners(self._accepted, [listener])
        finally:
            self.address = None
            await trio.aclose_forcefully(listener)

    async def _accepted(self, client: trio.SocketStream) -> None:
        if self.active_connections >= self.max_connections:
            # hostile or runaway clients must not grow the proxy without bound
            self.refused_connections += 1
            self.metrics.overload(self.name, UPSTREAM, "max_connections")
            if self.refused_connections == 1 or self.refused_connections % 1000 == 0:
                log.warning(
                    "proxy %s: %d connections open, new ones closed (%d so far)",
                    self.name,
                    self.active_connections,
                    self.refused_connections,
                )
            await trio.aclose_forcefully(client)
            return
        self.active_connections += 1
        self.metrics.connection_opened(self.name)
        try:
            try:
                with trio.fail_after(self.connect_timeout_s):
                    upstream = await trio.open_tcp_stream(*self._upstream_hp)
            except trio.TooSlowError:
                log.info(
                    "proxy %s: upstream connect timed out after %.1f s",
                    self.name,
                    self.connect_timeout_s,
                )
                return
            except OSError as exc:
                log.info("proxy %s: cannot reach the upstream: %s", self.name, exc)
                return
            try:
                await self.relay(client, upstream)
            finally:
                await trio.aclose_forcefully(upstream)
        except Exception:  # one connection never takes the proxy down
            log.exception("proxy %s: unexpected error on a connection", self.name)
        finally:
            self.active_connections -= 1
            self.metrics.connection_closed(self.name)
            await trio.aclose_forcefully(client)

    async def relay(
        self, client: trio.abc.HalfCloseableStream, upstream: trio.abc.HalfCloseableStream
    ) -> None:
        """Relay one connection through the toxics until it ends (streams left open).

        The proxy's own entry point for each accepted client; tests drive it with
        in-memory streams.
        """
        conn = _Connection(self, client, upstream)
        self._connections.add(conn)
        try:
            await conn.run()
        finally:
            self._connections.discard(conn)


async def _bind(host: str, port: int) -> trio.SocketListener:
    infos = await trio.socket.getaddrinfo(
        host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
    )
    family, type_, proto, _, sockaddr = infos[0]
    sock = trio.socket.socket(family, type_, proto)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        await sock.bind(sockaddr)
        sock.listen(socket.SOMAXCONN)
    except BaseException:
        sock.close()
        raise
    return trio.SocketListener(sock)

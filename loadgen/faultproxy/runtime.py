"""What the TCP and the UDP proxy share: addresses, toxics, and toxic changes applied live.

:class:`ToxicProxy` keeps a proxy's toxics (Toxiproxy's ``ToxicCollection``) and
applies every change at once to the chain of each open connection or flow, waking
its pump, so a toxic added, updated or removed through the API reaches traffic
already in flight; what a removed toxic held goes on (the chains see to that).
Each subclass says how it parses addresses, which toxic types it takes, and where
its open chains are.  The error texts are Toxiproxy's.
"""

from __future__ import annotations

import abc
import random
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from functools import partial
from typing import ClassVar, Generic, NotRequired, TypedDict, TypeVar, Unpack

import trio

from loadgen.faultproxy.chain import ToxicChain
from loadgen.faultproxy.metrics import FaultProxyMetrics
from loadgen.faultproxy.model import ApiError, ToxicSpec
from loadgen.faultproxy.toxic import ToxicStats

__all__ = ["ProxyArgs", "ToxicProxy"]

T = TypeVar("T")


class ProxyArgs(TypedDict):
    """What every proxy is made with (the keyword arguments of both kinds)."""

    name: str
    listen: str
    upstream: str
    metrics: FaultProxyMetrics
    rng: NotRequired[random.Random | None]


@dataclass(frozen=True)
class _ToxicMetrics:
    """One toxic type's drops and holds, on one proxy and direction, into the metrics."""

    metrics: FaultProxyMetrics
    proxy: str
    direction: str
    toxic_type: str
    datagram: bool

    def dropped(self, size_bytes: int) -> None:
        self.metrics.dropped(
            self.proxy, self.direction, self.toxic_type, size_bytes, datagram=self.datagram
        )

    def held(self, delay_s: float) -> None:
        self.metrics.held(self.proxy, self.direction, self.toxic_type, delay_s)


class ToxicProxy(abc.ABC, Generic[T]):
    """Base of :class:`~.tcp.TcpProxy` and :class:`~.udp.UdpProxy` (the toxic half of
    ``ProxyRuntime``)."""

    #: drops are counted as datagrams too (UDP)
    datagrams: ClassVar[bool]

    def __init__(self, **proxy: Unpack[ProxyArgs]) -> None:
        self.name = proxy["name"]
        self.listen = proxy["listen"]
        self.upstream = proxy["upstream"]
        self._listen_hp = self.parse_address(self.listen, listen=True)
        self._upstream_hp = self.parse_address(self.upstream, listen=False)
        self.metrics = proxy["metrics"]
        rng = proxy.get("rng")
        self.rng = rng if rng is not None else random.Random()
        self._toxics: dict[str, ToxicSpec] = {}
        #: the bound address while serving
        self.address: str | None = None

    @staticmethod
    @abc.abstractmethod
    def parse_address(address: str, *, listen: bool) -> tuple[str, int]:
        """(host, port) of a ``listen`` or ``upstream`` address; ApiError(400) if malformed."""

    @abc.abstractmethod
    def check_toxic(self, toxic: ToxicSpec) -> ToxicSpec:
        """The toxic with its type's defaults filled in; ApiError(400) if it is not one
        of this kind of proxy's toxics."""

    @abc.abstractmethod
    def _open_chains(self, stream: str) -> Iterable[tuple[ToxicChain[T], Callable[[], None]]]:
        """The chain of ``stream`` of every open connection or flow, with its wake-up."""

    # -- toxics (ProxyRuntime) ------------------------------------------------------

    def toxics(self) -> list[ToxicSpec]:
        return list(self._toxics.values())

    def add_toxic(self, toxic: ToxicSpec) -> None:
        if toxic.name in self._toxics:
            raise ApiError(409, "toxic already exists")
        toxic = self.check_toxic(toxic)
        self._toxics[toxic.name] = toxic
        self._apply(toxic.stream, lambda chain, now: chain.add(toxic, now))

    def update_toxic(self, toxic: ToxicSpec) -> None:
        old = self._toxics.get(toxic.name)
        if old is None:
            raise ApiError(404, "toxic not found")
        if (old.type, old.stream) != (toxic.type, toxic.stream):
            raise ApiError(400, f"toxic {toxic.name}: type and stream cannot change")
        toxic = self.check_toxic(toxic)
        self._toxics[toxic.name] = toxic
        self._apply(toxic.stream, lambda chain, now: chain.update(toxic, now))

    def remove_toxic(self, name: str) -> None:
        toxic = self._toxics.pop(name, None)
        if toxic is None:
            raise ApiError(404, "toxic not found")
        self._apply(toxic.stream, lambda chain, now: chain.remove(name, now))

    def _apply(self, stream: str, change: Callable[[ToxicChain[T], float], None]) -> None:
        chains = list(self._open_chains(stream))
        if not chains:
            return  # also: no clock needed outside a trio run
        now = trio.current_time()
        for chain, wake in chains:
            change(chain, now)
            wake()

    def _stats_for(self, stream: str) -> Callable[[str], ToxicStats]:
        """For a chain of ``stream``: each toxic type's stats, into the metrics."""
        return partial(_ToxicMetrics, self.metrics, self.name, stream, datagram=self.datagrams)

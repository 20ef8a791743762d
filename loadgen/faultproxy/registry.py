"""The proxies by name, with Toxiproxy's semantics (its ProxyCollection and Proxy).

Every running proxy serves in its own cancel scope inside the registry's nursery:
disabling a proxy cancels that scope, which closes its listener and drops its
connections (Toxiproxy's ``stop``).  Each start builds a fresh runtime
(:class:`~loadgen.faultproxy.tcp.TcpProxy`, or ``UdpProxy`` when ``listen`` and
``upstream`` are ``udp://``) and gives it the proxy's toxics, which live here.

Answers are Toxiproxy's JSON (``proxy_json``); errors are :class:`ApiError` with
its status codes: 400 bad input, 404 unknown proxy or toxic, 409 already exists,
500 when a listener cannot be opened.  ``listen`` shows the bound address once the
proxy has listened (port 0 becomes the real port), as Toxiproxy's does.
"""

from __future__ import annotations

import logging
import random
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, cast

import trio

from loadgen.faultproxy.metrics import FaultProxyMetrics
from loadgen.faultproxy.model import (
    UPSTREAM,
    ApiError,
    ProxyRuntime,
    ProxySpec,
    ToxicSpec,
    is_udp,
)

__all__ = ["ProxyRegistry", "new_runtime"]

log = logging.getLogger(__name__)


def new_runtime(
    spec: ProxySpec, metrics: FaultProxyMetrics, rng: random.Random | None
) -> ProxyRuntime:
    """A TCP or UDP runtime for ``spec`` (ApiError(400) on a malformed address)."""
    if is_udp(spec.listen) or is_udp(spec.upstream):
        from loadgen.faultproxy.udp import UdpProxy  # the datagram half, built apart

        return UdpProxy(
            name=spec.name, listen=spec.listen, upstream=spec.upstream, metrics=metrics, rng=rng
        )
    from loadgen.faultproxy.tcp import TcpProxy

    return TcpProxy(
        name=spec.name, listen=spec.listen, upstream=spec.upstream, metrics=metrics, rng=rng
    )


@dataclass(eq=False, kw_only=True)
class _Entry:
    name: str
    listen: str  # as asked, then the bound address once listening
    upstream: str
    runtime: ProxyRuntime
    enabled: bool = False
    asked_listen: str = ""
    toxics: dict[str, ToxicSpec] = field(default_factory=dict)
    scope: trio.CancelScope | None = None
    stopped: trio.Event | None = None

    def toxic_list(self) -> list[ToxicSpec]:
        # Toxiproxy lists the upstream chain first, then the downstream one
        ups = [t for t in self.toxics.values() if t.stream == UPSTREAM]
        downs = [t for t in self.toxics.values() if t.stream != UPSTREAM]
        return ups + downs

    def to_json(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "listen": self.listen,
            "upstream": self.upstream,
            "enabled": self.enabled,
            "toxics": [t.to_json() for t in self.toxic_list()],
        }


class ProxyRegistry:
    """All proxies of one fault proxy process; methods raise :class:`ApiError`."""

    def __init__(
        self,
        nursery: trio.Nursery,
        metrics: FaultProxyMetrics,
        *,
        rng: random.Random | None = None,
        runtime_factory: Callable[
            [ProxySpec, FaultProxyMetrics, random.Random | None], ProxyRuntime
        ] = new_runtime,
    ) -> None:
        self._nursery = nursery
        self.metrics = metrics
        self._rng = rng if rng is not None else random.Random()
        self._new_runtime = runtime_factory
        self._proxies: dict[str, _Entry] = {}
        # one change at a time: starts and stops await, and requests interleave
        self._lock = trio.Lock()

    # -- proxies --------------------------------------------------------------------

    def proxies_json(self) -> dict[str, Any]:
        return {name: entry.to_json() for name, entry in self._proxies.items()}

    def proxy_json(self, name: str) -> dict[str, Any]:
        return self._get(name).to_json()

    async def create(self, spec: ProxySpec) -> dict[str, Any]:
        async with self._lock:
            if spec.name in self._proxies:
                raise ApiError(409, "proxy already exists")
            entry = self._new_entry(spec)
            if spec.enabled:
                await self._start(entry)
            self._proxies[spec.name] = entry
            self.metrics.proxy_added(spec.name)
            return entry.to_json()

    async def update(self, name: str, body: object) -> dict[str, Any]:
        """POST or PATCH /proxies/{name}: ``listen``, ``upstream``, ``enabled``."""
        async with self._lock:
            entry = self._get(name)
            if not isinstance(body, dict):
                raise ApiError(400, "bad request body: expected a JSON object")
            listen = body.get("listen", entry.listen)
            upstream = body.get("upstream", entry.upstream)
            enabled = body.get("enabled", entry.enabled)
            if not isinstance(listen, str) or not isinstance(upstream, str):
                raise ApiError(400, "bad request body: listen and upstream must be strings")
            if not isinstance(enabled, bool):
                raise ApiError(400, "bad request body: enabled must be true or false")
            if not upstream:
                raise ApiError(400, "missing required field: upstream")
            if (listen, upstream) != (entry.listen, entry.upstream):
                spec = ProxySpec(name=name, listen=listen, upstream=upstream, enabled=enabled)
                self._new_runtime(spec, self.metrics, None)  # 400 on a bad address, first
                if is_udp(listen) != is_udp(upstream):
                    raise ApiError(400, "proxy: listen and upstream must both be udp:// or TCP")
                await self._stop(entry)
                entry.listen = entry.asked_listen = listen
                entry.upstream = upstream
            if enabled and not entry.enabled:
                await self._start(entry)
            elif not enabled and entry.enabled:
                await self._stop(entry)
            return entry.to_json()

    async def delete(self, name: str) -> None:
        async with self._lock:
            entry = self._get(name)
            await self._stop(entry)
            del self._proxies[name]
            self.metrics.proxy_removed(name)

    async def populate(self, specs: list[ProxySpec]) -> list[dict[str, Any]]:
        """Create or replace each proxy (Toxiproxy's ``AddOrReplace``); the input was
        validated as a whole before (no partial apply on bad input).  A proxy whose
        listen and upstream are unchanged is kept as it is, toxics included."""
        names = [s.name for s in specs]
        if len(set(names)) != len(names):
            raise ApiError(400, "bad request body: duplicate proxy name")
        out: list[dict[str, Any]] = []
        for spec in specs:
            async with self._lock:
                existing = self._proxies.get(spec.name)
                if existing is not None:
                    same_listen = spec.listen in (existing.listen, existing.asked_listen)
                    if same_listen and spec.upstream == existing.upstream:
                        out.append(existing.to_json())
                        continue
                    await self._stop(existing)
                    self._remove_toxics(existing)
                    del self._proxies[spec.name]
                    self.metrics.proxy_removed(spec.name)
                entry = self._new_entry(spec)
                if spec.enabled:
                    try:
                        await self._start(entry)
                    except ApiError as exc:
                        raise _PopulateError(exc, out) from None
                self._proxies[spec.name] = entry
                self.metrics.proxy_added(spec.name)
                out.append(entry.to_json())
        return out

    async def reset(self) -> None:
        """POST /reset: enable every proxy and remove every toxic."""
        async with self._lock:
            for entry in self._proxies.values():
                if not entry.enabled:
                    await self._start(entry)
                self._remove_toxics(entry)

    # -- toxics ---------------------------------------------------------------------

    def toxics_json(self, proxy: str) -> list[dict[str, Any]]:
        return [t.to_json() for t in self._get(proxy).toxic_list()]

    def toxic_json(self, proxy: str, toxic: str) -> dict[str, Any]:
        return self._get_toxic(self._get(proxy), toxic).to_json()

    def add_toxic(self, proxy: str, body: object) -> dict[str, Any]:
        entry = self._get(proxy)
        spec = entry.runtime.check_toxic(ToxicSpec.from_json_untrusted(body))
        if spec.name in entry.toxics:
            raise ApiError(409, "toxic already exists")
        entry.runtime.add_toxic(spec)
        entry.toxics[spec.name] = spec
        self.metrics.toxic_added(proxy, spec.type)
        return spec.to_json()

    def update_toxic(self, proxy: str, toxic: str, body: object) -> dict[str, Any]:
        entry = self._get(proxy)
        old = self._get_toxic(entry, toxic)
        spec = entry.runtime.check_toxic(old.updated_untrusted(body))
        entry.runtime.update_toxic(spec)
        entry.toxics[toxic] = spec
        return spec.to_json()

    def remove_toxic(self, proxy: str, toxic: str) -> None:
        entry = self._get(proxy)
        spec = self._get_toxic(entry, toxic)
        entry.runtime.remove_toxic(toxic)
        del entry.toxics[toxic]
        self.metrics.toxic_removed(proxy, spec.type)

    # -- internals ------------------------------------------------------------------

    def _get(self, name: str) -> _Entry:
        entry = self._proxies.get(name)
        if entry is None:
            raise ApiError(404, "proxy not found")
        return entry

    @staticmethod
    def _get_toxic(entry: _Entry, name: str) -> ToxicSpec:
        spec = entry.toxics.get(name)
        if spec is None:
            raise ApiError(404, "toxic not found")
        return spec

    def _new_entry(self, spec: ProxySpec) -> _Entry:
        return _Entry(
            name=spec.name,
            listen=spec.listen,
            asked_listen=spec.listen,
            upstream=spec.upstream,
            runtime=self._new_runtime(spec, self.metrics, self._child_rng()),
        )

    def _child_rng(self) -> random.Random:
        # one generator per runtime, drawn from ours: --seed makes every proxy repeatable
        return random.Random(self._rng.getrandbits(64))

    def _remove_toxics(self, entry: _Entry) -> None:
        for name, spec in list(entry.toxics.items()):
            entry.runtime.remove_toxic(name)
            del entry.toxics[name]
            self.metrics.toxic_removed(entry.name, spec.type)

    async def _start(self, entry: _Entry) -> None:
        """Listen (on the bound address when the proxy listened before) and serve."""
        spec = ProxySpec(name=entry.name, listen=entry.listen, upstream=entry.upstream)
        runtime = self._new_runtime(spec, self.metrics, self._child_rng())
        for toxic in entry.toxic_list():
            runtime.add_toxic(toxic)
        scope = trio.CancelScope()
        stopped = trio.Event()
        try:
            address = await self._nursery.start(_serve, runtime, scope, stopped, entry.name)
        except OSError as exc:
            raise ApiError(500, f"listen {entry.listen}: {exc.strerror or exc}") from None
        entry.runtime, entry.scope, entry.stopped = runtime, scope, stopped
        entry.listen = str(address)
        entry.enabled = True

    async def _stop(self, entry: _Entry) -> None:
        if entry.scope is not None and entry.stopped is not None:
            entry.scope.cancel()
            await entry.stopped.wait()
        entry.scope = entry.stopped = None
        entry.enabled = False


class _PopulateError(ApiError):
    """A populate that failed part way: the error, and the proxies applied before."""

    def __init__(self, error: ApiError, applied: list[dict[str, Any]]) -> None:
        super().__init__(error.status, error.message)
        self.applied = applied

    def to_json(self) -> dict[str, Any]:
        return {**super().to_json(), "proxies": self.applied}


class _ReportingStatus:
    """A task status that remembers whether the start was reported."""

    def __init__(self, status: trio.TaskStatus[str]) -> None:
        self._status = status
        self.reported = False

    def started(self, value: str) -> None:
        self.reported = True
        self._status.started(value)


async def _serve(
    runtime: ProxyRuntime,
    scope: trio.CancelScope,
    stopped: trio.Event,
    name: str,
    task_status: trio.TaskStatus[str] = trio.TASK_STATUS_IGNORED,
) -> None:
    """One proxy's serve in its own cancel scope; a failure after the start is logged
    (the proxy then serves nothing) instead of taking the registry's nursery down."""
    status = _ReportingStatus(task_status)
    try:
        with scope:
            await runtime.serve(task_status=cast("trio.TaskStatus[str]", status))
    except Exception:
        if not status.reported:
            raise
        log.exception("proxy %s stopped on an error", name)
    finally:
        stopped.set()

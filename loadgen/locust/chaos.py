"""Fault windows for chaos scenarios: the fault proxy in front of the gateway, driven by
``toxiproxy-python``.

``FaultLab.install(...)`` is called by a chaos locustfile at import time.  In the
process that owns the run (the local runner or the master), after the target is
known (``--host``, or the embedded gateway), it

1. uses the fault proxy at ``--faultproxy`` (``http://HOST:PORT`` of a Toxiproxy-
   compatible API), or starts ``loadgen faultproxy`` on loopback when none is given;
2. creates two proxies in front of the gateway: ``vpn_tls`` (TCP) and ``vpn_dtls``
   (``udp://``, to the gateway's UDP port: ``--faultproxy-dtls-upstream``, by default
   the TCP host and port, where the reference gateway and ocserv listen);
3. points the users at them: Locust's host becomes the TCP proxy, and
   ``--vpn-dtls-host/--vpn-dtls-port`` the UDP proxy (forwarded to workers);
4. at ``test_start`` runs the scenario's fault windows (toxics added at ``at_s``,
   removed ``for_s`` later), logging each edge so it can be lined up with the
   metrics (the proxy's ``loadgen_faultproxy_toxics_active`` gauge shades it);
5. removes its proxies at the end and stops the proxy it started.
"""

from __future__ import annotations

import ipaddress
import logging
import urllib.parse
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import gevent  # type: ignore[import-untyped]
from locust import events
from locust.env import Environment
from locust.runners import WorkerRunner

__all__ = ["FaultLab", "Toxic", "Window"]

log = logging.getLogger("loadgen.chaos")

TLS_PROXY = "vpn_tls"
DTLS_PROXY = "vpn_dtls"


@dataclass(frozen=True, kw_only=True)
class Toxic:
    """One toxic of a window, in Toxiproxy's terms; ``proxy`` is ``tls`` or ``dtls``."""

    proxy: str
    type: str
    stream: str = "downstream"
    attributes: dict[str, float] = field(default_factory=dict)
    toxicity: float = 1.0

    @property
    def name(self) -> str:
        return f"{self.type}_{self.stream}"


@dataclass(frozen=True, kw_only=True)
class Window:
    """Toxics in place from ``at_s`` after the test start, for ``for_s`` (None: to the end)."""

    at_s: float
    for_s: float | None
    toxics: Sequence[Toxic]


def _add_options(parser: Any, **_kw: Any) -> None:
    parser.add_argument(
        "--faultproxy",
        default="",
        help="Toxiproxy-compatible API URL (default: start loadgen faultproxy on loopback)",
    )
    parser.add_argument(
        "--faultproxy-dtls-upstream",
        default="",
        help="HOST:PORT of the gateway's DTLS (default: the TCP host and port)",
    )


class FaultLab:
    """The proxies and fault windows of one chaos scenario (one per locustfile)."""

    def __init__(self, windows: Callable[[Any], Sequence[Window]]) -> None:
        self._windows = windows
        self._process: Any = None
        self._proxies: dict[str, Any] = {}
        self._runner: gevent.Greenlet | None = None

    @classmethod
    def install(cls, windows: Callable[[Any], Sequence[Window]]) -> FaultLab:
        """Register the options and listeners; ``windows(parsed_options)`` gives the plan."""
        lab = cls(windows)
        events.init_command_line_parser.add_listener(_add_options)  # type: ignore[no-untyped-call]
        events.init.add_listener(lab._on_init)  # type: ignore[no-untyped-call]
        events.test_start.add_listener(lab._on_test_start)  # type: ignore[no-untyped-call]
        events.test_stop.add_listener(lab._on_test_stop)  # type: ignore[no-untyped-call]
        events.quitting.add_listener(lab._on_quitting)  # type: ignore[no-untyped-call]
        return lab

    # -- set-up in the run's owner -----------------------------------------------------

    def _on_init(self, environment: Environment, **_kw: Any) -> None:
        if isinstance(environment.runner, WorkerRunner):
            return
        if not environment.host:
            raise SystemExit("chaos scenario: no target (give --host or let the gateway start)")
        from toxiproxy import Toxiproxy

        from loadgen.faultproxy.embedded import start_faultproxy_process

        options = environment.parsed_options
        api = getattr(options, "faultproxy", "") or ""
        if not api:
            self._process, api = start_faultproxy_process()
            log.info("fault proxy started: %s", api)
        parsed = urllib.parse.urlsplit(api)
        # users reach the proxies where they reach the API (a lab's proxy container,
        # or loopback); the gateway certificate must name that host
        public = parsed.hostname or "127.0.0.1"
        bind = "127.0.0.1" if _is_loopback(public) else "0.0.0.0"
        server = Toxiproxy()
        server.update_api_consumer(parsed.hostname or "127.0.0.1", parsed.port or 8474)
        target = urllib.parse.urlsplit(environment.host)
        host, port = target.hostname or "127.0.0.1", target.port or 443
        dtls_up = getattr(options, "faultproxy_dtls_upstream", "") or f"{host}:{port}"
        for name in (TLS_PROXY, DTLS_PROXY):
            if server.get_proxy(name) is not None:
                server.get_proxy(name).destroy()
        tls = server.create(upstream=f"{host}:{port}", name=TLS_PROXY, listen=f"{bind}:0")
        dtls = server.create(upstream=f"udp://{dtls_up}", name=DTLS_PROXY, listen=f"udp://{bind}:0")
        self._proxies = {"tls": tls, "dtls": dtls}
        tls_port = int(tls.listen.rsplit(":", 1)[1])
        dtls_port = int(dtls.listen.rsplit(":", 1)[1])
        environment.host = urllib.parse.urlunsplit(
            (target.scheme, f"{public}:{tls_port}", target.path or "/", "", "")
        )
        if options is not None:
            options.host = environment.host
            options.vpn_dtls_host = public
            options.vpn_dtls_port = dtls_port
        log.info(
            "chaos: users go through the fault proxy: %s (TCP) and udp://%s:%d (DTLS)",
            environment.host,
            public,
            dtls_port,
        )

    def _on_test_start(self, environment: Environment, **_kw: Any) -> None:
        if isinstance(environment.runner, WorkerRunner) or not self._proxies:
            return
        self._stop_windows()  # a new test from the web UI starts clean
        plan = list(self._windows(environment.parsed_options))
        self._runner = gevent.spawn(self._run_windows, plan)

    def _on_test_stop(self, environment: Environment, **_kw: Any) -> None:
        if not isinstance(environment.runner, WorkerRunner):
            self._stop_windows()

    def _stop_windows(self) -> None:
        """End the windows in progress and lift every toxic of our proxies."""
        if self._runner is not None:
            self._runner.kill(block=True, timeout=5)
            self._runner = None
        for proxy in self._proxies.values():
            try:
                for name in list(proxy.toxics()):
                    proxy.destroy_toxic(name)
            except Exception as exc:  # the proxy may be gone; the run goes on
                log.warning("cannot lift the toxics of %s: %s", proxy.name, exc)

    def _run_windows(self, plan: list[Window]) -> None:
        try:
            self._windows_in_order(plan)
        except Exception as exc:  # an API error: say so, the run itself goes on
            log.error("chaos: fault window failed: %s: %s", type(exc).__name__, exc)

    def _windows_in_order(self, plan: list[Window]) -> None:
        started = gevent.get_hub().loop.now()
        edges: list[tuple[float, bool, Window]] = []
        for w in plan:
            edges.append((w.at_s, True, w))
            if w.for_s is not None:
                edges.append((w.at_s + w.for_s, False, w))
        for at, on, window in sorted(edges, key=lambda e: (e[0], not e[1])):
            gevent.sleep(max(0.0, at - (gevent.get_hub().loop.now() - started)))
            for toxic in window.toxics:
                proxy = self._proxies[toxic.proxy]
                if on:
                    proxy.add_toxic(
                        type=toxic.type,
                        stream=toxic.stream,
                        name=toxic.name,
                        toxicity=toxic.toxicity,
                        attributes=dict(toxic.attributes),
                    )
                else:
                    proxy.destroy_toxic(toxic.name)
            names = ", ".join(f"{t.proxy}:{t.name}" for t in window.toxics)
            log.info("chaos: fault window %s: %s", "OPEN" if on else "closed", names)

    def _on_quitting(self, **_kw: Any) -> None:
        if self._runner is not None:
            self._runner.kill(block=False)
            self._runner = None
        for proxy in self._proxies.values():
            try:
                proxy.destroy()
            except Exception as exc:  # the proxy may be gone already
                log.debug("cannot remove proxy %s: %s", proxy.name, exc)
        self._proxies = {}
        if self._process is not None:
            from loadgen.faultproxy.embedded import stop_faultproxy_process

            stop_faultproxy_process(self._process)
            self._process = None


def _is_loopback(host: str) -> bool:
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return host == "localhost"

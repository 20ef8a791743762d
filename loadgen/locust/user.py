"""``VpnUser``: one synthetic AnyConnect client per Locust user, and its Locust plumbing.

Importing this module (a locustfile does, through ``from loadgen.locust
import VpnUser``) registers the ``--vpn-*`` command line options and the
event listeners that

- start the embedded reference gateway when no ``--host`` is given, once, in
  the process that owns the run (local runner or master; its URL reaches the
  workers as Locust's host, its CA file through the forwarded options);
- stop this process's engine sidecar at test stop, and the gateway at exit.

User names come from ``--vpn-user-pattern`` with ``n`` unique across the
run: Locust process ``w`` (the runner's worker index) takes n = w * 100000 +
1, 2, ...; an identity freed by a stopped user serves again (gateways evict
an older session of the same user).
"""

from __future__ import annotations

import itertools
import logging
import os
import socket
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import gevent.lock  # type: ignore[import-untyped]
from locust import User, events
from locust.env import Environment
from locust.runners import WorkerRunner

from loadgen.engine.feeder import (
    Credentials,
    FeederError,
    HostnameFactory,
    IdentityPool,
    PatternFeeder,
    new_run_id,
)
from loadgen.locust import discovery
from loadgen.locust.client import (
    ConnectParams,
    GatewayProcess,
    SidecarClient,
    SidecarError,
    VpnRequestError,
)
from loadgen.locust.protocol import EchoCompleted, TunnelEnded
from loadgen.proto.dtls import KNOWN_DTLS12_CIPHERS, KNOWN_DTLS_CIPHERS

__all__ = ["IDENTITIES_PER_PROCESS", "VpnConnection", "VpnSettings", "VpnUser"]

log = logging.getLogger("loadgen.locust")

IDENTITIES_PER_PROCESS = 100_000
DEFAULT_METRICS_PORT = 9646


# -- settings ---------------------------------------------------------------------------


def _ciphers(text: str, known: tuple[str, ...], option: str) -> tuple[str, ...] | None:
    names = tuple(n.strip() for n in text.split(":") if n.strip())
    unknown = [n for n in names if n not in known]
    if unknown:
        raise ValueError(f"{option}: unknown cipher {unknown[0]}; known: {':'.join(known)}")
    return names or None


@dataclass(frozen=True, kw_only=True)
class VpnSettings:
    """The ``--vpn-*`` options, checked."""

    user_pattern: str = "user{n}"
    password: str = field(default="loadgen", repr=False)
    group: str | None = None
    cafile: str | None = None
    insecure: bool = False
    dtls: bool = True
    dtls_ciphers: tuple[str, ...] | None = None
    dtls12_ciphers: tuple[str, ...] | None = None
    echo_count: int = 3
    echo_interval_s: float = 0.2
    echo_timeout_s: float = 2.0
    timeout_s: float = 30.0
    dtls_host: str | None = None
    dtls_port: int | None = None
    dtls_reattempt_s: float | None = None
    #: base port of the sidecars' metrics (plus the worker index); None: not served
    metrics_port: int | None = DEFAULT_METRICS_PORT
    metrics_host: str = "127.0.0.1"

    @classmethod
    def from_options(cls, options: Any) -> VpnSettings:
        """From ``environment.parsed_options`` (None: the defaults); ValueError when bad."""

        def opt(name: str, default: Any) -> Any:
            value = getattr(options, name, None)
            return default if value is None or value == "" else value

        settings = cls(
            user_pattern=str(opt("vpn_user_pattern", "user{n}")),
            password=str(opt("vpn_password", "loadgen")),
            group=opt("vpn_group", None),
            cafile=opt("vpn_cafile", None),
            insecure=bool(opt("vpn_insecure", False)),
            dtls=not opt("vpn_no_dtls", False),
            dtls_ciphers=_ciphers(
                str(opt("vpn_dtls_ciphers", "")), KNOWN_DTLS_CIPHERS, "--vpn-dtls-ciphers"
            ),
            dtls12_ciphers=_ciphers(
                str(opt("vpn_dtls12_ciphers", "")), KNOWN_DTLS12_CIPHERS, "--vpn-dtls12-ciphers"
            ),
            echo_count=int(opt("vpn_echo_count", 3)),
            echo_interval_s=float(opt("vpn_echo_interval", 0.2)),
            echo_timeout_s=float(opt("vpn_echo_timeout", 2.0)),
            timeout_s=float(opt("vpn_timeout", 30.0)),
            dtls_host=opt("vpn_dtls_host", None),
            dtls_port=_optional_int(opt("vpn_dtls_port", None)),
            dtls_reattempt_s=_optional_float(opt("vpn_dtls_reattempt", None)),
            metrics_port=_optional_int(opt("vpn_metrics_port", DEFAULT_METRICS_PORT)) or None,
            metrics_host=str(opt("vpn_metrics_host", "127.0.0.1")),
        )
        if settings.echo_count < 1 or settings.echo_interval_s < 0:
            raise ValueError("--vpn-echo-count must be >= 1 and --vpn-echo-interval >= 0")
        if settings.dtls_port is not None and not 0 < settings.dtls_port < 65536:
            raise ValueError("--vpn-dtls-port must be in 1..65535")
        if settings.dtls_reattempt_s is not None and not 0 < settings.dtls_reattempt_s <= 3600:
            raise ValueError("--vpn-dtls-reattempt must be in (0, 3600]")
        if settings.metrics_port is not None and not 0 < settings.metrics_port < 65536:
            raise ValueError("--vpn-metrics-port must be in 1..65535 (0: off)")
        if settings.echo_timeout_s <= 0 or settings.timeout_s <= 0:
            raise ValueError("--vpn-echo-timeout and --vpn-timeout must be positive")
        try:
            PatternFeeder(settings.user_pattern, password=settings.password)
        except FeederError as exc:
            raise ValueError(f"--vpn-user-pattern: {exc}") from None
        return settings


def _optional_int(value: Any) -> int | None:
    return None if value is None or value == "" else int(value)


def _optional_float(value: Any) -> float | None:
    return None if value is None or value == "" else float(value)


def _add_options(parser: Any, **_kwargs: Any) -> None:
    add = parser.add_argument
    add("--vpn-user-pattern", default="user{n}", help="user names, {n} unique per user")
    add(
        "--vpn-password",
        default="loadgen",
        env_var="LOADGEN_VPN_PASSWORD",
        is_secret=True,
        help="password of every user (or LOADGEN_VPN_PASSWORD)",
    )
    add("--vpn-group", default="", help="tunnel group to select, by name or alias")
    add("--vpn-cafile", default="", help="PEM CA file for the gateway certificate")
    add("--vpn-insecure", action="store_true", help="do not verify the gateway certificate")
    add("--vpn-no-dtls", action="store_true", help="offer no DTLS; tunnels stay on CSTP")
    add("--vpn-dtls-ciphers", default="", help="X-DTLS-CipherSuite offer, colon-separated")
    add("--vpn-dtls12-ciphers", default="", help="X-DTLS12-CipherSuite offer, colon-separated")
    add("--vpn-echo-count", type=int, default=3, help="ICMP echo requests per burst")
    add("--vpn-echo-interval", type=float, default=0.2, help="seconds between echo requests")
    add("--vpn-echo-timeout", type=float, default=2.0, help="seconds to wait for each reply")
    add("--vpn-timeout", type=float, default=30.0, help="bound for each connect phase, seconds")
    add("--vpn-dtls-host", default="", help="send DTLS here instead of the gateway's host")
    add("--vpn-dtls-port", type=int, default=None, help="and to this port (a fault proxy)")
    add(
        "--vpn-dtls-reattempt",
        type=float,
        default=None,
        help="seconds between DTLS re-attempts after a fallback (default 60)",
    )
    add(
        "--vpn-metrics-port",
        type=int,
        default=DEFAULT_METRICS_PORT,
        help="each engine sidecar serves Prometheus metrics on this port plus its "
        f"worker index (default {DEFAULT_METRICS_PORT}; 0: off)",
    )
    add("--vpn-metrics-host", default="127.0.0.1", help="address the sidecars' metrics bind")
    add(
        "--prometheus-sd",
        default="",
        help="write a Prometheus file_sd JSON file listing every sidecar's metrics",
    )


# -- per process state ------------------------------------------------------------------


class _Process:
    """What one Locust process holds: its sidecar, the gateway it owns, identities."""

    def __init__(self) -> None:
        self.sidecar: SidecarClient | None = None
        self.gateway: GatewayProcess | None = None
        self.discovery: discovery.ServiceDiscoveryFile | None = None
        self.ids = itertools.count(1)
        #: set at exit: no sidecar starts any more, users still running give up quietly
        self.quitting = False
        self.run_id = new_run_id(os.urandom)
        self._lock = gevent.lock.Semaphore()
        self._pool: IdentityPool | None = None
        self._pool_key: tuple[str, str | None, int] | None = None
        self._hostnames: HostnameFactory | None = None

    def sidecar_for(self, environment: Environment) -> SidecarClient:
        """This process's sidecar, started on first use (never in a master)."""
        with self._lock:
            if self.quitting:
                raise SidecarError("Locust is quitting")
            if self.sidecar is None or not self.sidecar.alive:
                settings = VpnSettings.from_options(environment.parsed_options)
                worker = _worker_index(environment)
                port = None
                if settings.metrics_port is not None:
                    port = settings.metrics_port + worker
                client = SidecarClient(environment.events.request.fire)
                client.start(metrics_port=port, metrics_host=settings.metrics_host)
                self.sidecar = client
                if port is not None:
                    _announce_metrics(environment, client, settings.metrics_host, port, worker)
            return self.sidecar

    def close_sidecar(self) -> None:
        with self._lock:
            sidecar, self.sidecar = self.sidecar, None
        if sidecar is not None:
            sidecar.close()

    def acquire(self, environment: Environment, settings: VpnSettings) -> tuple[Credentials, str]:
        worker = _worker_index(environment)
        key = (settings.user_pattern, settings.group, worker)
        if self._pool is None or self._pool_key != key:
            feeder = PatternFeeder(
                settings.user_pattern,
                password="",  # filled in per connect: never kept in the pool
                group=settings.group,
                first=worker * IDENTITIES_PER_PROCESS + 1,
                count=IDENTITIES_PER_PROCESS,
            )
            self._pool, self._pool_key = feeder.pool(), key
            self._hostnames = HostnameFactory(self.run_id, worker)
        assert self._hostnames is not None
        creds = self._pool.acquire()
        return creds, self._hostnames.hostname(next(self.ids))

    def release(self, creds: Credentials) -> None:
        if self._pool is not None:
            self._pool.release(creds)


_PROCESS = _Process()


def _worker_index(environment: Environment) -> int:
    """0 for a local runner; the index the master gave this worker otherwise."""
    return max(0, int(getattr(environment.runner, "worker_index", 0) or 0))


def _announce_metrics(
    environment: Environment, client: SidecarClient, host: str, port: int, worker: int
) -> None:
    """Print where this sidecar's metrics are, and tell the run's owner (for the SD file)."""
    if client.metrics_url is None:
        log.warning(
            "engine sidecar metrics NOT served: port %d is taken (--vpn-metrics-port)", port
        )
        return
    log.info("engine sidecar %d metrics: %s", worker, client.metrics_url)
    target_host = socket.gethostname() if host in ("0.0.0.0", "::") else host
    runner = environment.runner
    if runner is not None:
        runner.send_message(
            discovery.MESSAGE_TYPE, {"worker": worker, "target": f"{target_host}:{port}"}
        )


def _on_metrics_message(environment: Environment, msg: Any, **_kwargs: Any) -> None:
    sd = _PROCESS.discovery
    data = msg.data if isinstance(msg.data, dict) else {}
    worker, target = data.get("worker"), data.get("target")
    if sd is None or not isinstance(worker, int) or not isinstance(target, str):
        return
    try:
        sd.add(worker, target)
    except OSError as exc:
        log.error("cannot write %s: %s", sd.path, exc)


def _on_init(environment: Environment, **_kwargs: Any) -> None:
    try:
        VpnSettings.from_options(environment.parsed_options)
    except ValueError as exc:
        logging.getLogger("loadgen.locust").error("%s", exc)
        sys.exit(2)
    runner = environment.runner
    if runner is not None and not isinstance(runner, WorkerRunner):
        runner.register_message(discovery.MESSAGE_TYPE, _on_metrics_message)
        sd_path = getattr(environment.parsed_options, "prometheus_sd", "")
        if sd_path:
            _PROCESS.discovery = discovery.ServiceDiscoveryFile(Path(sd_path))
            _PROCESS.discovery.write()  # an empty list until sidecars start
            log.info("Prometheus service discovery file: %s", sd_path)
    if isinstance(runner, WorkerRunner) or environment.host:
        return
    if any(getattr(cls, "host", None) for cls in environment.user_classes):
        return
    gateway = GatewayProcess(_embedded_gateway_args(environment))
    info = gateway.start()
    _PROCESS.gateway = gateway
    environment.host = info.url
    options = environment.parsed_options
    if options is not None:
        if getattr(options, "vpn_cafile", ""):
            log.warning("--vpn-cafile ignored: the embedded gateway brings its own CA")
        # custom options are forwarded to workers with each spawn message
        options.vpn_cafile = info.ca_path
        options.host = info.url
    log.info("no --host: the embedded reference gateway %s is the target", info.url)


def _embedded_gateway_args(environment: Environment) -> tuple[str, ...]:
    """Options a scenario gives the embedded gateway (``VpnUser.embedded_gateway_args``)."""
    args: tuple[str, ...] = ()
    for cls in environment.user_classes:
        extra = tuple(getattr(cls, "embedded_gateway_args", ()))
        if extra and args and extra != args:
            raise SystemExit("user classes disagree on embedded_gateway_args")
        args = extra or args
    return args


def _on_test_stop(**_kwargs: Any) -> None:
    _PROCESS.close_sidecar()


def _on_quitting(**_kwargs: Any) -> None:
    # quitting may come before the users stop (SIGTERM, Ctrl-C): the sidecar
    # DISCONNECTs their sessions itself, and the users then find it closed
    _PROCESS.quitting = True
    _PROCESS.close_sidecar()
    gateway, _PROCESS.gateway = _PROCESS.gateway, None
    if gateway is not None:
        gateway.stop()


events.init_command_line_parser.add_listener(_add_options)  # type: ignore[no-untyped-call]
events.init.add_listener(_on_init)  # type: ignore[no-untyped-call]
events.test_stop.add_listener(_on_test_stop)  # type: ignore[no-untyped-call]
events.quitting.add_listener(_on_quitting)  # type: ignore[no-untyped-call]


# -- the user ---------------------------------------------------------------------------


class VpnConnection:
    """The tunnel of one VpnUser, driven through this process's sidecar.

    Every call blocks its greenlet cooperatively; results also reach
    Locust's statistics as ``connect`` and ``echo`` requests.
    """

    def __init__(self, user: User) -> None:
        self._user = user
        self._sid: int | None = None
        self._creds: Credentials | None = None
        self._sidecar: SidecarClient | None = None
        self.connected = False
        #: "dtls" or "cstp" once connected
        self.channel: str | None = None

    @property
    def settings(self) -> VpnSettings:
        return VpnSettings.from_options(self._user.environment.parsed_options)

    def connect(self) -> bool:
        """Phases 1 to 6; False when the connect failed (already reported to Locust)."""
        self.disconnect()
        env = self._user.environment
        settings = self.settings
        url = self._user.host or env.host
        if not url:
            raise SidecarError("no gateway URL: give --host (or none at all for the embedded one)")
        try:
            sidecar = _PROCESS.sidecar_for(env)
        except SidecarError as exc:
            self._sidecar_failed(exc)
            return False
        creds, hostname = _PROCESS.acquire(env, settings)
        sid = next(_PROCESS.ids)
        self._sid, self._creds, self._sidecar = sid, creds, sidecar
        sidecar.on_tunnel_ended[sid] = self._ended
        params = ConnectParams(
            url=url,
            username=creds.username,
            password=settings.password,
            group=creds.group,
            cafile=settings.cafile,
            insecure=settings.insecure,
            hostname=hostname,
            dtls=settings.dtls,
            dtls_ciphers=settings.dtls_ciphers,
            dtls12_ciphers=settings.dtls12_ciphers,
            dtls_host=settings.dtls_host,
            dtls_port=settings.dtls_port,
            dtls_reattempt_s=settings.dtls_reattempt_s,
            timeout_s=settings.timeout_s,
        )
        try:
            reply = sidecar.connect(sid, params)
        except SidecarError as exc:
            self._forget()
            self._sidecar_failed(exc)
            return False
        if reply is None:
            self._forget()
            return False
        self.connected, self.channel = True, reply.channel
        return True

    def reconnect(self) -> bool:
        """Drop the tunnel and connect again (full authentication), as clients do
        after a gateway failover; the whole is a ``connect`` row named ``reconnect``."""
        started = time.monotonic()
        ok = self.connect()
        self._user.environment.events.request.fire(
            request_type="connect",
            name="reconnect",
            response_time=(time.monotonic() - started) * 1000,
            response_length=0,
            exception=None if ok else VpnRequestError("connect", "failed", "reconnect failed"),
            context={},
        )
        return ok

    def _sidecar_failed(self, exc: SidecarError) -> None:
        """No sidecar to ask: quiet while Locust quits, a ``connect`` failure otherwise."""
        if _PROCESS.quitting:
            return
        log.error("%s", exc)
        self._user.environment.events.request.fire(
            request_type="connect",
            name="connect",
            response_time=0,
            response_length=0,
            exception=VpnRequestError("connect", "internal", str(exc)),
            context={},
        )

    def echo(
        self,
        count: int | None = None,
        *,
        interval_s: float | None = None,
        timeout_s: float | None = None,
    ) -> EchoCompleted | None:
        """An ICMP echo burst to the gateway's tunnel address; a user whose
        tunnel is down reconnects first, as a real client would."""
        if not self.connected and not self.connect():
            return None
        assert self._sidecar is not None and self._sid is not None
        settings = self.settings
        try:
            reply = self._sidecar.echo(
                self._sid,
                count=settings.echo_count if count is None else count,
                interval_s=settings.echo_interval_s if interval_s is None else interval_s,
                timeout_s=settings.echo_timeout_s if timeout_s is None else timeout_s,
            )
        except SidecarError:
            # it exited: its requests were reported as failures; reconnect next time
            self._forget()
            return None
        if reply is not None:
            self.channel = reply.channel
        return reply

    def disconnect(self) -> None:
        """DISCONNECT (or abandon a connect in progress) and free the identity."""
        sid, sidecar = self._sid, self._sidecar
        if sid is None or sidecar is None:
            return
        try:
            sidecar.disconnect(sid)
        except SidecarError:
            pass  # the sidecar is gone, and its sessions with it
        finally:
            self._forget()

    def _ended(self, message: TunnelEnded) -> None:
        del message  # already reported by the client as a "tunnel" failure
        self._forget()

    def _forget(self) -> None:
        if self._creds is not None:
            _PROCESS.release(self._creds)
        self._sid = self._creds = None
        self.connected, self.channel = False, None


class VpnUser(User):
    """One synthetic VPN client: connects on start, disconnects on stop.

    Subclasses add tasks that call ``self.vpn.echo()`` (and set ``wait_time``).
    ``embedded_gateway_args`` are extra ``loadgen gateway`` options for the
    embedded gateway a run without ``--host`` starts (e.g. a short ``--dpd``).
    """

    abstract = True
    embedded_gateway_args: tuple[str, ...] = ()

    def __init__(self, environment: Environment) -> None:
        super().__init__(environment)
        self.vpn = VpnConnection(self)

    def on_start(self) -> None:
        self.vpn.connect()

    def on_stop(self) -> None:
        self.vpn.disconnect()

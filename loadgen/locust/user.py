"""``VpnUser``: one synthetic AnyConnect client per Locust user, and its Locust plumbing.

Importing this module (a locustfile does, through ``from loadgen.locust
import VpnUser``) registers the ``--vpn-*`` command line options and the
event listeners that

- start the embedded reference gateway when no ``--host`` is given, once, in
  the process that owns the run (local runner or master; its URL reaches the
  workers as Locust's host, its CA file through the forwarded options);
- stop this process's engine sidecar at test stop, and the gateway at exit.

User names come from ``--vpn-user`` with ``n`` unique across the
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
import warnings
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
    IdentityFeeder,
    IdentityPool,
    PatternFeeder,
    load_credentials,
    new_run_id,
)
from loadgen.gateway.embedded import EMBEDDED_PASSWORD
from loadgen.locust import discovery
from loadgen.locust.client import (
    GatewayProcess,
    SidecarClient,
    SidecarError,
    VpnRequestError,
)
from loadgen.locust.protocol import Connect, EchoCompleted, TunnelEnded
from loadgen.locust.settings import add_options, check_files, settings_for
from loadgen.options import ClientOptions, Front, dest_of, flag_of

__all__ = ["IDENTITIES_PER_PROCESS", "VpnConnection", "VpnUser"]

log = logging.getLogger("loadgen.locust")

IDENTITIES_PER_PROCESS = 100_000


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
                settings = settings_for(environment.parsed_options)
                worker = _worker_index(environment)
                port = None
                if settings.metrics_port:  # 0: off
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

    def acquire(self, environment: Environment, settings: ClientOptions) -> tuple[Credentials, str]:
        worker = _worker_index(environment)
        workers = _worker_count(environment)
        key = (settings.credentials or settings.user, settings.group, worker)
        if self._pool is None or self._pool_key != key:
            feeder: IdentityFeeder
            if settings.credentials:
                if worker >= workers:
                    raise FeederError(
                        f"worker {worker} of {workers}: give the master --expect-workers "
                        "with the number of workers, so the credentials file splits right"
                    )
                feeder = load_credentials(settings.credentials).slice(worker, workers)
            else:
                feeder = PatternFeeder(
                    settings.user,
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


def _worker_count(environment: Environment) -> int:
    """How many Locust processes share the identities: 1 for a local runner, the
    master's ``--expect-workers`` (forwarded to workers; ``--processes`` sets it) else."""
    if not isinstance(environment.runner, WorkerRunner):
        return 1
    return max(1, int(getattr(environment.parsed_options, "expect_workers", 1) or 1))


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
        settings = settings_for(environment.parsed_options)
        if not isinstance(environment.runner, WorkerRunner):
            check_files(settings)  # workers get their options later, from the master
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
    if isinstance(runner, WorkerRunner):
        return
    if environment.host or any(getattr(cls, "host", None) for cls in environment.user_classes):
        if settings.password is None and settings.credentials is None and not settings.certificate:
            log.error(
                "no password for %s: give %s (or LOADGEN_VPN_PASSWORD), or %s",
                environment.host or "the users' hosts",
                flag_of("password", Front.LOCUST),
                flag_of("credentials", Front.LOCUST),
            )
            sys.exit(2)
        return
    gateway = GatewayProcess(_embedded_gateway_args(environment))
    info = gateway.start()
    _PROCESS.gateway = gateway
    environment.host = info.url
    options = environment.parsed_options
    if options is not None:
        if settings.tls_given:
            log.warning("TLS options ignored: the embedded gateway brings its own CA")
        # custom options are forwarded to workers with each spawn message
        for name in ("servername", "servercert", "insecure"):
            setattr(options, dest_of(name, Front.LOCUST), None)
        options.vpn_cafile = info.ca_path
        if settings.password is None:
            options.vpn_password = EMBEDDED_PASSWORD
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
    if _PROCESS.discovery is not None:
        # the sidecars are gone: a stale list would read as targets down
        try:
            _PROCESS.discovery.clear()
        except OSError as exc:
            log.error("cannot write %s: %s", _PROCESS.discovery.path, exc)
    gateway, _PROCESS.gateway = _PROCESS.gateway, None
    if gateway is not None:
        gateway.stop()


events.init_command_line_parser.add_listener(add_options)  # type: ignore[no-untyped-call]
events.init.add_listener(_on_init)  # type: ignore[no-untyped-call]
events.test_stop.add_listener(_on_test_stop)  # type: ignore[no-untyped-call]
events.quitting.add_listener(_on_quitting)  # type: ignore[no-untyped-call]


# -- the user ---------------------------------------------------------------------------


def _connect_bound_s(settings: ClientOptions) -> float:
    """How long a connect may take: phases 1 to 5, each bounded, then DTLS's schedule."""
    return settings.timeout_s * 5 + settings.dtls_schedule[-1]


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
    def settings(self) -> ClientOptions:
        return settings_for(self._user.environment.parsed_options)

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
        try:
            creds, hostname = _PROCESS.acquire(env, settings)
        except FeederError as exc:  # every identity in use, or a bad credentials file
            log.error("no identity for a new user: %s", exc)
            self._report("connect", "connect", VpnRequestError("connect", "resource", str(exc)))
            return False
        sid = next(_PROCESS.ids)
        self._sid, self._creds, self._sidecar = sid, creds, sidecar
        sidecar.on_tunnel_ended[sid] = self._ended
        try:
            # the options travel to the sidecar once per option set
            profile = sidecar.configure(settings, url)
            if profile is None:
                self._forget()
                return False
            command = Connect(
                seq=0,  # the client assigns it
                id=sid,
                profile=profile,
                username=creds.username,
                # a credentials file brings its own passwords; None: the profile's
                password=creds.password or None,
                group=creds.group,
                hostname=hostname,
                n=creds.n,
                certificate=creds.certificate,
                sslkey=creds.sslkey,
                key_password=creds.key_password,
                token_secret=creds.token_secret,
            )
            reply = sidecar.connect(command, bound_s=_connect_bound_s(settings))
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
        self._report("connect", "connect", VpnRequestError("connect", "internal", str(exc)))

    def _report(self, request_type: str, name: str, exc: Exception) -> None:
        self._user.environment.events.request.fire(
            request_type=request_type,
            name=name,
            response_time=0,
            response_length=0,
            exception=exc,
            context={},
        )

    def echo(
        self,
        count: int | None = None,
        *,
        spacing_s: float | None = None,
        timeout_s: float | None = None,
        udp: bool | None = None,
        size_bytes: int | None = None,
        interval_s: float | None = None,
    ) -> EchoCompleted | None:
        """An echo burst (ICMP, or UDP to port 7 with ``udp``) to the echo target;
        what is not given comes from the ``--vpn-echo-*`` options (a count of 0:
        nothing is sent, None is returned).  A user whose tunnel is down
        reconnects first, as a real client would.  ``interval_s`` is the old
        name of ``spacing_s``."""
        if interval_s is not None:
            warnings.warn(
                "echo(interval_s=...) is deprecated: use spacing_s", DeprecationWarning, 2
            )
            spacing_s = interval_s if spacing_s is None else spacing_s
        settings = self.settings
        count = settings.echo_count if count is None else count
        if count == 0:  # --vpn-echo-count 0: no echo at all
            return None
        if not self.connected and not self.connect():
            return None
        assert self._sidecar is not None and self._sid is not None
        try:
            reply = self._sidecar.echo(
                self._sid,
                count=count,
                spacing_s=settings.echo_spacing_s if spacing_s is None else spacing_s,
                timeout_s=settings.echo_timeout_s if timeout_s is None else timeout_s,
                udp=settings.echo_udp if udp is None else udp,
                payload_bytes=settings.echo_size if size_bytes is None else size_bytes,
            )
        except SidecarError:
            # it exited: its requests were reported as failures; reconnect next time
            self._forget()
            return None
        if reply is not None:
            self.channel = reply.channel
        return reply

    def traffic(
        self,
        packets: int = 10,
        *,
        size_bytes: int = 1000,
        spacing_s: float = 0.01,
        timeout_s: float | None = None,
        interval_s: float | None = None,
    ) -> EchoCompleted | None:
        """A burst of ``packets`` UDP datagrams of ``size_bytes`` payload to the
        echo target's UDP echo (port 7), each answered through the tunnel: a
        ``traffic`` row per channel whose length is the bytes echoed back.
        ``interval_s`` is the old name of ``spacing_s``."""
        if interval_s is not None:
            warnings.warn(
                "traffic(interval_s=...) is deprecated: use spacing_s", DeprecationWarning, 2
            )
            spacing_s = interval_s
        return self.echo(
            packets, spacing_s=spacing_s, timeout_s=timeout_s, udp=True, size_bytes=size_bytes
        )

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

"""The gevent side: the engine sidecar process, request/response matching, Locust events.

Runs inside a monkey-patched Locust process, so nothing here imports trio:
the engine runs in the sidecar (``loadgen.locust.sidecar``), one per Locust
process that runs users.  A reader greenlet decodes the sidecar's replies,
fires ``events.request`` for each of them (``connect`` rows per phase and for
the whole, ``echo`` rows per channel) and wakes the greenlet waiting for the
request's final reply.  The sidecar and the embedded reference gateway are
children of the one lifecycle (``loadgen.lifecycle``, its blocking runner,
cooperative under gevent's monkey-patching).

Secrets: the password travels in the ``configure`` frame of its option set
(once) and, from a credentials file, in each ``connect`` frame; no event, log
line or exception carries it.
"""

from __future__ import annotations

import contextlib
import dataclasses
import itertools
import logging
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import gevent  # type: ignore[import-untyped]
import gevent.event  # type: ignore[import-untyped]
import gevent.lock  # type: ignore[import-untyped]
import gevent.os  # type: ignore[import-untyped]

from loadgen import lifecycle
from loadgen.gateway.embedded import gateway_spec
from loadgen.lifecycle import START_TIMEOUT_S, TAG_ENV, Child, ChildSpec, ChildStartError
from loadgen.locust import protocol as wire
from loadgen.options import ClientOptions

__all__ = [
    "TAG_ENV",
    "GatewayInfo",
    "GatewayProcess",
    "SidecarClient",
    "SidecarError",
    "VpnRequestError",
]

log = logging.getLogger("loadgen.locust")

CLOSE_S = 10.0
#: after CLOSE_S, how long a SIGTERM has before SIGKILL
KILL_GRACE_S = 2.0
#: beyond the request's own bounds, how long a waiting greenlet trusts the sidecar
REPLY_SLACK_S = 30.0
#: building an option set's SSL context (loading a CA file) is quick
CONFIGURE_S = 10.0


class SidecarError(RuntimeError):
    """The sidecar could not be started or is gone."""


class VpnRequestError(Exception):
    """A failed VPN request as Locust shows it: ``phase/reason`` only, so that
    Locust's failure table groups by a small closed set (loadgen.failures)."""

    def __init__(self, phase: str, reason: str, message: str = "") -> None:
        super().__init__(f"{phase}/{reason}")
        self.phase = phase
        self.reason = reason
        self.message = message


@dataclass(eq=False)
class _Pending:
    kind: str
    sid: int
    started: float
    result: gevent.event.AsyncResult = field(default_factory=gevent.event.AsyncResult)


RequestEvent = Callable[..., None]


def _row(kind: str) -> tuple[str, str]:
    """The Locust row (request type, name) a failed request of ``kind`` is reported in:
    a refused option set fails the connect that needed it."""
    if kind in ("connect", "configure"):
        return "connect", "connect"
    return kind, "tunnel"


class SidecarClient:
    """One per Locust process that runs users.  ``fire`` is
    ``environment.events.request.fire``."""

    def __init__(self, fire: RequestEvent) -> None:
        self._fire = fire
        self._proc: Child | None = None
        self._to_child = -1
        self._from_child = -1
        self._write_lock = gevent.lock.Semaphore()
        self._pending: dict[int, _Pending] = {}
        self._seq = itertools.count(1)
        self._reader: gevent.Greenlet | None = None
        self._ready = gevent.event.AsyncResult()
        self._closing = False
        self._dead = False
        #: session id -> called when its tunnel ends by itself
        self.on_tunnel_ended: dict[int, Callable[[wire.TunnelEnded], None]] = {}
        #: where the sidecar serves its metrics, once it is ready (None: nowhere)
        self.metrics_url: str | None = None
        #: (options, url) -> the profile number the sidecar knows them by
        self._profiles: dict[tuple[ClientOptions, str], int] = {}
        self._profile_numbers = itertools.count(1)
        #: option sets sent and not yet answered: the users who need them wait
        self._configuring: dict[tuple[ClientOptions, str], gevent.event.AsyncResult] = {}

    @property
    def alive(self) -> bool:
        return self._proc is not None and not self._dead and not self._closing

    @property
    def pid(self) -> int | None:
        return None if self._proc is None else int(self._proc.pid)

    # -- lifecycle -------------------------------------------------------------------

    def start(
        self,
        timeout_s: float = START_TIMEOUT_S,
        *,
        metrics_port: int | None = None,
        metrics_host: str = "127.0.0.1",
    ) -> None:
        """Start the sidecar and wait for it; with ``metrics_port`` it serves
        Prometheus metrics there (``metrics_url`` says whether it could)."""
        argv = [sys.executable, "-m", "loadgen.locust.sidecar"]
        if metrics_port is not None:
            argv += ["--metrics-port", str(metrics_port), "--metrics-host", metrics_host]
        child_in, self._to_child = os.pipe()
        self._from_child, child_out = os.pipe()
        try:
            # frames over its stdin and stdout; readiness is its SidecarReady frame.
            # A session of its own: a terminal's Ctrl-C reaches Locust, which then
            # stops the sidecar in order (the sessions DISCONNECT first).
            spec = ChildSpec(
                name="engine sidecar",
                argv=argv,
                parent_flag="--parent-pid",
                tag_flag="--tag",
                stdin=child_in,
                stdout=child_out,
                stderr=None,
                new_session=True,
            )
            self._proc = lifecycle.start_child(spec)
        except OSError:
            self._close_fds()
            raise
        finally:
            os.close(child_in)
            os.close(child_out)
        gevent.os.make_nonblocking(self._to_child)
        gevent.os.make_nonblocking(self._from_child)
        self._reader = gevent.spawn(self._read_loop)
        try:
            self._ready.get(timeout=timeout_s)
        except BaseException as exc:
            # also when the starting greenlet is killed: no half-started child
            self.close(timeout_s=1.0)
            if isinstance(exc, gevent.Timeout | SidecarError):
                raise SidecarError(f"the engine sidecar did not start: {exc}") from None
            raise

    def close(self, timeout_s: float = CLOSE_S) -> None:
        """Shutdown, then EOF; the sidecar DISCONNECTs its sessions and exits
        (else SIGTERM, then SIGKILL)."""
        if self._proc is None or self._closing:
            return
        self._closing = True
        child = self._proc
        if not self._dead:
            with contextlib.suppress(OSError), gevent.Timeout(2.0, False):
                self._write(wire.encode_message(wire.Shutdown()))
        if self._to_child >= 0:
            os.close(self._to_child)
            self._to_child = -1
        try:
            child.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            log.warning("the engine sidecar did not stop within %g s; killing it", timeout_s)
        child.stop(KILL_GRACE_S)
        log.debug("engine sidecar %s exited with %s", child.pid, child.returncode)
        if self._reader is not None:
            self._reader.join(timeout=2.0)
            self._reader.kill(block=False)
        self._close_fds()
        self._abandon_all()

    def _close_fds(self) -> None:
        for name in ("_to_child", "_from_child"):
            fd = getattr(self, name)
            if fd >= 0:
                os.close(fd)
                setattr(self, name, -1)

    def _abandon_all(self) -> None:
        """Wake every waiting greenlet; they report nothing (the run is ending)."""
        pending, self._pending = self._pending, {}
        for p in pending.values():
            p.result.set(None)

    # -- I/O ----------------------------------------------------------------------------

    def _write(self, frame: bytes) -> None:
        with self._write_lock:
            view = memoryview(frame)
            while view:
                if self._to_child < 0:
                    raise OSError("the sidecar's stdin is closed")
                written = gevent.os.nb_write(self._to_child, view)
                view = view[written:]

    def _read_loop(self) -> None:
        decoder = wire.FrameDecoder()
        try:
            while self._from_child >= 0:
                data = gevent.os.nb_read(self._from_child, 65536)
                if not data:
                    break
                decoder.receive_data(data)
                while (message := decoder.next_message_untrusted()) is not None:
                    self._on_message(message)
        except wire.FrameError as exc:
            log.error("unreadable reply from the engine sidecar: %s", exc)
        except OSError:
            pass
        finally:
            self._dead = True
            if not self._ready.ready():
                self._ready.set_exception(SidecarError("it exited"))
            if not self._closing:
                log.error("the engine sidecar exited during the test")
                self._fail_all()

    def _fail_all(self) -> None:
        pending, self._pending = self._pending, {}
        for p in pending.values():
            if p.kind != "disconnect":
                row, name = _row(p.kind)
                exc = VpnRequestError(row, "internal", "the engine sidecar exited")
                elapsed_ms = (time.monotonic() - p.started) * 1000
                self._fire_request(row, name, elapsed_ms, exc)
            p.result.set(None)

    # -- requests ----------------------------------------------------------------------

    def _request(
        self, build: Callable[[int], wire.Message], kind: str, sid: int, bound_s: float
    ) -> Any:
        """Send one request and wait (cooperatively) for its final reply; None: abandoned."""
        if not self.alive:
            raise SidecarError("the engine sidecar is not running")
        seq = next(self._seq)
        pending = _Pending(kind=kind, sid=sid, started=time.monotonic())
        self._pending[seq] = pending
        try:
            self._write(wire.encode_message(build(seq)))
        except OSError as exc:
            self._pending.pop(seq, None)
            raise SidecarError("cannot write to the engine sidecar") from exc
        try:
            return pending.result.get(timeout=bound_s + REPLY_SLACK_S)
        except gevent.Timeout:
            if self._pending.pop(seq, None) is not None and kind != "disconnect":
                row, name = _row(kind)
                lost = VpnRequestError(row, "timeout", "no reply from the engine sidecar")
                self._fire_request(row, name, (bound_s + REPLY_SLACK_S) * 1000, lost)
            return None

    def configure(self, options: ClientOptions, url: str) -> int | None:
        """The sidecar's number for this option set and URL, sent to it on first
        use, once: users spawned together wait for the first one's answer.  None
        when the sidecar refused it (reported as a failed connect of each)."""
        key = (options, url)
        profile = self._profiles.get(key)
        if profile is not None:
            return profile
        waiting = self._configuring.get(key)
        if waiting is not None:
            answer: int | None = waiting.get()
            if answer is None:
                refused = VpnRequestError("connect", "internal", "the option set was refused")
                self._fire_request("connect", "connect", 0, refused)
            return answer
        waiting = self._configuring[key] = gevent.event.AsyncResult()
        number = next(self._profile_numbers)
        answer = None
        try:

            def build(seq: int) -> wire.Message:
                return wire.Configure(seq=seq, profile=number, url=url, options=options)

            reply = self._request(build, "configure", 0, CONFIGURE_S)
            if isinstance(reply, wire.Configured):
                answer = self._profiles[key] = number
        finally:
            del self._configuring[key]
            waiting.set(answer)
        return answer

    def connect(self, command: wire.Connect, *, bound_s: float) -> wire.Connected | None:
        """Phases 1 to 6 for session ``command.id`` (its ``seq`` is assigned here),
        which may take ``bound_s``; events are fired as replies arrive."""

        def build(seq: int) -> wire.Message:
            return dataclasses.replace(command, seq=seq)

        reply = self._request(build, "connect", command.id, bound_s)
        return reply if isinstance(reply, wire.Connected) else None

    def echo(
        self,
        sid: int,
        *,
        count: int,
        spacing_s: float,
        timeout_s: float,
        udp: bool = False,
        payload_bytes: int = 56,
    ) -> wire.EchoCompleted | None:
        """An echo burst; with ``udp`` it is a ``traffic`` request (UDP echo, port 7)."""

        def build(seq: int) -> wire.Message:
            return wire.Echo(
                seq=seq,
                id=sid,
                count=count,
                spacing_s=spacing_s,
                timeout_s=timeout_s,
                udp=udp,
                payload_bytes=payload_bytes,
            )

        kind = "traffic" if udp else "echo"
        reply = self._request(build, kind, sid, count * spacing_s + timeout_s)
        return reply if isinstance(reply, wire.EchoCompleted) else None

    def disconnect(self, sid: int, timeout_s: float = CLOSE_S) -> None:
        """End session ``sid``, abandoning its request in progress (no event for it)."""
        for seq in [s for s, p in self._pending.items() if p.sid == sid]:
            self._pending.pop(seq).result.set(None)
        self.on_tunnel_ended.pop(sid, None)
        if self.alive:
            self._request(
                lambda seq: wire.Disconnect(seq=seq, id=sid), "disconnect", sid, timeout_s
            )

    # -- replies -----------------------------------------------------------------------

    def _fire_request(
        self,
        request_type: str,
        name: str,
        ms: float,
        exc: Exception | None = None,
        length: int = 0,
    ) -> None:
        self._fire(
            request_type=request_type,
            name=name,
            response_time=ms,
            response_length=length,
            exception=exc,
            context={},
        )

    def _on_message(self, message: wire.Message) -> None:
        if isinstance(message, wire.SidecarReady):
            self.metrics_url = message.metrics
            self._ready.set(message.pid)
        elif isinstance(message, wire.PhaseCompleted):
            if message.seq in self._pending:  # else: abandoned by a disconnect
                exc = None
                if message.fallback is not None:
                    exc = VpnRequestError(message.name, message.fallback, "DTLS fell back to CSTP")
                self._fire_request("connect", message.name, message.seconds * 1000, exc)
        elif isinstance(message, wire.TunnelEnded):
            callback = self.on_tunnel_ended.pop(message.id, None)
            if callback is not None:  # else: the user has already let it go
                exc = VpnRequestError(message.phase, message.reason, message.message)
                self._fire_request("tunnel", "ended", 0, exc)
                callback(message)
        elif isinstance(message, wire.Command):
            log.warning("the engine sidecar sent a %s message; ignored", message.TYPE)
        else:
            self._on_final(message)

    def _on_final(
        self,
        message: wire.Configured
        | wire.Connected
        | wire.RequestFailed
        | wire.EchoCompleted
        | wire.Disconnected
        | wire.CommandRejected,
    ) -> None:
        pending = self._pending.pop(message.seq, None)
        if pending is None:
            return  # abandoned: the user was stopped while waiting
        elapsed_ms = (time.monotonic() - pending.started) * 1000
        if isinstance(message, wire.Connected):
            self._fire_request("connect", "connect", message.seconds * 1000)
        elif isinstance(message, wire.EchoCompleted):
            self._fire_echo(message, elapsed_ms, pending.kind)
        elif isinstance(message, wire.RequestFailed):
            exc = VpnRequestError(message.phase, message.reason, message.message)
            log.debug("session %d: %s: %s", message.id, exc, message.message)
            if pending.kind == "connect":
                self._fire_request("connect", message.phase, elapsed_ms, exc)
                self._fire_request("connect", "connect", elapsed_ms, exc)
            elif pending.kind in ("echo", "traffic"):
                self._fire_request(pending.kind, "tunnel", elapsed_ms, exc)
        elif isinstance(message, wire.Disconnected):
            log.debug("session %d: disconnected", message.id)
        elif isinstance(message, wire.CommandRejected):
            log.warning("the engine sidecar rejected a %s: %s", pending.kind, message.message)
            if pending.kind != "disconnect":
                row, name = _row(pending.kind)
                exc = VpnRequestError(row, "internal", message.message)
                self._fire_request(row, name, elapsed_ms, exc)
        pending.result.set(message)

    def _fire_echo(self, message: wire.EchoCompleted, elapsed_ms: float, kind: str) -> None:
        """``echo`` (ICMP) or ``traffic`` (UDP) row named by the channel; its length is
        the bytes echoed back, so Locust's throughput columns mean tunnel payload."""
        exc = None
        if message.received < message.sent:
            missing = message.sent - message.received
            exc = VpnRequestError(
                "tunnel", "timeout", f"{missing} of {message.sent} echo replies missing"
            )
        rtt_ms = statistics.median(message.rtts_s) * 1000 if message.rtts_s else elapsed_ms
        length = message.received * message.payload_bytes
        self._fire_request(kind, message.channel, rtt_ms, exc, length)


# -- the embedded reference gateway ------------------------------------------------------


@dataclass(frozen=True, kw_only=True)
class GatewayInfo:
    url: str
    ca_path: str


class GatewayProcess:
    """``python -m loadgen gateway`` on a free loopback port, as a child of this
    (gevent) process: ``loadgen.gateway.embedded``'s spec on the blocking runner,
    in a private temporary directory, in a session of its own."""

    def __init__(self, extra_args: tuple[str, ...] = ()) -> None:
        self._extra = extra_args
        self._child: Child | None = None
        self._tmp: str | None = None
        self.info: GatewayInfo | None = None

    def start(self, timeout_s: float = START_TIMEOUT_S) -> GatewayInfo:
        tag = lifecycle.tag()
        # the marker goes into the command line through the directory name
        self._tmp = tempfile.mkdtemp(prefix=f"loadgen-locust-gw-{tag}-" if tag else "loadgen-gw-")
        spec = gateway_spec(Path(self._tmp), self._extra, start_timeout_s=timeout_s)
        try:
            self._child = lifecycle.start_child(dataclasses.replace(spec, new_session=True))
        except ChildStartError as exc:
            self.stop()
            raise SidecarError(str(exc)) from None
        except BaseException:
            self.stop()
            raise
        banner = self._child.banner
        self.info = GatewayInfo(url=banner["url"], ca_path=banner["ca"])
        return self.info

    def stop(self, timeout_s: float = 5.0) -> None:
        child, self._child = self._child, None
        if child is not None:
            child.stop(timeout_s)
        if self._tmp is not None:
            shutil.rmtree(self._tmp, ignore_errors=True)
            self._tmp = None

"""The engine sidecar: ``python -m loadgen.locust.sidecar``, a trio child of a Locust process.

Locust's gevent monkey-patching and trio cannot share a process
(architecture.md, "Locust and trio: the sidecar design"), so each Locust
process that runs users starts one of these and sends it commands over the
child's stdin; replies go back over its stdout (framing in
``loadgen.locust.protocol``).  One trio task per session, keyed by the Locust
user's id; a failing session is reported and never disturbs another.

No orphans: the sidecar exits when its stdin reaches EOF (the parent closed
it or died) or when its parent pid changes, checked twice a second.
PR_SET_PDEATHSIG is not used: it fires when the parent *thread* ends.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import math
import os
import signal
import ssl
import sys
from dataclasses import dataclass, field
from ipaddress import IPv4Address

import trio
from prometheus_client import CollectorRegistry, start_http_server

from loadgen.engine.limits import raise_nofile_limit
from loadgen.engine.profile import SessionProfile
from loadgen.engine.runner import SessionRunner
from loadgen.engine.session import SessionConfig, VpnSession, open_session, translate
from loadgen.failures import FallbackReason, Phase, Reason, SessionFailedError
from loadgen.locust.protocol import (
    CommandRejected,
    Configure,
    Configured,
    Connect,
    Connected,
    Disconnect,
    Disconnected,
    Echo,
    EchoCompleted,
    FrameDecoder,
    FrameError,
    Message,
    PhaseCompleted,
    RequestFailed,
    Shutdown,
    SidecarReady,
    TunnelEnded,
    encode_message,
)
from loadgen.metrics.client import ClientMetrics
from loadgen.metrics.lag import SaturationDetector, monitor_loop_lag
from loadgen.options import MAX_ECHO_BYTES, MAX_ECHO_COUNT, MAX_SECONDS, MIN_ECHO_BYTES
from loadgen.proto.cstp import DisconnectReason

__all__ = ["Sidecar", "main"]

log = logging.getLogger("loadgen.locust.sidecar")

#: how long closing all sessions may take at shutdown (DISCONNECT each)
CLOSE_ALL_S = 5.0
#: bound on one DISCONNECT
DISCONNECT_S = 3.0
#: a reply that cannot be written within this is dropped (parent not reading)
WRITE_S = 10.0
#: queued commands per session beyond which the sidecar answers "busy"
MAX_QUEUED = 4
#: option sets kept; a Locust process has a handful (one per user class, at most)
MAX_PROFILES = 64
PARENT_POLL_S = 0.5


class _TunnelEndedNotice:
    """Put in a session's inbox when its tunnel ends by itself."""


_Inbox = Echo | Disconnect | _TunnelEndedNotice


@dataclass(eq=False)
class _Entry:
    id: int
    inbox_send: trio.MemorySendChannel[_Inbox]
    inbox_receive: trio.MemoryReceiveChannel[_Inbox]
    up: bool = False
    #: the connect or echo in progress; a disconnect cancels it
    op_scope: trio.CancelScope | None = None
    closing: bool = False
    #: seq of the Disconnect to answer; None at shutdown (nobody waits)
    disconnect_seq: int | None = None
    done: trio.Event = field(default_factory=trio.Event)
    #: the gateway's tunnel address, or the options' target (computed once)
    target: IPv4Address | None = None


class Sidecar:
    """Commands in from ``receive``, replies out to ``send``."""

    def __init__(
        self,
        receive: trio.abc.ReceiveStream,
        send: trio.abc.SendStream,
        *,
        parent_pid: int | None,
        metrics: ClientMetrics | None = None,
        metrics_url: str | None = None,
    ) -> None:
        self._receive = receive
        self._metrics = metrics if metrics is not None else ClientMetrics(CollectorRegistry())
        self._metrics_url = metrics_url
        self._out = send
        self._parent_pid = parent_pid
        self._write_lock = trio.Lock()
        self._stop = trio.Event()
        self._broken = False
        self._sessions: dict[int, _Entry] = {}
        self._profiles: dict[int, SessionProfile] = {}
        self._nursery: trio.Nursery | None = None

    # -- lifecycle ------------------------------------------------------------------

    async def run(self) -> None:
        async with trio.open_nursery() as root:
            if self._parent_pid is not None:
                root.start_soon(self._watch_parent)
            detector = SaturationDetector(metrics=self._metrics)
            root.start_soon(lambda: monitor_loop_lag(self._metrics, detector=detector))
            async with trio.open_nursery() as sessions:
                self._nursery = sessions
                await self._send(SidecarReady(pid=os.getpid(), metrics=self._metrics_url))
                root.start_soon(self._read_commands)
                await self._stop.wait()
                await self._close_all()
                sessions.cancel_scope.cancel()
            root.cancel_scope.cancel()

    async def _watch_parent(self) -> None:
        while os.getppid() == self._parent_pid:
            await trio.sleep(PARENT_POLL_S)
        log.warning("the Locust process is gone; closing %d sessions", len(self._sessions))
        self._stop.set()

    async def _close_all(self) -> None:
        with trio.CancelScope(shield=True), trio.move_on_after(CLOSE_ALL_S):
            for entry in list(self._sessions.values()):
                self._request_disconnect(entry, None)
            for entry in list(self._sessions.values()):
                await entry.done.wait()

    # -- I/O ---------------------------------------------------------------------------

    async def _send(self, message: Message) -> None:
        if self._broken:
            return
        frame = encode_message(message)
        # shielded: a session's last reply is sent while it is being cancelled
        with trio.CancelScope(shield=True), trio.move_on_after(WRITE_S) as scope:
            async with self._write_lock:
                try:
                    await self._out.send_all(frame)
                except (trio.BrokenResourceError, trio.ClosedResourceError, OSError):
                    self._broken = True  # nobody listens any more
        if scope.cancelled_caught:
            log.warning("the Locust process does not read replies; stopping")
            self._broken = True
        if self._broken:
            self._stop.set()

    async def _read_commands(self) -> None:
        decoder = FrameDecoder()
        try:
            while not self._stop.is_set():
                data = await self._receive.receive_some(65536)
                if not data:
                    return  # EOF: the parent closed our stdin or died
                decoder.receive_data(bytes(data))
                while (message := decoder.next_message_untrusted()) is not None:
                    if isinstance(message, Shutdown):
                        return
                    await self._dispatch(message)
        except FrameError as exc:
            log.warning("unreadable command stream, stopping: %s", exc)
        except (trio.BrokenResourceError, trio.ClosedResourceError, OSError):
            pass
        finally:
            self._stop.set()

    # -- commands -------------------------------------------------------------------

    async def _dispatch(self, message: Message) -> None:
        if isinstance(message, Configure):
            await self._on_configure(message)
        elif isinstance(message, Connect):
            await self._on_connect(message)
        elif isinstance(message, Echo):
            await self._on_echo(message)
        elif isinstance(message, Disconnect):
            entry = self._sessions.get(message.id)
            if entry is None:
                await self._send(Disconnected(seq=message.seq, id=message.id))
            else:
                self._request_disconnect(entry, message.seq)
        else:
            seq = getattr(message, "seq", 0)
            await self._send(CommandRejected(seq=seq, message=f"{message.TYPE} is not a command"))

    async def _on_configure(self, cmd: Configure) -> None:
        """One option set, checked and built once: its SSL context, its base configuration."""
        try:
            profile = SessionProfile(cmd.options, cmd.url)
        except (ValueError, OSError, ssl.SSLError) as exc:
            # a bad URL or CA file: the test's configuration, not the gateway
            await self._reject(cmd.seq, f"bad connect settings: {type(exc).__name__}: {exc}")
            return
        if profile.tokens is not None:
            profile.tokens.on_wait = self._metrics.token_waited
        if cmd.profile not in self._profiles and len(self._profiles) >= MAX_PROFILES:
            await self._reject(cmd.seq, f"more than {MAX_PROFILES} option sets")
            return
        self._profiles[cmd.profile] = profile
        await self._send(Configured(seq=cmd.seq, profile=cmd.profile))

    async def _on_connect(self, cmd: Connect) -> None:
        if cmd.id in self._sessions:
            await self._reject(cmd.seq, f"session {cmd.id} exists")
            return
        profile = self._profiles.get(cmd.profile)
        if profile is None:
            await self._reject(cmd.seq, f"no option set {cmd.profile} (configure first)")
            return
        try:
            # the identity's own certificate and token (loaded once per certificate)
            ctx, extra = profile.identity(
                cmd.n,
                cmd.username,
                certificate=cmd.certificate,
                sslkey=cmd.sslkey,
                key_password=cmd.key_password,
                token_secret=cmd.token_secret,
            )
        except (ValueError, OSError, ssl.SSLError) as exc:  # never quoting a secret
            await self._reject(cmd.seq, f"identity {cmd.username!r}: {exc}")
            return
        cfg = profile.config(
            username=cmd.username,
            password=cmd.password,
            group=cmd.group,
            hostname=cmd.hostname,
            extra=extra,
        )
        send, receive = trio.open_memory_channel[_Inbox](math.inf)
        entry = _Entry(id=cmd.id, inbox_send=send, inbox_receive=receive)
        self._sessions[cmd.id] = entry
        assert self._nursery is not None
        self._nursery.start_soon(self._session, cmd, profile, cfg, entry, ctx)

    async def _on_echo(self, cmd: Echo) -> None:
        if not (
            1 <= cmd.count <= MAX_ECHO_COUNT
            and 0 <= cmd.spacing_s <= MAX_SECONDS
            and 0 < cmd.timeout_s <= MAX_SECONDS
            and MIN_ECHO_BYTES <= cmd.payload_bytes <= MAX_ECHO_BYTES
        ):
            await self._reject(
                cmd.seq,
                "echo needs 1 <= count, 0 <= spacing_s, 0 < timeout_s, "
                f"{MIN_ECHO_BYTES} <= payload_bytes <= {MAX_ECHO_BYTES}",
            )
            return
        entry = self._sessions.get(cmd.id)
        if entry is None or not entry.up or entry.closing:
            await self._send(
                RequestFailed(
                    seq=cmd.seq,
                    id=cmd.id,
                    phase=str(Phase.TUNNEL),
                    reason=str(Reason.TERMINATED),
                    message="the session has no tunnel",
                )
            )
            return
        if entry.inbox_send.statistics().current_buffer_used >= MAX_QUEUED:
            await self._reject(cmd.seq, f"session {cmd.id} is busy")
            return
        entry.inbox_send.send_nowait(cmd)

    def _request_disconnect(self, entry: _Entry, seq: int | None) -> None:
        if entry.disconnect_seq is None:
            entry.disconnect_seq = seq
        if entry.closing:
            return
        entry.closing = True
        if entry.op_scope is not None:
            entry.op_scope.cancel()
        entry.inbox_send.send_nowait(Disconnect(seq=seq or 0, id=entry.id))

    async def _reject(self, seq: int, message: str) -> None:
        await self._send(CommandRejected(seq=seq, message=message))

    # -- one session ------------------------------------------------------------------

    async def _session(
        self,
        cmd: Connect,
        profile: SessionProfile,
        cfg: SessionConfig,
        entry: _Entry,
        ctx: ssl.SSLContext,
    ) -> None:
        runner = SessionRunner(self._metrics, session_factory=open_session, name=cmd.id)
        # the connect (phases 1 to 6) is cut by the client's disconnect
        cut = entry.op_scope = trio.CancelScope()

        async def serve(session: VpnSession) -> None:
            entry.op_scope = None
            await self._connected(cmd, runner, session, entry)
            await self._serve(runner, profile, session, entry)

        try:
            outcome = await runner.run(
                cfg,
                ctx,
                serve,
                cut=cut,
                cut_message="the client gave the connect up",
                leave=DisconnectReason.USER if profile.options.logout else None,
                leave_s=DISCONNECT_S,
            )
            failure = outcome.failure
            if failure is None or entry.closing:
                pass  # the end the client asked for (or gave the connect up)
            elif not outcome.established:
                session = runner.session
                if session is not None:
                    await self._send_phases(cmd, runner, session, failed=True)
                await self._fail(cmd.seq, cmd.id, failure)
            else:
                await self._send(
                    TunnelEnded(
                        id=cmd.id,
                        phase=str(failure.phase),
                        reason=str(failure.reason),
                        message=failure.message,
                    )
                )
        finally:
            entry.up = False
            self._sessions.pop(entry.id, None)
            entry.inbox_send.close()
            if entry.disconnect_seq is not None:
                await self._send(Disconnected(seq=entry.disconnect_seq, id=entry.id))
            entry.done.set()

    async def _fail(self, seq: int, sid: int, failure: SessionFailedError) -> None:
        await self._send(
            RequestFailed(
                seq=seq,
                id=sid,
                phase=str(failure.phase),
                reason=str(failure.reason),
                message=failure.message,
            )
        )

    async def _connected(
        self, cmd: Connect, runner: SessionRunner[VpnSession], session: VpnSession, entry: _Entry
    ) -> None:
        """Phases 1 to 6 are done: their rows, then the final reply."""
        if entry.closing:
            return
        await self._send_phases(cmd, runner, session, failed=False)
        tunnel = session.tunnel
        assert tunnel is not None
        tunnel.on_end = lambda: _notify_end(entry)
        entry.up = True
        await self._send(
            Connected(seq=cmd.seq, id=cmd.id, channel=tunnel.channel, seconds=session.connect_time)
        )

    async def _send_phases(
        self, cmd: Connect, runner: SessionRunner[VpnSession], session: VpnSession, *, failed: bool
    ) -> None:
        for phase, seconds in session.phases.items():
            if phase is not Phase.DTLS and phase is not Phase.CONNECT:
                await self._send(
                    PhaseCompleted(seq=cmd.seq, id=cmd.id, name=str(phase), seconds=seconds)
                )
        tunnel = session.tunnel
        if failed or runner.dtls_wait_s is None or tunnel is None:
            return
        if Phase.DTLS in session.phases:
            await self._send(
                PhaseCompleted(
                    seq=cmd.seq, id=cmd.id, name="dtls", seconds=session.phases[Phase.DTLS]
                )
            )
            return
        fallback = tunnel.dtls_refused
        if fallback is FallbackReason.DISABLED:
            fallback = None  # --vpn-no-dtls: no DTLS phase at all
        if tunnel.dtls is not None:
            fallback = tunnel.dtls.report.fallback
        if fallback is not None:
            # an outcome, not a session failure (architecture.md, Metrics)
            await self._send(
                PhaseCompleted(
                    seq=cmd.seq,
                    id=cmd.id,
                    name="dtls",
                    seconds=runner.dtls_wait_s,
                    fallback=str(fallback),
                )
            )

    async def _serve(
        self,
        runner: SessionRunner[VpnSession],
        profile: SessionProfile,
        session: VpnSession,
        entry: _Entry,
    ) -> None:
        """Echo bursts until a disconnect (then the runner leaves) or the tunnel's end."""
        async for item in entry.inbox_receive:
            tunnel = session.tunnel
            if isinstance(item, Disconnect):
                return
            if isinstance(item, _TunnelEndedNotice) or tunnel is None:
                if entry.closing:
                    return
                ended = None if tunnel is None else tunnel.ended
                raise ended or SessionFailedError(Phase.TUNNEL, Reason.TERMINATED, "ended")
            await self._echo(runner, profile, session, entry, item)

    async def _echo(
        self,
        runner: SessionRunner[VpnSession],
        profile: SessionProfile,
        session: VpnSession,
        entry: _Entry,
        cmd: Echo,
    ) -> None:
        tunnel = session.tunnel
        assert tunnel is not None
        with trio.CancelScope() as scope:
            entry.op_scope = scope
            try:
                if entry.target is None:  # computed once: the address does not change
                    entry.target = session.echo_target(profile.echo.target)
                result = await tunnel.echo(
                    entry.target,
                    count=cmd.count,
                    interval_s=cmd.spacing_s,
                    timeout_s=cmd.timeout_s,
                    payload_bytes=cmd.payload_bytes,
                    udp=cmd.udp,
                )
            except Exception as exc:
                if not entry.closing:
                    await self._fail(cmd.seq, cmd.id, translate(Phase.TUNNEL, exc))
                return
            finally:
                entry.op_scope = None
        if scope.cancelled_caught:
            return  # a disconnect took over; the client no longer waits
        channel = max(result.channels, key=result.channels.__getitem__, default=tunnel.channel)
        runner.echo(channel, result)
        await self._send(
            EchoCompleted(
                seq=cmd.seq,
                id=cmd.id,
                channel=channel,
                sent=result.sent,
                received=result.received,
                rtts_s=tuple(result.rtts_s),
                payload_bytes=cmd.payload_bytes,
            )
        )


def _notify_end(entry: _Entry) -> None:
    if entry.up and not entry.closing:
        with contextlib.suppress(trio.BrokenResourceError, trio.ClosedResourceError):
            entry.inbox_send.send_nowait(_TunnelEndedNotice())


# -- entry point ------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m loadgen.locust.sidecar",
        description="the trio engine behind Locust VPN users (started by loadgen.locust)",
    )
    parser.add_argument("--parent-pid", type=int, help="exit when this parent process is gone")
    parser.add_argument("--tag", default="", help="a marker for process listings (ignored)")
    parser.add_argument("--metrics-port", type=int, help="serve Prometheus metrics on this port")
    parser.add_argument("--metrics-host", default="127.0.0.1", help="and this address")
    parser.add_argument("-v", "--verbose", action="store_true")
    args = parser.parse_args(argv)
    if "locust" in sys.modules or "gevent.monkey" in sys.modules:
        # trio cannot run in a gevent-patched process (trio issues 2965, 3013)
        print("the sidecar must run in a process of its own", file=sys.stderr)
        return 2
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.WARNING,
        format="%(asctime)s %(name)s %(levelname)s %(message)s",
        stream=sys.stderr,
    )
    # Ctrl-C in a terminal reaches the whole process group; Locust decides
    # when we stop (shutdown command or EOF), so the sessions can DISCONNECT.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    parent_pid = args.parent_pid
    if parent_pid is not None and os.getppid() != parent_pid:
        return 1  # the parent died before we started
    raise_nofile_limit()  # one TCP connection and one UDP socket per session
    # Move the frame channel off fds 0 and 1: a stray print must not corrupt it.
    in_fd, out_fd = os.dup(0), os.dup(1)
    null = os.open(os.devnull, os.O_RDONLY)
    os.dup2(null, 0)
    os.close(null)
    os.dup2(2, 1)

    metrics = ClientMetrics(CollectorRegistry())
    metrics_url = None
    if args.metrics_port is not None:
        try:
            start_http_server(args.metrics_port, addr=args.metrics_host, registry=metrics.registry)
            metrics_url = f"http://{args.metrics_host}:{args.metrics_port}/metrics"
        except OSError as exc:
            # the run goes on; the Locust side warns that this port is not served
            log.error(
                "cannot serve metrics on %s:%d: %s", args.metrics_host, args.metrics_port, exc
            )

    async def _main() -> None:
        receive = trio.lowlevel.FdStream(in_fd)
        send = trio.lowlevel.FdStream(out_fd)
        sidecar = Sidecar(
            receive, send, parent_pid=parent_pid, metrics=metrics, metrics_url=metrics_url
        )
        await sidecar.run()

    trio.run(_main)
    return 0


if __name__ == "__main__":
    sys.exit(main())

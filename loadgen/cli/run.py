"""``loadgen run [URL]``: the trio engine alone, with progress, metrics, summary, thresholds."""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import signal
import ssl
from functools import partial
from pathlib import Path
from typing import Any

import trio
from prometheus_client import CollectorRegistry, start_http_server
from rich.console import Console
from rich.live import Live

from loadgen.cli import processes
from loadgen.cli.common import (
    EXIT_OK,
    EXIT_USAGE,
    against_target,
    client_options,
    read_password,
)
from loadgen.cli.progress import Progress, print_summary
from loadgen.engine.feeder import (
    Credentials,
    FeederError,
    HostnameFactory,
    IdentityFeeder,
    PatternFeeder,
    load_credentials,
    new_run_id,
)
from loadgen.engine.limits import (
    CapacityError,
    SourceIpPool,
    check_capacity,
    parse_source_ips,
    raise_nofile_limit,
)
from loadgen.engine.loadmodel import (
    ClosedModel,
    OpenModel,
    StormPlan,
    parse_length,
    parse_think_time,
)
from loadgen.engine.profile import SessionProfile
from loadgen.engine.swarm import Identity, StormSpec, Swarm, SwarmConfig
from loadgen.engine.url import parse_gateway_url
from loadgen.lifecycle import watch_parent
from loadgen.metrics.client import ClientMetrics
from loadgen.metrics.lag import SaturationDetector, generator_stats, monitor_loop_lag
from loadgen.metrics.summary import build_summary, samples_from_registry
from loadgen.metrics.thresholds import ThresholdError, evaluate, parse_threshold, validate
from loadgen.options import ClientOptions, Front, add_arguments

__all__ = ["add_parser"]

EXIT_THRESHOLDS = 1
#: a start this late behind its schedule marks the generator as saturated
LATE_START_SATURATION_S = 1.0


def add_parser(sub: Any) -> None:
    p: argparse.ArgumentParser = sub.add_parser(
        "run",
        help="run many sessions against a gateway: progress, Prometheus, summary, thresholds",
        description=(
            "Run N synthetic AnyConnect sessions in one trio process (or --processes N), with "
            "live progress, Prometheus metrics and a summary; --threshold expressions decide the "
            "exit status (0 all pass, 1 one failed, 2 bad usage).  Without a URL the reference "
            "gateway is started on loopback as the target.  Every run stops by itself after "
            "--duration; Ctrl-C stops early, sessions still send DISCONNECT and the summary is "
            "still written."
        ),
    )
    p.add_argument("url", nargs="?", help="gateway URL; none: the embedded reference gateway")
    load = p.add_argument_group("load")
    load.add_argument(
        "--sessions",
        type=int,
        default=10,
        metavar="N",
        help="closed model: concurrent sessions to reach and hold (default 10)",
    )
    load.add_argument(
        "--rate",
        type=_positive_float,
        default=10.0,
        metavar="R",
        help="sessions started per second while ramping (default 10)",
    )
    load.add_argument(
        "--arrival-rate",
        type=_positive_float,
        metavar="R",
        help="open model instead: R new sessions per second, whatever is active "
        "(--sessions then caps the concurrent sessions)",
    )
    load.add_argument(
        "--duration",
        type=_positive_float,
        default=60.0,
        metavar="S",
        help="run length in seconds; the run stops by itself (default 60)",
    )
    load.add_argument(
        "--session-length",
        default="until-end",
        metavar="SPEC",
        help="how long a session holds: seconds, exp:MEAN, uniform:LO-HI or "
        "until-end (default); closed model replaces ended sessions",
    )
    load.add_argument(
        "--storm",
        metavar="SPEC",
        help="reconnect storm, e.g. at=30,jitter=2,backoff=1: every session drops "
        "its tunnel and reconnects",
    )
    load.add_argument(
        "--reconnect",
        choices=["cookie", "reauth"],
        default="cookie",
        help="storm reconnects with the cookie (default) or log in again",
    )
    load.add_argument(
        "--processes",
        type=int,
        default=1,
        metavar="N",
        help="engine processes; one holds at most about 9,900 DTLS sessions here",
    )
    load.add_argument(
        "--source-ip",
        metavar="RANGE",
        help="source addresses, e.g. 127.0.0.2-127.0.0.200 (loopback only)",
    )
    load.add_argument("--seed", type=int, default=0, help="random seed (jitter, lengths)")
    add_arguments(p, Front.RUN)
    load.add_argument(
        "--think-time",
        metavar="SPEC",
        help="extra pause after each echo: seconds, exp:MEAN or uniform:LO-HI",
    )
    out = p.add_argument_group("output")
    out.add_argument("--summary", type=Path, metavar="FILE", help="write the JSON summary here")
    out.add_argument(
        "--threshold",
        action="append",
        default=[],
        metavar="EXPR",
        help="KEY OP VALUE[unit], e.g. 'phases.connect.p95<2s', "
        "'failure_ratio<0.01', 'echo.rtt_p95<50ms' (repeatable)",
    )
    out.add_argument(
        "--linger",
        type=float,
        default=0.0,
        metavar="S",
        help="keep /metrics up S seconds after the run for a last scrape",
    )
    out.add_argument("--no-progress", action="store_true", help="no live progress display")
    # internal: one engine process of --processes N
    p.add_argument("--worker", help=argparse.SUPPRESS)
    p.add_argument("--exposition", type=Path, help=argparse.SUPPRESS)
    p.add_argument("--exit-with-parent", type=int, metavar="PID", help=argparse.SUPPRESS)
    p.set_defaults(func=_main)


def _positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not (value > 0 and math.isfinite(value)):
        raise argparse.ArgumentTypeError("must be a positive number")
    return value


def _main(parser: argparse.ArgumentParser, args: argparse.Namespace) -> int:
    try:
        thresholds = [parse_threshold(t) for t in args.threshold]
        validate(thresholds)
        _check_args(args)
    except (ThresholdError, ValueError) as exc:
        parser.error(str(exc))
    opts = client_options(parser, args, Front.RUN)
    password = read_password(
        parser,
        opts,
        embedded=args.url is None,
        # certificate authentication needs no password
        needed=opts.credentials is None and opts.certificate is None,
    )
    opts = dataclasses.replace(opts, password=password, password_stdin=False)
    if args.processes > 1 and args.worker is None:
        return processes.run_parent(args, opts, thresholds)
    soft, _hard = raise_nofile_limit()
    try:
        check_capacity(args.sessions, dtls=not opts.no_dtls, soft_limit=soft)
    except CapacityError as exc:
        parser.error(str(exc))
    return trio.run(against_target, args.url, opts, partial(_run_against, args, thresholds))


def _check_args(args: argparse.Namespace) -> None:
    if args.sessions < 1:
        raise ValueError("--sessions must be at least 1")
    if args.processes < 1:
        raise ValueError("--processes must be at least 1")
    parse_length(args.session_length)
    if args.think_time:
        parse_think_time(args.think_time)
    if args.storm:
        StormPlan.parse(args.storm)
    if args.source_ip:
        parse_source_ips(args.source_ip)
    if args.url is not None:
        parse_gateway_url(args.url)


def worker_slice(args: argparse.Namespace) -> tuple[int, int]:
    if args.worker is None:
        return 0, 1
    index, _, count = args.worker.partition("/")
    return int(index), int(count)


def _feeder(args: argparse.Namespace, opts: ClientOptions) -> IdentityFeeder:
    index, count = worker_slice(args)
    if opts.credentials is not None:
        feeder: IdentityFeeder = load_credentials(opts.credentials)
    else:
        feeder = PatternFeeder(opts.user, password=opts.password or "", group=opts.group)
    return feeder.slice(index, count)


def _swarm_config(args: argparse.Namespace, profile: SessionProfile) -> SwarmConfig:
    length = parse_length(args.session_length)
    storm = None
    if args.storm:
        plan = StormPlan.parse(args.storm)
        storm = StormSpec(
            at_s=plan.at_s,
            jitter_s=plan.jitter_s,
            backoff_s=plan.backoff_s,
            retries=plan.retries,
            mode=args.reconnect,
        )
    echo = profile.echo
    return SwarmConfig(
        base=profile.base,
        duration_s=args.duration,
        session_length=length.sample,
        echo_every_s=echo.every_s if echo.count else 0.0,
        echo_timeout_s=echo.timeout_s,
        echo_payload_bytes=echo.payload_bytes,
        echo_burst=echo.count,
        echo_spacing_s=echo.spacing_s,
        echo_target=echo.target,
        echo_udp=echo.udp,
        think_time=parse_think_time(args.think_time).sample if args.think_time else None,
        storm=storm,
        seed=args.seed,
        max_start_rate=args.arrival_rate or args.rate,
        logout=profile.options.logout,
    )


def _schedule_for(args: argparse.Namespace) -> ClosedModel | OpenModel:
    if args.arrival_rate is not None:
        return OpenModel(args.arrival_rate, max_active=args.sessions)
    return ClosedModel(args.sessions, args.rate)


async def _run_against(
    args: argparse.Namespace, thresholds: list[Any], opts: ClientOptions, url: str
) -> int:
    worker_index, _count = worker_slice(args)
    console = Console(stderr=True)
    registry = CollectorRegistry()
    metrics = ClientMetrics(registry)
    try:
        feeder = _feeder(args, opts)
        feeder.require(args.sessions if args.arrival_rate is None else 1)
        profile = SessionProfile(opts, url)
        # the first identity's certificate and token, loaded before any traffic
        _own(profile, feeder.get(0))
    except FeederError as exc:
        console.print(f"[red]{exc}[/red]")
        return EXIT_USAGE
    except (OSError, ssl.SSLError) as exc:
        console.print(f"[red]cannot set up TLS: {exc}[/red]")
        return EXIT_USAGE
    except ValueError as exc:  # CertificateError, a bad token secret, options together
        console.print(str(exc), style="red", markup=False)
        return EXIT_USAGE
    if profile.tokens is not None:
        profile.tokens.on_wait = metrics.token_waited
    # No two live sessions share a user (the gateway would evict one): an
    # ended session's identity serves its replacement.
    pool = feeder.pool()
    hostnames = HostnameFactory(new_run_id(os.urandom), worker_index)

    def identity(n: int) -> Identity:
        creds = pool.acquire()
        try:
            ctx, extra = _own(profile, creds)
        except ValueError:
            pool.release(creds)
            raise
        return Identity(
            username=creds.username,
            password=creds.password,
            group=creds.group or opts.group,
            hostname=hostnames.hostname(n),
            ssl_context=ctx,
            extra=extra,
        )

    def release(ident: Identity) -> None:
        pool.release(Credentials(ident.username, ident.password, ident.group))

    sources = None
    if args.source_ip:
        sources = iter(SourceIpPool(parse_source_ips(args.source_ip), start=worker_index))
    if opts.metrics_port:
        port = opts.metrics_port + (worker_index if args.worker else 0)
        try:
            start_http_server(port, addr=opts.metrics_host, registry=registry)
        except OSError as exc:
            console.print(f"[red]cannot serve metrics on {opts.metrics_host}:{port}: {exc}[/red]")
            return EXIT_USAGE
        console.print(f"metrics: http://{opts.metrics_host}:{port}/metrics")
    swarm = Swarm(
        _swarm_config(args, profile),
        ssl_context=profile.ssl_context,
        schedule=_schedule_for(args),
        identities=identity,
        release_identity=release,
        metrics=metrics,
        source_ips=sources,
    )
    detector = SaturationDetector(metrics=metrics)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(_watch_signals, swarm, console)
        if args.exit_with_parent is not None:
            nursery.start_soon(_watch_parent, args.exit_with_parent, swarm)
        nursery.start_soon(lambda: monitor_loop_lag(metrics, detector=detector))
        nursery.start_soon(_report, args, swarm, registry, detector, console)
        await swarm.run()
        nursery.cancel_scope.cancel()
    gen = generator_stats(detector)
    if swarm.stats.max_start_lateness_s > LATE_START_SATURATION_S:
        # starts fell behind their schedule: the generator could not keep up
        gen["saturated"] = True
    summary = build_summary(samples_from_registry(registry), generator=gen)
    results = evaluate(thresholds, summary)
    if args.exposition is not None:
        from prometheus_client import generate_latest

        args.exposition.write_bytes(generate_latest(registry))
        args.exposition.with_suffix(".saturated").write_text("1" if gen["saturated"] else "0")
    if args.summary is not None and args.worker is None:
        args.summary.write_text(json.dumps(summary, indent=2) + "\n")
    if args.worker is None:
        print_summary(Console(), summary, results)
    if args.linger > 0 and opts.metrics_port:
        console.print(f"keeping /metrics up for {args.linger:g} s")
        await trio.sleep(args.linger)
    return EXIT_OK if all(r.passed for r in results) else EXIT_THRESHOLDS


async def _watch_parent(parent_pid: int, swarm: Swarm) -> None:
    """An engine process of ``--processes`` whose parent is gone stops its run."""
    gone = trio.Event()
    await watch_parent(parent_pid, gone)
    swarm.stop()


async def _watch_signals(swarm: Swarm, console: Console) -> None:
    with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
        async for _ in signals:
            console.print("stopping: sessions disconnect, the summary follows (again to abort)")
            swarm.stop()
            break
        async for _ in signals:
            raise KeyboardInterrupt


def status_of(
    swarm: Swarm, registry: CollectorRegistry, detector: SaturationDetector
) -> dict[str, Any]:
    st = swarm.stats
    samples = samples_from_registry(registry)
    return {
        "elapsed": trio.current_time() - swarm.started_at if swarm.started_at else 0.0,
        "active": dict(st.active),
        "connecting": st.connecting,
        "started": st.started,
        "established": st.established,
        "failed": st.failed,
        "closed": st.closed,
        "failures": dict(st.failures),
        "connect_times": st.connect_times[-2000:],
        "echo_sent": st.echo_sent,
        "echo_received": st.echo_received,
        "echo_rtts": st.echo_rtts[-2000:],
        "dtls_attempted": st.dtls_attempted,
        "dtls_fallbacks": st.dtls_fallbacks,
        "tx_bytes": samples.total("loadgen_tunnel_bytes_total", direction="tx"),
        "rx_bytes": samples.total("loadgen_tunnel_bytes_total", direction="rx"),
        "saturated": detector.saturated,
        "ever_saturated": detector.ever_saturated,
        "cpu_seconds": generator_stats(detector)["cpu_seconds"],
    }


async def _report(
    args: argparse.Namespace,
    swarm: Swarm,
    registry: CollectorRegistry,
    detector: SaturationDetector,
    console: Console,
) -> None:
    """Progress: a live table on a terminal, a line every 5 s otherwise, JSON for a parent."""
    if args.worker is not None:
        while True:
            await trio.sleep(1.0)
            status = status_of(swarm, registry, detector)
            status["connect_times"] = status["connect_times"][-200:]
            status["echo_rtts"] = status["echo_rtts"][-200:]
            print(json.dumps(status), flush=True)
    if args.no_progress:
        return
    progress = Progress(console, args.duration)
    if console.is_terminal:
        with Live(console=console, refresh_per_second=2, transient=False) as live:
            while True:
                await trio.sleep(1.0)
                live.update(progress.render(status_of(swarm, registry, detector)))
    while True:
        await trio.sleep(5.0)
        s = status_of(swarm, registry, detector)
        console.print(
            f"{s['elapsed']:.0f}s active {s['active']} connecting {s['connecting']} "
            f"established {s['established']} failed {s['failed']} "
            f"echo {s['echo_received']}/{s['echo_sent']}" + (" SATURATED" if s["saturated"] else "")
        )


def _own(profile: SessionProfile, creds: Credentials) -> tuple[ssl.SSLContext, dict[str, object]]:
    """The TLS context and session fields of one identity: certificate and token."""
    return profile.identity(
        creds.n,
        creds.username,
        certificate=creds.certificate,
        sslkey=creds.sslkey,
        key_password=creds.key_password,
        token_secret=creds.token_secret,
    )

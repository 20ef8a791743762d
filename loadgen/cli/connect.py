"""``loadgen connect URL``: one full session, phase by phase, as a diagnostic."""

from __future__ import annotations

import argparse
import getpass
import json
import sys
from ipaddress import IPv4Address
from typing import Any

import trio

from loadgen.engine.dtls import DEFAULT_DTLS12_OFFER, DEFAULT_DTLS_OFFER, DtlsOptions, offer
from loadgen.engine.session import (
    DEFAULT_USER_AGENT,
    DownloadMode,
    SessionConfig,
    VpnSession,
    open_session,
    translate,
)
from loadgen.engine.stats import percentile
from loadgen.engine.tls import TlsOptions, build_client_context, parse_pin
from loadgen.engine.url import parse_gateway_url
from loadgen.failures import Phase, SessionFailedError
from loadgen.gateway.embedded import embedded_gateway
from loadgen.proto.cstp import DisconnectReason
from loadgen.proto.dtls import (
    DEFAULT_RETRANSMIT_SCHEDULE_S,
    KNOWN_DTLS12_CIPHERS,
    KNOWN_DTLS_CIPHERS,
)

__all__ = ["add_parser", "run_connect"]

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_USAGE = 2


def add_parser(sub: Any) -> None:
    p: argparse.ArgumentParser = sub.add_parser(
        "connect",
        help="run one full session against a gateway and report each phase",
        description=(
            "Run one synthetic AnyConnect session: TLS, group selection, authentication, "
            "profile download, CSTP CONNECT, then ICMP echo through the tunnel and a clean "
            "DISCONNECT.  Prints a phase table, or one JSON object with --json.  "
            "Exit status: 0 session ok, 1 session failed, 2 bad usage."
        ),
    )
    p.add_argument(
        "url",
        nargs="?",
        help="gateway URL, e.g. https://vpn.example.com/ or https://127.0.0.1:4443/; without "
        "one, the reference gateway is started on loopback as the target (any credentials)",
    )
    cred = p.add_argument_group("credentials")
    cred.add_argument("-u", "--user", default="", help="user name")
    cred.add_argument(
        "--password",
        help="password (visible to other local users in the process list; prefer --password-stdin)",
    )
    cred.add_argument(
        "--password-stdin",
        action="store_true",
        help="read the password from the first line of stdin",
    )
    cred.add_argument("-g", "--group", help="group (tunnel group) to select, by name or alias")
    tls = p.add_argument_group("TLS")
    tls.add_argument(
        "--cafile", help="PEM file of CA certificates to trust instead of the system store"
    )
    tls.add_argument(
        "--servername",
        help="name for SNI and certificate verification when it differs from the URL's host",
    )
    tls.add_argument(
        "--servercert",
        metavar="PIN",
        help="accept only this server certificate: pin-sha256:BASE64 (SHA-256 of the public "
        "key, as openconnect prints) or sha1:HEX (SHA-1 of the certificate, as AnyConnect); "
        "replaces CA verification",
    )
    tls.add_argument(
        "--insecure", action="store_true", help="do not verify the server certificate at all"
    )
    sess = p.add_argument_group("session")
    sess.add_argument(
        "--timeout",
        type=_positive_float,
        default=30.0,
        metavar="S",
        help="bound for each of phases 1 to 5, in seconds (default 30)",
    )
    sess.add_argument(
        "--user-agent",
        default=DEFAULT_USER_AGENT,
        help=f"User-Agent (default {DEFAULT_USER_AGENT!r}; ASA and ocserv treat it as AnyConnect)",
    )
    sess.add_argument("--hostname", default="loadgen-1", help="X-CSTP-Hostname (default loadgen-1)")
    sess.add_argument(
        "--download",
        choices=[m.value for m in DownloadMode],
        default=DownloadMode.NEW_CONNECTION.value,
        help="profile download: on a new TLS connection as AnyConnect does (default), "
        "on the same connection, or off",
    )
    dtls = p.add_argument_group("DTLS (phase 6)")
    dtls.add_argument(
        "--no-dtls", action="store_true", help="do not offer DTLS; stay on CSTP (TLS)"
    )
    dtls.add_argument(
        "--dtls-ciphers",
        metavar="LIST",
        type=_cipher_list(KNOWN_DTLS_CIPHERS),
        help="X-DTLS-CipherSuite offer, colon-separated (default "
        f"{':'.join(DEFAULT_DTLS_OFFER)}); given alone, X-DTLS12-CipherSuite is not sent",
    )
    dtls.add_argument(
        "--dtls12-ciphers",
        metavar="LIST",
        type=_cipher_list(KNOWN_DTLS12_CIPHERS),
        help="X-DTLS12-CipherSuite offer (default "
        f"{':'.join(DEFAULT_DTLS12_OFFER)}); given alone, X-DTLS-CipherSuite is not sent",
    )
    dtls.add_argument(
        "--dtls-schedule",
        metavar="S,S,...",
        type=_schedule,
        default=DEFAULT_RETRANSMIT_SCHEDULE_S,
        help="ClientHello send times in seconds, the last one being when DTLS is given up "
        "for CSTP (default 0,1,3,7,15,31: the AnyConnect schedule)",
    )
    dtls.add_argument(
        "--dtls-reattempt",
        metavar="S",
        type=float,
        default=60.0,
        help="seconds between DTLS attempts after a fallback (default 60; 0: never)",
    )
    dtls.add_argument("--dtls-host", help="send DTLS to this host instead of the gateway's")
    dtls.add_argument(
        "--dtls-port", type=int, metavar="PORT", help="send DTLS to this port, not X-DTLS-Port"
    )
    sess.add_argument(
        "--disconnect",
        choices=["logout", "keep"],
        default="logout",
        help="logout: DISCONNECT 0xb0, the cookie dies (default); keep: empty DISCONNECT, "
        "the gateway keeps the cookie for a reconnect",
    )
    echo = p.add_argument_group("echo through the tunnel")
    echo.add_argument(
        "--echo",
        type=_non_negative_int,
        default=3,
        metavar="N",
        help="ICMP echo requests to send (default 3; 0 for none)",
    )
    echo.add_argument(
        "--echo-target",
        type=IPv4Address,
        metavar="IP",
        help="echo destination (default: first host of the assigned network, "
        "the gateway's tunnel address)",
    )
    echo.add_argument(
        "--echo-interval",
        type=_positive_float,
        default=0.2,
        metavar="S",
        help="seconds between echo requests (default 0.2)",
    )
    echo.add_argument(
        "--echo-timeout",
        type=_positive_float,
        default=2.0,
        metavar="S",
        help="seconds to wait for each reply (default 2)",
    )
    echo.add_argument(
        "--echo-size",
        type=_non_negative_int,
        default=56,
        metavar="BYTES",
        help="ICMP payload size (default 56)",
    )
    p.add_argument("--json", action="store_true", help="print exactly one JSON object")
    p.set_defaults(func=_main)


def _positive_float(text: str) -> float:
    value = float(text)
    if not value > 0:
        raise argparse.ArgumentTypeError("must be a positive number")
    return value


def _cipher_list(known: frozenset[str] | tuple[str, ...]) -> Any:
    def parse(text: str) -> tuple[str, ...]:
        names = tuple(n.strip() for n in text.split(":") if n.strip())
        unknown = [n for n in names if n not in known]
        if not names or unknown:
            what = ", ".join(unknown) or "(none given)"
            raise argparse.ArgumentTypeError(
                f"unknown cipher {what}; known: {':'.join(sorted(known))}"
            )
        return names

    return parse


def _schedule(text: str) -> tuple[float, ...]:
    try:
        times = tuple(float(t) for t in text.split(","))
    except ValueError as exc:
        raise argparse.ArgumentTypeError("a schedule is comma-separated seconds") from exc
    if len(times) < 2 or times[0] != 0 or list(times) != sorted(set(times)):
        raise argparse.ArgumentTypeError("a schedule starts at 0 and increases, e.g. 0,1,3,7,15,31")
    return times


def _non_negative_int(text: str) -> int:
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError("must be zero or more")
    return value


def _read_password(parser: argparse.ArgumentParser, args: argparse.Namespace) -> str:
    if args.password is not None and args.password_stdin:
        parser.error("give either --password or --password-stdin, not both")
    if args.password is not None:
        return str(args.password)
    if args.password_stdin:
        return sys.stdin.readline().rstrip("\r\n")
    if sys.stdin.isatty():
        return getpass.getpass(f"Password for {args.user}: ")
    parser.error("no password: use --password-stdin (or --password)")


def _main(parser: argparse.ArgumentParser, args: argparse.Namespace) -> int:
    if args.url is None:
        return _main_embedded(parser, args)
    try:
        parse_gateway_url(args.url)  # a usage error before anything else
        pin = parse_pin(args.servercert) if args.servercert else None
    except ValueError as exc:
        parser.error(str(exc))
    if pin is not None and args.insecure:
        parser.error("--servercert and --insecure contradict each other")
    password = _read_password(parser, args)
    tls = TlsOptions(
        cafile=args.cafile, servername=args.servername, pin=pin, insecure=args.insecure
    )
    try:
        ctx = build_client_context(tls)
    except (OSError, ValueError) as exc:
        parser.error(f"cannot load --cafile: {exc}")
    cfg = _session_config(args, args.url, tls, password)
    report = trio.run(run_connect, cfg, ctx, args)
    return _output(report, args)


def _output(report: dict[str, Any], args: argparse.Namespace) -> int:
    if args.json:
        print(json.dumps(report, indent=2))
    else:
        _print_human(report)
    return EXIT_OK if report["ok"] else EXIT_FAILED


def _main_embedded(parser: argparse.ArgumentParser, args: argparse.Namespace) -> int:
    """No URL: start the reference gateway (accept-any) and connect to it."""
    if args.cafile or args.servercert or args.insecure or args.servername:
        parser.error("TLS options need a URL: the embedded gateway brings its own CA")
    if args.password is not None or args.password_stdin:
        password = _read_password(parser, args)
    else:
        password = "loadgen"
    args.user = args.user or "loadgen"
    return _output(trio.run(_run_embedded, args, password), args)


async def _run_embedded(args: argparse.Namespace, password: str) -> dict[str, Any]:
    async with embedded_gateway() as gw:
        tls = TlsOptions(cafile=str(gw.ca_path))
        cfg = _session_config(args, gw.url, tls, password)
        report = await run_connect(cfg, build_client_context(tls), args)
        report["gateway"] = gw.url
        return report


def dtls_options_from_args(args: argparse.Namespace) -> DtlsOptions | None:
    """The DTLS options shared by ``connect`` and ``run``."""
    if args.no_dtls:
        return None
    return offer(
        args.dtls_ciphers,
        args.dtls12_ciphers,
        schedule_s=args.dtls_schedule,
        reattempt_s=args.dtls_reattempt,
        host=args.dtls_host,
        port=args.dtls_port,
    )


def _session_config(
    args: argparse.Namespace, url: str, tls: TlsOptions, password: str
) -> SessionConfig:
    return SessionConfig(
        dtls=dtls_options_from_args(args),
        url=parse_gateway_url(url),
        username=args.user,
        password=password,
        group=args.group,
        tls=tls,
        user_agent=args.user_agent,
        hostname=args.hostname,
        timeout_s=args.timeout,
        download=DownloadMode(args.download),
    )


async def run_connect(cfg: SessionConfig, ctx: Any, args: argparse.Namespace) -> dict[str, Any]:
    report: dict[str, Any] = {
        "ok": False,
        "phases": {},
        "channel": None,
        "tunnel": None,
        "echo": {"sent": 0, "received": 0, "rtt_p50": None},
        "error": None,
    }
    phase = Phase.TLS
    async with open_session(cfg, ctx) as session:
        try:
            params = await session.connect()
            phase = Phase.DTLS
            await session.wait_dtls()
            report["dtls"] = _dtls_report(session)
            phase = Phase.TUNNEL
            assert session.tunnel is not None
            report["channel"] = session.tunnel.channel
            report["tunnel"] = {
                "address": None if params.address is None else str(params.address),
                "netmask": None if params.netmask is None else str(params.netmask),
                "mtu": session.tunnel.mtu,
            }
            if args.echo:
                target = session.echo_target(args.echo_target)
                result = await session.tunnel.echo(
                    target,
                    count=args.echo,
                    interval_s=args.echo_interval,
                    timeout_s=args.echo_timeout,
                    payload_bytes=args.echo_size,
                )
                report["echo"] = {
                    "sent": result.sent,
                    "received": result.received,
                    "rtt_p50": percentile(result.rtts_s, 0.5),
                    "target": str(target),
                    "channels": result.channels,
                }
            report["dpd_rtt"] = {
                "cstp": await session.tunnel.dpd_probe(args.echo_timeout),
                "dtls": await session.tunnel.dtls_dpd_probe(args.echo_timeout),
            }
            report["dtls"] = _dtls_report(session)
            reason = DisconnectReason.USER if args.disconnect == "logout" else None
            await session.disconnect(reason)
            report["ok"] = True
        except SessionFailedError as exc:
            report["error"] = exc.as_dict()
        except Exception as exc:  # one session never crashes the tool
            report["error"] = translate(phase, exc).as_dict()
        finally:
            report["phases"] = {str(k): v for k, v in session.phases.items()}
            if Phase.CSTP_CONNECT in session.phases:
                # the whole connect exists only once the tunnel is up
                report["phases"][str(Phase.CONNECT)] = session.connect_time
            report["tls"] = {"version": session.tls_version}
            if session.tunnel is not None:
                report["dtls"] = _dtls_report(session)
            report.setdefault("dtls", None)
            if session.profile is not None:
                report["profile"] = {
                    "uri": session.profile.uri,
                    "bytes": session.profile.size_bytes,
                    "sha1": session.profile.sha1,
                    "tls_resumed": session.profile.tls_resumed,
                }
    return report


def _dtls_report(session: VpnSession) -> dict[str, Any] | None:
    tunnel = session.tunnel
    if tunnel is None or (tunnel.dtls is None and tunnel.dtls_refused is None):
        return None
    if tunnel.dtls is None:
        return {
            "version": None,
            "header": None,
            "cipher": None,
            "retransmits": 0,
            "fallback": str(tunnel.dtls_refused),
        }
    r = tunnel.dtls.report
    return {
        "version": r.version,
        "header": r.header,
        "cipher": r.cipher,
        "retransmits": r.retransmits,
        "fallback": None if r.fallback is None else str(r.fallback),
        "attempts": r.attempts,
    }


def _print_human(report: dict[str, Any]) -> None:
    from rich.console import Console
    from rich.table import Table

    console = Console()
    table = Table(title="phases", show_header=True)
    table.add_column("phase")
    table.add_column("ms", justify="right")
    for name, secs in report["phases"].items():
        table.add_row(name, f"{secs * 1000:.1f}")
    console.print(table)
    if report["tunnel"]:
        t = report["tunnel"]
        console.print(
            f"tunnel: {t['address']}/{t['netmask']} mtu {t['mtu']} over {report['channel']}"
        )
    dtls = report.get("dtls")
    if dtls:
        if dtls["fallback"]:
            console.print(
                f"dtls: fell back to CSTP ({dtls['fallback']}) after "
                f"{dtls['retransmits']} retransmits"
            )
        else:
            console.print(f"dtls: {dtls['version']} {dtls['cipher']} ({dtls['header']})")
    echo = report["echo"]
    if echo["sent"]:
        rtt = echo["rtt_p50"]
        rtt_text = f", median rtt {rtt * 1000:.2f} ms" if rtt is not None else ""
        console.print(f"echo: {echo['received']}/{echo['sent']} replies{rtt_text}")
    if report["ok"]:
        console.print("[green]session ok[/green]")
    else:
        err = report["error"]
        console.print(
            f"[red]session failed in {err['phase']}: {err['reason']}[/red] - {err['message']}"
        )

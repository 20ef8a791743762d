"""``loadgen gateway``: run the reference gateway."""

from __future__ import annotations

import argparse
import hashlib
import logging
import os
import ssl
import sys
from ipaddress import IPv4Address, IPv4Network
from pathlib import Path
from typing import Any

import trio
from prometheus_client import CollectorRegistry, start_http_server

from loadgen.cli.common import log_to_stderr, run_server
from loadgen.engine.limits import raise_nofile_limit
from loadgen.gateway.config import GatewayConfig
from loadgen.gateway.pki import ensure_pki
from loadgen.gateway.server import Gateway, request_client_certificates
from loadgen.lifecycle import serve_until_stopped
from loadgen.metrics.gateway import GatewayMetrics
from loadgen.proto.auth_policy import AuthMode, AuthPolicy, GroupSpec, UserSpec
from loadgen.proto.auth_xml import ProfileManifestEntry
from loadgen.proto.dtls import KNOWN_DTLS12_CIPHERS, KNOWN_DTLS_CIPHERS
from loadgen.proto.otp import OtpUser, parse_otp_users_file
from loadgen.proto.personality import DEFAULT_PERSONALITY, personality_names

__all__ = ["add_parser", "build_config", "default_cert_dir"]

log = logging.getLogger("loadgen.gateway")

#: The embedded default: what ``loadgen run`` and the Locust scenarios target
#: when no gateway is given, so that a client runs all six phases.
DEFAULT_GROUPS = ("default", "engineering[Engineering]")
DEFAULT_PROFILE = b"""<?xml version="1.0" encoding="UTF-8"?>
<AnyConnectProfile xmlns="http://schemas.xmlsoap.org/encoding/">
  <ServerList><HostEntry><HostName>loadgen reference gateway</HostName>
  <HostAddress>127.0.0.1</HostAddress></HostEntry></ServerList>
</AnyConnectProfile>
"""
PROFILE_URI = "/profiles/profile.xml"
#: bound on the graceful part of a stop (TERMINATE to every tunnel)
SHUTDOWN_S = 3.0


def default_cert_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "loadgen" / "gateway"


def add_parser(sub: Any) -> None:
    p: argparse.ArgumentParser = sub.add_parser(
        "gateway",
        help="run the reference gateway (AnyConnect-compatible, tun-less)",
        description=(
            "An AnyConnect-compatible gateway for tests and self-benchmarks: TLS, aggregate "
            "auth, profile download, CSTP and legacy DTLS.  Its data plane answers ICMP echo "
            "and UDP echo (port 7) for its own tunnel address (the first host of --pool) and "
            "drops everything else; it never routes traffic anywhere.  With no user options "
            "it accepts any user and password, offers two groups and a profile."
        ),
    )
    p.add_argument(
        "--personality",
        choices=personality_names(),
        default=DEFAULT_PERSONALITY,
        help=f"which gateway to behave as (default {DEFAULT_PERSONALITY})",
    )
    net = p.add_argument_group("listening")
    net.add_argument(
        "--listen",
        default="127.0.0.1:8443",
        metavar="HOST:PORT",
        help="TCP and UDP address (default 127.0.0.1:8443; port 0 picks a free one)",
    )
    net.add_argument(
        "--metrics-port",
        type=int,
        metavar="PORT",
        help="serve Prometheus metrics on this port (same host)",
    )
    tls = p.add_argument_group("certificate")
    tls.add_argument("--cert", type=Path, help="server certificate chain (PEM)")
    tls.add_argument("--key", type=Path, help="server private key (PEM)")
    tls.add_argument(
        "--cert-dir",
        type=Path,
        default=None,
        help=f"where a generated CA and certificate go; clients trust DIR/ca.pem "
        f"(default {default_cert_dir()})",
    )
    tls.add_argument(
        "--san",
        action="append",
        default=[],
        metavar="NAME",
        help="extra name or IP in the generated certificate (repeatable)",
    )
    auth = p.add_argument_group("authentication")
    auth.add_argument(
        "--auth",
        choices=[m.value for m in AuthMode],
        default=AuthMode.PASSWORD.value,
        help="what a login needs, as ocserv's auth settings: password (default); certificate "
        "(a client certificate, its CN is the user); certificate+password (both, the username "
        "must be the CN); password+otp (then a one-time password from --otp-file)",
    )
    auth.add_argument(
        "--client-ca",
        type=Path,
        metavar="FILE",
        help="CA (PEM) that client certificates must chain to in the certificate modes "
        "(default: the generated CA, CERT_DIR/ca.pem)",
    )
    auth.add_argument(
        "--otp-file",
        type=Path,
        metavar="FILE",
        help="tokens for password+otp, in ocserv's otp= format (liboath UsersFile: "
        "HOTP[/T30][/6] USER PIN|- HEXKEY [COUNTER])",
    )
    auth.add_argument("--users", type=Path, metavar="FILE", help="user:password[:group] lines")
    auth.add_argument(
        "--user", action="append", default=[], metavar="NAME:PASSWORD", help="a user (repeatable)"
    )
    auth.add_argument(
        "--accept-any", action="store_true", help="accept any user name and password (load tests)"
    )
    auth.add_argument(
        "--group",
        action="append",
        default=[],
        metavar="NAME[ALIAS]",
        help="a group, with an optional alias as ocserv writes it (repeatable)",
    )
    auth.add_argument("--default-group", metavar="NAME", help="the preselected group")
    auth.add_argument(
        "--profile",
        type=Path,
        metavar="FILE",
        help="XML profile served to the downloader (vpn-profile-manifest)",
    )
    auth.add_argument(
        "--reject-ratio",
        type=float,
        default=0.0,
        metavar="R",
        help="reject this fraction of valid logins (client resilience tests)",
    )
    auth.add_argument(
        "--cookie-timeout",
        type=float,
        default=120.0,
        metavar="S",
        help="cookie lifetime after a temporary disconnect (default 120)",
    )
    tun = p.add_argument_group("tunnel")
    tun.add_argument(
        "--pool",
        type=IPv4Network,
        default=IPv4Network("10.200.0.0/16"),
        metavar="CIDR",
        help="tunnel addresses; the gateway is the first host (default 10.200.0.0/16)",
    )
    tun.add_argument("--mtu", type=int, default=1406, help="X-CSTP-MTU (default 1406)")
    tun.add_argument("--dtls-mtu", type=int, help="X-DTLS-MTU (default: --mtu)")
    tun.add_argument("--dpd", type=int, default=90, metavar="S", help="DPD interval (default 90)")
    tun.add_argument(
        "--keepalive",
        type=int,
        default=32400,
        metavar="S",
        help="keepalive interval announced (default 32400)",
    )
    tun.add_argument(
        "--dns",
        action="append",
        type=IPv4Address,
        default=[],
        metavar="IP",
        help="X-CSTP-DNS (repeatable)",
    )
    tun.add_argument("--no-dtls", action="store_true", help="offer no DTLS")
    tun.add_argument(
        "--dtls-ciphers",
        metavar="LIST",
        help="DTLS suites the gateway accepts, best first, colon-separated; names of both "
        "headers (default: ocserv's preferences)",
    )
    tun.add_argument(
        "--max-sessions", type=int, metavar="N", help="refuse CONNECT beyond N tunnels"
    )
    knobs = p.add_argument_group("delays (client resilience tests)")
    knobs.add_argument("--delay-tls-ms", type=int, default=0, help="before each TLS handshake")
    knobs.add_argument("--delay-auth-ms", type=int, default=0, help="before each auth answer")
    knobs.add_argument("--delay-connect-ms", type=int, default=0, help="before each CONNECT answer")
    p.add_argument("-v", "--verbose", action="count", default=0, help="more log lines")
    p.add_argument("--exit-with-parent", type=int, metavar="PID", help=argparse.SUPPRESS)
    p.set_defaults(func=_main)


def _parse_listen(text: str) -> tuple[str, int]:
    host, sep, port = text.rpartition(":")
    if not sep or not port.isdigit() or int(port) > 65535:
        raise ValueError(f"--listen is HOST:PORT with a port of 0 to 65535, got {text!r}")
    return host.strip("[]") or "127.0.0.1", int(port)


def _group_spec(text: str) -> GroupSpec:
    name, _, alias = text.partition("[")
    return GroupSpec(name=name.strip(), alias=alias.rstrip("]").strip() or None)


def _users(args: argparse.Namespace) -> dict[str, UserSpec] | None:
    entries: list[str] = list(args.user)
    if args.users is not None:
        for raw in args.users.read_text().splitlines():
            line = raw.strip()
            if line and not line.startswith("#"):
                entries.append(line)
    if not entries:
        return None
    users: dict[str, UserSpec] = {}
    for entry in entries:
        parts = entry.split(":")
        if len(parts) < 2 or not parts[0]:
            raise ValueError(f"a user is NAME:PASSWORD[:GROUP], got {parts[0]!r}:...")
        groups = (parts[2],) if len(parts) > 2 and parts[2] else None
        users[parts[0]] = UserSpec(password=parts[1], groups=groups)
    return users


def _dtls_ciphers(text: str | None) -> tuple[tuple[str, ...] | None, tuple[str, ...] | None]:
    if text is None:
        return None, None
    names = [n.strip() for n in text.split(":") if n.strip()]
    unknown = [n for n in names if n not in KNOWN_DTLS_CIPHERS and n not in KNOWN_DTLS12_CIPHERS]
    if unknown or not names:
        raise ValueError(f"unknown DTLS cipher(s): {', '.join(unknown) or '(none)'}")
    return (
        tuple(n for n in names if n in KNOWN_DTLS_CIPHERS),
        tuple(n for n in names if n in KNOWN_DTLS12_CIPHERS),
    )


def _otp_users(args: argparse.Namespace, mode: AuthMode) -> dict[str, OtpUser] | None:
    if args.otp_file is None:
        if mode is AuthMode.PASSWORD_OTP:
            raise ValueError("--auth password+otp needs --otp-file")
        return None
    if mode is not AuthMode.PASSWORD_OTP:
        raise ValueError("--otp-file goes with --auth password+otp")
    try:
        return parse_otp_users_file(args.otp_file.read_text(encoding="utf-8"))
    except UnicodeDecodeError:
        raise ValueError(f"{args.otp_file}: not UTF-8 text") from None
    except ValueError as exc:
        # the parser's messages name a line, never a key
        raise ValueError(f"{args.otp_file}: {exc}") from None


def build_config(args: argparse.Namespace) -> tuple[GatewayConfig, bytes | None]:
    """The gateway's settings and its profile bytes, from parsed arguments."""
    host, port = _parse_listen(args.listen)
    mode = AuthMode(args.auth)
    if args.client_ca is not None and not mode.needs_certificate:
        raise ValueError("--client-ca goes with --auth certificate or certificate+password")
    otp_users = _otp_users(args, mode)
    users = _users(args)
    embedded = users is None and not args.accept_any and not args.group and args.profile is None
    groups = tuple(_group_spec(g) for g in (DEFAULT_GROUPS if embedded else args.group))
    profile_body: bytes | None
    if args.profile is not None:
        profile_body = args.profile.read_bytes()
    else:
        profile_body = DEFAULT_PROFILE if embedded else None
    profile = (
        ProfileManifestEntry(
            uri=PROFILE_URI,
            sha1_hex=hashlib.sha1(profile_body).hexdigest().upper(),
            service_type="user",
        )
        if profile_body is not None
        else None
    )
    ciphers, ciphers12 = _dtls_ciphers(args.dtls_ciphers)
    if args.pool.num_addresses < 4:
        raise ValueError("--pool needs room for the gateway and clients (at least a /30)")
    config = GatewayConfig(
        host=host,
        port=port,
        personality=args.personality,
        pool=args.pool,
        mtu=args.mtu,
        dtls_mtu=args.dtls_mtu,
        dpd_s=args.dpd,
        keepalive_s=args.keepalive,
        dns=tuple(args.dns),
        dtls=not args.no_dtls,
        dtls_ciphers=ciphers,
        dtls12_ciphers=ciphers12,
        auth=AuthPolicy(
            mode=mode,
            otp_users=otp_users,
            users=users,
            groups=groups,
            default_group=args.default_group,
            profile=profile,
            reject_ratio=args.reject_ratio,
        ),
        cookie_timeout_s=args.cookie_timeout,
        max_sessions=args.max_sessions,
        delay_tls_ms=args.delay_tls_ms,
        delay_auth_ms=args.delay_auth_ms,
        delay_connect_ms=args.delay_connect_ms,
    )
    return config, profile_body


def _ssl_context(args: argparse.Namespace, cert_dir: Path) -> tuple[ssl.SSLContext, Path | None]:
    # CLIENT_AUTH with CERT_NONE loads no system CAs; the certificate modes add only theirs
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca_path: Path | None = None
    if args.cert is not None:
        ctx.load_cert_chain(args.cert, args.key)
    else:
        pki = ensure_pki(cert_dir, args.san)
        ctx.load_cert_chain(pki.cert_path, pki.key_path)
        ca_path = pki.ca_path
    if AuthMode(args.auth).needs_certificate:
        client_ca = args.client_ca or ca_path
        assert client_ca is not None  # _main refused --cert without --client-ca
        request_client_certificates(ctx, client_ca)
    return ctx, ca_path


def _main(parser: argparse.ArgumentParser, args: argparse.Namespace) -> int:
    if (args.cert is None) != (args.key is None):
        parser.error("--cert and --key go together")
    if args.cert is not None and args.client_ca is None and AuthMode(args.auth).needs_certificate:
        parser.error(f"--auth {args.auth} with --cert needs --client-ca")
    try:
        config, profile_body = build_config(args)
    except (ValueError, OSError) as exc:
        parser.error(str(exc))
    log_to_stderr(args.verbose)
    cert_dir = args.cert_dir or default_cert_dir()
    try:
        ctx, ca_path = _ssl_context(args, cert_dir)
    except (OSError, ssl.SSLError) as exc:
        parser.error(f"cannot load the certificate or the client CA: {exc}")
    raise_nofile_limit()  # one TCP connection per tunnel: use the whole hard limit
    registry = CollectorRegistry()
    metrics = GatewayMetrics(registry, process=True)
    metrics_port: int | None = None
    if args.metrics_port is not None:
        try:
            httpd, _ = start_http_server(args.metrics_port, addr=config.host, registry=registry)
        except OSError as exc:
            print(f"loadgen gateway: cannot serve metrics: {exc}", file=sys.stderr)
            return 1
        metrics_port = httpd.server_port  # the real one when 0 was asked for
    gateway = Gateway(config, ctx, metrics)
    gateway.profile_body = profile_body
    return run_server(
        "gateway", _serve, gateway, ca_path, metrics_port, args.listen, args.exit_with_parent
    )


async def _serve(
    gateway: Gateway,
    ca_path: Path | None,
    metrics_port: int | None,
    listen: str,
    parent_pid: int | None = None,
) -> bool:
    """Serve until SIGTERM or SIGINT; False when the gateway could not listen."""
    async with trio.open_nursery() as nursery:
        try:
            await nursery.start(gateway.serve)
        except OSError as exc:  # address in use, no such address: no traceback
            print(f"loadgen gateway: cannot listen on {listen}: {exc}", file=sys.stderr)
            return False
        host = gateway.config.host
        shown = f"[{host}]" if ":" in host else host
        banner = [f"gateway listening: https://{shown}:{gateway.port}/"]
        if ca_path is not None:
            banner.append(f"CA certificate: {ca_path}")
        if metrics_port is not None:
            banner.append(f"metrics: http://{shown}:{metrics_port}/metrics")
        await serve_until_stopped(nursery, banner, parent_pid=parent_pid)
        print("stopping the gateway", file=sys.stderr, flush=True)
        # TERMINATE first, so clients see an orderly end, not a reset
        with trio.move_on_after(SHUTDOWN_S):
            await gateway.terminate_tunnels()
        nursery.cancel_scope.cancel()
    return True

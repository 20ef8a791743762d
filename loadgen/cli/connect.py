"""``loadgen connect URL``: one full session, phase by phase, as a diagnostic."""

from __future__ import annotations

import argparse
import dataclasses
import json
import ssl
from typing import Any

import trio

from loadgen.cli.common import (
    EXIT_FAILED,
    EXIT_OK,
    against_target,
    client_options,
    read_password,
)
from loadgen.engine.datapath import DataPath
from loadgen.engine.profile import SessionProfile
from loadgen.engine.runner import SessionRunner
from loadgen.engine.session import SessionConfig, VpnSession, open_session
from loadgen.engine.stats import percentile
from loadgen.options import ClientOptions, Front, add_arguments
from loadgen.proto.cstp import DisconnectReason

__all__ = ["FRONT_ONLY", "add_parser", "run_connect"]

#: this command's options that are not client options (loadgen.options), and why
FRONT_ONLY = {
    "url": "the target; run takes it too, Locust takes --host",
    "json": "this command's output format",
}


def add_parser(sub: Any) -> None:
    p: argparse.ArgumentParser = sub.add_parser(
        "connect",
        help="run one full session against a gateway and report each phase",
        description=(
            "Run one synthetic AnyConnect session: TLS, group selection, authentication, "
            "profile download, CSTP CONNECT, DTLS, then echo through the tunnel and a clean "
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
    add_arguments(p, Front.CONNECT)
    p.add_argument("--json", action="store_true", help="print exactly one JSON object")
    p.set_defaults(func=_main)


def _main(parser: argparse.ArgumentParser, args: argparse.Namespace) -> int:
    opts = client_options(parser, args, Front.CONNECT)
    # certificate authentication needs no password
    password = read_password(
        parser, opts, embedded=args.url is None, needed=opts.certificate is None
    )
    opts = dataclasses.replace(opts, password=password, password_stdin=False)
    if args.url is not None:
        try:
            SessionProfile(opts, args.url)  # a bad URL or CA file: usage, before any traffic
        except ValueError as exc:
            parser.error(str(exc))
        except (OSError, ssl.SSLError) as exc:
            parser.error(f"cannot load --cafile: {exc}")
    elif opts.certificate is not None or opts.token_mode is not None:
        parser.error(
            "--certificate and --token-mode need a URL: start `loadgen gateway --auth ...` "
            "and name it"
        )
    report = trio.run(against_target, args.url, opts, _connect)
    if args.url is None:
        report["gateway"] = report.pop("url")
    else:
        del report["url"]
    return _output(report, args)


def _config(profile: SessionProfile) -> tuple[ssl.SSLContext, SessionConfig]:
    opts = profile.options
    user = opts.username(1)
    ctx, extra = profile.identity(1, user)
    cfg = profile.config(
        username=user, password=None, group=None, hostname=opts.hostname, extra=extra
    )
    return ctx, cfg


def _output(report: dict[str, Any], args: argparse.Namespace) -> int:
    if args.json:
        print(json.dumps(report, indent=2))
    else:
        _print_human(report)
    return EXIT_OK if report["ok"] else EXIT_FAILED


async def _connect(opts: ClientOptions, url: str) -> dict[str, Any]:
    profile = SessionProfile(opts, url)
    ctx, cfg = _config(profile)
    report = await run_connect(profile, cfg, ctx)
    report["url"] = url
    return report


async def run_connect(
    profile: SessionProfile, cfg: SessionConfig, ctx: ssl.SSLContext | None = None
) -> dict[str, Any]:
    """One session as ``--json`` reports it (``ctx``: the identity's, else the profile's)."""
    opts = profile.options
    report: dict[str, Any] = {
        "ok": False,
        "phases": {},
        "channel": None,
        "tunnel": None,
        "echo": {"sent": 0, "received": 0, "rtt_p50": None},
        "error": None,
    }
    seen: list[DataPath] = []

    async def serve(session: VpnSession) -> None:
        tunnel = session.tunnel
        params = session.tunnel_params
        assert tunnel is not None and params is not None
        seen.append(tunnel)
        report["dtls"] = _dtls_report(tunnel)
        report["channel"] = tunnel.channel
        report["tunnel"] = {
            "address": None if params.address is None else str(params.address),
            "netmask": None if params.netmask is None else str(params.netmask),
            "mtu": tunnel.mtu,
        }
        plan = profile.echo
        if plan.count:
            target = session.echo_target(plan.target)
            result = await tunnel.echo(
                target,
                count=plan.count,
                interval_s=plan.spacing_s,
                timeout_s=plan.timeout_s,
                payload_bytes=plan.payload_bytes,
                udp=plan.udp,
            )
            report["echo"] = {
                "sent": result.sent,
                "received": result.received,
                "rtt_p50": percentile(result.rtts_s, 0.5),
                "target": str(target),
                "channels": result.channels,
            }
        report["dpd_rtt"] = {
            "cstp": await tunnel.dpd_probe(plan.timeout_s),
            "dtls": await tunnel.dtls_dpd_probe(plan.timeout_s),
        }

    runner = SessionRunner(session_factory=open_session, name="connect")
    outcome = await runner.run(
        cfg,
        ctx or profile.ssl_context,
        serve,
        leave=DisconnectReason.USER if opts.logout else None,
    )
    report["ok"] = outcome.failure is None
    if outcome.failure is not None:
        report["error"] = outcome.failure.as_dict()
    session = runner.session
    if session is not None:
        _session_report(report, session)
    report["dtls"] = _dtls_report(seen[-1]) if seen else report.get("dtls")
    return report


def _session_report(report: dict[str, Any], session: VpnSession) -> None:
    report["phases"] = {str(k): v for k, v in session.phases.items()}
    report["banner"] = {"pre_login": session.pre_login_banner, "login": session.banner}
    # where the login ended: a redirect may have moved it (CONNECT went there)
    report["final_gateway"] = session.url.url
    if session.skipped_entries:
        report["skipped_manifest_entries"] = session.skipped_entries
    if session.token_wait_s:
        report["token_wait_s"] = session.token_wait_s
    if "cstp_connect" in report["phases"]:
        # the whole connect exists only once the tunnel is up
        report["phases"]["connect"] = session.connect_time
    report["tls"] = {"version": session.tls_version, "cipher": session.tls_cipher}
    if session.profile is not None:
        report["profile"] = {
            "uri": session.profile.uri,
            "bytes": session.profile.size_bytes,
            "sha1": session.profile.sha1,
            "tls_resumed": session.profile.tls_resumed,
        }


def _dtls_report(tunnel: DataPath) -> dict[str, Any] | None:
    if tunnel.dtls is None and tunnel.dtls_refused is None:  # not started yet
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
    for kind, text in (report.get("banner") or {}).items():
        if text:
            console.print(f"banner ({kind.replace('_', '-')}): {text}", markup=False)
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

"""``loadgen faultproxy``: run the Toxiproxy-compatible fault proxy."""

from __future__ import annotations

import argparse
import json
import logging
import random
import sys
from pathlib import Path
from typing import Any

import trio

from loadgen.cli.common import log_to_stderr, run_server
from loadgen.faultproxy.api import FaultProxyApi
from loadgen.faultproxy.metrics import FaultProxyMetrics
from loadgen.faultproxy.model import ApiError, ProxySpec
from loadgen.faultproxy.registry import ProxyRegistry
from loadgen.lifecycle import serve_until_stopped

__all__ = ["BANNER_PREFIX", "add_parser", "load_config"]

log = logging.getLogger("loadgen.faultproxy")

#: the one line printed on stdout once the API listens (the embedded helpers read it)
BANNER_PREFIX = "faultproxy API: "

_DESCRIPTION = """\
A fault proxy that speaks Toxiproxy v2's HTTP API, so Toxiproxy clients
(toxiproxy-python first) drive it unchanged: create proxies, add toxics to a
direction ("upstream" client to server, "downstream" server to client), remove them.

TCP proxies ("listen": "127.0.0.1:0", "upstream": "host:port") take Toxiproxy's
toxics with its attributes and units: latency (latency, jitter ms), bandwidth
(rate KB/s), slow_close (delay ms), timeout (timeout ms, 0 = forever), reset_peer
(timeout ms), slicer (average_size, size_variation bytes, delay us), limit_data
(bytes); plus hello_delay (delay ms: holds the first data of each connection, the
TLS ClientHello on upstream).

UDP proxies ("listen": "udp://127.0.0.1:0", "upstream": "udp://host:port") relay
datagrams (one upstream socket per client address) through per-packet toxics
(blackhole, loss, latency, hello_delay, duplicate, reorder, rate) for DTLS.  A VPN
gateway advertises its own DTLS port, so point the client at the UDP proxy with
--dtls-port (and --dtls-host) on `loadgen connect` / `loadgen run`.

Listening on port 0 picks a free port; the API answers show the real one.
Metrics (loadgen_faultproxy_*) are at /metrics on the API port."""

_EPILOG = """\
example:
  loadgen faultproxy --port 8474 --config proxies.json
  proxies.json: [{"name": "vpn_tls", "listen": "127.0.0.1:9443",
                  "upstream": "127.0.0.1:443"},
                 {"name": "vpn_dtls", "listen": "udp://127.0.0.1:9443",
                  "upstream": "udp://127.0.0.1:443"}]
  loadgen connect https://127.0.0.1:9443/ --dtls-port 9443"""


def add_parser(sub: Any) -> None:
    p: argparse.ArgumentParser = sub.add_parser(
        "faultproxy",
        help="run the Toxiproxy-compatible TCP and UDP fault proxy",
        description=_DESCRIPTION,
        epilog=_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--host", default="127.0.0.1", help="API address (default 127.0.0.1)")
    p.add_argument(
        "--port", type=int, default=8474, help="API port (default 8474, Toxiproxy's; 0: free)"
    )
    p.add_argument(
        "--config",
        type=Path,
        metavar="FILE",
        help="proxies to create at start: a JSON list in Toxiproxy's populate format",
    )
    p.add_argument(
        "--seed", type=int, metavar="N", help="seed the random source (toxicity, jitter, loss)"
    )
    p.add_argument("-v", "--verbose", action="count", default=0, help="more logs (-vv: debug)")
    p.add_argument("--exit-with-parent", type=int, metavar="PID", help=argparse.SUPPRESS)
    # a marker for process listings (pgrep -f), ignored, as the Locust sidecar's --tag
    p.add_argument("--tag", default="", metavar="TEXT", help=argparse.SUPPRESS)
    p.set_defaults(func=_main)


def load_config(path: Path) -> list[ProxySpec]:
    """The proxies of a ``--config`` file; ValueError with a readable reason if bad."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise ValueError(f"cannot read {path}: {exc.strerror or exc}") from None
    except ValueError as exc:
        raise ValueError(f"{path} is not JSON: {exc}") from None
    if not isinstance(data, list):
        raise ValueError(f"{path}: expected a JSON list of proxies")
    specs: list[ProxySpec] = []
    for i, item in enumerate(data, 1):
        try:
            specs.append(ProxySpec.from_json_untrusted(item))
        except ApiError as exc:
            raise ValueError(f"{path}: proxy {i}: {exc.message}") from None
    names = [s.name for s in specs]
    if len(set(names)) != len(names):
        raise ValueError(f"{path}: duplicate proxy name")
    return specs


def _main(parser: argparse.ArgumentParser, args: argparse.Namespace) -> int:
    if not 0 <= args.port <= 65535:
        parser.error(f"--port {args.port}: not a port")
    specs: list[ProxySpec] = []
    if args.config is not None:
        try:
            specs = load_config(args.config)
        except ValueError as exc:
            print(f"loadgen faultproxy: bad --config: {exc}", file=sys.stderr)
            return 2
    log_to_stderr(args.verbose)
    rng = random.Random(args.seed) if args.seed is not None else random.Random()
    return run_server("faultproxy", _serve, args.host, args.port, specs, rng, args.exit_with_parent)


async def _serve(
    host: str,
    port: int,
    specs: list[ProxySpec],
    rng: random.Random,
    parent_pid: int | None,
) -> bool:
    """Serve until SIGTERM or SIGINT; False when the API or a --config proxy cannot listen."""
    metrics = FaultProxyMetrics()
    async with trio.open_nursery() as nursery:
        registry = ProxyRegistry(nursery, metrics, rng=rng)
        api = FaultProxyApi(registry, metrics)
        try:
            bound = await nursery.start(api.serve, host, port)
        except OSError as exc:  # address in use, no such address: no traceback
            print(f"loadgen faultproxy: cannot listen on {host}:{port}: {exc}", file=sys.stderr)
            return False
        try:
            await registry.populate(specs)
        except ApiError as exc:
            print(f"loadgen faultproxy: --config: {exc.message}", file=sys.stderr)
            nursery.cancel_scope.cancel()
            return False
        shown = f"[{host}]" if ":" in host else host
        banner = [f"{BANNER_PREFIX}http://{shown}:{bound}"]
        await serve_until_stopped(nursery, banner, parent_pid=parent_pid)
        print("stopping the faultproxy", file=sys.stderr, flush=True)
        nursery.cancel_scope.cancel()
    return True

"""``loadgen`` command line: one subcommand per entry point (architecture.md)."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from loadgen import __version__
from loadgen.cli import connect, faultproxy, gateway, pki, run

__all__ = ["main"]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="loadgen",
        description=(
            "Load and chaos testing for AnyConnect-compatible SSL VPN gateways "
            "(Cisco ASA/FTD, ocserv)."
        ),
    )
    parser.add_argument("--version", action="version", version=f"loadgen {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    connect.add_parser(sub)
    faultproxy.add_parser(sub)
    gateway.add_parser(sub)
    pki.add_parser(sub)
    run.add_parser(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    code: int = args.func(parser, args)
    return code


if __name__ == "__main__":
    sys.exit(main())

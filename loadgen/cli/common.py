"""What ``loadgen connect`` and ``loadgen run`` share: the client options, the password,
the embedded target."""

from __future__ import annotations

import argparse
import getpass
import sys
from typing import NoReturn

from loadgen.options import ClientOptions, Front, OptionError, from_namespace

__all__ = [
    "EMBEDDED_PASSWORD",
    "EXIT_FAILED",
    "EXIT_OK",
    "EXIT_USAGE",
    "client_options",
    "read_password",
]

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_USAGE = 2
#: the embedded gateway accepts any user with any password; this one is sent
EMBEDDED_PASSWORD = "loadgen"


def client_options(
    parser: argparse.ArgumentParser, args: argparse.Namespace, front: Front
) -> ClientOptions:
    """The table's options as given on this command line; a bad one is a usage error."""
    try:
        opts = from_namespace(args, front)
    except OptionError as exc:
        _usage(parser, str(exc))
    if args.url is None and opts.tls_given:
        _usage(parser, "TLS options need a URL: the embedded gateway brings its own CA")
    return opts


def read_password(
    parser: argparse.ArgumentParser, opts: ClientOptions, *, embedded: bool, needed: bool = True
) -> str | None:
    """``--password``, the first line of stdin, a prompt on a terminal, or (no
    URL) the embedded gateway's password; a usage error when none is there
    and ``needed``."""
    if opts.password is not None:
        return opts.password
    if opts.password_stdin:
        return sys.stdin.readline().rstrip("\r\n")
    if embedded:
        return EMBEDDED_PASSWORD
    if not needed:
        return None
    if sys.stdin.isatty():
        return getpass.getpass(f"Password for {opts.username(1)}: ")
    _usage(parser, "no password: use --password-stdin (or --password)")


def _usage(parser: argparse.ArgumentParser, message: str) -> NoReturn:
    parser.error(message)

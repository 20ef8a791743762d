"""What the commands share: the client options, the password and the target of
``connect`` and ``run``; the logging and exit status of the server commands."""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import getpass
import logging
import sys
from collections.abc import Awaitable, Callable
from typing import Any, NoReturn, TypeVar

import trio

from loadgen.gateway.embedded import EMBEDDED_PASSWORD, embedded_gateway
from loadgen.options import ClientOptions, Front, OptionError, from_namespace

__all__ = [
    "EXIT_FAILED",
    "EXIT_OK",
    "EXIT_USAGE",
    "against_target",
    "client_options",
    "log_to_stderr",
    "read_password",
    "run_server",
]

T = TypeVar("T")

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_USAGE = 2


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


async def against_target(
    url: str | None,
    opts: ClientOptions,
    body: Callable[[ClientOptions, str], Awaitable[T]],
) -> T:
    """``body(opts, url)`` against ``url``, or, with none, against the embedded
    reference gateway started for it (its CA replaces the trust options)."""
    if url is not None:
        return await body(opts, url)
    async with embedded_gateway() as gw:
        return await body(dataclasses.replace(opts, cafile=str(gw.ca_path)), gw.url)


def log_to_stderr(verbose: int) -> None:
    """The server commands' log: warnings, ``-v`` info, ``-vv`` debug."""
    level = logging.DEBUG if verbose > 1 else logging.INFO if verbose else logging.WARNING
    logging.basicConfig(level=level, format="%(asctime)s %(name)s %(levelname)s %(message)s")


def run_server(name: str, serve: Callable[..., Awaitable[bool]], *args: Any) -> int:
    """A server command's exit status: 1 when ``serve`` could not start serving
    (it said why), 0 after a stop (SIGTERM, SIGINT or a KeyboardInterrupt)."""
    served = True
    with contextlib.suppress(KeyboardInterrupt):
        served = trio.run(serve, *args)
    if not served:
        return 1
    print(f"{name} stopped", file=sys.stderr)
    return 0

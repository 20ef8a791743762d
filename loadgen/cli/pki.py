"""``loadgen pki``: a test CA and one client certificate per user, for certificate logins.

The operator imports ``ca.pem`` into the gateway's trust point (an ASA trustpoint,
ocserv's ``ca-cert``); ``credentials.csv`` then drives ``loadgen run --credentials``
with one certificate per user.  Layout of ``--out DIR``::

    DIR/ca.pem, DIR/ca-key.pem      the CA (unless --ca-dir gives one)
    DIR/users/<name>.pem            certificate, subject CN = <name>, clientAuth
    DIR/users/<name>.key            its ECDSA P-256 key, unencrypted PKCS#8, mode 0600
    DIR/credentials.csv             username,certificate,sslkey[,password], absolute paths
"""

from __future__ import annotations

import argparse
import csv
import os
import sys
import time
from pathlib import Path
from typing import Any, TextIO

from cryptography import x509

from loadgen.cli.common import EXIT_FAILED, EXIT_OK
from loadgen.engine.feeder import FeederError, check_user_pattern
from loadgen.gateway.pki import (
    PrivateKey,
    issue_client_cert,
    load_ca,
    make_ca,
    write_cert,
    write_key,
)

__all__ = ["add_parser", "issue_users"]

#: seconds between progress lines on stderr
PROGRESS_EVERY_S = 2.0


def add_parser(sub: Any) -> None:
    p: argparse.ArgumentParser = sub.add_parser(
        "pki",
        help="make a test CA and client certificates for N users",
        description=(
            "Issue one client certificate per user (subject CN = the user name, ECDSA P-256, "
            "clientAuth), signed by a test CA, and a credentials.csv for "
            "'loadgen run --credentials'.  Import the CA (DIR/ca.pem, or the --ca-dir one) "
            "into the gateway's trust point.  Without --ca-dir the CA already in DIR is "
            "reused, so a CA the gateway trusts keeps working; else a new one is made."
        ),
    )
    p.add_argument("--out", type=Path, required=True, metavar="DIR", help="output directory")
    p.add_argument("--users", type=int, required=True, metavar="N", help="how many users")
    p.add_argument(
        "--user",
        default="user{n}",
        metavar="PATTERN",
        help="user name pattern, n = 1..N, e.g. user{n:05d} (default user{n})",
    )
    p.add_argument(
        "--ca-dir",
        type=Path,
        metavar="DIR",
        help="issue under the CA of DIR/ca.pem + DIR/ca-key.pem (the reference "
        "gateway's --cert-dir)",
    )
    p.add_argument(
        "--password",
        metavar="PASSWORD",
        help="add a password column: this password for every user (certificate + password)",
    )
    p.add_argument("--force", action="store_true", help="replace an existing DIR/users")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress lines")
    p.set_defaults(func=_main)


def _user_names(pattern: str, count: int) -> list[str]:
    check_user_pattern(pattern)
    names = [pattern.format(n=n) for n in range(1, count + 1)]
    for name in names:
        # the name becomes a file name: no directories, no hidden files, no CSV surprises
        if not name or name.startswith(".") or any(c in name for c in "/\\\0\r\n"):
            raise FeederError(f"user name {name!r} cannot be a file name")
    if len(set(names)) != len(names):
        raise FeederError(f"user pattern {pattern!r} repeats names")
    return names


def _ca(out: Path, ca_dir: Path | None) -> tuple[x509.Certificate, PrivateKey, Path, bool]:
    """The CA, the path of its certificate, and whether it was made now."""
    if ca_dir is not None:
        cert, key = load_ca(ca_dir)
        return cert, key, ca_dir.resolve() / "ca.pem", False
    if (out / "ca.pem").exists() and (out / "ca-key.pem").exists():
        cert, key = load_ca(out)
        return cert, key, out / "ca.pem", False
    cert, key = make_ca("loadgen test client CA")
    write_key(out / "ca-key.pem", key)
    write_cert(out / "ca.pem", cert)
    return cert, key, out / "ca.pem", True


def issue_users(
    out: Path,
    names: list[str],
    ca_cert: x509.Certificate,
    ca_key: PrivateKey,
    *,
    password: str | None = None,
    progress: TextIO | None = None,
) -> Path:
    """Certificates and keys for ``names`` in ``out/users`` and the credentials file
    (returned).  ``out/users`` must exist and be empty of these names."""
    users = out / "users"
    started = last = time.monotonic()
    rows: list[list[str]] = []
    for done, name in enumerate(names, start=1):
        cert, key = issue_client_cert(ca_cert, ca_key, name)
        cert_path, key_path = users / f"{name}.pem", users / f"{name}.key"
        write_key(key_path, key)
        write_cert(cert_path, cert)
        row = [name, str(cert_path), str(key_path)]
        rows.append(row if password is None else [*row, password])
        now = time.monotonic()
        if progress is not None and (now - last >= PROGRESS_EVERY_S or done == len(names)):
            last = now
            print(f"issued {done}/{len(names)} ({now - started:.1f} s)", file=progress)
    credentials = out / "credentials.csv"
    header = ["username", "certificate", "sslkey"]
    # a password in the file: owner only, as the keys
    fd = os.open(credentials, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w", newline="", encoding="utf-8") as f:
        os.fchmod(fd, 0o600)
        writer = csv.writer(f, lineterminator="\n")
        writer.writerow(header if password is None else [*header, "password"])
        writer.writerows(rows)
    return credentials


def _clear_users(users: Path) -> None:
    """Remove what an earlier run wrote (only its kind of file: nothing else is ours)."""
    for entry in users.iterdir():
        if entry.is_file() and entry.suffix in (".pem", ".key"):
            entry.unlink()


def _main(parser: argparse.ArgumentParser, args: argparse.Namespace) -> int:
    if args.users < 1:
        parser.error("--users must be at least 1")
    try:
        names = _user_names(args.user, args.users)
    except FeederError as exc:
        parser.error(str(exc))
    out: Path = args.out.resolve()  # absolute paths in credentials.csv, from any cwd
    users = out / "users"
    if users.exists() and not args.force:
        parser.error(f"{users} exists: pass --force to replace it")
    try:
        out.mkdir(parents=True, exist_ok=True)
        ca_cert, ca_key, ca_path, made = _ca(out, args.ca_dir)  # a bad CA leaves no users dir
        users.mkdir(exist_ok=True)
        if args.force:
            _clear_users(users)
        credentials = issue_users(
            out,
            names,
            ca_cert,
            ca_key,
            password=args.password,
            progress=None if args.quiet else sys.stderr,
        )
    except (OSError, ValueError) as exc:
        print(f"loadgen pki: {exc}", file=sys.stderr)
        return EXIT_FAILED
    print(f"CA certificate ({'new' if made else 'reused'}): {ca_path}")
    print(f"{len(names)} user certificates: {users}")
    print(f"credentials: {credentials}")
    return EXIT_OK

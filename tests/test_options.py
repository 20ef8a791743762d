"""The client option table against the front ends rendered from it.

Every client option of ``loadgen connect`` exists in ``loadgen run`` and as
``--vpn-NAME`` in Locust with the same default and the same meaning, or the
table says why not; deprecated spellings still work; a parent's options reach
its engine processes unchanged.
"""

from __future__ import annotations

import argparse
import dataclasses
from typing import Any

import pytest

from loadgen.cli import connect
from loadgen.cli.main import build_parser
from loadgen.locust.settings import add_options, settings_for
from loadgen.options import (
    ClientOptions,
    Front,
    OptionError,
    default_of,
    flag_of,
    from_namespace,
    specs,
    to_argv,
)

#: one value per option, as a user types it, and what it means
SAMPLES: dict[str, tuple[str | None, Any]] = {
    "user": ("load{n}", "load{n}"),
    "password": ("pw-sample", "pw-sample"),
    "password_stdin": (None, True),
    "credentials": ("creds.csv", "creds.csv"),
    "group": ("Engineering", "Engineering"),
    "certificate": ("certs/{user}.pem", "certs/{user}.pem"),
    "sslkey": ("certs/{user}.key", "certs/{user}.key"),
    "key_password": ("kp-sample", "kp-sample"),
    "token_mode": ("totp", "totp"),
    "token_secret": ("base32:GEZDGNBV", "base32:GEZDGNBV"),
    "form_entry": ("main:secondary_password=42", ("main:secondary_password=42",)),
    "cafile": ("ca.pem", "ca.pem"),
    "servername": ("vpn.example.com", "vpn.example.com"),
    "servercert": ("sha1:" + "ab" * 20, "sha1:" + "ab" * 20),
    "insecure": (None, True),
    "tls_ciphers": ("ECDHE+AESGCM:RSA+AES", "ECDHE+AESGCM:RSA+AES"),
    "tls_min_version": ("1.3", "1.3"),
    "tls_max_version": ("1.2", "1.2"),
    "allow_insecure_crypto": (None, True),
    "timeout_s": ("12.5", 12.5),
    "user_agent": ("Agent/1", "Agent/1"),
    "hostname": ("host-7", "host-7"),
    "download": ("off", "off"),
    "disconnect": ("keep", "keep"),
    "no_dtls": (None, True),
    "dtls_ciphers": ("AES128-SHA:AES256-SHA", ("AES128-SHA", "AES256-SHA")),
    "dtls12_ciphers": ("AES128-GCM-SHA256", ("AES128-GCM-SHA256",)),
    "dtls_schedule": ("0,0.5,2", (0.0, 0.5, 2.0)),
    "dtls_reattempt_s": ("0", 0.0),
    "dtls_host": ("127.0.0.9", "127.0.0.9"),
    "dtls_port": ("4443", 4443),
    "echo_count": ("7", 7),
    "echo_spacing_s": ("0.05", 0.05),
    "echo_every_s": ("2.5", 2.5),
    "echo_timeout_s": ("3", 3.0),
    "echo_size": ("200", 200),
    "echo_target": ("10.1.2.3", "10.1.2.3"),
    "echo_udp": (None, True),
    "metrics_port": ("9100", 9100),
    "metrics_host": ("127.0.0.5", "127.0.0.5"),
}


class _LocustParser(argparse.ArgumentParser):
    """argparse with the keywords Locust's parser adds (web UI, environment)."""

    def add_argument(self, *args: Any, **kwargs: Any) -> argparse.Action:
        for key in ("env_var", "is_secret", "include_in_web_ui"):
            kwargs.pop(key, None)
        return super().add_argument(*args, **kwargs)


def _subparser(name: str) -> argparse.ArgumentParser:
    root = build_parser()
    for action in root._actions:
        if isinstance(action, argparse._SubParsersAction):
            parser: argparse.ArgumentParser = action.choices[name]
            return parser
    raise AssertionError(name)


def _locust_parser() -> argparse.ArgumentParser:
    parser = _LocustParser(prog="locust")
    add_options(parser)
    return parser


def _flags(parser: argparse.ArgumentParser) -> set[str]:
    return {f for a in parser._actions for f in a.option_strings if f.startswith("--")}


def _parse(front: Front, argv: list[str]) -> ClientOptions:
    if front is Front.LOCUST:
        return settings_for(_locust_parser().parse_args(argv))
    name = "connect" if front is Front.CONNECT else "run"
    url = ["https://127.0.0.1:4443/"]
    return from_namespace(_subparser(name).parse_args(url + argv), front)


def test_every_option_has_a_sample() -> None:
    assert set(SAMPLES) == {name for name, _ in specs()}


def test_every_connect_option_is_in_the_table_or_says_why_not() -> None:
    table = {flag_of(spec.name, Front.CONNECT): spec for _, spec in specs()}
    aliases = {
        flag_of(a.name, Front.CONNECT)
        for _, s in specs()
        for a in s.aliases
        if Front.CONNECT in a.fronts
    }
    for flag in _flags(_subparser("connect")) - {"--help"}:
        if flag in aliases:
            continue
        name = flag[2:]
        if name in connect.FRONT_ONLY:
            assert connect.FRONT_ONLY[name], flag
            continue
        assert flag in table, f"{flag} of loadgen connect is not a client option of the table"


@pytest.mark.parametrize("name", [name for name, _ in specs()])
def test_each_option_is_on_every_front_end_or_says_why(name: str) -> None:
    spec = dict(specs())[name]
    parsers = {
        Front.CONNECT: _flags(_subparser("connect")),
        Front.RUN: _flags(_subparser("run")),
        Front.LOCUST: _flags(_locust_parser()),
    }
    for front, flags in parsers.items():
        shown = spec.flag(front) in flags
        assert shown is (front in spec.fronts), (spec.flag(front), front)
    if spec.fronts is not Front.ALL:
        assert spec.why, f"{spec.name} is not on every front end and the table says no reason"
    if Front.LOCUST in spec.fronts:
        assert spec.flag(Front.LOCUST) == f"--vpn-{spec.name}"


@pytest.mark.parametrize("name", [name for name, _ in specs()])
def test_same_default_on_every_front_end(name: str) -> None:
    spec = dict(specs())[name]
    field_default = {f.name: f.default for f in dataclasses.fields(ClientOptions)}[name]
    for front in (Front.CONNECT, Front.RUN, Front.LOCUST):
        if front not in spec.fronts:
            continue
        parsed = getattr(_parse(front, []), name)
        assert parsed == default_of(name, front)
        if parsed != field_default:
            assert front in spec.defaults and spec.default_why, (name, front)


@pytest.mark.parametrize("name", [name for name, _ in specs()])
def test_same_meaning_on_every_front_end(name: str) -> None:
    text, meant = SAMPLES[name]
    spec = dict(specs())[name]
    for front in (Front.CONNECT, Front.RUN, Front.LOCUST):
        if front not in spec.fronts:
            continue
        argv = [spec.flag(front)] + ([] if text is None else [text])
        assert getattr(_parse(front, argv), name) == meant, (name, front)


def test_one_name_one_meaning_with_old_spellings_kept(capsys: pytest.CaptureFixture[str]) -> None:
    # --echo-interval meant the spacing in connect and Locust, the period in run
    assert _parse(Front.CONNECT, ["--echo-interval", "0.3"]).echo_spacing_s == 0.3
    run = _parse(Front.RUN, ["--echo-interval", "7"])
    assert (run.echo_every_s, run.echo_spacing_s) == (7.0, 0.0)
    assert "--echo-interval is deprecated: use --echo-every" in capsys.readouterr().err
    assert _parse(Front.LOCUST, ["--vpn-echo-interval", "0.4"]).echo_spacing_s == 0.4
    assert _parse(Front.CONNECT, ["--echo", "5"]).echo_count == 5
    assert _parse(Front.RUN, ["--echo-burst", "4"]).echo_count == 4
    assert _parse(Front.RUN, ["--user-pattern", "x{n}"]).user == "x{n}"
    assert _parse(Front.LOCUST, ["--vpn-user-pattern", "y{n}"]).user == "y{n}"
    assert _parse(Front.RUN, ["--users-file", "u.csv"]).credentials == "u.csv"
    with pytest.raises(OptionError, match="not both"):
        _parse(Front.CONNECT, ["--echo", "5", "--echo-count", "2"])


@pytest.mark.parametrize(
    ("front", "argv", "message"),
    [
        (Front.RUN, ["--servercert", "sha1:" + "00" * 20, "--insecure"], "contradict"),
        (
            Front.LOCUST,
            ["--vpn-servercert", "sha1:" + "00" * 20, "--vpn-insecure"],
            "--vpn-insecure",
        ),
        (Front.CONNECT, ["--servercert", "md5:00"], "--servercert"),
        (Front.LOCUST, ["--vpn-dtls-port", "70000"], "--vpn-dtls-port"),
        (Front.LOCUST, ["--vpn-metrics-port", "70000"], "--vpn-metrics-port"),
        (Front.LOCUST, ["--vpn-echo-count", "-1"], "--vpn-echo-count"),
        (Front.LOCUST, ["--vpn-dtls-ciphers", "NOPE-SHA"], "unknown cipher"),
        (Front.RUN, ["--user", "fixed"], "needs {n}"),
        (Front.LOCUST, ["--vpn-user", "fixed"], "--vpn-user"),
        (Front.LOCUST, ["--vpn-echo-size", "2"], "--vpn-echo-size"),
        (Front.CONNECT, ["--timeout", "0"], "--timeout"),
        (Front.CONNECT, ["--dtls-schedule", "1,2"], "starts at 0"),
        (Front.CONNECT, ["--echo-target", "not-an-ip"], "IPv4"),
    ],
)
def test_bad_values_are_one_error_named_as_the_front_end_spells_it(
    front: Front, argv: list[str], message: str
) -> None:
    with pytest.raises(OptionError, match=message):
        _parse(front, argv)


def test_dtls_reattempt_zero_means_never_everywhere() -> None:
    for front in (Front.CONNECT, Front.RUN, Front.LOCUST):
        assert _parse(front, [flag_of("dtls-reattempt", front), "0"]).dtls_reattempt_s == 0.0


def test_forwarded_typed_values_are_checked_too() -> None:
    # a Locust master forwards values as they are: numbers, lists
    ns = argparse.Namespace(vpn_dtls_port=4443, vpn_dtls_schedule=[0, 1, 3], vpn_echo_count=2)
    opts = settings_for(ns)
    assert (opts.dtls_port, opts.dtls_schedule, opts.echo_count) == (4443, (0, 1, 3), 2)
    with pytest.raises(OptionError, match="--vpn-dtls-port"):
        settings_for(argparse.Namespace(vpn_dtls_port=0))


def test_the_password_never_shows() -> None:
    opts = _parse(Front.CONNECT, ["--password", "hunter2-secret"])
    assert opts.password == "hunter2-secret"
    assert "hunter2-secret" not in repr(opts)
    assert "hunter2-secret" not in " ".join(to_argv(opts, Front.RUN))


def test_to_argv_gives_the_same_options_back() -> None:
    values = {name: meant for name, (_, meant) in SAMPLES.items()}
    for name in ("password", "password_stdin", "hostname", "credentials", "insecure"):
        values.pop(name)
    opts = ClientOptions(**values)
    again = _parse(Front.RUN, to_argv(opts, Front.RUN))
    fields = {name for name, spec in specs(Front.RUN) if not spec.secret}
    assert {n: getattr(again, n) for n in fields} == {n: getattr(opts, n) for n in fields}

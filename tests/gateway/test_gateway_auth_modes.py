"""The reference gateway's auth modes over real TLS: client certificates, the CN as the
user, the OTP after the password, and the ``loadgen gateway`` options that set them."""

from __future__ import annotations

import re
import ssl
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path

import h11
import pytest
import trio
from prometheus_client import CollectorRegistry

from loadgen.cli.gateway import build_config
from loadgen.cli.main import build_parser
from loadgen.gateway.config import GatewayConfig
from loadgen.gateway.pki import (
    ensure_pki,
    issue_client_cert,
    load_ca,
    make_ca,
    write_cert,
    write_key,
)
from loadgen.gateway.server import Gateway, request_client_certificates
from loadgen.metrics.gateway import GatewayMetrics
from loadgen.proto.auth_policy import AuthMode, AuthPolicy, UserSpec
from loadgen.proto.otp import HotpCodes, TokenSecret, TotpCodes, parse_otp_users_file

OTP_KEY = b"12345678901234567890"
OTP_FILE = f"HOTP alice - {OTP_KEY.hex()}\n"
ALICE = {"alice": UserSpec("s3cret")}
INIT = (
    b'<?xml version="1.0" encoding="UTF-8"?>\n<config-auth client="vpn" type="init" '
    b'aggregate-auth-version="2"><version who="vpn">v9.01</version>'
    b"<group-access>https://127.0.0.1/</group-access></config-auth>"
)


def reply(**fields: str) -> bytes:
    auth = "".join(f"<{k}>{v}</{k}>" for k, v in fields.items())
    return (
        b'<?xml version="1.0" encoding="UTF-8"?>\n<config-auth client="vpn" type="auth-reply" '
        b'aggregate-auth-version="2"><version who="vpn">v9.01</version>'
        + f"<auth>{auth}</auth></config-auth>".encode()
    )


@dataclass
class Pki:
    dir: Path
    ca_path: Path

    def client(self, cn: str, *, rogue: bool = False) -> tuple[Path, Path]:
        """A client certificate for ``cn`` from the gateway's CA (or from an unknown one)."""
        if rogue:
            ca_cert, ca_key = make_ca("not the gateway's CA")
        else:
            ca_cert, ca_key = load_ca(self.dir)
        cert, key = issue_client_cert(ca_cert, ca_key, cn)
        tag = ("rogue-" if rogue else "") + cn
        cert_path, key_path = self.dir / f"{tag}.pem", self.dir / f"{tag}-key.pem"
        write_cert(cert_path, cert)
        write_key(key_path, key)
        return cert_path, key_path


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    directory = tmp_path_factory.mktemp("gateway-pki")
    return Pki(directory, ensure_pki(directory).ca_path)


@asynccontextmanager
async def gateway_with(pki: Pki, policy: AuthPolicy) -> AsyncIterator[Gateway]:
    """The gateway as ``loadgen gateway --auth MODE`` serves it, in-process."""
    server_pki = ensure_pki(pki.dir)
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.load_cert_chain(server_pki.cert_path, server_pki.key_path)
    if policy.mode.needs_certificate:
        request_client_certificates(ctx, pki.ca_path)
    config = GatewayConfig(auth=policy, dtls=False)
    gateway = Gateway(config, ctx, GatewayMetrics(CollectorRegistry()))
    async with trio.open_nursery() as nursery:
        await nursery.start(gateway.serve)
        yield gateway
        nursery.cancel_scope.cancel()


class Client:
    """One TLS connection speaking HTTP/1.1 with h11, cookies kept."""

    def __init__(self, stream: trio.SSLStream[trio.SocketStream]) -> None:
        self.stream = stream
        self.http = h11.Connection(h11.CLIENT)
        self.cookies: dict[str, str] = {}

    async def post(self, path: str, body: bytes) -> tuple[int, str, bytes]:
        if self.http.our_state is h11.DONE:
            self.http.start_next_cycle()
        cookie = "; ".join(f"{k}={v}" for k, v in self.cookies.items())
        headers = [("Host", "127.0.0.1"), ("Content-Length", str(len(body)))]
        if cookie:
            headers.append(("Cookie", cookie))
        data = self.http.send(h11.Request(method="POST", target=path, headers=headers))
        await self.stream.send_all(data + self.http.send(h11.Data(data=body)))
        await self.stream.send_all(self.http.send(h11.EndOfMessage()))
        status, reason, content = 0, "", b""
        while True:
            event = self.http.next_event()
            if event is h11.NEED_DATA:
                self.http.receive_data(bytes(await self.stream.receive_some(65536)))
                continue
            if isinstance(event, h11.Response):
                status, reason = event.status_code, event.reason.decode()
                for name, value in event.headers:
                    if name == b"set-cookie":
                        key, _, rest = value.decode().partition("=")
                        self.cookies[key] = rest.partition(";")[0]
            elif isinstance(event, h11.Data):
                content += bytes(event.data)
            elif isinstance(event, h11.EndOfMessage):
                return status, reason, content

    async def closed(self) -> bool:
        """True when the gateway ends the connection (EOF or an alert)."""
        try:
            with trio.fail_after(5):
                return await self.stream.receive_some(1) == b""
        except (trio.BrokenResourceError, ssl.SSLError):
            return True


@asynccontextmanager
async def connect(
    pki: Pki, gateway: Gateway, cert: tuple[Path, Path] | None = None
) -> AsyncIterator[Client]:
    ctx = ssl.create_default_context(cafile=str(pki.ca_path))
    if cert is not None:
        ctx.load_cert_chain(*cert)
    tcp = await trio.open_tcp_stream("127.0.0.1", gateway.port)
    stream = trio.SSLStream(tcp, ctx, server_hostname="localhost")
    try:
        await stream.do_handshake()
        yield Client(stream)
    finally:
        await trio.aclose_forcefully(stream)


def failures(gateway: Gateway, reason: str) -> float:
    value = gateway.metrics.registry.get_sample_value(
        "loadgen_gateway_auth_failures_total", {"reason": reason}
    )
    return value or 0.0


# -- certificate ----------------------------------------------------------------------------


async def test_certificate_login_answers_the_init_with_the_cookie(pki: Pki) -> None:
    policy = AuthPolicy(mode=AuthMode.CERTIFICATE)
    async with (
        gateway_with(pki, policy) as gateway,
        connect(pki, gateway, pki.client("carol")) as c,
    ):
        status, _, body = await c.post("/", INIT)
        assert status == 200 and b'type="complete"' in body
        assert c.cookies["webvpn"] and gateway.cookies_live == 1
        record = gateway._records.lookup(c.cookies["webvpn"], trio.current_time())
        assert record is not None and record.username == "carol"  # the CN is the user


async def test_certificate_mode_without_a_certificate_is_401_no_certificate(pki: Pki) -> None:
    async with gateway_with(pki, AuthPolicy(mode=AuthMode.CERTIFICATE)) as gateway:
        async with connect(pki, gateway) as client:
            assert await client.post("/", INIT) == (401, "No certificate", b"")
            assert await client.closed()
        assert failures(gateway, "no_certificate") == 1
        assert gateway.cookies_live == 0


async def test_a_certificate_from_another_ca_fails_the_handshake(pki: Pki) -> None:
    async with gateway_with(pki, AuthPolicy(mode=AuthMode.CERTIFICATE)) as gateway:
        with pytest.raises((trio.BrokenResourceError, ssl.SSLError)):
            async with connect(pki, gateway, pki.client("carol", rogue=True)) as client:
                await client.post("/", INIT)
        registry = gateway.metrics.registry
        with trio.fail_after(5):
            while not registry.get_sample_value(
                "loadgen_gateway_dropped_total", {"reason": "tls_handshake"}
            ):
                await trio.sleep(0.01)
        assert gateway.cookies_live == 0


# -- certificate+password -----------------------------------------------------------------


async def test_certificate_and_password(pki: Pki) -> None:
    policy = AuthPolicy(mode=AuthMode.CERTIFICATE_PASSWORD, users=ALICE)
    async with gateway_with(pki, policy) as gateway:
        async with connect(pki, gateway, pki.client("alice")) as client:
            assert b"username" in (await client.post("/", INIT))[2]
            assert b'name="password"' in (await client.post("/auth", reply(username="alice")))[2]
            status, _, body = await client.post("/auth", reply(password="s3cret"))
            assert status == 200 and b'type="complete"' in body
        assert gateway.cookies_live == 1


async def test_certificate_and_password_of_another_user(pki: Pki) -> None:
    policy = AuthPolicy(mode=AuthMode.CERTIFICATE_PASSWORD, users=ALICE)
    async with gateway_with(pki, policy) as gateway:
        async with connect(pki, gateway, pki.client("mallory")) as client:
            await client.post("/", INIT)
            await client.post("/auth", reply(username="alice"))
            answer = await client.post("/auth", reply(password="s3cret"))
            assert answer == (401, "Authentication failed", b"")
        assert failures(gateway, "cert_user_mismatch") == 1
        async with connect(pki, gateway) as client:
            await client.post("/", INIT)
            assert (await client.post("/auth", reply(username="alice")))[:2] == (
                401,
                "No certificate",
            )
        assert failures(gateway, "no_certificate") == 1
        assert gateway.cookies_live == 0


# -- password+otp -----------------------------------------------------------------------------


async def test_password_then_otp(pki: Pki) -> None:
    policy = AuthPolicy(
        mode=AuthMode.PASSWORD_OTP, users=ALICE, otp_users=parse_otp_users_file(OTP_FILE)
    )
    codes = HotpCodes(TokenSecret(key=OTP_KEY))
    async with gateway_with(pki, policy) as gateway:
        for code, ok in [(codes.next_code(), True), ("000000", False)]:
            async with connect(pki, gateway) as client:
                await client.post("/", INIT)
                await client.post("/auth", reply(username="alice"))
                otp_form = (await client.post("/auth", reply(password="s3cret")))[2]
                assert b"Please enter your OTP password." in otp_form
                status, reason, body = await client.post("/auth", reply(password=code))
                if ok:
                    assert status == 200 and b'type="complete"' in body
                else:
                    assert (status, reason) == (401, "Authentication failed")
                    assert await client.closed()
        assert failures(gateway, "wrong_otp") == 1
        assert gateway.cookies_live == 1


async def test_totp_codes_are_of_the_wall_clock(pki: Pki) -> None:
    users = parse_otp_users_file(f"HOTP/T30 alice - {OTP_KEY.hex()}\n")
    policy = AuthPolicy(mode=AuthMode.PASSWORD_OTP, users=ALICE, otp_users=users)
    async with gateway_with(pki, policy) as gateway, connect(pki, gateway) as client:
        await client.post("/", INIT)
        await client.post("/auth", reply(username="alice"))
        await client.post("/auth", reply(password="s3cret"))
        code = TotpCodes(TokenSecret(key=OTP_KEY)).take(time.time())
        status, _, body = await client.post("/auth", reply(password=code))
        assert status == 200 and b'type="complete"' in body


# -- the command line -----------------------------------------------------------------------


def cli_config(*args: str) -> GatewayConfig:
    config, _ = build_config(build_parser().parse_args(["gateway", *args]))
    return config


def test_auth_option_defaults_to_password() -> None:
    assert cli_config().auth.mode is AuthMode.PASSWORD
    assert cli_config("--auth", "certificate").auth.mode is AuthMode.CERTIFICATE


def test_otp_file_is_read(tmp_path: Path) -> None:
    path = tmp_path / "otp"
    path.write_text("# tokens\n" + OTP_FILE)
    config = cli_config("--auth", "password+otp", "--otp-file", str(path))
    assert config.auth.otp_users is not None and set(config.auth.otp_users) == {"alice"}
    assert OTP_KEY.hex() not in repr(config)


@pytest.mark.parametrize(
    "args,message",
    [
        (["--auth", "password+otp"], "needs --otp-file"),
        (["--otp-file", "{otp}"], "goes with --auth password+otp"),
        (["--client-ca", "{otp}"], "--client-ca goes with"),
        (["--auth", "password+otp", "--otp-file", "{bad}"], "line 2"),
    ],
)
def test_bad_auth_options(tmp_path: Path, args: list[str], message: str) -> None:
    (tmp_path / "otp").write_text(OTP_FILE)
    (tmp_path / "bad").write_text(f"# ok\nHOTP bob - {OTP_KEY.hex()}zz\n")
    args = [a.format(otp=tmp_path / "otp", bad=tmp_path / "bad") for a in args]
    with pytest.raises(ValueError, match=re.escape(message)) as info:
        cli_config(*args)
    assert OTP_KEY.hex() not in str(info.value)


def _cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "loadgen", "gateway", *args],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_certificate_mode_with_own_cert_needs_a_client_ca(pki: Pki) -> None:
    server = ensure_pki(pki.dir)
    proc = _cli(
        "--auth", "certificate", "--cert", str(server.cert_path), "--key", str(server.key_path)
    )
    assert proc.returncode == 2 and "needs --client-ca" in proc.stderr


def test_the_client_ca_is_the_only_trust_anchor(pki: Pki) -> None:
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    request_client_certificates(ctx, pki.ca_path)
    assert ctx.verify_mode is ssl.CERT_OPTIONAL
    (only,) = ctx.get_ca_certs()
    assert only["subject"] == ((("commonName", "loadgen reference gateway CA"),),)

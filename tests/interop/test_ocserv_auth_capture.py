"""What ocserv 1.1.6 sends during login with each authentication setup, checked
against the captures in tests/proto/vectors/ocserv_auth/ (their README lists them).

Each scenario logs in with the raw client of ``ocserv_wire`` and compares every
recorded response (head with cookie values redacted, body byte for byte) with
the files.  ``LOADGEN_WRITE_VECTORS=1`` rewrites the files from the live server
instead (then review the diff).
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import pytest
from cryptography.hazmat.primitives.hashes import SHA1
from cryptography.hazmat.primitives.twofactor.hotp import HOTP

from loadgen.lab.ocserv import OcservConfig, OcservServer
from tests.interop.ocserv_wire import (
    RawResponse,
    WireClient,
    init_body,
    normalize_head,
    reply_body,
)

pytestmark = pytest.mark.interop

VECTORS = Path(__file__).resolve().parents[1] / "proto" / "vectors" / "ocserv_auth"
WRITE = os.environ.get("LOADGEN_WRITE_VECTORS") == "1"

BANNER = "Use <ctrl-c> to quit"
PRE_LOGIN_BANNER = "Terms & Conditions apply"
#: RFC 4226 appendix D secret ("12345678901234567890"); HOTP(0) = 755224
OTP_SECRET = "3132333435363738393031323334353637383930"
#: liboath accepts counters 0..20 ahead (ocserv's HOTP_WINDOW); none of them is this
WRONG_OTP = "000000"

Kind = Literal["init", "get", "username", "password", "otp", "connect"]


@dataclass(frozen=True)
class Step:
    #: the vector file stem; None: not recorded (it repeats another capture)
    name: str | None
    kind: Kind
    value: str = ""


@dataclass(frozen=True)
class Scenario:
    id: str
    config: dict[str, Any]
    steps: list[Step]
    #: CN of the client certificate presented on the TLS connection
    cert_cn: str | None = None
    users: dict[str, str] = field(default_factory=lambda: {"alice": "test"})


CERT = {"auth": "certificate", "banner": BANNER, "pre_login_banner": PRE_LOGIN_BANNER}
CERT_PLAIN = {"auth": "certificate+plain"}
PLAIN_OR_CERT = {"auth": "plain|certificate"}
OTP = {"otp_users": {"alice": OTP_SECRET}}

SCENARIOS = [
    Scenario("certificate_no_cert", CERT, [Step("cert_init_no_cert", "init")]),
    Scenario("certificate_get_no_cert", CERT, [Step("cert_get_no_cert", "get")]),
    Scenario("certificate_with_cert", CERT, [Step("cert_init_with_cert", "init")], "alice"),
    Scenario(
        "certificate_plain",
        CERT_PLAIN,
        [
            Step("certplain_init", "init"),
            Step("certplain_username", "username", "alice"),
            Step("certplain_complete", "password", "test"),
        ],
        "alice",
    ),
    Scenario(
        "certificate_plain_cn_mismatch",
        CERT_PLAIN,
        [
            Step(None, "init"),
            Step(None, "username", "bob"),
            Step("certplain_cn_mismatch", "password", "bobpw"),
        ],
        "alice",
        users={"alice": "test", "bob": "bobpw"},
    ),
    Scenario(
        "certificate_plain_no_cert",
        CERT_PLAIN,
        [Step(None, "init"), Step("certplain_no_cert", "username", "alice")],
    ),
    Scenario(
        "plain_or_cert_with_cert",
        PLAIN_OR_CERT,
        [Step("plaincert_init_with_cert", "init")],
        "alice",
    ),
    Scenario(
        "plain_or_cert_password",
        PLAIN_OR_CERT,
        [
            Step("plaincert_init_no_cert", "init"),
            Step(None, "username", "alice"),
            Step("plaincert_complete", "password", "test"),
        ],
    ),
    Scenario(
        "otp",
        OTP,
        [
            Step(None, "init"),
            Step(None, "username", "alice"),
            Step("otp_prompt", "password", "test"),
            Step("otp_complete", "otp", "0"),
        ],
    ),
    Scenario(
        "otp_wrong",
        OTP,
        [
            Step(None, "init"),
            Step(None, "username", "alice"),
            Step(None, "password", "test"),
            Step("otp_wrong", "password", WRONG_OTP),
        ],
    ),
    Scenario(
        "plain_wrong_password",
        {},
        [
            Step("plain_init", "init"),
            Step("plain_password_form", "username", "alice"),
            Step("plain_wrong_password", "password", "bad"),
            # the correct password after a wrong one: ocserv's plain module keeps failing
            Step("plain_retry_correct_password", "password", "test"),
            Step("plain_third_try", "password", "test"),
        ],
    ),
    Scenario(
        "banners",
        {"banner": BANNER, "pre_login_banner": PRE_LOGIN_BANNER},
        [
            Step("banner_prelogin_init", "init"),
            Step(None, "username", "alice"),
            Step("banner_complete", "password", "test"),
            Step("banner_connect", "connect"),
        ],
    ),
]


def hotp_code(secret_hex: str, counter: int) -> str:
    return HOTP(bytes.fromhex(secret_hex), 6, SHA1()).generate(counter).decode("ascii")


def recorded_names() -> list[str]:
    return [s.name for sc in SCENARIOS for s in sc.steps if s.name is not None]


@pytest.fixture
def ocserv_factory() -> Iterator[list[OcservServer]]:
    for tool in ("ocserv", "ocpasswd", "occtl"):
        if shutil.which(tool) is None:
            pytest.skip(f"{tool} is not installed")
    servers: list[OcservServer] = []
    yield servers
    for server in servers:
        server.stop()


def _run(server: OcservServer, scenario: Scenario) -> dict[str, RawResponse]:
    cert = None if scenario.cert_cn is None else server.issue_user_cert(scenario.cert_cn)
    got: dict[str, RawResponse] = {}
    with WireClient(server.tcp_port, server.ca_path, cert=cert) as client:
        session: str | None = None
        for step in scenario.steps:
            if step.kind == "init":
                response = client.post("/", init_body(server.tcp_port))
            elif step.kind == "get":
                response = client.get("/")
            elif step.kind == "username":
                response = client.post("/auth", reply_body(username=step.value))
            elif step.kind == "password":
                response = client.post("/auth", reply_body(password=step.value))
            elif step.kind == "otp":
                code = hotp_code(OTP_SECRET, int(step.value))
                response = client.post("/auth", reply_body(password=code))
            else:
                assert session is not None, "CONNECT needs a completed login"
                response = client.connect_tunnel(session)
            session = response.cookie("webvpn") or session
            if step.name is not None:
                got[step.name] = response
    return got


def _head(server: OcservServer, response: RawResponse) -> str:
    return normalize_head(response.head, server_sha1=server.cert_sha1_hex) + "\r\n"


@pytest.mark.parametrize("scenario", SCENARIOS, ids=[s.id for s in SCENARIOS])
def test_ocserv_sends_what_the_vectors_say(
    ocserv_factory: list[OcservServer], scenario: Scenario
) -> None:
    server = OcservServer(OcservConfig(udp_port=None, users=scenario.users, **scenario.config))
    ocserv_factory.append(server)
    server.start()
    got = _run(server, scenario)
    assert set(got) == {s.name for s in scenario.steps if s.name is not None}
    for name, response in got.items():
        head, body = _head(server, response), response.body
        head_path, body_path = VECTORS / f"{name}.http", VECTORS / f"{name}.xml"
        if WRITE:
            VECTORS.mkdir(parents=True, exist_ok=True)
            head_path.write_bytes(head.encode("latin-1"))
            if body:
                body_path.write_bytes(body)
            else:
                body_path.unlink(missing_ok=True)
            continue
        assert head_path.read_bytes().decode("latin-1") == head, name
        if body:
            assert body_path.read_bytes() == body, name
        else:
            assert not body_path.exists(), f"{name}: ocserv sent no body now"
        # no secret of the scenario leaks into a stored capture
        for secret in ("bobpw", hotp_code(OTP_SECRET, 0)):
            assert secret.encode() not in head_path.read_bytes() + body


def test_the_vectors_are_all_produced_here() -> None:
    names = recorded_names()
    assert len(names) == len(set(names))
    on_disk = {p.stem for p in VECTORS.iterdir() if p.suffix in (".http", ".xml")}
    assert on_disk == set(names)
    readme = (VECTORS / "README.md").read_text(encoding="utf-8")
    for name in names:
        assert name in readme, f"README.md does not describe {name}"


def test_wrong_otp_is_outside_the_window() -> None:
    assert WRONG_OTP not in {hotp_code(OTP_SECRET, c) for c in range(64)}
    assert hotp_code(OTP_SECRET, 0) == "755224"  # RFC 4226 appendix D


def test_no_capture_carries_a_cookie_value() -> None:
    for path in VECTORS.glob("*.http"):
        for line in path.read_text(encoding="latin-1").splitlines():
            if line.lower().startswith("set-cookie: webvpn=") or line.lower().startswith(
                "set-cookie: webvpncontext="
            ):
                value = line.split("=", 1)[1].split(";", 1)[0]
                assert value in ("", "<redacted>"), path.name

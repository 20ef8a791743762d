"""AuthFlow fed the bytes ocserv 1.1.6 really sent (tests/proto/vectors/ocserv_auth/).

Each conversation replays one captured setup: the flow must take the same
turns openconnect does and fail, where ocserv refuses, with the typed reason.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from loadgen.proto.auth import AuthComplete, AuthFlow, AuthForm, AuthRequest, ClientInfo
from loadgen.proto.auth_xml import parse_auth_response_untrusted
from loadgen.proto.errors import (
    AuthRejectedError,
    CertificateRequiredError,
    SecondFactorRequiredError,
)

VECTORS = Path(__file__).parent / "vectors" / "ocserv_auth"


def xml(name: str) -> bytes:
    return (VECTORS / f"{name}.xml").read_bytes()


def status(name: str) -> tuple[int, str]:
    line = (VECTORS / f"{name}.http").read_text().splitlines()[0]
    _, code, reason = line.split(" ", 2)
    return int(code), reason


def flow(*, token: str | None = None, cert: bool = False) -> AuthFlow:
    return AuthFlow(
        ClientInfo(),
        base_url="https://127.0.0.1:4443/",
        username="alice",
        password="test",
        group=None,
        token=None if token is None else (lambda: token),
        has_certificate=cert,
    )


def test_every_captured_document_parses() -> None:
    for path in sorted(VECTORS.glob("*.xml")):
        parse_auth_response_untrusted(path.read_bytes())


def test_banners_as_ocserv_writes_them() -> None:
    f = flow()
    f.start()
    step = f.receive(200, xml("banner_prelogin_init"))
    assert isinstance(step, AuthRequest)
    assert f.pre_login_banner == "Terms & Conditions apply"
    done = parse_auth_response_untrusted(xml("banner_complete"))
    assert isinstance(done, AuthComplete) and done.banner == "Use <ctrl-c> to quit"


def test_password_then_otp() -> None:
    f = flow(token="755224")
    f.start()
    f.receive(200, xml("plain_init"))
    f.receive(200, xml("plain_password_form"))
    step = f.receive(200, xml("otp_prompt"))
    assert isinstance(step, AuthRequest) and b"<password>755224</password>" in step.body
    assert isinstance(f.receive(200, xml("otp_complete")), AuthComplete)


def test_otp_prompt_without_a_token_is_second_factor_required() -> None:
    f = flow()
    f.start()
    f.receive(200, xml("plain_init"))
    f.receive(200, xml("plain_password_form"))
    with pytest.raises(SecondFactorRequiredError, match="OTP"):
        f.receive(200, xml("otp_prompt"))


def test_wrong_otp_and_wrong_password_are_rejections() -> None:
    f = flow(token="000000")
    f.start()
    f.receive(200, xml("plain_init"))
    f.receive(200, xml("plain_password_form"))
    f.receive(200, xml("otp_prompt"))
    code, reason = status("otp_wrong")
    with pytest.raises(AuthRejectedError):
        f.receive(code, b"", reason=reason)
    g = flow()
    g.start()
    g.receive(200, xml("plain_init"))
    g.receive(200, xml("plain_password_form"))
    form = parse_auth_response_untrusted(xml("plain_wrong_password"))
    assert isinstance(form, AuthForm) and (form.message or "").startswith("Login failed")
    with pytest.raises(AuthRejectedError, match="Login failed"):
        g.receive(200, xml("plain_wrong_password"))


@pytest.mark.parametrize("vector", ["cert_init_no_cert", "certplain_no_cert"])
def test_no_certificate_is_certificate_required(vector: str) -> None:
    f = flow()
    f.start()
    if vector == "certplain_no_cert":
        f.receive(200, xml("certplain_init"))
    code, reason = status(vector)
    with pytest.raises(CertificateRequiredError):
        f.receive(code, b"", reason=reason)


def test_certificate_completes_on_the_init() -> None:
    f = flow(cert=True)
    f.start()
    assert isinstance(f.receive(200, xml("cert_init_with_cert")), AuthComplete)

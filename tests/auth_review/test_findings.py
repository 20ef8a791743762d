"""Review of issue 13: the bugs it found, each a test that failed before its fix."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import trio
import trio.testing

from loadgen.cli.main import build_parser
from loadgen.engine.tokens import TokenBank
from loadgen.options import Front, from_namespace
from loadgen.proto import auth
from loadgen.proto.errors import ProtocolError
from loadgen.proto.otp import TokenMode

REPO = Path(__file__).resolve().parents[2]
PASSWORD = "hunter2-correct-horse"
SECRET = "0x" + b"12345678901234567890".hex()

DECL = '<?xml version="1.0" encoding="UTF-8"?>\n'


def _form(inputs: str, *, action: str = "/auth", method: str = "post") -> bytes:
    return (
        f'{DECL}<config-auth client="vpn" type="auth-request"><auth id="main">'
        f'<form method="{method}" action="{action}">{inputs}</form></auth></config-auth>'
    ).encode()


USER_PASS = (
    '<input type="text" name="username" label="Username:" />'
    '<input type="password" name="password" label="Password:" />'
)


def _flow() -> auth.AuthFlow:
    flow = auth.AuthFlow(
        auth.ClientInfo(),
        base_url="https://gw.example/",
        username="alice",
        password=PASSWORD,
        group=None,
    )
    flow.start()
    return flow


@pytest.mark.parametrize(
    ("where", "url"),
    [("location", "https://[gw/"), ("location", "https://gw\uff03x/"), ("action", "https://[gw/")],
)
def test_hostile_url_is_a_typed_protocol_error(where: str, url: str) -> None:
    flow = _flow()
    with pytest.raises(ProtocolError):
        if where == "location":
            flow.receive(302, b"", location=url)
        else:
            flow.receive(200, _form(USER_PASS, action=url))


def test_form_method_echo_does_not_leak_the_password() -> None:
    flow = _flow()
    nxt = flow.receive(200, _form(USER_PASS))
    assert isinstance(nxt, auth.AuthRequest)
    with pytest.raises(ProtocolError) as info:
        flow.receive(200, _form(USER_PASS, method=PASSWORD))
    assert PASSWORD[:12].upper() not in str(info.value).upper()


def test_totp_never_hands_out_a_code_twice() -> None:
    clock = trio.testing.MockClock(autojump_threshold=0)
    base = 30.0 * 56_666_667 + 10
    bank = TokenBank(TokenMode.TOTP, clock=lambda: base + trio.current_time())
    codes: list[str] = []

    async def logins() -> None:
        token = bank.for_user("alice", SECRET)
        await token.ready()
        codes.append(token.code())  # first factor field of login 1
        codes.append(token.code())  # a second one in the same login: the next step's
        await token.ready()  # login 2, still in the first step
        codes.append(token.code())

    trio.run(logins, clock=clock)
    assert len(set(codes)) == 3, codes


def test_env_password_and_password_stdin_coexist(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LOADGEN_VPN_PASSWORD", "from-env")
    args = build_parser().parse_args(["run", "https://gw.example/", "--password-stdin"])
    opts = from_namespace(args, Front.RUN)
    assert opts.password_stdin


def test_run_refuses_an_unloadable_certificate_pattern_before_traffic(tmp_path: Path) -> None:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = subprocess.run(
        [
            sys.executable, "-m", "loadgen", "run", "https://127.0.0.1:9/",
            "--password", "x", "--insecure",
            "--certificate", str(tmp_path / "missing-{n}.pem"),
            "--sessions", "1", "--duration", "1", "--no-progress",
        ],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert proc.returncode == 2, proc.stderr[-500:]


def test_redirect_with_a_secret_in_the_port_never_quotes_it() -> None:
    from loadgen.engine.session import VpnSession
    from loadgen.failures import Phase, SessionFailedError

    flow = _flow()
    flow.receive(200, _form(USER_PASS))
    location = f"https://gw.example:{PASSWORD}/"
    messages: list[str] = []
    try:
        request = flow.receive(302, b"", location=location)
    except ProtocolError as exc:
        messages.append(str(exc))
    else:
        assert isinstance(request, auth.AuthRequest)
        with pytest.raises(SessionFailedError) as info:
            # the session's own step, before it touches any state
            trio.run(VpnSession._move, object(), request.url, Phase.AUTH)  # type: ignore[arg-type]
        messages.append(str(info.value))
    assert all(PASSWORD not in m for m in messages), messages

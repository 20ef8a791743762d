"""The real openconnect 9.01 logs in to the real ocserv 1.1.6 with the
authentication setups of ``OcservConfig.auth``: openconnect is the judge that the
harness configures ocserv the way real gateways are configured.

``--authenticate`` logs in and prints the cookie without making a tun; the
banner case connects fully (the banner reaches openconnect on CONNECT).
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives.hashes import SHA1
from cryptography.hazmat.primitives.twofactor.hotp import HOTP

from loadgen.lab.ocserv import OcservConfig, OcservServer, write_openconnect_script

pytestmark = pytest.mark.interop

WAIT_S = 30.0
BANNER = "Use <ctrl-c> to quit"
PRE_LOGIN_BANNER = "Terms & Conditions apply"
#: RFC 4226 appendix D secret; HOTP(0) = 755224
OTP_SECRET = "3132333435363738393031323334353637383930"


@pytest.fixture(autouse=True)
def _tools() -> None:
    for tool in ("ocserv", "ocpasswd", "occtl", "openconnect"):
        if shutil.which(tool) is None:
            pytest.skip(f"{tool} is not installed")


@pytest.fixture
def servers() -> Iterator[list[OcservServer]]:
    started: list[OcservServer] = []
    yield started
    for server in started:
        server.stop()


def _start(servers: list[OcservServer], **config: Any) -> OcservServer:
    server = OcservServer(OcservConfig(udp_port=None, **config))
    servers.append(server)
    server.start()
    return server


@dataclass(frozen=True)
class Outcome:
    returncode: int
    stdout: str
    stderr: str

    @property
    def cookie(self) -> bool:
        return self.returncode == 0 and "COOKIE=" in self.stdout


def authenticate(
    server: OcservServer,
    *args: str,
    stdin: str = "",
    cert: tuple[Path, Path] | None = None,
) -> Outcome:
    """``openconnect --authenticate``: log in, print the cookie, no tunnel."""
    argv = [
        "openconnect",
        "--protocol=anyconnect",
        "--authenticate",
        "--non-inter",
        f"--cafile={server.ca_path}",
        "-v",
    ]
    if cert is not None:
        argv += [f"--certificate={cert[0]}", f"--sslkey={cert[1]}"]
    proc = subprocess.run(
        [*argv, *args, server.url],
        input=stdin,
        capture_output=True,
        text=True,
        timeout=WAIT_S,
        check=False,
    )
    return Outcome(proc.returncode, proc.stdout, proc.stderr)


def hotp_code(counter: int) -> str:
    return HOTP(bytes.fromhex(OTP_SECRET), 6, SHA1()).generate(counter).decode("ascii")


# -- (a) certificate only ------------------------------------------------------


def test_certificate_only(servers: list[OcservServer]) -> None:
    server = _start(servers, auth="certificate")
    cert = server.issue_user_cert("alice")
    ok = authenticate(server, cert=cert)
    assert ok.cookie, ok.stderr[-2000:]
    assert "Using client certificate 'alice'" in ok.stderr
    # no form at all: the init is answered with the complete
    assert "Please enter" not in ok.stderr
    server.wait_for_log("using 'certificate' authentication")

    refused = authenticate(server)
    assert not refused.cookie
    assert "401 No certificate" in refused.stderr


def test_certificate_from_another_ca_is_refused(servers: list[OcservServer]) -> None:
    server = _start(servers, auth="certificate")
    other = _start(servers, auth="certificate")
    cert = other.issue_user_cert("alice")
    out = authenticate(server, cert=cert)
    assert not out.cookie


# -- (b) certificate and password ------------------------------------------------


def test_certificate_and_password(servers: list[OcservServer]) -> None:
    server = _start(servers, auth="certificate+plain", users={"alice": "test", "bob": "bobpw"})
    cert = server.issue_user_cert("alice")
    ok = authenticate(server, "--user=alice", "--passwd-on-stdin", stdin="test\n", cert=cert)
    assert ok.cookie, ok.stderr[-2000:]
    assert "Please enter your password." in ok.stderr

    # the password alone is not enough
    no_cert = authenticate(server, "--user=alice", "--passwd-on-stdin", stdin="test\n")
    assert not no_cert.cookie
    assert "401 No certificate" in no_cert.stderr

    # nor is the certificate alone
    no_password = authenticate(server, "--user=alice", cert=cert)
    assert not no_password.cookie

    # the user name must be the certificate's CN, even with bob's right password
    mark = len(server.log_text())
    other = authenticate(server, "--user=bob", "--passwd-on-stdin", stdin="bobpw\n", cert=cert)
    assert not other.cookie
    assert "401 Authentication failed" in other.stderr
    server.wait_for_log("presented a certificate which is for user 'alice'", since=mark)


# -- (c) password or certificate -------------------------------------------------


def test_plain_or_certificate_both_ways(servers: list[OcservServer]) -> None:
    server = _start(servers, auth="plain|certificate")
    cert = server.issue_user_cert("alice")
    by_cert = authenticate(server, cert=cert)
    assert by_cert.cookie, by_cert.stderr[-2000:]
    assert "Please enter" not in by_cert.stderr

    by_password = authenticate(server, "--user=alice", "--passwd-on-stdin", stdin="test\n")
    assert by_password.cookie, by_password.stderr[-2000:]
    assert "Please enter your password." in by_password.stderr

    wrong = authenticate(server, "--user=alice", "--passwd-on-stdin", stdin="nope\n")
    assert not wrong.cookie


# -- (d) password and HOTP -------------------------------------------------------


def test_password_then_hotp(servers: list[OcservServer]) -> None:
    server = _start(servers, otp_users={"alice": OTP_SECRET})
    # --passwd-on-stdin: openconnect reads one stdin line per password field,
    # the password for the first form and the code for ocserv's OTP form.
    ok = authenticate(server, "--user=alice", "--passwd-on-stdin", stdin=f"test\n{hotp_code(0)}\n")
    assert ok.cookie, ok.stderr[-2000:]
    assert "Please enter your OTP password." in ok.stderr
    # liboath wrote the counter it accepted back: a code is good once
    assert server.otp_path is not None
    assert f"\t{hotp_code(0)}\t" in server.otp_path.read_text()
    replay = authenticate(
        server, "--user=alice", "--passwd-on-stdin", stdin=f"test\n{hotp_code(0)}\n"
    )
    assert not replay.cookie
    assert "401 Authentication failed" in replay.stderr

    again = authenticate(
        server, "--user=alice", "--passwd-on-stdin", stdin=f"test\n{hotp_code(1)}\n"
    )
    assert again.cookie, again.stderr[-2000:]

    no_code = authenticate(server, "--user=alice", "--passwd-on-stdin", stdin="test\n")
    assert not no_code.cookie


def test_openconnect_token_mode_does_not_answer_ocserv_otp_form(
    servers: list[OcservServer],
) -> None:
    # ocserv's OTP form is auth id="main" with a plain "password" field;
    # openconnect 9.01 fills token codes only into fields it takes for token
    # fields, so it asks the user instead (and --non-inter gives up).
    server = _start(servers, otp_users={"alice": OTP_SECRET})
    out = authenticate(
        server,
        "--user=alice",
        "--passwd-on-stdin",
        "--token-mode=hotp",
        f"--token-secret=0x{OTP_SECRET},0",
        stdin="test\n",
    )
    assert not out.cookie
    assert "Please enter your OTP password." in out.stderr
    assert "User input required in non-interactive mode" in out.stderr


# -- (e) banner, (f) pre-login banner ---------------------------------------------

_BANNER_SCRIPT = """\
#!/bin/sh
if [ "$reason" = connect ]; then printf '%s' "$CISCO_BANNER" > "$LOADGEN_BANNER_OUT"; fi
exec "$LOADGEN_TUN_SCRIPT"
"""


def test_banner_reaches_openconnect_unchanged(servers: list[OcservServer], tmp_path: Path) -> None:
    server = _start(servers, banner=BANNER)
    tun_script = write_openconnect_script(tmp_path / "tun-script.sh")
    script = tmp_path / "banner-script.sh"
    script.write_text(_BANNER_SCRIPT, encoding="ascii")
    script.chmod(0o755)
    banner_out = tmp_path / "banner.txt"
    log = tmp_path / "openconnect.log"
    env = dict(
        os.environ,
        LOADGEN_TUN_PEER=server.tunnel_peer_ipv4,
        LOADGEN_TUN_SCRIPT=str(tun_script),
        LOADGEN_BANNER_OUT=str(banner_out),
    )
    argv = [
        "openconnect",
        "--protocol=anyconnect",
        "--user=alice",
        "--passwd-on-stdin",
        "--non-inter",
        f"--cafile={server.ca_path}",
        f"--script={script}",
        "--interface=lgtun-banner",
        "-v",
        server.url,
    ]
    with log.open("wb") as sink:
        proc = subprocess.Popen(
            argv,
            stdin=subprocess.PIPE,
            stdout=sink,
            stderr=subprocess.STDOUT,
            env=env,
            start_new_session=True,
        )
    try:
        assert proc.stdin is not None
        proc.stdin.write(b"test\n")
        proc.stdin.close()
        deadline = time.monotonic() + WAIT_S
        while not banner_out.exists() and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.05)
        text = log.read_text(errors="replace")
        assert banner_out.exists(), text[-3000:]
        assert banner_out.read_text() == BANNER
        assert f"X-CSTP-Banner: {BANNER}" in text
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGINT)
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(timeout=10)


def test_pre_login_banner_is_shown_and_login_goes_on(servers: list[OcservServer]) -> None:
    server = _start(servers, pre_login_banner=PRE_LOGIN_BANNER)
    out = authenticate(server, "--user=alice", "--passwd-on-stdin", stdin="test\n")
    assert out.cookie, out.stderr[-2000:]
    # ocserv sends the "&" raw; libxml2's recovery in openconnect drops it
    assert "Terms  Conditions apply" in out.stderr
